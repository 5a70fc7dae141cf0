"""iwae: Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016), and what came after.

>>> import torch, iwae
>>> x = torch.bernoulli(torch.full((20, 784), 0.3))  # a batch of 20 binary 28x28 images
>>> m = iwae.IWAE.paper(layers=1)
>>> log_w = m.log_weights(x, k=50)            # (k, batch) log importance weights (Eq. 4)
>>> iwae.bounds.iwae(log_w).shape             # L_k per example (Eq. 8)
torch.Size([20])
>>> loss = iwae.objective(m, x, k=50, bound="iwae")   # gradient = Eq. 14
>>> iwae.log_likelihood(m, x, k=5000).shape   # the paper's test metric, per example
torch.Size([20])

The names below are imported on first use, so that ``import iwae`` (and the command line's ``--help``) does not
import torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.5.0"

__all__ = [
    "IWAE",
    "bounds",
    "data",
    "Objective",
    "objective",
    "make_train_step",
    "make_optimizer",
    "TrainConfig",
    "train_and_evaluate",
    "KINDS",
    "ESTIMATORS",
    "log_likelihood",
    "weight_diagnostics",
    "pareto_khat",
    "ais_log_likelihood",
    "bdmc",
    "BDMC",
    "Simulated",
    "LogWeights",
    "active_units",
    "count_active",
    "prune_inactive",
    "load_run",
    "LoadedRun",
    "GaussianLatentModel",
    "SampledModel",
    "model_builder",
    "pretrained",
]

# name -> module holding it (a module itself where the two are the same)
_LAZY = {
    "IWAE": "iwae.models.model", "bounds": "iwae.bounds", "data": "iwae.data", "Objective": "iwae.objectives",
    "objective": "iwae.objectives", "make_train_step": "iwae.runs.train_step", "make_optimizer": "iwae.runs.train_step",
    "TrainConfig": "iwae.runs.config", "train_and_evaluate": "iwae.runs.train",
    "KINDS": "iwae.objectives", "ESTIMATORS": "iwae.objectives", "log_likelihood": "iwae.evaluate",
    "weight_diagnostics": "iwae.analysis.diagnostics", "pareto_khat": "iwae.analysis.diagnostics",
    "ais_log_likelihood": "iwae.ais", "bdmc": "iwae.ais", "BDMC": "iwae.ais", "Simulated": "iwae.models.model",
    "LogWeights": "iwae.models.model",
    "active_units": "iwae.evaluate", "count_active": "iwae.evaluate", "prune_inactive": "iwae.evaluate",
    "load_run": "iwae.runs.sharing", "LoadedRun": "iwae.runs.sharing",
    "GaussianLatentModel": "iwae.models.latent_model", "SampledModel": "iwae.models.latent_model",
    "model_builder": "iwae.runs.own_model", "pretrained": "iwae.pretrained",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(_LAZY[name])
    return module if module.__name__ == f"iwae.{name}" else getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])  # the public names, not this module's own imports
