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

import sys
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
from iwae.util.imports import OwnCodeError, import_named, is_spec

__all__ = ["BOUNDS", "ESTIMATORS_BY_NAME", "KINDS", "ESTIMATORS", "PARAMS", "BOUND_PARAMS", "register_bound",
           "register_estimator", "resolve_own"]  # fmt: skip

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
    :param params: the bound parameters it reads beside those ``bound.params`` names, of those
        :data:`~iwae.objectives.names.PARAMS` declares (``m``, ``beta``, ``alpha``, ...), passed to ``value`` by
        name (``m`` for a ``grouped`` bound, always). A constant of its own is closed over (``functools.partial``,
        a lambda): a parameter that ``Objective`` and ``TrainConfig`` take as a field needs its declaration in
        ``PARAMS``, in the package.

    Registered by name, a bound is known to this process: a run folder, the command line and fleets name a bound of
    one's own as ``MODULE:NAME`` instead (``iwae train --bound my_bounds:tvo``), which :func:`resolve_own` imports
    and registers under that name wherever the run trains.
    """
    _check_name(name, "a bound", _BOUNDS)
    if not isinstance(bound, Bound):
        raise TypeError(f"register_bound takes an iwae.objectives.Bound (its value(log_w, k, params) and options), "
                        f"got {type(bound).__name__}")  # fmt: skip
    params = (params,) if isinstance(params, str) else tuple(params)
    params = tuple(dict.fromkeys(("m",) * bound.grouped + bound.params + params))  # (m: a grouped bound reads it)
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

    As with :func:`register_bound`, a name registered so is known to this process; run folders and the command line
    name an estimator of one's own as ``MODULE:NAME`` (:func:`resolve_own`). A fleet
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


def resolve_own(name: str, what: str) -> None:
    """Where ``name`` is ``MODULE:NAME`` of a bound (``what`` "bound") or an estimator ("estimator") not yet known:
    import the :class:`~iwae.objectives.base.Bound`, or the instance of an
    :class:`~iwae.objectives.base.Estimator` subclass, that it names and register it under ``name``, so that a run
    folder's ``config.json`` names code of one's own as it names the package's (:class:`~iwae.objectives.Objective`
    calls it). The module comes from the import path; being such an instance is what lets a config name it. A name
    known already is registered again where its module now holds another object (``importlib.reload``, a notebook
    cell run again for ``__main__:NAME``).

    :raises iwae.util.imports.OwnCodeError: (a ValueError) the module does not import, has no such name, or names
        something else.
    """
    known = _BOUNDS if what == "bound" else _ESTIMATORS
    if not is_spec(name) or (name in known and sys.modules.get(name.partition(":")[0]) is None):
        return  # (a name registered stays so without its module imported again)
    found = import_named(name, what)  # the object its module holds now: a new one after importlib.reload
    if known.get(name) is found:
        return
    got = f"the class {found.__name__}" if isinstance(found, type) else f"a {type(found).__name__}"
    if what == "bound" and not isinstance(found, Bound):
        raise OwnCodeError(f"bound {name}: {got}, not an iwae.objectives.Bound; name the Bound itself (tvo = "
                           "Bound(lambda log_w, k, params: ...) in that module)")  # fmt: skip
    if what == "estimator" and (isinstance(found, type) or not isinstance(found, Estimator)):
        raise OwnCodeError(f"estimator {name}: {got}, not an instance of an iwae.objectives.Estimator subclass; "
                           "name an instance (vimco = VIMCO() in that module)")  # fmt: skip
    before = known.pop(name, None)  # (registered again: a name is registered once)
    try:
        register_bound(name, found) if what == "bound" else register_estimator(name, found)
    except (TypeError, ValueError) as err:
        if before is not None:  # the object registered before stays (with its parameters, which failing leaves)
            known[name] = before
        raise OwnCodeError(f"{what} {name}: {err}") from None
