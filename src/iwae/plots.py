"""Figures of a run: sample grids (Appendix E), histograms of log A_u (Appendix C), the training curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ["image_grid", "save_image_grid", "plot_active_units", "plot_training"]


def image_grid(images: torch.Tensor, nrow: int | None = None, side: int = 28, pad: int = 2) -> np.ndarray:
    """Tile (n, side*side) images in [0, 1] into one uint8 array, white on black as in the paper's figures."""
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, side, side).numpy()
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (side + pad) + pad, nrow * (side + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid[
            pad + r * (side + pad) : pad + r * (side + pad) + side,
            pad + c * (side + pad) : pad + c * (side + pad) + side,
        ] = img
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 3) -> None:
    """Write a grid of images (e.g. Bernoulli means of samples) as a PNG, upscaled for viewing."""
    grid = Image.fromarray(image_grid(images, nrow))
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


def plot_active_units(A: Sequence[torch.Tensor], path: str | Path, threshold: float = 0.01, title: str = "") -> None:
    """Histogram of log A_u per stochastic layer, with the activity threshold (Appendix C)."""
    fig, axes = plt.subplots(1, len(A), figsize=(4.5 * len(A), 3.2), squeeze=False)
    for l, (ax, a) in enumerate(zip(axes[0], A)):
        logs = np.log(a.detach().cpu().double().clamp_min(1e-12).numpy())
        ax.hist(logs, bins=30, color="tab:blue")
        ax.axvline(math.log(threshold), color="tab:red", linestyle="--", label=f"log {threshold:g}")
        active = int((a > threshold).sum())
        ax.set_title(f"layer {l + 1}: {active}/{a.numel()} active")
        ax.set_xlabel("log A_u")
        ax.set_ylabel("units")
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(passes: Sequence[float], bound: Sequence[float], path: str | Path, title: str = "") -> None:
    """Training bound (mean over each pass) against passes, on a log axis (the stages are 3^i passes long)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(passes, bound, marker="." if len(passes) < 60 else None)
    ax.set_xscale("log")
    ax.set_xlabel("passes over the training set")
    ax.set_ylabel("training bound (nats)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
