r"""A gradient estimator of one's own, registered with the library: VIMCO (Mnih & Rezende 2016) for the IWAE bound.

    python examples/own_estimator.py [--steps 3000] [--k 5] [--eval-k 5000] [--eval-n 500] [--data-dir DIR]
    python examples/own_estimator.py --smoke     # under a minute on a CPU

VIMCO needs no reparameterisation: it differentiates L_k = E[log (1/k) sum_i w_i] (Eq. 8) through the score
function of q, each sample's learning signal being how much the estimate drops when that sample is replaced by the
geometric mean of the others, a baseline that does not depend on that sample:

    grad_phi L_k = E[ sum_i (L_hat - L_hat_{-i}) grad_phi log q(h_i | x) + sum_i w~_i grad_phi log w_i |_{h fixed} ],
    L_hat_{-i} = log (1/k) (sum_{j != i} w_j + exp(mean_{j != i} log w_j)),

and the generative network gets Eq. 14's sum_i w~_i grad_theta log p(x, h_i). It is unbiased for the gradient of
L_k, as the paper's reparameterisation estimator (`reparam`) is. Made for discrete latents, on the paper's Gaussian
ones it shows what the reparameterisation trick buys: the signal-to-noise ratio of its encoder gradient, printed at
the end beside `reparam`'s and DReG's on the same batch, is lower.

Registered once, ``iwae.objectives.register_estimator("vimco", VIMCO())``, it is an estimator like the built-in ones
for ``iwae.Objective``, ``iwae.objective``, ``iwae.make_train_step`` and ``iwae.analysis.snr.gradient_snr``;
named by its module, ``own_estimator:vimco`` (this module's instance), it trains a run folder too:

    PYTHONPATH=examples iwae train --estimator own_estimator:vimco --k 5 --out runs/vimco

``tests/test_examples.py`` checks that its expected gradient is reparam's.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import ClassVar

import torch
from torch import Tensor

import iwae
from iwae.objectives.base import RNG, Estimator, Noise, detached_networks, with_value


def _held(h: Tensor) -> Tensor:
    return h.detach()


def leave_one_out(log_w: Tensor) -> Tensor:
    """(k, batch) L_hat_{-i}: the log mean weight with w_i replaced by the geometric mean of the other k - 1.

    Kept simple: it holds k x k x batch numbers (k in the hundreds at most), and a weight of zero (log w = -inf,
    which the paper's models never give) makes the others' geometric mean NaN."""
    k = log_w.shape[0]
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (k, batch): mean_{j != i} log w_j
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # (k, k, 1): row i, column i
    replaced = torch.where(eye, others.unsqueeze(1), log_w.unsqueeze(0))  # row i: log w with entry i replaced
    return torch.logsumexp(replaced, 1) - math.log(k)


class VIMCO(Estimator):
    """VIMCO for the IWAE bound: the score function of q with leave-one-out baselines, samples held fixed."""

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)
    path_keywords: ClassVar[bool] = True  # it reads the model through sample_hook: a model of one's own is probed

    def loss(
        self, model: iwae.SampledModel, x: Tensor, objective: iwae.Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        k = objective.samples_per_example
        if k < 2:
            raise ValueError("VIMCO's baselines leave one sample out: it needs k >= 2")
        noise = list(model.draw_noise(k, x.shape[0], generator) if noise is None else noise)
        # the samples held fixed: log w_i = log p(x, h_i) - log q(h_i | x) moves theta by log p, phi by -log q
        log_w = model.forward_samples(x, k, noise=noise, sample_hook=_held).log_w
        # the same with the generative network's parameters detached: minus log q(h_i | x), moving phi only
        _, decoder = detached_networks(model, "vimco")
        call = {"noise": noise, "sample_hook": _held}
        minus_log_q = torch.func.functional_call(model, decoder, (x, k), call, strict=False).log_w
        lw = log_w.detach()
        estimate = torch.logsumexp(lw, 0) - math.log(k)  # L_hat, (batch,)
        signal = estimate - leave_one_out(lw)  # (k, batch): each sample's learning signal
        surrogate = (torch.softmax(lw, 0) * log_w).sum(0) - (signal * minus_log_q).sum(0)
        return with_value(-surrogate.mean(), -estimate.mean())  # the value: minus the batch mean of L_hat


vimco = VIMCO()  # what `--estimator own_estimator:vimco` names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="training steps of batch 20 (default 3000: 1 pass)")
    parser.add_argument("--k", type=int, default=5, help="importance samples in training (default 5)")
    parser.add_argument("--estimator", default="vimco", help="vimco (default) or a built-in one, to compare")
    parser.add_argument("--eval-k", type=int, default=5000, help="L_k of the test score (default 5000, the paper's)")
    parser.add_argument("--eval-n", type=int, default=500, help="test images scored (default 500)")
    parser.add_argument("--snr-draws", type=int, default=100, help="gradient draws of the SNR table (default 100)")
    parser.add_argument("--data-dir", help="where MNIST is (default $IWAE_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="30 steps, L_100 on 20 images: checks it all runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.eval_k, args.eval_n, args.snr_draws = 30, 100, 20, 10
    iwae.objectives.register_estimator("vimco", vimco)
    if args.estimator == "vimco" and args.k < 2:
        parser.error("VIMCO's baselines leave one sample out: --k must be 2 or more")
    if args.estimator not in iwae.objectives.ESTIMATORS_BY_NAME:
        parser.error(f"unknown estimator {args.estimator!r}; choose one of "
                     f"{', '.join(iwae.objectives.ESTIMATORS_BY_NAME)}")  # fmt: skip
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    try:
        train = iwae.data.load("mnist", "train", args.data_dir)
    except iwae.data.DataNotFoundError as err:  # one line saying where to get it, not a traceback
        parser.exit(1, f"{parser.prog}: {err}\n")
    test = iwae.data.load("mnist", "test", args.data_dir)
    model = iwae.IWAE.paper(layers=1)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=args.k, estimator=args.estimator, generator=gen)

    start, order, bounds = time.perf_counter(), torch.randperm(len(train), generator=gen), []
    for i in range(args.steps):
        at = (i * 20) % len(train)
        if at == 0 and i:
            order = torch.randperm(len(train), generator=gen)
        x = iwae.data.binarize(train[order[at : at + 20]], generator=gen)  # dynamic binarization
        bounds.append(-step(x).item())
        if (i + 1) % 1000 == 0 or i + 1 == args.steps:
            recent = bounds[-1000:]
            print(f"step {i + 1:6d}  training L_{args.k}, last {len(recent)} batches: {sum(recent) / len(recent):8.2f}")
    print(f"trained with {args.estimator} in {time.perf_counter() - start:.0f} s")

    x = iwae.data.binarize(test[torch.arange(args.eval_n) * len(test) // args.eval_n], generator=gen)
    ll = iwae.log_likelihood(model, x, args.eval_k, generator=gen)
    sem = ll.std() / len(ll) ** 0.5
    print(f"test NLL (-L_{args.eval_k}, {len(ll)} images spread through the test set): {-ll.mean():.2f} ± {sem:.2f}")

    from iwae.analysis.snr import gradient_snr

    batch = iwae.data.binarize(train[:20], generator=gen)
    found = gradient_snr(model, batch, [args.k], ("reparam", "dreg", "vimco"), args.snr_draws, generator=gen)
    print(f"gradient SNR at k={args.k} on one batch of 20, {args.snr_draws} draws (mean |mean| / std per coordinate):")
    for name, snr in found["snr"].items():
        print(f"  {name:8s} encoder {snr['encoder'][0]:.3f}  decoder {snr['decoder'][0]:.3f}")


if __name__ == "__main__":
    main()
