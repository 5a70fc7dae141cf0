"""iwae: Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016), and what came after.

>>> import torch, iwae
>>> x = torch.bernoulli(torch.full((20, 784), 0.3))  # a batch of 20 binary 28x28 images
>>> m = iwae.IWAE.paper(layers=1)
>>> log_w = m.log_weights(x, k=50)            # (k, batch) log importance weights (Eq. 4)
>>> iwae.bounds.iwae(log_w).shape             # L_k per example (Eq. 8)
torch.Size([20])
>>> loss = iwae.objective(m, x, k=50, kind="iwae")   # gradient = Eq. 14
>>> iwae.log_likelihood(m, x, k=5000).shape   # the paper's test metric, per example
torch.Size([20])
"""

from iwae import bounds, data
from iwae.evaluate import active_units, count_active, log_likelihood, prune_inactive
from iwae.model import IWAE
from iwae.objectives import ESTIMATORS, KINDS, Objective, objective
from iwae.train_step import make_optimizer, make_train_step

__version__ = "0.1.0"

__all__ = [
    "IWAE",
    "bounds",
    "data",
    "Objective",
    "objective",
    "make_train_step",
    "make_optimizer",
    "KINDS",
    "ESTIMATORS",
    "log_likelihood",
    "active_units",
    "count_active",
    "prune_inactive",
]
