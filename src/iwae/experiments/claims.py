"""The paper's qualitative claims about Table 1, each with a criterion derived from the paper's own numbers.

A claim such as "IWAE improves with k while the VAE barely does" is only checkable with a stated rule. Each rule
here is the property as it shows in the paper's Table 1 (:data:`~iwae.experiments.paper_results.TABLE1`), with
its constants computed from those numbers, and the same verdict goes into ``report.md`` and ``results.json``:

* **IWAE improves with k**: its test NLL falls at each step k = 1 -> 5 -> 50, as in every IWAE row of Table 1.
* **the VAE barely improves with k**: the VAE's gain from k = 1 to 50 is at most :data:`VAE_GAIN_RATIO` times
  IWAE's gain, the largest such ratio in Table 1 (the paper's most generous case).
* **IWAE has more active units than the VAE** at k = 5 and 50: strictly more in total, as in every such cell.
* **two layers beat one**: a lower test NLL with two stochastic layers, as in every cell of Table 1.

With several seeds per run (:mod:`iwae.experiments.seeds`) a claim is decided on the seeds' means, and a comparison
whose runs all hold two seeds or more is neither held nor failed where its difference is smaller than twice its
standard error (:data:`SPREAD_RULE`): its verdict is :data:`WITHIN_SPREAD` (``holds`` None, null in results.json).
A comparison resting on a run of one seed has no measure of its noise (the seeds' spread of an NLL is about 0.4
nats at the short schedule), so it is neither held nor failed either: its verdict is :data:`ONE_SEED`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

from iwae.experiments.paper_results import TABLE1
from iwae.experiments.seeds import n_seeds, restrict, unit_totals, units_text

__all__ = ["Claim", "CRITERIA", "SPREAD_RULE", "VAE_GAIN_RATIO", "WITHIN_SPREAD", "ONE_SEED", "check_claims"]

KS = (1, 5, 50)
Cells = dict[tuple[int, int, str], dict | None]  # (layers, k, objective) -> a run's metrics, None if not done
WITHIN_SPREAD = "within the seeds' spread"  # the verdict of a claim neither held nor failed by its seeds' means
ONE_SEED = "undecided: one seed, no measure of its noise"  # the verdict of a claim resting on a run of one seed


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
SPREAD_RULE = (
    "with several seeds per run a claim is decided on the seeds' means; where every run a comparison rests on holds "
    f"two seeds or more, a difference smaller than twice its standard error is **{WITHIN_SPREAD}**, neither held nor "
    "failed (`holds`: null in results.json). The standard error is that of the per-seed differences where the runs "
    "share their seeds (a seed's runs are scored on the same binarization of the same images: paired), else it "
    "comes from each run's seeds' sample standard deviation. A comparison resting on a run of one seed has no "
    f"measure of its noise: it is **{ONE_SEED}**, whatever its difference (`holds`: null, `measured`: false)"
)


@dataclass(frozen=True)
class Claim:
    """One claim checked on one set of runs: which, where, the verdict and the numbers it rests on."""

    claim: str  # a key of CRITERIA
    dataset: str
    where: str  # e.g. "1 layer", "2 layers, k=5", "VAE, k=50"
    holds: bool | None  # None: within the seeds' spread, or undecided on one seed
    evidence: str
    measured: bool = True  # whether the difference has a standard error (every run compared holds two seeds)

    @property
    def verdict(self) -> str:
        """ "holds", "does not hold", :data:`WITHIN_SPREAD` or :data:`ONE_SEED`."""
        if self.holds is None:
            return WITHIN_SPREAD if self.measured else ONE_SEED
        return "holds" if self.holds else "does not hold"

    def markdown(self) -> str:
        return f"- {self.where}: {self.claim}: **{self.verdict}** ({self.evidence})."

    def as_dict(self) -> dict:
        return asdict(self)


def _se(terms: list[tuple[float, dict]], what: str = "nll") -> float | None:
    """The standard error of sum(c * cell mean) over ``terms`` (c, cell), what being "nll" (test NLL) or "units"
    (total active units); None unless every cell holds two seeds or more. A cell named twice (the k = 1 run, shared
    by the VAE and IWAE) is counted once. Where every cell holds the same seeds the combination is paired by seed
    (runs of one seed are scored on the same binarization of the same images, with the same evaluation noise): the
    standard error of the mean of the per-seed combinations. Otherwise the cells' seeds count as independent."""
    groups: list[list] = []
    for c, m in terms:
        same = next((g for g in groups if g[1] == m), None)
        if same:
            same[0] += c
        else:
            groups.append([c, m])
    groups = [g for g in groups if g[0] != 0]
    if any(n_seeds(m) < 2 for _, m in groups):
        return None
    values = [(c, m["test_nll_seeds"] if what == "nll" else unit_totals(m)) for c, m in groups]
    if all(m["seeds"] == groups[0][1]["seeds"] for _, m in groups):
        per_seed = [sum(c * v[s] for c, v in values) for s in range(len(values[0][1]))]
        return statistics.stdev(per_seed) / math.sqrt(len(per_seed))
    return math.sqrt(sum(c * c * statistics.variance(v) / len(v) for c, v in values))


def _decide(holds: bool, diff: float, se: float | None) -> bool | None:
    """The verdict on the means, None (within the seeds' spread) where |diff| < 2 standard errors."""
    return None if se is not None and abs(diff) < 2 * se else holds


