"""Score a VAE written without this library by the paper's test metric: the mean of L_5000 (Eq. 8).

    python examples/score_any_model.py [--steps 3000] [--eval-k 5000] [--eval-n 500] [--data-dir DIR]
    python examples/score_any_model.py --smoke     # under a minute on a CPU

``iwae.log_likelihood`` asks one method of a model: ``log_weights(x, k)``, the (k, batch) log importance weights
log p(x, h_i) - log q(h_i | x) of k fresh samples h_i ~ q(h | x). The plain PyTorch VAE below is trained on its
own ELBO by its own loop; the library only scores it. The gap between its ELBO and L_5000 is how loose the ELBO
is on this model (Theorem 1: L_1 <= L_k <= log p(x)).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor, nn

import iwae


class PlainVAE(nn.Module):
    """A VAE as one writes it from scratch: MLP encoder and decoder, Gaussian q, N(0, I) prior, Bernoulli pixels."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """(k, batch) log p(x, h_i) - log q(h_i | x) of k reparameterised samples: all ``iwae.log_likelihood`` needs."""
        mean, log_std = self.enc(x).chunk(2, dim=-1)
        eps = torch.randn(k, *mean.shape)
        h = mean + log_std.exp() * eps
        log_q = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * h.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = self.dec(h)
        log_px = (x * logits - nn.functional.softplus(logits)).sum(-1)
        return log_px + log_prior - log_q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="ELBO training steps of batch 100 (default 3000)")
    parser.add_argument("--eval-k", type=int, default=5000, help="L_k of the score (default 5000, the paper's)")
    parser.add_argument("--eval-n", type=int, default=500, help="test images scored (default 500)")
    parser.add_argument("--data-dir", help="where MNIST is (default $IWAE_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="50 steps, L_100 on 20 images: checks it all runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.eval_k, args.eval_n = 50, 100, 20
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    try:
        train = iwae.data.load("mnist", "train", args.data_dir)
    except iwae.data.DataNotFoundError as err:  # one line saying where to get it, not a traceback
        parser.exit(1, f"{parser.prog}: {err}\n")
    model = PlainVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(args.steps):  # the user's own loop, on the ELBO (k = 1)
        x = torch.bernoulli(train[torch.randint(len(train), (100,))])
        loss = -model.log_weights(x, 1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (i + 1) % 1000 == 0:
            print(f"step {i + 1:5d}  ELBO {-loss.item():8.2f}")

    test = iwae.data.load("mnist", "test", args.data_dir)
    x = torch.bernoulli(test[torch.arange(args.eval_n) * len(test) // args.eval_n])
    with torch.no_grad():
        elbo = iwae.bounds.elbo(model.log_weights(x, 100)).mean().item()  # E_q[log w], 100 draws
    ll = iwae.log_likelihood(model, x, args.eval_k)
    print(f"{len(ll)} test images: ELBO {elbo:.2f}, L_{args.eval_k} {ll.mean():.2f} ± {ll.std() / len(ll) ** 0.5:.2f}")
    print(f"test NLL (-L_{args.eval_k}): {-ll.mean():.2f}; the ELBO is {ll.mean() - elbo:.2f} nats looser")


if __name__ == "__main__":
    main()
