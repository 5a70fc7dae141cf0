r"""Every bound and every estimator, declared once; :class:`iwae.objectives.Objective` checks against these.

Bounds (``kind``): ``vae`` (Eq. 3, k samples), ``iwae`` (Eq. 8), Rainforth et al. (2018)'s ``miwae`` (m outer
groups of k samples), ``ciwae`` (beta ELBO + (1 - beta) IWAE over k samples) and ``piwae`` (value IWAE of all m k
samples; decoder trained on that IWAE bound, encoder on the MIWAE bound of m groups of k), and Li & Turner
(2016)'s Rényi bound ``vr`` (alpha 0: IWAE; towards 1: the ELBO). A bound's parameters are declared in
:mod:`iwae.objectives.names`.

Estimators: ``reparam`` (Eq. 7, Eq. 14), ``sample-one`` (Section 3.1), ``stl`` (Roeder et al. 2017), ``dreg``
(Tucker et al. 2018; for each bound that declares its ``path_weights``: iwae, miwae, ciwae, vr; and piwae, whose
routing gives its encoder MIWAE's), ``rws``
(reweighted wake-sleep, Bornschein & Bengio 2015, with Le et al. 2019's wake-phi), ``rws-dreg`` (RWS with Tucker et
al. 2018's doubly reparameterised wake-phi update). An estimator states the bounds it is defined for; a bound may
admit fewer, or, routing its gradient itself (PIWAE), implement the estimators it lists. Their names, ``KINDS`` and
``ESTIMATORS``, are listed in :mod:`iwae.objectives.names` too, for the command line without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from iwae import bounds
from iwae.objectives import dreg
from iwae.objectives.base import Bound, Estimator
from iwae.objectives.dreg import DReG, RWSDReG
from iwae.objectives.names import BOUND_PARAMS, ESTIMATORS, KINDS, PARAMS
from iwae.objectives.piwae import PIWAERouting
from iwae.objectives.reparam import Reparam, StickingTheLanding
from iwae.objectives.rws import ReweightedWakeSleep
from iwae.objectives.sample_one import SampleOne

__all__ = ["BOUNDS", "ESTIMATORS_BY_NAME", "KINDS", "ESTIMATORS", "PARAMS", "BOUND_PARAMS", "register_bound",
           "register_estimator"]  # fmt: skip

_BOUNDS: dict[str, Bound] = {
    "vae": Bound(lambda log_w, k, p: bounds.elbo(log_w)),
    "iwae": Bound(lambda log_w, k, p: bounds.iwae(log_w), path_weights=dreg.iwae_path_weights),
    "miwae": Bound(lambda log_w, k, p: bounds.miwae(log_w, k), grouped=True, path_weights=dreg.miwae_path_weights),
    "ciwae": Bound(lambda log_w, k, p: bounds.ciwae(log_w, p["beta"]), path_weights=dreg.ciwae_path_weights),
    "piwae": Bound(
        lambda log_w, k, p: bounds.iwae(log_w),
        grouped=True,
        estimators=("reparam", "dreg"),
        gradient=PIWAERouting(),
    ),
    "vr": Bound(lambda log_w, k, p: bounds.vr(log_w, p["alpha"]), path_weights=dreg.vr_path_weights),
}
BOUNDS: Mapping[str, Bound] = MappingProxyType(_BOUNDS)  # read-only: register_bound adds to it


def _check_name(name: object, what: str, taken: Mapping[str, object]) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{what}'s name must be a non-empty string without spaces, got {name!r}")
    if name in taken:
        raise ValueError(f"{what} named {name!r} exists already; choose another name")


def register_bound(name: str, bound: Bound, params: Sequence[str] = ()) -> None:
    """Make ``bound`` an objective of the Python API under ``name``: :class:`~iwae.objectives.Objective`,
    :func:`iwae.objective` and :func:`iwae.make_train_step` take it, with every estimator defined for it (reparam
    and STL always; DReG where it declares ``path_weights``; :meth:`Estimator.defined_for` decides).

    :param bound: its ``value(log_w, k, params)``, the per-example bound from (n, batch) log-weights, and what else
        :class:`~iwae.objectives.base.Bound` declares.
    :param params: the bound parameters it reads, of those :data:`~iwae.objectives.names.PARAMS` declares (``m``,
        ``beta``, ``alpha``, ...), passed to ``value`` by name (``m`` for a ``grouped`` bound, always). A constant of
        its own is closed over (``functools.partial``, a lambda): a parameter that ``Objective`` and ``TrainConfig``
        take as a field needs its declaration in ``PARAMS``, in the package.

    The command line, run folders and fleets know the built-in bounds only (their config is checked against
    :data:`~iwae.objectives.names.KINDS` as it is parsed): a registered bound is trained from Python.
    """
    _check_name(name, "a bound", _BOUNDS)
    if not isinstance(bound, Bound):
        raise TypeError(f"register_bound takes an iwae.objectives.Bound (its value(log_w, k, params) and options), "
                        f"got {type(bound).__name__}")  # fmt: skip
    params = (params,) if isinstance(params, str) else tuple(params)
    if bound.grouped and "m" not in params:  # m groups of k samples: it reads m, whether its value does or not
        params = ("m", *params)
    unknown = [p for p in params if p not in PARAMS]
    if unknown:
        raise ValueError(f"unknown bound parameter(s) {', '.join(map(repr, unknown))}; a bound reads those "
                         f"iwae.objectives.names.PARAMS declares: {', '.join(PARAMS)}")  # fmt: skip
    BOUND_PARAMS[name] = params
    _BOUNDS[name] = bound


_ESTIMATORS: dict[str, Estimator] = {
    "reparam": Reparam(),
    "sample-one": SampleOne(),
    "stl": StickingTheLanding(),
    "dreg": DReG(),
    "rws": ReweightedWakeSleep(),
    "rws-dreg": RWSDReG(),
}
ESTIMATORS_BY_NAME: Mapping[str, Estimator] = MappingProxyType(_ESTIMATORS)  # read-only: register_estimator adds


def register_estimator(name: str, estimator: Estimator) -> None:
    """Make ``estimator`` a gradient estimator of the Python API under ``name``: :class:`~iwae.objectives.Objective`,
    :func:`iwae.objective`, :func:`iwae.make_train_step` and :func:`iwae.analysis.snr.gradient_snr` take it, for
    the bounds it is defined for.

    :param estimator: an instance of a subclass of :class:`~iwae.objectives.base.Estimator`: its ``loss(model, x,
        objective, generator, noise)``, a scalar whose value is minus the batch-mean bound and whose gradient is
        the estimate; its ``bounds`` (or ``defined_for``), ``compilable`` and ``path_keywords``. A bound that lists
        the estimators it admits (PIWAE) keeps to its list.

    As with :func:`register_bound`, the command line and run folders know the built-in estimators only. A fleet
    (:func:`iwae.fleets.make_fleet`) steps it in its loop mode; a stacked fleet computes the built-in reparam and
    STL losses only, and refuses it. ``compilable = True`` lets ``make_train_step(..., compile=True)`` trace its
    loss: one forward pass on noise given from outside, no second pass.
    """
    _check_name(name, "an estimator", _ESTIMATORS)
    if isinstance(estimator, type) or not isinstance(estimator, Estimator):
        what = f"the class {estimator.__name__}: pass an instance" if isinstance(estimator, type) else \
            type(estimator).__name__  # fmt: skip
        raise TypeError(f"register_estimator takes an instance of a subclass of iwae.objectives.Estimator (its "
                        f"loss(model, x, objective, generator, noise)), got {what}")  # fmt: skip
    listed = estimator.bounds
    if listed is not None and (not isinstance(listed, tuple) or not all(isinstance(b, str) for b in listed)):
        raise TypeError(f"{type(estimator).__name__}.bounds must be None (every bound) or a tuple of bound names, "
                        f"got {listed!r}")  # fmt: skip
    _ESTIMATORS[name] = estimator
