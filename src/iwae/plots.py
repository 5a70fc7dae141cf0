"""Figures of a run: sample grids (Appendix E), histograms of log A_u (Appendix C), the learning curves.

Figures are drawn with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`, no pyplot), which
needs no backend: importing this module leaves the user's matplotlib backend alone. Every file is written
atomically (:func:`iwae.util.atomic.atomic_path`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from PIL import Image

from iwae.util.atomic import atomic_path

__all__ = [
    "image_grid", "image_format", "save_image_grid", "save_figure", "plot_active_units", "plot_training",
    "plot_curves", "plot_snr",
]  # fmt: skip


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


def image_format(path: str | Path) -> str:
    """The Pillow format that ``path``'s suffix names (``.png``: PNG, ``.jpg``: JPEG, ...); a ValueError naming the
    file where Pillow writes none."""
    suffix = Path(path).suffix.lower()
    if (fmt := Image.registered_extensions().get(suffix)) is None or fmt not in Image.SAVE:
        raise ValueError(f"{path}: {suffix or 'no suffix'} names no image format Pillow writes; name a .png file")
    return fmt


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 3) -> None:
    """Write a grid of images (e.g. Bernoulli means of samples), upscaled for viewing, in the format that the file
    name's suffix names (:func:`image_format`)."""
    fmt = image_format(path)
    grid = Image.fromarray(image_grid(images, nrow))
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format is given explicitly.
        grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(tmp, format=fmt)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Lay out ``fig`` and write it as a PNG, atomically (the temporary name needs the explicit format)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def plot_active_units(A: Sequence[torch.Tensor], path: str | Path, threshold: float = 0.01, title: str = "") -> None:
    """Histogram of log A_u per stochastic layer, with the activity threshold (Appendix C)."""
    fig = Figure(figsize=(4.5 * len(A), 3.2))
    axes = fig.subplots(1, len(A), squeeze=False)
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
    save_figure(fig, path)


def plot_training(
    passes: Sequence[float],
    bound: Sequence[float],
    path: str | Path,
    title: str = "",
    curve: Sequence[tuple[float, float]] = (),
    curve_label: str = "test NLL",
) -> None:
    """Minus the training bound (mean over each pass) and the test NLL of the learning curve (``curve``: (passes,
    NLL) points) against passes, on a log axis (the stages are 3^i passes long); both in nats, lower is better."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(passes, [-b for b in bound], marker="." if len(passes) < 60 else None, label="-training bound")
    if curve:
        ax.plot(*zip(*curve), marker="o", color="tab:red", label=curve_label)
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("passes over the training set")
    ax.set_ylabel("nats (lower is better)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def plot_curves(series: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Learning curves of several runs in one figure: test NLL against passes on a log axis, a panel per group.

    Each item of ``series`` has ``label``, ``points`` ((passes, NLL) pairs: the curve, or only the final point
    of a run that has none), optionally ``panel`` (the title of its panel) and ``reference`` (a final NLL to compare
    with, drawn as a dotted line in the run's colour) with ``reference_passes`` (where it was reached: a star).
    """
    panels = list(dict.fromkeys(item.get("panel", "") for item in series)) or [""]
    fig = Figure(figsize=(6.5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        items = [item for item in series if item.get("panel", "") == panel]
        for i, item in enumerate(items):
            color = f"C{i % 10}"
            ax.plot(*zip(*item["points"]), marker="o", markersize=4, color=color, label=item["label"])
            if item.get("reference") is not None:
                ax.axhline(item["reference"], color=color, linestyle=":", linewidth=1)
                if item.get("reference_passes"):
                    ax.plot([item["reference_passes"]], [item["reference"]], marker="*", markersize=9, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("passes over the training set")
        ax.set_ylabel("test NLL (nats)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(panel, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_snr(result: dict, path: str | Path) -> None:
    """Mean gradient SNR against k on log-log axes, encoder and decoder panels, one line per estimator."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    # Distinct dashes and shrinking markers, so that lines that coincide (the decoder's) stay visible.
    styles = [("-", "o", 7), ("--", "s", 5), (":", "^", 4), ("-.", "D", 3)]
    for ax, net in zip(axes, ("encoder", "decoder")):
        for i, est in enumerate(result["estimators"]):
            pts = [(k, v) for k, v in zip(result["ks"], result["snr"][est][net]) if v > 0]
            dash, marker, size = styles[i % len(styles)]
            ax.plot(*zip(*pts), linestyle=dash, marker=marker, markersize=size, label=est)
        ax.axhline(result["floor"], color="grey", linestyle="--", linewidth=1, label="floor (true SNR 0)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(result["ks"], [str(k) for k in result["ks"]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("k (importance samples)")
        ax.set_ylabel("mean SNR over coordinates")
        ax.set_title(f"{net} ({'recognition q' if net == 'encoder' else 'generative p'})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"gradient SNR of the IWAE bound, {result['n_draws']} draws on {result['batch']} images")
    save_figure(fig, path)


def plot_weight_diagnostics(
    khat: torch.Tensor, ll: torch.Tensor, threshold: float, path: str | Path, title: str = ""
) -> None:
    """Pareto k-hat of each image's importance weights: its histogram with the lines at 0.5 and ``threshold``, and
    k-hat against the image's L_k (:mod:`iwae.analysis.diagnostics`)."""
    fig = Figure(figsize=(9, 3.4))
    left, right = fig.subplots(1, 2)
    finite = torch.isfinite(khat)
    values = khat[finite].double().numpy()
    left.hist(values, bins=40, color="tab:blue")
    right.scatter(ll[finite].double().numpy(), values, s=4, alpha=0.5, color="tab:blue")
    for ax in (left, right):
        line = ax.axvline if ax is left else ax.axhline
        line(0.5, color="tab:orange", linestyle="--", label="0.5: infinite variance above")
        line(threshold, color="tab:red", linestyle="--", label=f"{threshold:.2f}: unreliable above")
        ax.grid(True, alpha=0.3)
    left.set_xlabel("Pareto k-hat of the weights")
    left.set_ylabel("images")
    left.legend(fontsize=8)
    right.set_xlabel("L_k (nats)")
    right.set_ylabel("Pareto k-hat")
    fig.suptitle(title)
    save_figure(fig, path)
