"""Adam over M runs' parameters stacked in one flat ``(M, P)`` tensor (:mod:`iwae.fleets.fleet`).

Adam (Kingma & Ba 2015, with the paper's settings of Section 5.1) is elementwise: the update of row m reads only
row m's gradient and moments, so one update of the stacked tensor is exactly M separate optimisers, each with its
own learning rate and step count. Its state goes to and from each run's ``torch.optim.Adam`` unchanged, so a
run's checkpoint is an ordinary one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["StackedAdam", "split_row"]


class StackedAdam:
    """Adam over a flat ``(M, P)`` tensor with a learning rate and a step count per run (the rows).

    The update of row m is torch's Adam (no weight decay, no amsgrad) for run m: elementwise, so the rows never
    mix. Its state round-trips to and from each run's ``torch.optim.Adam`` (:meth:`load`, :meth:`store`).
    """

    def __init__(self, flat: Tensor, betas: tuple[float, float], eps: float) -> None:
        self.flat, self.betas, self.eps = flat, betas, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)
        self.lr = torch.zeros_like(self.steps)
        self._lrs = [0.0] * flat.shape[0]  # the rates and step counts on the host: is one fused update enough?
        self._counts = [0] * flat.shape[0]
        self._step = torch.zeros((), dtype=torch.float32, device=flat.device)  # the common count, for torch's kernel
        self._fused = True  # until torch's fused kernel turns out to be missing for this device and dtype

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """The learning rate of each run from the next update on."""
        self._lrs = [float(lr) for lr in lrs]
        self.lr.copy_(torch.tensor(self._lrs, dtype=torch.float64).view(-1, 1))

    @property
    def uniform(self) -> bool:
        """Whether every run has the same learning rate and step count (then one fused kernel updates them all)."""
        return len(set(self._lrs)) == 1 and len(set(self._counts)) == 1

    @torch.no_grad()
    def step(self) -> None:
        """One update with ``self.flat.grad`` at the rates of :meth:`set_lrs`.

        Where every run has the same rate and step count: torch's own fused Adam kernel over the flat tensor, the
        very update each run's ``torch.optim.Adam(fused=True)`` makes of its parameters (one pass over memory).
        Otherwise Adam's formulas with a rate and a step count per row.
        """
        self._counts = [n + 1 for n in self._counts]
        self.steps += 1
        self._step += 1  # on the device: a CUDA graph replays the increment
        if self._fused and self.uniform and self._fused_step():
            return
        beta1, beta2 = self.betas
        grad = self.flat.grad
        bias1 = 1 - torch.pow(beta1, self.steps)
        bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, self.steps))
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt.to(grad.dtype)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * (self.lr / bias1).to(grad.dtype), denom, value=-1)

    def _fused_step(self) -> bool:
        """torch's fused Adam over the whole flat tensor; False where torch has no such kernel here."""
        try:
            torch._fused_adam_([self.flat], [self.flat.grad], [self.exp_avg], [self.exp_avg_sq], [], [self._step],
                               amsgrad=False, lr=self._lrs[0], beta1=self.betas[0], beta2=self.betas[1],
                               weight_decay=0.0, eps=self.eps, maximize=False)  # fmt: skip
        except (RuntimeError, NotImplementedError):
            self._fused = False
            return False
        return True

    def snapshot(self) -> tuple[list[Tensor], list[int]]:
        """Copies of the parameters and the whole state, to :meth:`restore` (around a CUDA graph's warm-up)."""
        tensors = (self.flat, self.exp_avg, self.exp_avg_sq, self.steps, self._step)
        return [t.detach().clone() for t in tensors], list(self._counts)

    @torch.no_grad()
    def restore(self, snapshot: tuple[list[Tensor], list[int]]) -> None:
        values, self._counts = snapshot[0], list(snapshot[1])
        for tensor, value in zip((self.flat, self.exp_avg, self.exp_avg_sq, self.steps, self._step), values):
            tensor.copy_(value)

    def sync_counts(self) -> None:
        """Set the fused kernel's step count from the rows' (after :meth:`load`)."""
        self._step.fill_(float(self._counts[0]))

    def load(self, m: int, opt: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
        """Row m from run m's optimiser (zeros before its first step)."""
        state = [opt.state.get(p, {}) for p in params]
        if state[0]:
            self.exp_avg[m] = torch.cat([s["exp_avg"].reshape(-1) for s in state])
            self.exp_avg_sq[m] = torch.cat([s["exp_avg_sq"].reshape(-1) for s in state])
            self.steps[m] = float(state[0]["step"])
            self._counts[m] = int(float(state[0]["step"]))

    def store(self, m: int, opt: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
        """Row m into run m's optimiser, in the form torch's Adam saves and loads."""
        if float(self.steps[m]) == 0:
            return
        step = torch.tensor(float(self.steps[m]), dtype=torch.float32, device=self.flat.device)
        for p, avg, avg_sq in zip(params, split_row(self.exp_avg[m], params), split_row(self.exp_avg_sq[m], params)):
            opt.state[p] = {"step": step.clone(), "exp_avg": avg.clone(), "exp_avg_sq": avg_sq.clone()}


def split_row(row: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """A flat (P,) row cut into tensors shaped like ``like``."""
    return [part.view_as(p) for part, p in zip(row.split([p.numel() for p in like]), like)]
