r"""Training objectives: surrogate losses whose gradients are the paper's estimators and their successors.

An :class:`Objective` pairs a bound (``kind``: its value) with an estimator (its gradient) and is checked once:

==============  ==================================================================================================
``reparam``     Plain reparameterisation. For ``bound="vae"`` this is Eq. 7 (mean of the log-weight gradients), for
                ``bound="iwae"`` Eq. 14 (normalised-weight average, :math:`\sum_i \tilde w_i \nabla \log w_i`).
``sample-one``  Section 3.1: k forward passes without gradient, then one backward pass for one sample per example
                drawn with probability :math:`\tilde w_i`. Unbiased for Eq. 14's expectation. IWAE only.
``stl``         Sticking the landing (Roeder et al. 2017): log q is evaluated with q's parameters detached, so the
                score-function term :math:`-\nabla_\phi \log q_\phi(h)` at fixed h is dropped; the recognition
                network learns only through the samples. Decoder gradients are those of ``reparam``. For the IWAE
                bound with k > 1 the dropped term's expectation is not zero: STL is biased there (Tucker et al.
                2018), which ``dreg`` corrects.
``dreg``        Doubly reparameterised gradients (Tucker et al. 2018). Decoder: :math:`\sum_i \tilde w_i
                \nabla_\theta \log w_i`. Encoder: :math:`\sum_i \tilde w_i^2 \frac{\partial \log w_i}{\partial h_i}
                \frac{\partial h_i}{\partial \phi}` with log q's parameters detached. Unbiased for Eq. 8. Also for
                ``miwae`` (within each group of k), ``ciwae`` and ``vr``: the encoder's weight is
                :math:`c_i - \partial c_i / \partial \log w_i`, :math:`c_i` the bound's weight on
                :math:`\nabla \log w_i` (:mod:`~iwae.objectives.dreg`); and ``piwae``, whose encoder gets
                MIWAE's DReG gradient (:mod:`~iwae.objectives.piwae`).
``rws``         Reweighted wake-sleep (Bornschein & Bengio 2015): the decoder as Eq. 14, the encoder by the wake-phi
                update :math:`\sum_i \tilde w_i \nabla_\phi \log q_\phi(h_i \mid x)` at the samples held fixed.
                IWAE only.
``rws-dreg``    RWS with the wake-phi update doubly reparameterised (Tucker et al. 2018): the encoder by
                :math:`\sum_i (\tilde w_i - \tilde w_i^2) \frac{\partial \log w_i}{\partial h_i}
                \frac{\partial h_i}{\partial \phi}`, the same expectation as ``rws``'s, typically with lower
                variance; the decoder as Eq. 14. IWAE only.
==============  ==================================================================================================

Bounds (``kind``): ``vae`` (Eq. 3, k samples), ``iwae`` (Eq. 8), and Rainforth et al. (2018)'s ``miwae``
(``m`` outer groups of k samples), ``ciwae`` (``beta`` * ELBO + (1 - beta) * IWAE over k samples) and
``piwae`` (decoder trained on the IWAE bound of all m*k samples, encoder on the MIWAE bound), and Li & Turner
(2016)'s variational Rényi bound ``vr`` (``alpha``).

Layout: :mod:`~iwae.objectives.base` (the :class:`Bound` record and the :class:`Estimator` base class),
one module per estimator (:mod:`~iwae.objectives.reparam` with STL, :mod:`~iwae.objectives.sample_one`,
:mod:`~iwae.objectives.dreg`, :mod:`~iwae.objectives.rws`, PIWAE's routing in :mod:`~iwae.objectives.piwae`),
every bound and estimator
declared once in :mod:`~iwae.objectives.registry`, and :mod:`~iwae.objectives.loss` (:class:`Objective`).
A new estimator is a module of its own, one entry in the registry and its name in ``names``; from outside the
package, :func:`~iwae.objectives.registry.register_bound` and :func:`~iwae.objectives.registry.register_estimator` add
a bound or an estimator for the Python API, and ``MODULE:NAME`` names one anywhere a bound or an estimator is named
(``iwae train --bound my_bounds:tvo``, a run folder's config): :func:`~iwae.objectives.registry.resolve_own` imports
it.

Only the names (:mod:`~iwae.objectives.names`) are imported with the package; the rest, which needs torch, on
first use.
"""

from importlib import import_module
from typing import Any

from iwae.objectives.names import ESTIMATORS, KINDS

__all__ = [
    "Objective", "objective", "KINDS", "ESTIMATORS", "Bound", "Estimator", "BOUNDS", "ESTIMATORS_BY_NAME",
    "register_bound", "register_estimator",
]  # fmt: skip

_LAZY = {"Objective": "loss", "objective": "loss", "Bound": "base", "Estimator": "base", "BOUNDS": "registry",
         "ESTIMATORS_BY_NAME": "registry", "register_bound": "registry",
         "register_estimator": "registry"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"iwae.objectives.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
