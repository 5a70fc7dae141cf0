r"""A fleet: M independent runs of one architecture trained by one step.

At the paper's batch of 20 a model is tiny: one step is a few hundred small kernels, so on a GPU one run leaves the
device almost idle. A fleet trains M runs that share the architecture, the number of samples and the estimator
(they may differ in seed, data set and, sample counts agreeing, bound) as one computation:

* :class:`StackedFleet`: the M parameter sets live in one flat ``(M, P)`` tensor; the log-weights of all runs come
  from one ``torch.func.vmap`` of the model over its parameter views, each run's bound is applied to its own
  log-weights, the loss is the sum of the M runs' losses (so each run's gradient is its own) and
  :class:`StackedAdam` updates the flat tensor in a handful of kernels: Adam is elementwise, so this is exactly M
  separate optimisers, each with its own learning rate and step count. On CUDA the whole update can be captured
  as one CUDA graph (``graph=True``).
* :class:`LoopFleet`: the M ordinary steps of :func:`iwae.runs.train_step.build_step`, one after another: on a CPU,
  where stacking gains nothing (at batch 20 the step is real arithmetic, not overhead), and where vmap cannot
  carry the estimator (DReG's per-sample gradient hooks, sample-one's second pass, PIWAE's routing).

Each run keeps its own data order, binarisation and noise: its minibatch and its reparameterisation noise are drawn
from its own generators, in the order its own ``iwae train`` draws them, so a fleet gives each run the trajectory
of its single run (to float64 rounding; ``tests/test_fleet.py``). The runs' models and ``torch.optim.Adam``
optimisers stay the source of truth between steps that :meth:`Fleet.sync` writes back: a run's checkpoint is an
ordinary single-run checkpoint.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from iwae.fleets.stacked_adam import StackedAdam, split_row
from iwae.models.model import IWAE
from iwae.objectives import ESTIMATORS, KINDS, Objective
from iwae.runs.train_step import build_step
from iwae.util.cpu import flush_subnormals

__all__ = ["Fleet", "StackedFleet", "LoopFleet", "stackable", "make_fleet"]


class Fleet(ABC):
    """M runs stepped together: ``losses = fleet.step(xs, lrs)``, one loss per run (a detached (M,) tensor)."""

    def __init__(
        self,
        models: Sequence[IWAE],
        optimizers: Sequence[torch.optim.Optimizer],
        objectives: Sequence[Objective],
        generators: Sequence[torch.Generator],
        *,
        flush_denormal: bool = True,
    ) -> None:
        if not (len(models) == len(optimizers) == len(objectives) == len(generators) >= 1):
            raise ValueError("a fleet needs one model, optimiser, objective and generator per run, at least one run")
        self.models, self.optimizers = list(models), list(optimizers)
        self.objectives, self.generators = list(objectives), list(generators)
        self.flush_denormal = flush_denormal  # on a CPU, subnormal floats flushed to zero in the steps (iwae.util.cpu)

    def __len__(self) -> int:
        return len(self.models)

    @abstractmethod
    def step(self, xs: Sequence[Tensor], lrs: Sequence[float]) -> Tensor:
        """One update of every run: run m on its binary minibatch ``xs[m]`` at learning rate ``lrs[m]``."""

    @abstractmethod
    def sync(self) -> None:
        """Write the fleet's state into the runs' own models and optimisers (before a checkpoint)."""


@contextmanager
def _global_generator_from(own: torch.Generator) -> Iterator[None]:
    """torch's global generator on ``own``'s device continues ``own``'s stream inside the block; after it, ``own``
    holds where the stream got to and the global generator is put back."""
    device = own.device
    if device.type == "cuda":
        default = torch.cuda.default_generators[torch.cuda.current_device() if device.index is None else device.index]
    else:
        default = torch.default_generator
    saved = default.get_state()
    default.set_state(own.get_state())
    try:
        yield
    finally:
        own.set_state(default.get_state())
        default.set_state(saved)


class LoopFleet(Fleet):
    """The runs' ordinary steps (:func:`~iwae.runs.train_step.build_step`, through ``torch.compile`` with
    ``compile``), one after another; a single run is a loop fleet of one (:mod:`iwae.runs.train`)."""

    def __init__(
        self,
        models: Sequence[IWAE],
        optimizers: Sequence[torch.optim.Optimizer],
        objectives: Sequence[Objective],
        generators: Sequence[torch.Generator],
        *,
        flush_denormal: bool = True,
        compile: bool = False,
        global_generators: Sequence[torch.Generator | None] | None = None,
    ) -> None:
        """:param global_generators: per run, a generator whose state stands in for torch's global generator on its
        device during that run's step (code of one's own that draws from it: a model's dropout), or None."""
        super().__init__(models, optimizers, objectives, generators, flush_denormal=flush_denormal)
        self._globals = list(global_generators or [None] * len(self.models))
        if len(self._globals) != len(self.models):
            raise ValueError(f"global_generators holds {len(self._globals)} entries for {len(self.models)} runs: give "
                             "one per run (None for a run that needs none)")  # fmt: skip
        self._steps = [
            build_step(model, opt, obj, generator=gen, compile=compile, flush_denormal=flush_denormal)
            for model, opt, obj, gen in zip(self.models, self.optimizers, self.objectives, self.generators)
        ]

    def step(self, xs: Sequence[Tensor], lrs: Sequence[float]) -> Tensor:
        losses = []
        for step_fn, opt, x, lr, own in zip(self._steps, self.optimizers, xs, lrs, self._globals):
            for group in opt.param_groups:
                group["lr"] = lr
            if own is None:
                losses.append(step_fn(x))
            else:
                with _global_generator_from(own):
                    losses.append(step_fn(x))
        return torch.stack(losses)

    def sync(self) -> None:
        """Nothing to write back: the runs' own models and optimisers took the steps."""


