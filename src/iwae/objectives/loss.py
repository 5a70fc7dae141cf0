r"""A training objective as a value: a bound, its sample counts and a gradient estimator, checked once.

``Objective(bound="iwae", k=50, estimator="reparam")`` is validated at construction against the declarations of
:mod:`iwae.objectives.registry`; :meth:`Objective.loss` then returns a scalar whose *value* is minus the batch mean
of the bound and whose *gradient* is the estimator's. :func:`objective` is the same as one call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iwae.models.latent_model import SampledModel
from iwae.objectives.base import Bound, Estimator, check_path_keywords
from iwae.objectives.names import BOUND_PARAMS, PARAMS, as_count, declare_params
from iwae.objectives.registry import BOUNDS, ESTIMATORS_BY_NAME, resolve_own

__all__ = ["Objective", "objective", "resolve_bound"]


def _listed(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _bounds_for(estimator: str) -> list[str]:
    """The bounds ``estimator`` can train: those it is defined for, and those whose own gradient routing lists it."""
    named = ESTIMATORS_BY_NAME[estimator]

    def trains(name: str, spec: Bound) -> bool:
        if spec.gradient is not None:  # its own routing implements the estimators it lists (Bound checks the list)
            return estimator in (spec.estimators or ())
        return named.defined_for(name, spec)

    return [name for name, spec in BOUNDS.items() if trains(name, spec)]


@dataclass(frozen=True)
@declare_params(lambda name, param: param.default)
class Objective:
    """A bound to maximise and the estimator of its gradient, with their sample counts and the bounds' parameters.

    :param bound: the bound, one of :data:`~iwae.objectives.BOUNDS`: the built-in :data:`iwae.KINDS`, and those
        :func:`~iwae.objectives.register_bound` adds; or ``MODULE:NAME``, an :class:`~iwae.objectives.base.Bound`
        of one's own that :func:`~iwae.objectives.registry.resolve_own` imports.
    :param k: samples per example (inner samples for ``miwae``/``piwae``).
    :param estimator: the gradient estimator, one of :data:`~iwae.objectives.ESTIMATORS_BY_NAME`: the built-in
        :data:`iwae.ESTIMATORS`, and those :func:`~iwae.objectives.register_estimator` adds; or ``MODULE:NAME``, an
        instance of an :class:`~iwae.objectives.base.Estimator` subclass of one's own.

    Then one field per parameter of :data:`iwae.objectives.names.PARAMS`, in its order, each checked against its
    declared range and read only by the bounds that declare it: ``m`` (outer groups for ``miwae``/``piwae``,
    m*k samples in all), ``beta`` (ELBO weight for ``ciwae``), ``alpha`` (of the Rényi bound ``vr``).

    :raises ValueError: naming the first rule the combination breaks.
    """

    bound: str = "iwae"
    k: int = 50
    estimator: str = "reparam"

    @classmethod
    def from_config(cls, config: Any) -> Objective:
        """The objective of a :class:`iwae.runs.config.TrainConfig` (its ``bound``, ``k``, ``estimator`` and bound
        parameters)."""
        return cls(config.bound, config.k, config.estimator, **{name: getattr(config, name) for name in PARAMS})

    @property
    def params(self) -> dict[str, float]:
        """The parameters its bound reads (:data:`~iwae.objectives.names.BOUND_PARAMS`), by name."""
        return {name: getattr(self, name) for name in BOUND_PARAMS[self.bound]}

    @property
    def stop_q_grad(self) -> bool:
        """Whether its estimator reads log q with q's parameters detached (STL)."""
        return bool(getattr(self._estimator, "stop_q_grad", False))

    def __post_init__(self) -> None:
        resolve_own(self.bound, "bound")  # (MODULE:NAME: code of one's own, imported and registered by that name)
        resolve_own(self.estimator, "estimator")
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; choose one of {', '.join(BOUNDS)}")
        if self.estimator not in ESTIMATORS_BY_NAME:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS_BY_NAME)}")
        if (k := as_count(self.k)) is None:
            raise ValueError(f"k must be a positive integer number of samples, got {self.k!r}")
        object.__setattr__(self, "k", k)
        for name, param in PARAMS.items():  # its bound's parameters, and every count, in range; the rest typed
            value = getattr(self, name)
            if name in BOUND_PARAMS[self.bound] or param.integer:
                problem = param.problem(name, value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                problem = f"{name} must be a number, got {value!r}"
            else:
                problem = None
            if problem is not None:
                raise ValueError(problem)
            if name not in BOUND_PARAMS[self.bound] and value != param.default:
                readers = [b for b, names in BOUND_PARAMS.items() if name in names]
                warnings.warn(f"{name}={value!r} has no effect on bound={self.bound!r}: it is read by "
                              f"{' and '.join(readers)} only", stacklevel=3)  # fmt: skip
        admitted = self._spec.estimators  # the bound's own list first: it names the way out for that bound
        if admitted is not None and self.estimator not in admitted:
            use = " or ".join(repr(e) for e in admitted)
            raise ValueError(f"estimator {self.estimator!r} is not defined for bound={self.bound!r}; use {use}")
        defined_for = _bounds_for(self.estimator)
        if not defined_for:
            raise ValueError(f"estimator {self.estimator!r} is defined for no bound there is (its bounds: "
                             f"{ESTIMATORS_BY_NAME[self.estimator].bounds!r}); name registered bounds")  # fmt: skip
        if self.bound not in defined_for:
            names = [repr(b) for b in defined_for]
            listing = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            those = "that bound" if len(names) == 1 else "one of those bounds"
            raise ValueError(f"estimator {self.estimator!r} is defined for bound={listing} only, got "
                             f"bound={self.bound!r}; use {those}, or an estimator defined for {self.bound!r} (reparam "
                             "is)")  # fmt: skip

    @property
    def _spec(self) -> Bound:
        return BOUNDS[self.bound]

    @property
    def _estimator(self) -> Estimator:
        """The named estimator, or the bound's own gradient routing where it has one (PIWAE)."""
        return self._spec.gradient or ESTIMATORS_BY_NAME[self.estimator]

    @property
    def samples_per_example(self) -> int:
        """Samples drawn per example: m*k for ``miwae``/``piwae``, else k."""
        return self._spec.samples(self.k, self.m)

    @property
    def compilable(self) -> bool:
        """Whether ``torch.compile`` can trace the loss (one forward pass on noise drawn outside it)."""
        return self._estimator.compilable

    def check_compilable(self) -> None:
        """Raise ValueError naming what compile covers unless :attr:`compilable`."""
        if not self.compilable:
            names = [name for name, est in ESTIMATORS_BY_NAME.items() if est.compilable]
            kinds = [name for name, spec in BOUNDS.items() if spec.gradient is None]
            raise ValueError(
                f"compile is available for the {_listed(names)} estimators of the {_listed(kinds)} bounds, "
                f"not for estimator={self.estimator!r}, bound={self.bound!r}; train without compile"
            )

    def per_example(self, log_w: Tensor) -> Tensor:
        """The bound per example, shape (batch,), from (samples_per_example, batch) log-weights."""
        return self._spec.value(log_w, self.k, self.params)

    def path_weights(self, log_w: Tensor) -> tuple[Tensor, Tensor]:
        """Its bound's DReG weights ``(c, f)`` (:class:`~iwae.objectives.base.Bound`'s ``path_weights``) from
        (samples_per_example, batch) log-weights."""
        if self._spec.path_weights is None:
            raise ValueError(f"bound={self.bound!r} declares no path weights")
        return self._spec.path_weights(log_w, self.k, self.params)

    def loss(
        self,
        model: SampledModel,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Scalar loss to minimise: minus the batch mean of the bound, with the estimator's gradient.

        :param model: an :class:`~iwae.models.model.IWAE`, or any model of
            :class:`~iwae.models.latent_model.SampledModel`'s protocol.
        :param x: (batch, x_dim) binary (or real, for a Gaussian visible layer) data.
        :param generator: source of the reparameterisation noise (and of any other draw the estimator makes).
        :param noise: standard-normal draws [eps^1, ..., eps^L], each (samples_per_example, batch, d_l), to use
            instead of drawing them from ``generator``.
        """
        if ESTIMATORS_BY_NAME[self.estimator].path_keywords:
            check_path_keywords(model, x, self.estimator)
        return self._estimator.loss(model, x, self, generator, noise)


def objective(model: SampledModel, x: Tensor, k: int = 50, bound: str | None = None, estimator: str = "reparam", *,
              m: int = 1, beta: float = 0.5, generator: torch.Generator | None = None, kind: str | None = None,
              **params: float) -> Tensor:  # fmt: skip
    """Scalar loss to minimise: minus the batch mean of the ``bound`` (default ``"iwae"``), with ``estimator``'s
    gradient. ``kind`` is the former name of ``bound``, still accepted.

    The same as ``Objective(bound, k, estimator, m, beta, **params).loss(model, x, generator)``, ``params`` being
    the other bounds' parameters (``alpha=0.5``); see :class:`Objective`. ``x`` is checked first
    (:func:`iwae.evaluate.checked_batch`; its values where it lies on the CPU).
    """
    from iwae.evaluate import checked_batch  # (evaluate imports this package's names: not at import time)

    check_sampled_model(model)
    # the values on the CPU only: reading them on a GPU would make every call of a training loop wait for it
    x = checked_batch(model, x, stacklevel=3, values=x.device.type == "cpu")
    return Objective(resolve_bound(bound, kind), k, estimator, m=m, beta=beta, **params).loss(model, x, generator)


_PROTOCOL = ("forward_samples", "draw_noise", "encoder", "decoder", "latent_dims")  # what training reads of a model


def check_sampled_model(model: object) -> None:
    """A TypeError naming what ``model`` lacks of :class:`~iwae.models.latent_model.SampledModel`'s protocol, which
    training needs (scoring with :func:`iwae.log_likelihood` needs ``log_weights`` alone)."""
    missing = [name for name in _PROTOCOL if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks {', '.join(missing)} of the iwae.SampledModel protocol that training needs "
            "(iwae.GaussianLatentModel wraps an encoder and a decoder of your own into it)"
        )


def resolve_bound(bound: str | None, kind: str | None) -> str:
    """The bound named by ``bound`` or by its former keyword ``kind`` (``"iwae"`` if neither is given)."""
    if bound is not None and kind is not None and bound != kind:
        raise ValueError(f"bound={bound!r} and kind={kind!r} (the former name of bound) disagree; give bound alone")
    if kind is not None:
        warnings.warn("kind= is the former name of bound=; write bound=", DeprecationWarning, stacklevel=3)
    return bound or kind or "iwae"
