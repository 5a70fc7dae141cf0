"""The paper's own numbers (Burda et al. 2016), as data to compare against: Table 1, Table 2, Table 3.

NLL in nats (the mean of -L_5000 on the test set); active units as a list per stochastic layer.
Keys: (dataset, layers, objective, k). At k = 1 the VAE and IWAE are the same algorithm, listed under both.
"""

from __future__ import annotations

__all__ = ["TABLE1", "TABLE2", "TABLE3", "OVERFIT_GAP"]

Key = tuple[str, int, str, int]
Entry = tuple[float, list[int]]  # NLL, active units per layer

_KS = (1, 5, 50)  # the columns of Tables 1 and 3


def _table(rows: dict[tuple[str, int, str], tuple[tuple[float, ...], tuple[list[int], ...]]]) -> dict[Key, Entry]:
    """``(dataset, layers, objective) -> (NLL per k, active units per k)``, k in :data:`_KS`, as one entry per k."""
    out: dict[Key, Entry] = {}
    for (dataset, layers, objective), (nlls, active) in rows.items():
        for k, nll, units in zip(_KS, nlls, active, strict=True):
            out[(dataset, layers, objective, k)] = (nll, units)
    return out


# Table 1: dynamically binarized MNIST and Omniglot. The paper prints different k = 1 numbers for its two-layer
# Omniglot VAE and IWAE.
TABLE1: dict[Key, Entry] = _table({
    ("mnist", 1, "vae"): ((86.76, 86.47, 86.35), ([19], [20], [20])),
    ("mnist", 1, "iwae"): ((86.76, 85.54, 84.78), ([19], [22], [25])),
    ("mnist", 2, "vae"): ((85.33, 85.01, 84.78), ([16, 5], [17, 5], [17, 5])),
    ("mnist", 2, "iwae"): ((85.33, 83.89, 82.90), ([16, 5], [21, 5], [26, 7])),
    ("omniglot", 1, "vae"): ((108.11, 107.62, 107.80), ([28], [28], [28])),
    ("omniglot", 1, "iwae"): ((108.11, 106.12, 104.67), ([28], [34], [41])),
    ("omniglot", 2, "vae"): ((107.58, 106.31, 106.30), ([28, 4], [30, 5], [30, 5])),
    ("omniglot", 2, "iwae"): ((107.56, 104.79, 103.38), ([30, 5], [38, 6], [44, 7])),
})  # fmt: skip

# Table 3 (Appendix D): the fixed binarization of MNIST (Larochelle & Murray 2011).
TABLE3: dict[Key, Entry] = _table({
    ("binarized-mnist", 1, "vae"): ((88.71, 88.83, 89.05), ([19], [19], [20])),
    ("binarized-mnist", 1, "iwae"): ((88.71, 87.63, 87.10), ([19], [22], [24])),
    ("binarized-mnist", 2, "vae"): ((88.08, 87.63, 87.86), ([16, 5], [17, 5], [17, 6])),
    ("binarized-mnist", 2, "iwae"): ((88.08, 86.17, 85.32), ([16, 5], [21, 5], [24, 7])),
})  # fmt: skip

# Table 2: one-layer MNIST models trained further for 3^7 passes at learning rate 1e-4 with the other objective.
# (first stage, second stage) -> ((NLL, active) after the first stage, (NLL, active) after the second).
TABLE2: dict[str, dict] = {
    "vae-then-iwae": {"first": ("vae", 1), "second": ("iwae", 50), "before": (86.76, [19]), "after": (84.88, [22])},
    "iwae-then-vae": {"first": ("iwae", 50), "second": ("vae", 1), "before": (84.78, [25]), "after": (86.02, [23])},
}

# Section 5.1: train minus test log-likelihood on MNIST and Omniglot (nats).
OVERFIT_GAP = {"mnist": (0.62, 0.79), "omniglot": (2.39, 2.65)}
