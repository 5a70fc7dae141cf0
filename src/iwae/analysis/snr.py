r"""Signal-to-noise ratio of gradient estimators against the number of samples k (``iwae snr``).

For a gradient estimator :math:`\Delta_k` of the IWAE bound :math:`\mathcal{L}_k` (Burda et al. 2016, Eq. 8),
Rainforth et al. (2018) define, per parameter coordinate j,

.. math:: \mathrm{SNR}_j(k) = \frac{\big|\mathbb{E}[\Delta_{k,j}]\big|}{\sigma[\Delta_{k,j}]}

and show that for the reparameterised IWAE gradient (Eq. 14) it is :math:`O(\sqrt{k})` for the generative network
(decoder) but :math:`O(1/\sqrt{k})` for the recognition network (encoder): a tighter bound starves the encoder of
signal. Tucker et al. (2018) show that DReG's encoder gradient instead has SNR growing with k.

:func:`gradient_snr` estimates these on one fixed minibatch x: for each k and estimator it draws ``n_draws``
independent gradients of the minibatch-mean bound (``iwae.objective(model, x, k, bound, estimator)``, the IWAE
bound unless another is asked for, with its parameters), takes each
coordinate's sample mean and sample standard deviation (ddof 1, in float64), and summarises the per-coordinate
SNRs of the encoder's parameters and, separately, of the decoder's. The summary is the **mean over coordinates**
(the median is also returned). A coordinate whose gradient is identical on every draw (std 0: in practice a weight
reading a pixel that is 0 in the whole minibatch, whose gradient is always 0) has no SNR and is left out; the count
left out is returned.

Estimation floor: a coordinate whose true mean gradient is 0 still shows an estimated SNR of about
:math:`\sqrt{2 / (\pi n)}` from n draws (the mean absolute value of a standard normal over :math:`\sqrt{n}`), so
values near that floor mean "indistinguishable from zero", not a measured SNR.

Common random numbers: at each k every estimator sees the same noise draws, so the differences between estimators
are not Monte Carlo noise between estimators, and ``reparam``, ``stl`` and ``dreg``, whose decoder gradients are all
Eq. 14, report identical decoder SNRs.

References: Rainforth et al. (2018), *Tighter Variational Bounds are Not Necessarily Better* (ICML);
Tucker, Lawson, Gu & Maddison (2018), *Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives*.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from iwae import data
from iwae.models.model import IWAE
from iwae.objectives import Objective
from iwae.runs.config import TrainConfig
from iwae.util import machine, streams
from iwae.util.atomic import write_json, write_text
from iwae.util.cpu import flush_subnormals

__all__ = ["NETWORKS", "gradient_snr", "coordinate_snr", "snr_command", "default_model_config"]

NETWORKS = ("encoder", "decoder")


def coordinate_snr(draws: Iterable[Tensor]) -> Tensor:
    """Per-coordinate |mean| / std (ddof 1) over an iterable of equally shaped gradient vectors, in float64.

    Accumulated with Welford's update, so n draws need memory for two vectors only, and the variance does not
    suffer the cancellation of E[g^2] - E[g]^2 when the mean is large against the spread. Coordinates with std 0
    come out as NaN.
    """
    n, mean, m2 = 0, None, None
    for g in draws:
        g = g.detach().reshape(-1).double()
        n += 1
        if mean is None:
            mean, m2 = g.clone(), torch.zeros_like(g)
            continue
        delta = g - mean
        mean += delta / n
        m2 += delta * (g - mean)
    if n < 2:
        raise ValueError(f"need at least 2 gradient draws for a standard deviation, got {n}")
    std = torch.sqrt(m2 / (n - 1))
    return torch.where(std > 0, mean.abs() / std, torch.full_like(std, math.nan))


def _summary(snr: Tensor) -> dict[str, float | int]:
    used = snr[~torch.isnan(snr)]
    return {
        "mean": used.mean().item() if used.numel() else math.nan,
        "median": used.median().item() if used.numel() else math.nan,
        "excluded": int(snr.numel() - used.numel()),
    }


def _draws(model: IWAE, x: Tensor, objective: Objective, n: int, gen: torch.Generator, bar: tqdm):
    """Yield n gradient draws of the bound, each flattened to one vector: encoder coordinates, then decoder's."""
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    for _ in range(n):
        loss = objective.loss(model, x, gen)
        grads = torch.autograd.grad(-loss, params, allow_unused=True)  # the bound's gradient; the sign does not matter
        flat = [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1) for p, g in zip(params, grads)]
        yield torch.cat(flat)
        bar.update()