class StackedFleet(Fleet):
    """The runs' parameters stacked in one flat tensor, their log-weights from one vmap, one :class:`StackedAdam`.

    Needs objectives whose loss is a function of the log-weights alone (the built-in estimators that are
    ``Objective.compilable``: reparam and stl), with one sample count and one estimator. ``graph=True`` (CUDA): the
    forward pass, the backward pass and Adam are captured once as a CUDA graph and replayed; the minibatches and the
    noise, drawn from the runs' own generators, are copied into its static inputs.
    """

    def __init__(
        self,
        models: Sequence[IWAE],
        optimizers: Sequence[torch.optim.Optimizer],
        objectives: Sequence[Objective],
        generators: Sequence[torch.Generator],
        *,
        graph: bool = False,
        flush_denormal: bool = True,
    ) -> None:
        super().__init__(models, optimizers, objectives, generators, flush_denormal=flush_denormal)
        why = stackable(self.models, self.objectives) or _adam_differs(self.optimizers)
        if why:
            raise ValueError(f"these runs cannot be stacked: {why}; step them in a loop (--fleet loop, mode='loop')")
        self._template = copy.deepcopy(self.models[0])
        self._names = [name for name, _ in self._template.named_parameters()]
        params = [list(model.parameters()) for model in self.models]
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in ps]) for ps in params]).requires_grad_()
        group = self.optimizers[0].param_groups[0]
        self.adam = StackedAdam(self.flat, tuple(group["betas"]), group["eps"])
        for m, (opt, ps) in enumerate(zip(self.optimizers, params)):
            self.adam.load(m, opt, ps)
        self.adam.sync_counts()
        self._n = self.objectives[0].samples_per_example
        self._stop_q_grad = self.objectives[0].stop_q_grad  # STL: one estimator per fleet (stackable)
        # The runs of each objective, as device indices (no host data during a CUDA graph capture); a single
        # objective needs none. ``_order`` puts the groups' losses back in run order.
        groups = _group_rows(self.objectives)
        device = self.flat.device
        self._by_bound = [(obj, torch.tensor(rows, device=device)) for obj, rows in groups] if len(groups) > 1 else []
        self._order = torch.tensor([m for _, rows in groups for m in rows], device=device).argsort()
        self._graphs: dict[torch.Size, Callable[[], Tensor]] = {}  # by batch shape: replay the captured step
        self._buffers: dict[torch.Size, tuple[Tensor, list[Tensor]]] = {}  # by batch shape: x and noise, stacked
        self._graph, self._lrs = graph, None
        # What the graph mode did: CUDA graphs captured, steps replayed from one, captures that failed (the fleet
        # then steps eagerly), and steps taken eagerly; a check reads them rather than trusting the mode asked for.
        self.graph_stats = {"captured": 0, "replayed": 0, "failed": 0, "eager_steps": 0}

    def _views(self) -> dict[str, Tensor]:
        """Each parameter of the architecture as an (M, ...) view of the flat tensor."""
        ps = list(self._template.parameters())
        cols = self.flat.split([p.numel() for p in ps], dim=1)
        return {name: col.view(len(self), *p.shape) for name, col, p in zip(self._names, cols, ps)}

    def _log_w(self, params: dict[str, Tensor], x: Tensor, noise: list[Tensor]) -> Tensor:
        out = torch.func.functional_call(
            self._template, params, (x, self._n), {"noise": noise, "stop_q_grad": self._stop_q_grad}
        )
        return out.log_w

    def _loss(self, x: Tensor, noise: list[Tensor]) -> Tensor:
        """The (M,) losses of stacked minibatches ``x`` (M, B, D) and noise (M, n, B, d_l); their sum backward."""
        log_w = torch.func.vmap(self._log_w)(self._views(), x, noise)  # (M, n, B)
        if not self._by_bound:
            return _run_losses(self.objectives[0], log_w)
        parts = [_run_losses(objective, log_w.index_select(0, rows)) for objective, rows in self._by_bound]
        return torch.cat(parts)[self._order]

    def _update(self, x: Tensor, noise: list[Tensor]) -> Tensor:
        self.flat.grad = None
        losses = self._loss(x, noise)
        losses.sum().backward()
        self.adam.step()
        return losses.detach()

    def _draw(self, xs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The minibatches stacked and each run's noise from its own generator (as its single step draws it),
        written straight into the fleet's buffers for this batch shape (a graph's static inputs: no copies, no
        stacks of separate draws; on a GPU, a step's launches are what it costs)."""
        shape = xs[0].shape
        if shape not in self._buffers:
            noise = [torch.empty(len(self), self._n, shape[0], d, device=xs[0].device, dtype=self.flat.dtype)
                     for d in self._template.latent_dims]  # fmt: skip
            self._buffers[shape] = (torch.empty(len(self), *shape, device=xs[0].device, dtype=xs[0].dtype), noise)
        x, noise = self._buffers[shape]
        torch.stack(list(xs), out=x)
        for m, (model, gen) in enumerate(zip(self.models, self.generators)):
            model.draw_noise(self._n, shape[0], gen, out=[layer[m] for layer in noise])
        return x, noise

    def step(self, xs: Sequence[Tensor], lrs: Sequence[float]) -> Tensor:
        if len({x.shape for x in xs}) != 1:  # a short last minibatch in some run: its own steps
            return self._ragged(xs, lrs)
        if self._lrs != list(lrs):  # a new stage in some run: graphs captured at the old rates are dropped
            self._lrs = list(lrs)
            self.adam.set_lrs(self._lrs)
            self._graphs.clear()
        x, noise = self._draw(xs)
        if not self._graph:
            self.graph_stats["eager_steps"] += 1
            with flush_subnormals(self.flush_denormal):
                return self._update(x, noise)
        if x.shape not in self._graphs:
            captured = self._capture(x, noise)
            self.graph_stats["failed" if captured is None else "captured"] += 1
            if captured is None:  # the fleet steps eagerly from here
                self._graph = False
                self.graph_stats["eager_steps"] += 1
                return self._update(x, noise)
            self._graphs[x.shape] = captured
        replay = self._graphs[x.shape]  # its static inputs are the buffers _draw has just filled
        self.graph_stats["replayed"] += 1
        return replay().clone()

    @property
    def mode_run(self) -> str:
        """The mode the steps actually ran in: "graph" only if every step so far replayed a captured graph."""
        stats = self.graph_stats
        return "graph" if stats["replayed"] and not stats["failed"] and not stats["eager_steps"] else "stacked"

    def _ragged(self, xs: Sequence[Tensor], lrs: Sequence[float]) -> Tensor:
        """Runs whose minibatches differ in size: step them apart (stack, split, restack), exactly; eager steps."""
        self.graph_stats["eager_steps"] += 1
        self.sync()
        losses = [self._single(m, x, lr) for m, (x, lr) in enumerate(zip(xs, lrs))]
        self._reload()
        return torch.stack(losses)

    def _single(self, m: int, x: Tensor, lr: float) -> Tensor:
        one = StackedFleet(
            [self.models[m]],
            [self.optimizers[m]],
            [self.objectives[m]],
            [self.generators[m]],
            flush_denormal=self.flush_denormal,
        )
        losses = one.step([x], [lr])
        one.sync()
        return losses[0]

    def _reload(self) -> None:
        with torch.no_grad():
            for m, model in enumerate(self.models):
                ps = list(model.parameters())
                self.flat[m] = torch.cat([p.reshape(-1) for p in ps])
                self.adam.load(m, self.optimizers[m], ps)
            self.adam.sync_counts()

    def _capture(self, x: Tensor, noise: list[Tensor]) -> Callable[[], Tensor] | None:
        """Record one update as a CUDA graph on the buffers ``x`` and ``noise`` (:meth:`_draw`'s, its static
        inputs; warmed up first); None, with a warning, where capture fails (the fleet then steps eagerly)."""
        static_x, static_noise = x, noise
        saved = self.adam.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up updates, undone below: lazy state (cuBLAS, autograd) is created
            for _ in range(3):
                self._update(static_x, static_noise)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.flat.grad = None
        try:
            with torch.cuda.graph(graph):
                static_losses = self._update(static_x, static_noise)
        except RuntimeError as err:  # an operation that cannot be captured: the same update, eagerly
            why = f"the fleet's step could not be captured as a CUDA graph ({err}); it runs eagerly"
            warnings.warn(why, stacklevel=3)
            return None
        finally:
            self.adam.restore(saved)

        def replay() -> Tensor:
            graph.replay()
            return static_losses

        return replay

    @torch.no_grad()
    def sync(self) -> None:
        for m, (model, opt) in enumerate(zip(self.models, self.optimizers)):
            ps = list(model.parameters())
            for p, value in zip(ps, split_row(self.flat[m], ps)):
                p.copy_(value)
            self.adam.store(m, opt, ps)


def _run_losses(objective: Objective, log_w: Tensor) -> Tensor:
    """Minus the batch-mean bound of each run, from (runs, n, B) log-weights (bounds act per column)."""
    runs, n = log_w.shape[:2]
    return -objective.per_example(log_w.transpose(0, 1).reshape(n, -1)).view(runs, -1).mean(1)


def _group_rows(objectives: Sequence[Objective]) -> list[tuple[Objective, list[int]]]:
    """The runs (rows) of each distinct objective, in first-seen order."""
    groups: dict[Objective, list[int]] = {}
    for m, objective in enumerate(objectives):
        groups.setdefault(objective, []).append(m)
    return list(groups.items())


def _adam_differs(optimizers: Sequence[torch.optim.Optimizer]) -> str | None:
    """Why the runs' Adams cannot be one StackedAdam (it holds one beta pair and one eps), or None."""
    settings = {(tuple(o.param_groups[0]["betas"]), o.param_groups[0]["eps"]) for o in optimizers}
    return "the runs' Adam optimisers differ in betas or eps" if len(settings) > 1 else None


def stackable(models: Sequence[IWAE], objectives: Sequence[Objective]) -> str | None:
    """Why these runs cannot share a :class:`StackedFleet`, or None if they can."""
    registered = sorted({o.estimator for o in objectives if o.estimator not in ESTIMATORS})
    if registered:  # its loss is its own; a stacked fleet computes the bound of the log-weights (reparam, stl)
        return f"estimator {', '.join(registered)} is one of one's own: its loss is its own, which a stacked " \
            "fleet does not call (a loop fleet does)"  # fmt: skip
    registered = sorted({o.bound for o in objectives if o.bound not in KINDS})
    if registered:  # (code the package has not seen inside a captured graph, its draws outside the runs' streams)
        return f"bound {', '.join(registered)} is one of one's own: a loop fleet steps it, each run's draws from " \
            "its own streams"  # fmt: skip
    if any(not obj.compilable for obj in objectives):
        names = sorted({f"{o.bound}/{o.estimator}" for o in objectives if not o.compilable})
        return f"the loss of {', '.join(names)} is not a function of the log-weights alone (vmap cannot carry it)"
    if len({obj.samples_per_example for obj in objectives}) > 1 or len({obj.estimator for obj in objectives}) > 1:
        return "the runs differ in their number of samples or their estimator"
    if any(not isinstance(model, IWAE) for model in models):  # vmap stacks the paper's layers' parameters
        return "a model of one's own is stepped by a loop fleet"
    if len({repr(model.config) for model in models}) > 1:
        return "the runs differ in architecture"
    if any(model.is_pruned for model in models):
        return "a model has pruned units"
    return None


def make_fleet(
    models: Sequence[IWAE],
    optimizers: Sequence[torch.optim.Optimizer],
    objectives: Sequence[Objective],
    generators: Sequence[torch.Generator],
    mode: str = "auto",
    *,
    flush_denormal: bool = True,
    global_generators: Sequence[torch.Generator | None] | None = None,
) -> Fleet:
    """A :class:`StackedFleet` or a :class:`LoopFleet` for these runs (``global_generators``: :class:`LoopFleet`'s).

    :param mode: ``"stacked"``, ``"loop"``, ``"graph"`` (stacked, CUDA-graph captured) or ``"auto"``: on CUDA the
        graph where the runs can be stacked, else loop; on a CPU loop, which is as fast as stacking there
        (``benchmarks/results/fleet.md``: 0.9-1.1x at batch 20) and gives each run its single run bit for bit.
    :param flush_denormal: on a CPU, flush subnormal floats to zero in the steps (:mod:`iwae.util.cpu`).
    :raises ValueError: for an unknown mode, or ``stacked``/``graph`` for runs that cannot be stacked.
    """
    if mode not in ("auto", "stacked", "loop", "graph"):
        raise ValueError(f"unknown fleet mode {mode!r}; choose auto, stacked, graph or loop")
    on_cuda = next(models[0].parameters()).device.type == "cuda"
    if mode == "graph" and not on_cuda:
        raise ValueError("fleet mode 'graph' captures a CUDA graph: it needs --device cuda")
    if mode == "auto":
        can = stackable(models, objectives) is None and _adam_differs(optimizers) is None
        mode = "graph" if on_cuda and can else "loop"
    if mode == "loop":
        return LoopFleet(models, optimizers, objectives, generators, flush_denormal=flush_denormal,
                         global_generators=global_generators)  # fmt: skip
    return StackedFleet(
        models, optimizers, objectives, generators, graph=mode == "graph", flush_denormal=flush_denormal
    )
