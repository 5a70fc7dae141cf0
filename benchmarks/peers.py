"""The implementations the benchmark times the project against, with the paper's architectures (Appendix C).

* :class:`Baseline`: the paper's scheme as most implementations write it, from scratch: ``x`` is replicated k
  times and every copy runs through the whole network (so the first recognition trunk runs k times per example,
  not once), ``nn.Sequential`` stacks, ``torch.distributions.Normal`` and ``Bernoulli`` objects for every density
  (with their default argument validation), and a plain ``torch.optim.Adam``.
* :class:`PyroIWAE` and :func:`pyro_step`: Pyro's ``RenyiELBO(alpha=0)`` (the IWAE bound) or ``Trace_ELBO`` (the
  VAE bound) with ``num_particles=k, vectorize_particles=True``, the same networks and Pyro's Adam, if ``pyro-ppl``
  is installed. :class:`PyroIWAE` also scores itself (``log_weights``) through Pyro's traces.

Both share the project's initialisation (Glorot uniform weights, zero biases) and optimiser settings (Section 5.1),
so the three implementations do the same arithmetic apart from what the scheme itself adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Normal

# (recognition trunks bottom-up, generative trunks top-down) as in iwae.IWAE.paper
LATENTS = {1: [50], 2: [100, 50]}
Q_HIDDEN = {1: [[200, 200]], 2: [[200, 200], [100, 100]]}
P_HIDDEN = {1: [[200, 200]], 2: [[100, 100], [200, 200]]}
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-4}


def _trunk(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    return nn.Sequential(*layers)


def _glorot(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class GaussianNet(nn.Module):
    """tanh trunk, then mean and log-std heads; returns a ``Normal``."""

    def __init__(self, n_in: int, hidden: list[int], n_out: int) -> None:
        super().__init__()
        self.trunk = _trunk([n_in, *hidden])
        self.mean = nn.Linear(hidden[-1], n_out)
        self.log_std = nn.Linear(hidden[-1], n_out)

    def forward(self, inp: Tensor) -> Normal:
        t = self.trunk(inp)
        return Normal(self.mean(t), self.log_std(t).exp())


class Networks(nn.Module):
    """q (bottom-up GaussianNets) and p (top-down GaussianNets, then a Bernoulli logits net)."""

    def __init__(self, layers: int, x_dim: int = 784) -> None:
        super().__init__()
        latent = LATENTS[layers]
        below = [x_dim, *latent[:-1]]
        self.q = nn.ModuleList(GaussianNet(below[l], Q_HIDDEN[layers][l], latent[l]) for l in range(layers))
        self.p = nn.ModuleList(
            GaussianNet(latent[l], P_HIDDEN[layers][j], latent[l - 1]) for j, l in enumerate(range(layers - 1, 0, -1))
        )
        self.px = nn.Sequential(_trunk([latent[0], *P_HIDDEN[layers][-1]]), nn.Linear(P_HIDDEN[layers][-1][-1], x_dim))
        _glorot(self)


class Baseline(Networks):
    """The straightforward IWAE: x replicated k times through everything, torch.distributions for every term."""

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        batch = x.shape[0]
        xk = x.repeat(k, 1)  # (k*batch, x_dim): sample i of example b is row i*batch + b
        inp, log_q, hs = xk, 0.0, []
        for net in self.q:
            q = net(inp)
            h = q.rsample()
            log_q = log_q + q.log_prob(h).sum(-1)
            hs.append(h)
            inp = h
        log_p = Normal(torch.zeros_like(hs[-1]), torch.ones_like(hs[-1])).log_prob(hs[-1]).sum(-1)
        for j, net in enumerate(self.p):
            l = len(hs) - 1 - j  # p(h^l | h^(l+1)) in 1-based terms: reads hs[l], scores hs[l-1]
            log_p = log_p + net(hs[l]).log_prob(hs[l - 1]).sum(-1)
        log_p = log_p + Bernoulli(logits=self.px(hs[0])).log_prob(xk).sum(-1)
        return (log_p - log_q).view(k, batch)


def baseline_step(layers: int, k: int, kind: str, device: torch.device) -> Callable[[Tensor], Tensor]:
    """One Adam update of the baseline per call, on the IWAE (Eq. 8) or k-sample VAE bound."""
    model = Baseline(layers).to(device)
    opt = torch.optim.Adam(model.parameters(), **ADAM)

    def step(x: Tensor) -> Tensor:
        opt.zero_grad()
        log_w = model.log_weights(x, k)
        bound = torch.logsumexp(log_w, 0) - math.log(k) if kind == "iwae" else log_w.mean(0)
        loss = -bound.mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def pyro_available() -> bool:
    try:
        import pyro  # noqa: F401
    except ImportError:
        return False
    return True


class PyroIWAE(Networks):
    """The paper's networks as a Pyro model and guide, with ``log_weights(x, k)`` for :func:`iwae.log_likelihood`.

    Every sample site sits in one ``data`` plate, so Pyro's ``RenyiELBO(alpha=0)`` forms L_k per example (Eq. 8):
    its log-weights keep the data dimension and the log-mean-exp runs over the particles alone.
    """

    def __init__(self, layers: int, x_dim: int = 784) -> None:
        super().__init__(layers, x_dim)
        self.layers, self.latent = layers, LATENTS[layers]

    def model(self, x: Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        pyro.module("p", self.p)
        pyro.module("px", self.px)
        with pyro.plate("data", x.shape[0], dim=-1):
            zeros = x.new_zeros((x.shape[0], self.latent[-1]))
            h = pyro.sample(f"h{self.layers}", dist.Normal(zeros, 1.0).to_event(1))
            for j, net in enumerate(self.p):
                h = pyro.sample(f"h{self.layers - 1 - j}", dist.Normal(*_params(net, h)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.px(h)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        pyro.module("q", self.q)
        with pyro.plate("data", x.shape[0], dim=-1):
            h = x
            for l, net in enumerate(self.q):
                h = pyro.sample(f"h{l + 1}", dist.Normal(*_params(net, h)).to_event(1))

    @torch.no_grad()
    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """(k, batch) log p(x, h_i) - log q(h_i | x), h_i ~ q: the guide traced in a particle plate, the model
        replayed on its samples, each site's log-density read from Pyro's trace (global torch RNG)."""
        import pyro
        from pyro import poutine

        with pyro.plate("particles", k, dim=-2):
            guide = poutine.trace(self.guide).get_trace(x)
            model = poutine.trace(poutine.replay(self.model, trace=guide)).get_trace(x)
        return _trace_log_prob(model) - _trace_log_prob(guide)


def _trace_log_prob(trace) -> Tensor:  # noqa: ANN001 (a pyro Trace)
    """Sum over the sample sites of a trace of their log-densities, each of shape (particles, batch)."""
    return sum(site["fn"].log_prob(site["value"]) for site in trace.nodes.values() if site["type"] == "sample")


def pyro_step(layers: int, k: int, kind: str, device: torch.device) -> Callable[[Tensor], float]:
    """One ``SVI.step`` per call: ``RenyiELBO(alpha=0)`` for bound="iwae", ``Trace_ELBO`` for "vae".

    Pyro vectorises the k particles as an outer plate, so its recognition network for h^1 also runs once per example.
    """
    import pyro
    from pyro.infer import SVI, RenyiELBO, Trace_ELBO

    pyro.clear_param_store()
    nets = PyroIWAE(layers).to(device)
    elbo_cls = RenyiELBO if kind == "iwae" else Trace_ELBO
    kwargs = {"alpha": 0.0} if kind == "iwae" else {}
    elbo = elbo_cls(num_particles=k, vectorize_particles=True, max_plate_nesting=1, **kwargs)
    svi = SVI(nets.model, nets.guide, pyro.optim.Adam(dict(ADAM)), elbo)
    return lambda x: svi.step(x) / x.shape[0]


def _params(net: GaussianNet, inp: Tensor) -> tuple[Tensor, Tensor]:
    t = net.trunk(inp)
    return net.mean(t), net.log_std(t).exp()