def _check_request(
    ks: Sequence[int], estimators: Sequence[str], n_draws: int, bound: str, params: dict[str, float]
) -> list[int]:
    """Raise ValueError naming the problem; return ks as ints."""
    if not ks or not estimators:
        raise ValueError("need at least one k and one estimator")
    for est in estimators:
        for k in ks:
            Objective(bound, k, est, **params)
    if n_draws < 2:
        raise ValueError(f"n_draws must be at least 2 to estimate a standard deviation, got {n_draws}")
    return [int(k) for k in ks]


def gradient_snr(
    model: IWAE,
    x: Tensor,
    ks: Sequence[int],
    estimators: Sequence[str] = ("reparam", "stl", "dreg"),
    n_draws: int = 100,
    generator: torch.Generator | None = None,
    *,
    scheme: int = streams.SCHEME,
    progress: bool = False,
    bound: str = "iwae",
    params: dict[str, float] | None = None,
) -> dict[str, Any]:
    """SNR of the encoder's and the decoder's gradients for each k and estimator (see the module docstring).

    :param model: an :class:`~iwae.models.model.IWAE`; its parameters are not changed.
    :param x: (batch, x_dim) the fixed minibatch (binary, for a Bernoulli visible layer).
    :param ks: numbers of importance samples.
    :param estimators: names from :data:`iwae.objectives.ESTIMATORS_BY_NAME` (the built-in :data:`iwae.ESTIMATORS`
        and those :func:`~iwae.objectives.register_estimator` adds), each applied to ``bound`` (default the IWAE bound)
        with its parameters ``params`` (e.g. ``{"alpha": 0.5}`` for ``"vr"``).
    :param n_draws: gradient draws per (k, estimator); at least 2.
    :param generator: source of a base seed b (one ``torch.randint(2**62, (1,))`` draw); at each k every estimator
        draws its noise from the stream ``("snr", "k", k)`` of b (:func:`iwae.util.streams.generator` under
        ``scheme``) on the model's device (common random numbers).
        Default: the global generator.
    :returns: a dict with ``ks``, ``estimators``, ``n_draws``, ``batch``, ``coordinates`` (parameter count per
        network), ``floor`` (the SNR a zero-mean coordinate shows, sqrt(2/(pi n_draws))) and ``snr``:
        ``snr[estimator][network]`` is the list over ks of the mean over that network's coordinates of
        |mean| / std; ``snr[estimator][network + "_median"]`` the median, ``[network + "_excluded"]`` the number of
        std-0 coordinates left out. ``network`` is ``"encoder"`` (recognition) or ``"decoder"`` (generative).
    """
    params = dict(params or {})
    ks = _check_request(ks, estimators, n_draws, bound, params)
    device = next(model.parameters()).device
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    base = int(torch.randint(2**62, (1,), generator=generator).item())
    snr = {e: {f"{net}{s}": [] for net in NETWORKS for s in ("", "_median", "_excluded")} for e in estimators}
    bar = tqdm(total=len(ks) * len(estimators) * n_draws, unit="grad", disable=not progress, leave=False)
    try:
        for k in ks:
            for est in estimators:
                bar.set_description(f"SNR {est} k={k}")
                gen = streams.generator(base, "snr", "k", k, device=device, scheme=scheme)
                objective = Objective(bound, k, est, **params)
                values = coordinate_snr(_draws(model, x, objective, n_draws, gen, bar))
                for net, part in zip(NETWORKS, (values[:n_enc], values[n_enc:])):
                    s = _summary(part)
                    snr[est][net].append(s["mean"])
                    snr[est][f"{net}_median"].append(s["median"])
                    snr[est][f"{net}_excluded"].append(s["excluded"])
    finally:
        bar.close()
    return {
        "ks": ks, "estimators": list(estimators), "bound": bound, "params": params, "n_draws": n_draws,
        "batch": x.shape[0],
        "coordinates": {"encoder": n_enc, "decoder": sum(p.numel() for p in model.decoder.parameters())},
        "floor": math.sqrt(2 / (math.pi * n_draws)), "snr": snr,
    }  # fmt: skip


