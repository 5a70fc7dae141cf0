"""A convolutional encoder and decoder of your own, trained with the IWAE bound and DReG, scored with L_5000.

    python examples/conv_mnist.py [--steps 6000] [--k 5] [--eval-k 5000] [--eval-n 1000] [--data-dir DIR]
    python examples/conv_mnist.py --smoke     # a few steps and a small evaluation: under a minute on a CPU

Your networks go into :class:`iwae.GaussianLatentModel` (one Gaussian latent layer, prior N(0, I),
Bernoulli pixels): the encoder returns the mean and log standard deviation of q(h | x), the decoder the logits of
p(x | h). Every bound and gradient estimator of the library then trains it, and ``iwae.log_likelihood`` scores it
with the paper's L_k (Eq. 8). MNIST is read from ``--data-dir``, else ``$IWAE_DATA_DIR`` (``iwae download mnist``
fetches it).

The same model trains in a run folder on the paper's schedule, with checkpoints, exact resume and the final
evaluation, from this folder (:func:`conv_vae` builds it)::

    cd examples && PYTHONPATH=. iwae train --model conv_mnist:conv_vae --model-kwargs '{"latent_dim": 32}' \
        --bound iwae --k 5 --estimator dreg --out ../runs/conv-k5
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

import iwae


class ConvEncoder(nn.Module):
    """(batch, 784) -> mean and log std of q(h | x), each (batch, latent_dim)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ELU(),  # 28 -> 14
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ELU(),  # 14 -> 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 2 * latent_dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(x.view(-1, 1, 28, 28)).chunk(2, dim=-1)
        return mean, log_std


class ConvDecoder(nn.Module):
    """Samples h (..., latent_dim) -> Bernoulli logits (..., 784); the leading (k, batch) dimensions are flattened
    for the convolutions and restored after them."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * 7 * 7), nn.ELU(), nn.Unflatten(-1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ELU(),  # 7 -> 14
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # 14 -> 28
        )  # fmt: skip

    def forward(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        return self.net(h.reshape(-1, h.shape[-1])).reshape(*lead, 784)


@iwae.model_builder  # a run folder's config may call it
def conv_vae(latent_dim: int = 32) -> iwae.GaussianLatentModel:
    """The convolutional VAE of this example, for ``iwae train --model conv_mnist:conv_vae``."""
    return iwae.GaussianLatentModel(ConvEncoder(latent_dim), ConvDecoder(latent_dim), latent_dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="training steps of batch 20 (default 6000: 2 passes)")
    parser.add_argument("--k", type=int, default=5, help="importance samples in training (default 5)")
    parser.add_argument("--estimator", default="dreg", choices=iwae.ESTIMATORS, help="gradient estimator (dreg)")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--eval-k", type=int, default=5000, help="L_k of the test score (default 5000, the paper's)")
    parser.add_argument("--eval-n", type=int, default=1000, help="test images scored (default 1000)")
    parser.add_argument("--data-dir", help="where MNIST is (default $IWAE_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="30 steps, L_100 on 20 images: checks it all runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.eval_k, args.eval_n = 30, 100, 20
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    try:
        train = iwae.data.load("mnist", "train", args.data_dir)
    except iwae.data.DataNotFoundError as err:  # one line saying where to get it, not a traceback
        parser.exit(1, f"{parser.prog}: {err}\n")
    test = iwae.data.load("mnist", "test", args.data_dir)
    model = conv_vae(args.latent_dim)
    optimizer = iwae.make_optimizer(model)  # Adam with the paper's settings, lr 1e-3
    step = iwae.make_train_step(model, optimizer, k=args.k, bound="iwae", estimator=args.estimator, generator=gen)

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
    print(f"trained in {time.perf_counter() - start:.0f} s")

    x = iwae.data.binarize(test[torch.arange(args.eval_n) * len(test) // args.eval_n], generator=gen)
    ll = iwae.log_likelihood(model, x, args.eval_k, generator=gen)
    sem = ll.std() / len(ll) ** 0.5
    print(f"test NLL (-L_{args.eval_k}, {len(ll)} images spread through the test set): {-ll.mean():.2f} ± {sem:.2f}")
    print(f"active units (A_u > 0.01): {iwae.count_active(iwae.active_units(model, x))}")


if __name__ == "__main__":
    main()
