"""Appendix C: true posteriors p(h | x) of 2-D latent models, beside samples of q(h | x), and reconstructions.

The true posterior is computed on a grid over the 2-D latent space by normalising p(x, h) = p(x | h) p(h); it is
shown as a heat map with samples of q(h | x) as dots. Below each model's heat maps: the example and the Bernoulli
means of p(x | h) for samples h ~ q(h | x).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from iwae import data
from iwae.models.model import IWAE
from iwae.plots import save_figure
from iwae.runs.rundir import load_run
from iwae.util import streams

__all__ = ["true_posterior_grid", "plot_posteriors"]


@torch.no_grad()
def true_posterior_grid(
    model: IWAE, x: torch.Tensor, lim: float = 4.0, n: int = 121, center: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(h | x) on an n x n grid over center + [-lim, lim]^2 for each row of x.

    Returns (batch, n, n) densities (rows: h_2, columns: h_1), normalised so the grid cells sum to one for each
    example (the posterior mass outside the grid is ignored), and the h_1 and h_2 axis values.
    """
    if model.latent_dims != [2]:
        raise ValueError(f"the posterior grid needs a model with one 2-D latent layer, got {model.latent_dims}")
    base = torch.linspace(-lim, lim, n, device=x.device, dtype=x.dtype)
    ax1, ax2 = base + center[0], base + center[1]
    hy, hx = torch.meshgrid(ax2, ax1, indexing="ij")
    h = torch.stack([hx.reshape(-1), hy.reshape(-1)], -1)  # (n*n, 2), rows vary in h_2
    logits = model.decoder[-1](h)  # (n*n, 784)
    log_px_h = x @ logits.T - torch.nn.functional.softplus(logits).sum(-1)  # (batch, n*n)
    log_joint = log_px_h - 0.5 * h.square().sum(-1)
    post = torch.softmax(log_joint, -1).reshape(-1, n, n)
    return post.cpu().numpy(), ax1.cpu().numpy(), ax2.cpu().numpy()


def plot_posteriors(run_dirs: dict[str, Path], out: Path, n_examples: int = 6, seed: int = 0) -> Path:
    """One block per model: heat maps of p(h | x) with q samples for ``n_examples`` training examples, then the
    examples and their reconstructions. ``run_dirs`` maps a label (e.g. "VAE") to a run folder."""
    models = {label: load_run(d) for label, d in run_dirs.items()}
    config = next(iter(models.values()))[0]
    gen = streams.generator(seed, "posteriors", scheme=config.streams)
    x_all = data.load(config.dataset, "train", config.data_dir)
    idx = torch.randperm(x_all.shape[0], generator=gen)[:n_examples]
    x = data.binarize(x_all[idx], generator=gen)
    ratios = [1.0, 0.3] * len(models)  # a row of heat maps, then a strip of reconstructions, per model
    fig = Figure(figsize=(2.1 * n_examples, 2.9 * len(models)))  # no pyplot: the user's backend is left alone
    axes = fig.subplots(2 * len(models), n_examples, height_ratios=ratios)
    for row, (label, (_, model, _)) in enumerate(models.items()):
        model = model.cpu().eval()
        with torch.no_grad():
            out_q = model.forward_samples(x, 100, generator=gen)
            h = out_q.samples[0]  # (100, n_examples, 2)
            recon = model.visible_means(h[:4])  # (4, n_examples, 784)
        for j in range(n_examples):
            # Zoom on the example: a window around q's samples, wide enough for both q and the posterior.
            center = tuple(h[:, j].median(0).values.tolist())
            lim = max(0.25, 4 * h[:, j].std(0).max().item())
            post, ax1, ax2 = true_posterior_grid(model, x[j : j + 1], lim=lim, center=center)
            ax = axes[2 * row, j]
            extent = (ax1[0], ax1[-1], ax2[0], ax2[-1])
            ax.imshow(post[0], origin="lower", extent=extent, cmap="viridis", aspect="auto")
            ax.scatter(h[:, j, 0], h[:, j, 1], s=2, c="white", alpha=0.6)
            ax.set_xlim(ax1[0], ax1[-1])
            ax.set_ylim(ax2[0], ax2[-1])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            strip = torch.cat([x[j].reshape(28, 28)] + [r.reshape(28, 28) for r in recon[:, j]], 1)
            axes[2 * row + 1, j].imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[2 * row + 1, j].axis("off")
    fig.suptitle(
        "true posterior p(h|x) (heat map) and 100 samples of q(h|x) (dots), each panel zoomed on its example; "
        "below: the example and 4 reconstructions"
    )
    path = out / "posteriors.png"
    save_figure(fig, path, dpi=100)
    return path
