"""The paper's qualitative claims about Table 1, each with a criterion derived from the paper's own numbers.

A claim such as "IWAE improves with k while the VAE barely does" is only checkable with a stated rule. Each rule
here is the property as it shows in the paper's Table 1 (:data:`~iwae.experiments.paper_results.TABLE1`), with
its constants computed from those numbers, and the same verdict goes into ``report.md`` and ``results.json``:

* **IWAE improves with k**: its test NLL falls at each step k = 1 -> 5 -> 50, as in every IWAE row of Table 1.
* **the VAE barely improves with k**: the VAE's gain from k = 1 to 50 is at most :data:`VAE_GAIN_RATIO` times
  IWAE's gain, the largest such ratio in Table 1 (the paper's most generous case).
* **IWAE has more active units than the VAE** at k = 5 and 50: strictly more in total, as in every such cell.
* **two layers beat one**: a lower test NLL with two stochastic layers, as in every cell of Table 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from iwae.experiments.paper_results import TABLE1

__all__ = ["Claim", "CRITERIA", "VAE_GAIN_RATIO", "check_claims"]

KS = (1, 5, 50)
Cells = dict[tuple[int, int, str], dict | None]  # (layers, k, objective) -> a run's metrics, None if not done


def _paper_gain(dataset: str, layers: int, objective: str) -> float:
    return TABLE1[(dataset, layers, objective, 1)][0] - TABLE1[(dataset, layers, objective, 50)][0]


def _largest_vae_gain_ratio() -> tuple[float, str]:
    ratios = {}
    for dataset, layers in sorted({(d, n) for d, n, _, _ in TABLE1}):
        vae, iwae = _paper_gain(dataset, layers, "vae"), _paper_gain(dataset, layers, "iwae")
        ratios[f"{dataset}, {layers} layer{'s' if layers > 1 else ''}: VAE {vae:.2f}, IWAE {iwae:.2f} nats"] = (
            vae / iwae
        )
    where = max(ratios, key=ratios.get)
    return ratios[where], where


def _paper_margins(pairs: list[tuple[float, float]]) -> str:
    margins = [a - b for a, b in pairs]
    return f"{min(margins):.2f} to {max(margins):.2f}"


VAE_GAIN_RATIO, _RATIO_WHERE = _largest_vae_gain_ratio()
_DATA_LAYERS = sorted({(d, n) for d, n, _, _ in TABLE1})
_UNIT_MARGINS = [
    sum(TABLE1[(d, n, "iwae", k)][1]) - sum(TABLE1[(d, n, "vae", k)][1]) for d, n in _DATA_LAYERS for k in KS[1:]
]
_LAYER_MARGINS = _paper_margins(
    [
        (TABLE1[(d, 1, o, k)][0], TABLE1[(d, 2, o, k)][0])
        for d in ("mnist", "omniglot")
        for o in ("vae", "iwae")
        for k in KS
    ]
)

# Claim name -> its rule, in words, with the constants taken from the paper's Table 1.
CRITERIA: dict[str, str] = {
    "IWAE improves with k": "IWAE's test NLL falls at each step k = 1 -> 5 -> 50, as in every IWAE row of the "
    "paper's Table 1",
    "the VAE barely improves with k": f"the VAE's NLL gain from k = 1 to 50 is at most {VAE_GAIN_RATIO:.2f} times "
    f"IWAE's, the largest ratio in the paper's Table 1 ({_RATIO_WHERE})",
    "IWAE has more active units than the VAE": "more active units in total at the same k, as in every k > 1 cell "
    f"of the paper's Table 1 (by {min(_UNIT_MARGINS)} to {max(_UNIT_MARGINS)} units)",
    "two layers beat one": "a lower test NLL with two stochastic layers than with one, same objective and k, as in "
    f"every cell of the paper's Table 1 (by {_LAYER_MARGINS} nats)",
}


@dataclass(frozen=True)
class Claim:
    """One claim checked on one set of runs: which, where, the verdict and the numbers it rests on."""

    claim: str  # a key of CRITERIA
    dataset: str
    where: str  # e.g. "1 layer", "2 layers, k=5", "VAE, k=50"
    holds: bool
    evidence: str

    def markdown(self) -> str:
        verdict = "holds" if self.holds else "does not hold"
        return f"- {self.where}: {self.claim}: **{verdict}** ({self.evidence})."

    def as_dict(self) -> dict:
        return asdict(self)


def _units(m: dict) -> str:
    return "+".join(map(str, m["active_units"]))


def _per_depth(dataset: str, c: Cells) -> list[Claim]:
    out = []
    for layers in (1, 2):
        where = f"{layers} layer{'s' if layers > 1 else ''}"
        iwae = [c[(layers, k, "iwae")] for k in KS]
        vae = [c[(layers, k, "vae")] for k in KS]
        if all(iwae):
            nll = [m["test_nll"] for m in iwae]
            falls = all(b < a for a, b in zip(nll, nll[1:]))
            out.append(Claim("IWAE improves with k", dataset, where, falls, " -> ".join(f"{v:.2f}" for v in nll)))
        if all(iwae) and all(vae):
            gain_iwae = iwae[0]["test_nll"] - iwae[2]["test_nll"]
            gain_vae = vae[0]["test_nll"] - vae[2]["test_nll"]
            barely = gain_vae <= VAE_GAIN_RATIO * gain_iwae
            evidence = f"k=1 -> 50 gains VAE {gain_vae:+.2f} nats, IWAE {gain_iwae:+.2f} nats"
            out.append(Claim("the VAE barely improves with k", dataset, where, barely, evidence))
        for k in KS[1:]:
            v, i = c[(layers, k, "vae")], c[(layers, k, "iwae")]
            if v and i:
                more = sum(i["active_units"]) > sum(v["active_units"])
                evidence = f"IWAE {_units(i)} vs VAE {_units(v)}"
                out.append(Claim("IWAE has more active units than the VAE", dataset, f"{where}, k={k}", more, evidence))
    return out


def _per_cell(dataset: str, c: Cells) -> list[Claim]:
    out = []
    for k in KS:
        for obj in ("vae", "iwae"):
            one, two = c[(1, k, obj)], c[(2, k, obj)]
            if one and two:
                evidence = f"2 layers {two['test_nll']:.2f} vs 1 layer {one['test_nll']:.2f}"
                lower = two["test_nll"] < one["test_nll"]
                out.append(Claim("two layers beat one", dataset, f"{obj.upper()}, k={k}", lower, evidence))
    return out


def check_claims(dataset: str, cells: Cells) -> list[Claim]:
    """Every claim whose runs are all done, checked on one data set's table of runs."""
    return _per_depth(dataset, cells) + _per_cell(dataset, cells)
