r"""The two parts of a training objective: a bound (its value) and an estimator (its gradient).

A :class:`Bound` is declared once, as data, in :mod:`iwae.objectives.registry`; an :class:`Estimator` is a small
class in a module of its own, as Pyro's ELBO subclasses each own their particle logic. Both are combined and
checked by :class:`iwae.objectives.Objective`.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from iwae.models.latent_model import GaussianLatentModel, SampledModel
from iwae.models.model import IWAE
from iwae.util import streams
from iwae.util.modes import eval_mode, forked_rng

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = [
    "Bound", "Estimator", "Noise", "RNG", "with_value", "weighted_sum", "detached_networks", "check_path_keywords",
]  # fmt: skip

Noise = Sequence[Tensor] | None  # standard-normal draws [eps^1, ..., eps^L] given from outside; None: draw them
RNG = torch.Generator | None  # source of the noise and of any other draw an estimator makes


class Estimator(ABC):
    r"""A gradient estimator: a surrogate loss whose value is minus the batch mean of the objective's bound and
    whose gradient is this estimator's estimate of minus the bound's gradient.

    A subclass implements :meth:`loss` and states which bounds it is defined for and whether ``torch.compile``
    can trace its loss.
    """

    # The bounds (kinds) it is defined for; None: every bound that :meth:`defined_for` admits (by default, all).
    bounds: ClassVar[tuple[str, ...] | None] = None
    # One forward pass on noise given from outside, no gradient hooks and no second pass: torch.compile traces it.
    compilable: ClassVar[bool] = False
    # It reads the model through forward_samples's stop_q_grad and sample_hook (STL, DReG, RWS): a model that ignored
    # them would give another gradient under this estimator's name, so :func:`check_path_keywords` probes it first.
    path_keywords: ClassVar[bool] = False

    def defined_for(self, name: str, bound: Bound) -> bool:
        """Whether it is defined for ``bound``, registered as ``name``: by default, whether :attr:`bounds` lists it.
        An estimator that needs something of the bound's declaration (DReG: its path weights) asks that instead."""
        return self.bounds is None or name in self.bounds

    @abstractmethod
    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        """Scalar surrogate loss on the (batch, x_dim) data ``x``.

        :param noise: standard-normal draws [eps^1, ..., eps^L], each (samples, batch, d_l), to use instead of
            drawing them from ``generator``.
        """


@dataclass(frozen=True)
class Bound:
    r"""A lower bound on log p(x) as a training objective sees it.

    :param value: the per-example bound, shape (batch,), from the (n, batch) log-weights, given k and the bound's
        parameters (a dict: those :data:`iwae.objectives.names.BOUND_PARAMS` names for it); a function of
        :mod:`iwae.bounds`.
    :param grouped: the bound reads m groups of k samples, n = m k (MIWAE, PIWAE); otherwise n = k, m unused.
    :param estimators: the only estimators it admits; None: every estimator defined for it.
    :param gradient: an estimator of its own that replaces the named one: PIWAE's value is one bound while its
        gradient routes two others to the two networks. It implements the ``estimators`` the bound must then list
        (reading ``objective.estimator``), which are admitted whatever the named estimators are defined for.
    :param path_weights: ``(c, f)`` from the same arguments as ``value``, each (n, batch), for the doubly
        reparameterised estimator (:mod:`iwae.objectives.dreg`): c_i = dL/d log w_i, the weight of grad log w_i,
        and f_i, the factor on sample i's path into the recognition network beside it (c_i f_i = c_i - dc_i/d log
        w_i). None: DReG is not defined for the bound.
    :param params: the bound parameters ``value`` reads, of those :data:`iwae.objectives.names.PARAMS` declares
        (``m``, ``beta``, ``alpha``, ...), for a bound of one's own (the package's are listed in
        :data:`~iwae.objectives.names.BOUND_PARAMS`); a grouped bound reads ``m`` whether it says so or not.
    """

    value: Callable[[Tensor, int, dict[str, float]], Tensor]
    grouped: bool = False
    estimators: tuple[str, ...] | None = None
    gradient: Estimator | None = None
    path_weights: Callable[[Tensor, int, dict[str, float]], tuple[Tensor, Tensor]] | None = None
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.gradient is not None and not self.estimators:
            raise ValueError("a bound that routes its gradient itself must list the estimators it implements")
        if isinstance(self.params, str) or not all(isinstance(p, str) for p in self.params):
            raise TypeError(f"a Bound's params are a tuple of parameter names, e.g. ('alpha',), got {self.params!r}")
        object.__setattr__(self, "params", tuple(self.params))

    def samples(self, k: int, m: int) -> int:
        """Samples per example: m groups of k for a grouped bound, else k."""
        return m * k if self.grouped else k