def default_model_config(
    data_dir: str | None = None, seed: int = 0, device: str = "auto", passes: float = 1.0
) -> TrainConfig:
    """The small model ``iwae snr`` trains when given no run folder.

    The paper's 1-layer MNIST architecture (784-200-200-50 and back) trained on IWAE with k = 5 and the plain
    reparameterisation gradient, batch 20, Adam at the first stage's rate 1e-3 for ``passes`` passes (one pass over
    the 59,600 training images is 2,980 steps).
    """
    return TrainConfig(
        dataset="mnist", data_dir=data_dir, layers=1, bound="iwae", k=5, estimator="reparam",
        custom_schedule=[[passes, 1e-3]], seed=seed, device=device, extra={"made_by": "iwae snr"},
    )  # fmt: skip


def snr_command(
    out: str | Path,
    run_dir: str | Path | None = None,
    ks: Sequence[int] = (1, 5, 50, 500),
    estimators: Sequence[str] = ("reparam", "stl", "dreg"),
    n_draws: int = 100,
    batch: int = 20,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    device: str | None = None,
    train_passes: float = 1.0,
    progress: bool = True,
    bound: str = "iwae",
    params: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``iwae snr``: SNR against k on a trained model; writes ``snr.json``, ``snr.md`` and ``snr.png`` into ``out``.
    ``bound`` and its ``params``: the bound whose gradients are measured (:func:`gradient_snr`).

    Without ``run_dir`` the model of :func:`default_model_config` is trained into ``out/model`` (or, if that folder
    already holds a run, loaded from it). The minibatch is the first ``batch`` training images of the run's data
    set, binarised once with a generator seeded ``seed``; the gradient noise comes from a generator seeded
    ``seed`` too (see :func:`gradient_snr`).
    """
    from iwae.plots import plot_snr
    from iwae.runs.rundir import load_run, read_log
    from iwae.runs.train import train

    params = dict(params or {})
    _check_request(ks, estimators, n_draws, bound, params)  # before minutes of training, not after
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trained = run_dir is None and not (out / "model" / "config.json").exists()
    if run_dir is None:
        run_dir = out / "model"
        if trained:
            train(default_model_config(data_dir, seed, device or "auto", train_passes), run_dir, progress=progress)
    config, model, _ = load_run(run_dir, device=device)
    dev = next(model.parameters()).device
    gen = streams.generator(seed, "snr", "data", device=dev, scheme=config.streams)
    x = data.load(config.dataset, "train", data_dir or config.data_dir)[:batch].to(dev)
    if not data.is_binary(config.dataset):
        x = data.binarize(x, generator=gen)
    start = time.monotonic()
    base = streams.generator(seed, "snr", "base", scheme=config.streams)
    with flush_subnormals(config.flush_denormal):
        result = gradient_snr(model, x, ks, estimators, n_draws, base, scheme=config.streams, progress=progress,
                              bound=bound, params=params)  # fmt: skip
    log = read_log(run_dir)
    result.update(
        seconds=time.monotonic() - start, seed=seed, slopes=_slopes(result),
        made={"date": datetime.date.today().isoformat(), "machine": machine.describe(dev)},
        model={
            "run_dir": str(run_dir), "trained_here": trained, "dataset": config.dataset,
            "latent_dims": model.latent_dims, "bound": config.bound, "k": config.k,
            "estimator": config.estimator, "passes": log[-1]["pass"] if log else 0.0,
            "train_bound": log[-1]["train_bound"] if log else None,
        },
    )  # fmt: skip
    write_json(out / "snr.json", result)
    write_text(out / "snr.md", snr_markdown(result))
    plot_snr(result, out / "snr.png")
    return result


def _slopes(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Least-squares slope of log SNR against log k, per estimator and network (NaN with fewer than 2 points)."""
    slopes: dict[str, dict[str, float]] = {}
    for est, per in result["snr"].items():
        slopes[est] = {}
        for net in NETWORKS:
            pts = [(math.log(k), math.log(v)) for k, v in zip(result["ks"], per[net]) if v > 0]
            if len(pts) < 2:
                slopes[est][net] = math.nan
                continue
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            sxx = sum((p[0] - mx) ** 2 for p in pts)
            slopes[est][net] = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return slopes


def _bound_text(result: dict[str, Any]) -> str:
    """The measured bound as the report names it: "IWAE bound L_k", else its name with its parameters."""
    if result["bound"] == "iwae":
        return "IWAE bound L_k"
    return f"{result['bound']} bound" + "".join(f", {name} = {value:g}" for name, value in result["params"].items())


def snr_markdown(result: dict[str, Any]) -> str:
    """The table of ``snr.md``: mean SNR over coordinates, one column per (network, estimator), one row per k."""
    m, ests = result["model"], result["estimators"]
    cols = [(net, e) for net in NETWORKS for e in ests]
    excluded = {net: max(max(result["snr"][e][f"{net}_excluded"]) for e in ests) for net in NETWORKS}
    bound = f", last-pass training bound {m['train_bound']:.2f} nats" if m.get("train_bound") is not None else ""
    lines = [
        "# Gradient signal-to-noise ratio against k",
        "",
        f"Model: `{m['run_dir']}` ({m['dataset']}, latent dims {m['latent_dims']}, trained on {m['bound']} "
        f"k={m['k']} with `{m['estimator']}` for {m['passes']:.2f} passes{bound}).",
        f"Minibatch: the first {result['batch']} training images, binarised once (seed {result['seed']}). "
        f"{result['n_draws']} gradient draws of the {_bound_text(result)} per (k, estimator), the same noise for every "
        f"estimator at a given k.",
        "",
        "SNR = |mean| / std of each parameter coordinate's gradient over the draws (Rainforth et al. 2018), then the "
        f"mean over the encoder's {result['coordinates']['encoder']:,} coordinates and the decoder's "
        f"{result['coordinates']['decoder']:,}; coordinates with std 0 are left out (at most "
        f"{excluded['encoder']:,} encoder, {excluded['decoder']:,} decoder). A coordinate whose true mean gradient "
        f"is 0 shows about {result['floor']:.3f} (sqrt(2/(pi n))). {result['seconds']:.0f} s"
        + (f" on {made['machine']}, {made['date']}." if (made := result.get("made")) else "."),
        "",
        "| k | " + " | ".join(f"{net}: {e}" for net, e in cols) + " |",
        "|---:|" + "---:|" * len(cols),
    ]
    for i, k in enumerate(result["ks"]):
        lines.append(f"| {k} | " + " | ".join(f"{result['snr'][e][net][i]:.3g}" for net, e in cols) + " |")
    lines.append(
        "| slope of log SNR vs log k | " + " | ".join(f"{result['slopes'][e][net]:+.2f}" for net, e in cols) + " |"
    )
    return "\n".join(lines) + "\n"
