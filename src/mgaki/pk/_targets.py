"""Targets and harm by context (pk.yaml ``contexts``): what a regimen aims for and what it must avoid.

Eclampsia regimens are judged against the therapeutic range (attainment) and the level where toxicity
begins (harm); repletion against the normal range and the label's first toxicity level. A prediction's
risk is the probability of target attainment at a stated time beside the probability that the peak
exceeds the harm level, both from the sampled courses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mgaki.knowledge import KnowledgeBase, load
from mgaki.pk._simulate import Prediction
from mgaki.units import convert

__all__ = ["Risk", "Targets", "context_for", "risk", "targets"]


@dataclass(frozen=True)
class Targets:
    context: str
    name: str
    low_mg_dl: float
    high_mg_dl: float
    harm_mg_dl: float
    harm_id: str
    harm_meaning: str
    target_source: str
    harm_source: str


def _mg_dl(value: float, unit: str) -> float:
    return convert(value, "magnesium", unit, "mg/dL")


def targets(context: str | None = None, kb: KnowledgeBase | None = None) -> Targets:
    """Target range and harm level (mg/dL) of a pk.yaml context (default: repletion)."""
    kb = kb or load()
    c = kb.pk_context(context)
    rng = c.target or kb.magnesium.reference_range
    if c.harm is not None:
        harm_id, harm_value, harm_unit, meaning, hsrc = c.harm.id, c.harm.value, c.harm.unit, c.harm.meaning, \
            c.harm.source.citation
    else:
        t = kb.threshold(c.harm_threshold_id or "")
        harm_id, harm_value, harm_unit, meaning, hsrc = t.id, t.value, t.unit, t.meaning, t.source.citation
    return Targets(c.id, c.name, _mg_dl(rng.low, rng.unit), _mg_dl(rng.high, rng.unit), _mg_dl(harm_value, harm_unit),
                   harm_id, meaning, rng.source.citation, hsrc)


def context_for(contexts: Iterable[str], kb: KnowledgeBase | None = None) -> str:
    """The pk.yaml context selected by a patient's assess contexts (first match), else the default."""
    kb = kb or load()
    have = set(contexts)
    for c in kb.pk.contexts:
        if have & set(c.contexts):
            return c.id
    return kb.pk.default_context


@dataclass(frozen=True)
class Risk:
    targets: Targets
    at_h: float  # when attainment is judged
    p_target: float | None  # P(serum Mg inside the target range at at_h)
    p_harm: float | None  # P(peak above the harm level)
    threshold: float  # pk_overshoot_probability_max
    overshoot: bool
    n: int = 0  # sampled courses behind the probabilities

    @property
    def p_harm_upper_95(self) -> float | None:
        """One-sided 95% upper bound of P(harm) (Clopper-Pearson): a 0 of n estimate is never shown as 0%."""
        if self.p_harm is None or self.n <= 0:
            return None
        from scipy.stats import beta

        k = round(self.p_harm * self.n)
        return 1.0 if k >= self.n else float(beta.ppf(0.95, k + 1, self.n - k))

    def harm_text(self) -> str:
        if self.p_harm is None:
            return "not sampled"
        if round(self.p_harm * self.n) == 0:
            return f"< {self.p_harm_upper_95:.1%} (0 of {self.n} sampled courses)"
        return f"{self.p_harm:.1%}"

    def to_dict(self) -> dict[str, object]:
        t = self.targets
        return {"context": t.context, "target_mg_dl": [round(t.low_mg_dl, 3), round(t.high_mg_dl, 3)],
                "at_h": round(self.at_h, 2), "p_target": None if self.p_target is None else round(self.p_target, 4),
                "harm_mg_dl": round(t.harm_mg_dl, 3), "harm_id": t.harm_id, "harm_meaning": t.harm_meaning,
                "p_harm": None if self.p_harm is None else round(self.p_harm, 4),
                "p_harm_upper_95": None if self.p_harm_upper_95 is None else round(self.p_harm_upper_95, 4),
                "samples": self.n,
                "overshoot_threshold": self.threshold, "overshoot": self.overshoot}

    def text(self) -> str:
        t = self.targets
        pt = "not sampled" if self.p_target is None else f"{self.p_target:.0%}"
        return (f"{t.context}: P(in target {t.low_mg_dl:.2f}-{t.high_mg_dl:.2f} mg/dL at {self.at_h:g} h) {pt}; "
                f"P(peak > {t.harm_mg_dl:.2f} mg/dL, {t.harm_meaning.lower()}) {self.harm_text()}")


def risk(pred: Prediction, tg: Targets, at_h: float, kb: KnowledgeBase | None = None) -> Risk:
    kb = kb or load()
    at = float(min(max(at_h, float(pred.times_h[0])), float(pred.times_h[-1])))
    p_harm = pred.p_peak_above(tg.harm_mg_dl)
    thr = kb.value("pk_overshoot_probability_max")
    n = 0 if pred.peak_samples_mg_dl is None else len(pred.peak_samples_mg_dl)
    return Risk(tg, at, pred.p_in_range(tg.low_mg_dl, tg.high_mg_dl, at), p_harm, thr,
                p_harm is not None and p_harm > thr, n)