def _diff(diff: float, se: float | None, digits: int = 2) -> str:
    return f"{diff:+.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _improves(dataset: str, where: str, iwae: list[dict], note: str = "") -> Claim:
    nll = [m["test_nll"] for m in iwae]
    steps = []  # (difference, its standard error, verdict) for k = 1 -> 5 and 5 -> 50
    for a, b in zip(iwae, iwae[1:]):
        diff, se = b["test_nll"] - a["test_nll"], _se([(1, b), (-1, a)])
        steps.append((diff, se, _decide(b["test_nll"] < a["test_nll"], diff, se)))
    verdicts = [verdict for _, _, verdict in steps]
    holds = False if False in verdicts else None if None in verdicts else True
    evidence = " -> ".join(f"{v:.2f}" for v in nll)
    if any(se is not None for _, se, _ in steps):
        evidence += "; steps " + ", ".join(_diff(d, se) for d, se, _ in steps) + " nats"
    measured = all(se is not None for _, se, _ in steps)
    return Claim("IWAE improves with k", dataset, where, holds, evidence + note, measured)


def _barely(dataset: str, where: str, iwae: list[dict], vae: list[dict], note: str = "") -> Claim:
    gain_iwae = iwae[0]["test_nll"] - iwae[2]["test_nll"]
    gain_vae = vae[0]["test_nll"] - vae[2]["test_nll"]
    excess = gain_vae - VAE_GAIN_RATIO * gain_iwae
    se = _se([(1, vae[0]), (-1, vae[2]), (-VAE_GAIN_RATIO, iwae[0]), (VAE_GAIN_RATIO, iwae[2])])
    holds = _decide(gain_vae <= VAE_GAIN_RATIO * gain_iwae, excess, se)
    evidence = f"k=1 -> 50 gains VAE {gain_vae:+.2f} nats, IWAE {gain_iwae:+.2f} nats"
    if se is not None:
        evidence += f"; VAE's gain minus {VAE_GAIN_RATIO:.2f} times IWAE's: {_diff(excess, se)} nats"
    return Claim("the VAE barely improves with k", dataset, where, holds, evidence + note, se is not None)


def _more_units(dataset: str, where: str, i: dict, v: dict, note: str = "") -> Claim:
    diff = sum(i["active_units"]) - sum(v["active_units"])
    se = _se([(1, i), (-1, v)], "units")
    holds = _decide(sum(i["active_units"]) > sum(v["active_units"]), diff, se)
    evidence = f"IWAE {units_text(i)} vs VAE {units_text(v)}"
    if se is not None:
        evidence += f"; difference {_diff(diff, se, 1)} units"
    return Claim("IWAE has more active units than the VAE", dataset, where, holds, evidence + note, se is not None)


Aligned = Callable[[list[dict]], tuple[list[dict], str]]  # cells -> the cells on their common seeds, a note


def _per_depth(dataset: str, c: Cells, aligned: Aligned) -> list[Claim]:
    out = []
    for layers in (1, 2):
        where = f"{layers} layer{'s' if layers > 1 else ''}"
        iwae = [c[(layers, k, "iwae")] for k in KS]
        vae = [c[(layers, k, "vae")] for k in KS]
        if all(iwae):
            out.append(_improves(dataset, where, *aligned(iwae)))
        if all(iwae) and all(vae):
            both, note = aligned(iwae + vae)
            out.append(_barely(dataset, where, both[:3], both[3:], note))
        for k in KS[1:]:
            v, i = c[(layers, k, "vae")], c[(layers, k, "iwae")]
            if v and i:
                (i, v), note = aligned([i, v])
                out.append(_more_units(dataset, f"{where}, k={k}", i, v, note))
    return out


def _per_cell(dataset: str, c: Cells, aligned: Aligned) -> list[Claim]:
    out = []
    for k in KS:
        for obj in ("vae", "iwae"):
            one, two = c[(1, k, obj)], c[(2, k, obj)]
            if one and two:
                (one, two), note = aligned([one, two])
                evidence = f"2 layers {two['test_nll']:.2f} vs 1 layer {one['test_nll']:.2f}"
                se = _se([(1, two), (-1, one)])
                if se is not None:
                    evidence += f"; difference {_diff(two['test_nll'] - one['test_nll'], se)} nats"
                lower = _decide(two["test_nll"] < one["test_nll"], two["test_nll"] - one["test_nll"], se)
                where = f"{obj.upper()}, k={k}"
                out.append(Claim("two layers beat one", dataset, where, lower, evidence + note, se is not None))
    return out


def check_claims(dataset: str, cells: Cells, plain_seed: int = 0, *, judge_one_seed: bool = False) -> list[Claim]:
    """Every claim whose runs are all done, checked on one data set's table of runs.

    Each comparison reads its runs on the seeds they all hold (a plain run folder holds ``plain_seed``, the
    reproduction's seed): a seed's runs are scored on the same binarization of the same images, so a mean over
    three seeds set against one seed's run would mix that seed's luck into the difference. A comparison resting
    on a run of one seed is :data:`ONE_SEED`, unless ``judge_one_seed`` (numbers taken as exact, such as the
    paper's own Table 1, against which the criteria are checked).
    """
    aligned = functools.partial(_aligned, plain_seed=plain_seed)
    claims = _per_depth(dataset, cells, aligned) + _per_cell(dataset, cells, aligned)
    return claims if judge_one_seed else [c if c.measured else dataclasses.replace(c, holds=None) for c in claims]


def _aligned(cells: list[dict], plain_seed: int) -> tuple[list[dict], str]:
    """The cells on their common seeds, and a note naming those seeds where some cell lost seeds to it."""
    held = [c.get("seeds", [plain_seed]) for c in cells]
    common = [seed for seed in held[0] if all(seed in h for h in held[1:])]
    if not common or all(len(h) == len(common) for h in held):
        return cells, ""
    note = f" (on seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))}, which every run compared holds)"
    return [restrict(c, common) if "seeds" in c else c for c in cells], note