def with_value(surrogate: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    # Detached: the difference only shifts the forward value; no gradient may flow through ``value``.
    return surrogate + (value - surrogate).detach()


def weighted_sum(weights: Tensor, terms: Tensor) -> Tensor:
    """sum_i weights_i terms_i over the samples (dim 0), a term of weight zero adding nothing.

    A sample of weight zero (log w_i = -inf: a model whose p(x, h) vanishes there, or exp underflow) has a
    normalised weight of exactly 0; its term 0 * (-inf) would make the sum NaN. Here it adds neither value nor
    gradient, to ``terms`` or to ``weights``. (A model whose own backward pass meets an infinite derivative there,
    log(0) rather than a -inf set by ``torch.where``, can still give NaN gradients upstream of ``terms``.)"""
    return (weights * torch.where(weights != 0, terms, 0.0)).sum(0)


_PROBED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()  # forward_samples functions that passed the probe


def _in_func_transform() -> bool:
    """Whether this call runs inside a ``torch.func`` transform (vmap, grad, jvp)."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)  # (no public query in torch 2.13)
    return peek is not None and peek() is not None


def check_path_keywords(model: SampledModel, x: Tensor, estimator: str) -> None:
    """A TypeError where ``model``'s ``forward_samples`` ignores ``stop_q_grad`` or ``sample_hook``, which
    ``estimator`` reads the model through (:attr:`Estimator.path_keywords`): it would train on another gradient
    without a word.

    The probe, once per ``forward_samples`` function (the library's own models pass by construction): the encoder's
    gradient of the log-weights of one sample per example of ``x``, on one draw of noise, three ways. Holding q's
    parameters must change it (log q's score term goes), and so must the hook's detaching the sample (the path
    through the sample goes); a model that ignores a keyword gives the same gradient both ways. A term of log p
    that reaches the encoder by right (a VampPrior's pseudo-inputs, tied weights) is the same in both and cancels.
    It draws from a stream of its own, in eval mode (no dropout draws, no batch statistics updated), restores every
    module's mode, and leaves no gradient behind. Not probed (and asked again at the next call): a model whose
    encoder has nothing to train, a call under ``torch.inference_mode``, a compiled trace, and a call inside a
    ``torch.func`` transform (``vmap`` refuses the probe's own draw; per-example gradients of such a model are
    checked at its first call outside one).
    """
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or _in_func_transform():
        return
    fn = getattr(getattr(model, "forward_samples", None), "__func__", None)  # (a torch.compile wrapper's too)
    if fn is None or fn in (IWAE.forward_samples, GaussianLatentModel.forward_samples) or fn in _PROBED:
        return
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    if not encoder:
        return

    def encoder_grad(stop_q_grad: bool, hook: Callable[[Tensor], Tensor]) -> list[Tensor] | None:
        log_w = model.forward_samples(x, 1, noise=noise, stop_q_grad=stop_q_grad, sample_hook=hook).log_w
        if not log_w.requires_grad:
            return None
        found = torch.autograd.grad(log_w.sum(), encoder, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(found, encoder)]

    # a model's own global draws kept out of the run's stream
    with eval_mode(model), torch.enable_grad(), forked_rng(x.device):
        noise = model.draw_noise(1, x.shape[0], streams.generator(0, "probe", device=x.device))
        held = encoder_grad(True, torch.Tensor.detach)
        score = encoder_grad(False, torch.Tensor.detach) if held is not None else None
        path = encoder_grad(True, lambda h: h.view_as(h)) if held is not None else None
    if held is None or score is None or path is None:
        return
    ignored = [name for name, other in (("stop_q_grad", score), ("sample_hook", path))
               if all(torch.equal(a, b) for a, b in zip(held, other))]  # fmt: skip
    if ignored:
        raise TypeError(
            f"{type(model).__name__}.forward_samples ignores {' and '.join(ignored)}: the encoder's gradient is the "
            f"same with it as without it, so estimator {estimator!r} would train on another gradient than its own; "
            "honour both keywords (iwae.SampledModel's docstring), or train with estimator='reparam'"
        )
    _PROBED.add(fn)


def detached_networks(model: SampledModel, estimator: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Detached copies of the recognition and the generative network's parameters, by their names in ``model``
    (``encoder.*`` and ``decoder.*``), for an estimator that routes a gradient to each network apart (RWS, PIWAE);
    a ValueError names any parameter outside both, which such routing would give the wrong gradient, and a
    TypeError a model without ``forward`` (``torch.func.functional_call`` calls the model through it)."""
    if getattr(type(model), "forward", None) is torch.nn.Module.forward:
        raise TypeError(
            f"{estimator} calls {type(model).__name__} through torch.func.functional_call, which needs its forward: "
            "define forward(self, x, k, **kwargs) returning self.forward_samples(x, k, **kwargs)"
        )
    encoder = {f"encoder.{name}": p.detach() for name, p in model.encoder.named_parameters()}
    decoder = {f"decoder.{name}": p.detach() for name, p in model.decoder.named_parameters()}
    if len(encoder) + len(decoder) != sum(1 for _ in model.parameters()):
        other = [name for name, _ in model.named_parameters() if name not in encoder and name not in decoder]
        if other:
            raise ValueError(
                f"{estimator} routes gradients to model.encoder and model.decoder apart, but {', '.join(other[:3])} "
                "belong to neither; move them into one (a learnable prior into the decoder, say)"
            )
        raise ValueError(f"{estimator} routes gradients to model.encoder and model.decoder apart, but they share "
                         "parameters; give each network its own")  # fmt: skip
    return encoder, decoder
