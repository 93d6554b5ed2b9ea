"""Vectorised generator of a synthetic inpatient cohort with planted ground truth.

Each admission is a row of numpy arrays (one admission per patient); every
measurement stream is drawn as a renewal process in an (admissions x draws)
matrix, flattened at once to (admission index, time) pairs, and valued by
closed-form trajectories evaluated on those flat arrays. No Python loop runs
over patients or events: loops run only over the few streams, drugs and sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from mgaki.events.schema import DEATH, DEATH_CODE, TABLES
from mgaki.knowledge import load
from mgaki.synth._params import SynthParams, load_params
from mgaki.units import factor, normalize_unit

__all__ = ["Cohort", "generate"]

F = NDArray[Any]  # float64 arrays
Ix = NDArray[Any]  # int64 arrays
B = NDArray[Any]  # boolean arrays

_H = 3600  # seconds per hour


@dataclass
class Cohort:
    """Canonical tables (``mgaki.events.schema.TABLES``) and the truth planted in them."""

    tables: dict[str, pa.Table]
    truth: pa.Table  # one row per admission; see docs/synthetic.md#truth
    seed: int
    params: SynthParams = field(repr=False)


@dataclass
class _Stream:
    """One measurement stream, flat: admission index, time (h after admission), value, analyte."""

    enc: Ix
    t_h: F
    analyte: str
    value: F
    icu: bool = False  # charted on the ICU stay rather than the admission


def _ids(prefix: str, idx: Ix, width: int = 7) -> pa.Array:
    """'<prefix>0000042'-style ids built in Arrow, not in a Python loop."""
    s = pc.utf8_lpad(pc.cast(pa.array(idx, pa.int64()), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), s, "")


def _schedule(rng: np.random.Generator, sel: Ix, t0: F, t1: F, lo: float, hi: float,
              first_max: float) -> tuple[Ix, F]:
    """Renewal draws in [t0, t1) for the admissions ``sel``: first within first_max h, then lo-hi h apart."""
    if sel.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    k = int(np.ceil(float((t1 - t0).max()) / lo)) + 2
    gaps = rng.uniform(lo, hi, (sel.size, k))
    gaps[:, 0] = rng.uniform(0.0, first_max, sel.size)
    t = t0[:, None] + np.cumsum(gaps, axis=1)
    keep = t < t1[:, None]
    rows = np.nonzero(keep)[0]
    return sel[rows], t[keep]


def _order(enc: Ix, t_s: Ix, minor: Ix | None = None) -> Ix:
    """Row order by (admission, time, minor) through one int64 key: np.lexsort is ~10x slower on 10M rows."""
    t = t_s - t_s.min() if t_s.size else t_s
    span = int(t.max()) + 1 if t.size else 1
    m = minor if minor is not None else np.zeros(enc.size, np.int64)
    width = int(m.max()) + 1 if m.size else 1
    if (int(enc.max()) + 1 if enc.size else 1) * span * width >= 2**62:
        return np.lexsort((m, t_s, enc))
    return np.argsort((enc.astype(np.int64) * span + t) * width + m, kind="stable")


def _uniform_noise(rng: np.random.Generator, half: F | float, n: int) -> F:
    return rng.uniform(-1.0, 1.0, n) * half


def generate(n_patients: int, seed: int = 0, start: datetime = datetime(2024, 1, 1, tzinfo=UTC), *,
             events_per_patient: float | None = None, params: SynthParams | None = None,
             plant_mg_aki: bool = False, plant_mg_predictive: bool | None = None,
             plant_repletion: bool = False) -> Cohort:
    """A deterministic synthetic cohort of ``n_patients`` admissions (one per patient).

    ``plant_mg_aki`` makes the AKI odds depend on the admission-Mg band with the
    known ORs of ``planted_mg_aki`` in the parameter file (docs/synthetic.md).
    ``plant_mg_predictive=True`` plants a Mg fall before AKI onset (Mg adds predictive value beyond
    creatinine); ``False`` plants the null (falls at random times, Mg independent of AKI); ``None``
    (default) leaves the generator as it is. Both planted modes switch off every other Mg-AKI link
    (``planted_mg_predictive`` in the parameter file, docs/research.md#prediction).
    ``plant_repletion`` plants the target trial of Mg repletion (``planted_repletion``,
    docs/research.md#target-trial): a share of admissions has hypomagnesaemia at admission; IV MgSO4
    after the first low value is given with a probability that rises with severity (sepsis, CKD, the
    Mg deficit, age: confounding by indication), and AKI within the follow-up has, for the same
    severity, the planted risk ratio under treatment (the same ratio for every patient, so the
    marginal risk ratio is the planted one). Truth columns give both risks of each admission.

    ``start`` is the earliest admission (naive values are taken as UTC); admissions
    spread over ``admission_spread_days``. ``events_per_patient`` (default from the
    parameter file) sets the target mean number of ``events`` rows per patient.
    """
    if not isinstance(n_patients, int) or isinstance(n_patients, bool) or n_patients < 1:
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    if start.tzinfo is not None:
        start = start.astimezone(UTC).replace(tzinfo=None)
    p = params or load_params()
    if plant_mg_aki and p.planted_mg_aki is None:
        raise ValueError("plant_mg_aki needs a planted_mg_aki section in the synth parameters")
    if plant_mg_predictive is not None:
        if p.planted_mg_predictive is None:
            raise ValueError("plant_mg_predictive needs a planted_mg_predictive section in the synth parameters")
        if plant_mg_aki:
            raise ValueError("plant_mg_aki and plant_mg_predictive cannot be combined (each plants its own Mg)")
    if plant_repletion:
        if p.planted_repletion is None:
            raise ValueError("plant_repletion needs a planted_repletion section in the synth parameters")
        if plant_mg_aki or plant_mg_predictive is not None:
            raise ValueError("plant_repletion cannot be combined with another planted mode (each plants its own Mg)")
    return _Generator(n_patients, seed, start, p, events_per_patient, plant_mg_aki, plant_mg_predictive,
                      plant_repletion).run()


class _Generator:
    def __init__(self, n: int, seed: int, start: datetime, p: SynthParams, target: float | None,
                 plant: bool = False, predictive: bool | None = None, repletion: bool = False) -> None:
        self.n, self.seed, self.p, self.plant, self.pred, self.rep = n, seed, p, plant, predictive, repletion
        self.rng = np.random.default_rng(seed)
        self.kb = load()
        self.start_s = int((start - datetime(1970, 1, 1)).total_seconds())  # noqa: DTZ001 (naive UTC epoch)
        self.target = float(target if target is not None else p.value("events_per_patient"))
        if self.target <= 0:
            raise ValueError(f"events_per_patient must be positive, got {target!r}")

    # ------------------------------------------------------------------------------------------
    def run(self) -> Cohort:
        self._population()
        self._encounters()
        self._drugs()
        self._magnesium_plan()
        self._aki_plan()
        if self.pred is not None:
            self._plant_predictive()
        self._finalise_los()
        self._death()
        streams = self._labs()
        streams += self._urine()
        rrt = self._rrt()
        tables = self._tables(streams, rrt)
        return Cohort(tables=tables, truth=self._truth(), seed=self.seed, params=self.p)

    # --- admissions ----------------------------------------------------------------------------
    def _population(self) -> None:
        p, rng, n = self.p, self.rng, self.n
        self.ctx_labels, self.ctx = p.categorical(rng, "context", n)
        self.female = rng.random(n) < p.value("female_share")
        self.age = np.floor(p.draw(rng, "age_years", n))
        self.weight = np.where(self.female, p.draw(rng, "weight_female", n), p.draw(rng, "weight_male", n))
        shares = np.array([s.share for s in p.sites])
        self.site = rng.choice(len(p.sites), size=n, p=shares)
        self.ckd_high = rng.random(n) < p.value("ckd_high_share")
        self.ckd = ~self.ckd_high & (rng.random(n) < p.value("ckd_share"))
        base = np.where(self.female, p.draw(rng, "creatinine_baseline_female", n),
                        p.draw(rng, "creatinine_baseline_male", n))
        base *= 1.0 + p.value("creatinine_age_slope") * np.maximum(self.age - 50.0, 0.0)
        base = np.where(self.ckd, base * p.draw(rng, "ckd_creatinine_factor", n), base)
        self.cr_base = np.where(self.ckd_high, p.draw(rng, "ckd_high_creatinine", n), base)
        self.adm_s = self.start_s + np.floor(
            rng.uniform(0.0, p.value("admission_spread_days") * 86400.0, n)).astype(np.int64)

    def _by(self, param_id: str) -> F:
        by = self.p.get(param_id).by or {}
        out: F = np.array([by[c] for c in self.ctx_labels])[self.ctx]
        return out

    def _by_range(self, param_id: str) -> F:
        br = self.p.get(param_id).by_range or {}
        lo = np.array([br[c][0] for c in self.ctx_labels])[self.ctx]
        hi = np.array([br[c][1] for c in self.ctx_labels])[self.ctx]
        out: F = lo + self.rng.random(self.n) * (hi - lo)
        return out

    def _is(self, context: str) -> B:
        out: B = self.ctx == self.ctx_labels.index(context)
        return out

    def _encounters(self) -> None:
        p, rng, n = self.p, self.rng, self.n
        self.exposure_h = self._by_range("exposure_h")
        self.los_max_h = p.bounds("los_days")[1] * 24.0
        self.los_h = p.draw(rng, "los_days", n) * 24.0
        self.icu = rng.random(n) < self._by("icu_prob")
        self.icu_start_h = np.where(self._is("cardiac-surgery"), self.exposure_h, p.draw(rng, "icu_start_h", n))
        self.icu_dur_h = p.draw(rng, "icu_duration_h", n)

    def _drugs(self) -> None:
        p, rng, n = self.p, self.rng, self.n
        self.drug_on: dict[str, B] = {}
        self.drug_start: dict[str, F] = {}
        self.drug_end: dict[str, F] = {}
        for d in p.drugs:  # a handful of drugs, each vectorised over the cohort
            on = rng.random(n) < np.array([d.probs[c] for c in self.ctx_labels])[self.ctx]
            t0 = self.exposure_h if d.ingredient == "cisplatin" else rng.uniform(0.0, 24.0, n)
            self.drug_on[d.ingredient] = on
            self.drug_start[d.ingredient] = t0
            self.drug_end[d.ingredient] = t0 + rng.uniform(d.days.low, d.days.high, n) * 24.0
        drugs = {d.ingredient: self.kb.drug(d.ingredient) for d in p.drugs}
        self.nephrotoxic = np.zeros(n, bool)
        self.mg_wasting = np.zeros(n, bool)
        for name, on in self.drug_on.items():
            info = drugs[name]
            if info is not None and info.nephrotoxic:
                self.nephrotoxic |= on
            if info is not None and info.effect in ("renal_wasting", "gi_loss"):
                self.mg_wasting |= on
        high_ctx = np.isin(np.array(self.ctx_labels)[self.ctx], list(self.kb.magnesium.high_risk_contexts))
        self.high_risk = self.icu | high_ctx | self.nephrotoxic | self.mg_wasting

    def _magnesium_plan(self) -> None:
        p, rng, n = self.p, self.rng, self.n
        prob = np.full(n, p.value("mg_hypo_prob"))
        for name, rr in (p.get("mg_hypo_rr").by or {}).items():
            prob = np.where(self.drug_on[name], prob * rr, prob)
        self.hypo = rng.random(n) < np.minimum(prob, p.value("mg_hypo_prob_max"))
        self.hypo_adm = self.hypo & (rng.random(n) < p.value("mg_hypo_admission_share"))
        self.hypo_fall = self.hypo & ~self.hypo_adm
        self.mg_nadir = p.draw(rng, "mg_hypo_nadir", n)
        self.mg0 = p.draw(rng, "mg_baseline", n)
        self.fall_start = p.draw(rng, "mg_fall_start_h", n)
        self.fall_end = self.fall_start + p.draw(rng, "mg_fall_h", n)
        if self.plant:
            self._plant_admission_mg()
        if self.rep:
            self._plant_repletion_plan()
        if self.pred is not None:  # Mg independent of AKI except the planted falls (see _plant_predictive)
            self.hypo = self.hypo_adm = self.hypo_fall = np.zeros(n, bool)
        self.coupled = self.hypo & (rng.random(n) < p.value("coupled_share"))
        self.k0 = p.draw(rng, "potassium_baseline", n)
        self.ca0 = p.draw(rng, "calcium_baseline", n)
        self.alb0 = p.draw(rng, "albumin_baseline", n)
        if self.rep:  # the negative-control outcome (low albumin) shares the confounders, not the treatment
            self.alb0 = np.clip(self.alb0 + self.alb_shift, *p.bounds("albumin_baseline"))
        self.phos0 = p.draw(rng, "phosphate_baseline", n)
        self.ph0 = p.draw(rng, "ph_baseline", n)
        self.ica_frac = p.draw(rng, "ionized_calcium_fraction", n)
        self.rise_per_g = p.draw(rng, "mgso4_rise_per_g", n)
        self.mg_tau = p.draw(rng, "mgso4_tau_h", n)
        # prophylactic MgSO4 at ICU admission after cardiac surgery (not to planted hypo: see docs)
        self.prophylaxis = (self._is("cardiac-surgery") & self.icu & ~self.hypo
                            & (rng.random(n) < p.value("mgso4_cardiac_prophylaxis_prob")))
        if self.pred is not None or self.rep:  # prophylaxis would tie Mg to the cardiac-surgery context (an AKI risk)
            self.prophylaxis = np.zeros(n, bool)
        self.proph_infusion = p.draw(rng, "mgso4_infusion_h", n)
        labels, idx = p.categorical(rng, "mgso4_dose_g", n)
        self.repl_g = np.array([float(x) for x in labels])[idx]
        self.repl_delay = p.draw(rng, "mgso4_delay_h", n)
        self.repl_infusion = p.draw(rng, "mgso4_infusion_h", n)
        # planted monitoring gap inside a nephrotoxic exposure (high-risk, not hypomagnesemic)
        neph_names = [d for d in self.drug_on if (info := self.kb.drug(d)) is not None and info.nephrotoxic]
        neph_start = np.full(n, np.inf)
        for name in neph_names:
            neph_start = np.where(self.drug_on[name], np.minimum(neph_start, self.drug_start[name]), neph_start)
        self.gap = (self.high_risk & self.nephrotoxic & ~self.hypo
                    & (rng.random(n) < p.value("mg_gap_prob")))
        if self.pred is not None:  # a gap would tie Mg measurement to nephrotoxic exposure (an AKI risk)
            self.gap = np.zeros(n, bool)
        self.gap_start = np.where(self.gap, neph_start, np.nan) + rng.uniform(0.0, 12.0, n)
        self.gap_end = self.gap_start + p.draw(rng, "mg_gap_h", n)
        for name in neph_names:  # the exposure covers the gap
            cover = self.gap & self.drug_on[name]
            self.drug_end[name] = np.where(cover, np.maximum(self.drug_end[name], self.gap_end), self.drug_end[name])

    def _plant_admission_mg(self) -> None:
        """Latent admission Mg drawn band by band (planted mode); low values are admission hypomagnesemia."""
        pm = self.p.planted_mg_aki
        assert pm is not None
        shares = np.array([b.share for b in pm.bands])
        self.band = self.rng.choice(len(pm.bands), size=self.n, p=shares)
        lo = np.array([b.draw[0] for b in pm.bands])[self.band]
        hi = np.array([b.draw[1] for b in pm.bands])[self.band]
        self.mg_adm = lo + self.rng.random(self.n) * (hi - lo)
        self.band_or = np.array([b.odds_ratio for b in pm.bands])[self.band]
        self.hypo = self.hypo_adm = self.mg_adm < self.kb.magnesium.reference_range.low
        self.hypo_fall = np.zeros(self.n, bool)  # no falling pattern: the admission value is the exposure
        self.mg0 = self.mg_adm
        self.mg_nadir = np.where(self.hypo, self.mg_adm, self.mg_nadir)

    def _severity(self) -> dict[str, F]:
        """The planted confounders of repletion and AKI, each as the term its coefficient multiplies."""
        deficit = np.maximum(self.kb.magnesium.reference_range.low - self.mg_nadir, 0.0) / 0.1  # per 0.1 mg/dL
        c = self.kb.coefficient  # CKD-EPI 2021 of the true baseline creatinine (engine.kidney.ckd_epi_2021)
        kappa = np.where(self.female, c("ckdepi_kappa_female"), c("ckdepi_kappa_male"))
        alpha = np.where(self.female, c("ckdepi_alpha_female"), c("ckdepi_alpha_male"))
        r = self.cr_base / kappa
        egfr = (c("ckdepi_const") * np.minimum(r, 1.0) ** alpha * np.maximum(r, 1.0) ** c("ckdepi_exp_high")
                * c("ckdepi_age_base") ** self.age * np.where(self.female, c("ckdepi_female"), 1.0))
        return {"intercept": np.ones(self.n), "sepsis": self._is("sepsis").astype(float),
                "egfr10": (egfr - 90.0) / 10.0, "mg_deficit": deficit, "age10": (self.age - 60.0) / 10.0}

    def _plant_repletion_plan(self) -> None:
        """Admission hypomagnesaemia in a share of admissions; who is treated, by severity (own random stream)."""
        pr = self.p.planted_repletion
        assert pr is not None
        rng = np.random.default_rng([self.seed, 0x4E9])
        self.hypo = self.hypo_adm = rng.random(self.n) < pr.hypo_share
        self.hypo_fall = np.zeros(self.n, bool)
        sev = self._severity()
        lin = sum(pr.treat_logit[k] * sev[k] for k in pr.treat_logit)
        self.rep_prob = 1.0 / (1.0 + np.exp(-lin))
        self.rep_treat = self.hypo & (rng.random(self.n) < self.rep_prob)
        self.rep_delay = rng.uniform(*pr.delay_h, self.n)
        lin0 = sum(pr.aki_logit[k] * sev[k] for k in pr.aki_logit)
        self.risk0 = 1.0 / (1.0 + np.exp(-lin0))
        self.risk1 = self.risk0 * pr.risk_ratio
        self.rep_u = rng.random(self.n)  # the AKI draw: treated if u < risk1, untreated if u < risk0
        self.rep_onset = rng.uniform(*pr.onset_h, self.n)
        self.alb_shift = pr.albumin_shift * (sev["sepsis"] - sev["egfr10"] / 3.0)

    def _plant_predictive(self) -> None:
        """Planted Mg falls: before AKI onset (signal) or at random times for anyone (null)."""
        pp = self.p.planted_mg_predictive
        assert pp is not None
        rng, n = self.rng, self.n
        u = rng.random(n)
        self.pf_drop = rng.uniform(*pp.drop, n)
        lead = rng.uniform(*pp.lead_h, n)
        at_random = rng.uniform(0.0, 1.0, n) * self.los_h
        if self.pred:
            self.pf_on = np.where(self.aki, u < pp.fall_share_aki, u < pp.fall_share_other)
            self.pf_start = np.where(self.aki & self.pf_on, self.onset_h - lead, at_random)
        else:
            self.pf_on = u < pp.fall_share_null
            self.pf_start = at_random
        self.pf_end = self.pf_start + lead

    def _aki_plan(self) -> None:
        p, rng, n = self.p, self.rng, self.n
        prob = self._by("aki_prob")
        if self.plant:  # logistic: context logit + ln OR(band) + ln RR(nephrotoxic) as a log-odds term
            logit = np.log(prob / (1 - prob)) + np.log(self.band_or)
            logit += np.where(self.nephrotoxic, np.log(p.value("aki_rr_nephrotoxic")), 0.0)
            prob = 1.0 / (1.0 + np.exp(-logit))
        else:
            prob = np.where(self.hypo_adm, prob * p.value("aki_rr_hypomagnesemia"), prob)
            prob = np.where(self.nephrotoxic, prob * p.value("aki_rr_nephrotoxic"), prob)
            prob = np.minimum(prob, p.value("aki_prob_max"))
        self.aki = ~self.ckd_high & (rng.random(n) < prob)
        if self.rep:  # eligible (hypomagnesaemic) admissions: the planted risks, treated or not
            planted = np.where(self.rep_treat, self.rep_u < self.risk1, self.rep_u < self.risk0)
            self.aki = np.where(self.hypo, ~self.ckd_high & planted, self.aki)
        labels, idx = p.categorical(rng, "aki_stage", n)
        stage = np.where(self.aki, np.array([int(x) for x in labels])[idx], 0)
        self.olig = self.aki & self.icu & (rng.random(n) < p.value("oliguric_share_icu"))
        if self.rep:  # planted onsets are creatinine onsets at planted times
            self.olig &= ~self.hypo
        cr_aki = self.aki & ~self.olig
        # --- creatinine course
        ratio = np.select([stage == 1, stage == 2, stage == 3],
                          [p.draw(rng, f"aki_ratio_stage{s}", n) for s in (1, 2, 3)], 1.0)
        peak = self.cr_base * ratio
        below, above = p.value("aki_peak_below_4"), p.value("aki_peak_above_4")
        promote = cr_aki & (stage < 3) & (peak > below)  # the >= 4.0 mg/dL rule makes these stage 3
        peak = np.where(promote, np.maximum(peak, above), peak)
        self.stage_cr = np.where(cr_aki, np.where(promote, 3, stage), 0)
        self.peak = np.where(cr_aki, peak, self.cr_base)
        ref = np.where(self._is("none") | self._is("sepsis"), 0.0, self.exposure_h)
        self.onset_h = ref + self._by_range("aki_onset_h")
        if self.rep:
            self.onset_h = np.where(self.hypo, self.rep_onset, self.onset_h)
        self.rise_h = p.draw(rng, "creatinine_rise_h", n)
        self.plateau_h = p.draw(rng, "creatinine_plateau_h", n)
        self.rrt = cr_aki & (self.stage_cr == 3) & (rng.random(n) < p.value("rrt_share_stage3"))
        self.recovered = cr_aki & ~self.rrt & (rng.random(n) < p.value("aki_recovery_prob"))
        self.cr_end = np.select(
            [self.rrt, self.recovered],
            [self.peak * p.draw(rng, "rrt_creatinine_ratio", n), self.cr_base * p.draw(rng, "aki_recovered_ratio", n)],
            self.peak * p.draw(rng, "aki_persistent_ratio", n))
        self.cr_tau = p.draw(rng, "aki_recovery_tau_h", n)
        self.rrt_start = self.onset_h + self.rise_h + p.draw(rng, "rrt_start_h", n)
        # --- oliguric course (ICU only): integer hours after ICU admission
        anuria = self.olig & (stage == 3) & (rng.random(n) < p.value("uo_anuria_share"))
        ep_len = np.select([stage == 1, stage == 2, anuria],
                           [p.draw(rng, "uo_stage1_hours", n), p.draw(rng, "uo_stage2_hours", n),
                            p.draw(rng, "uo_anuria_hours", n)], p.draw(rng, "uo_stage3_hours", n))
        ep_rate = np.select([stage == 1, stage == 2, anuria],
                            [p.draw(rng, "uo_stage1_rate", n), p.draw(rng, "uo_stage2_rate", n), np.zeros(n)],
                            p.draw(rng, "uo_stage3_rate", n))
        self.ep_len = np.where(self.olig, np.round(ep_len), 0).astype(np.int64)
        self.ep_rate = ep_rate
        self.anuria = anuria
        self.ep_start = np.where(self.olig, 2 + np.floor(rng.uniform(0.0, 24.0, n)), 0).astype(np.int64)
        # the ICU stay holds the episode and 13 h either side (exact-stage margins, docs/synthetic.md)
        need = (self.ep_start + self.ep_len + 14).astype(float)
        self.icu_dur_h = np.where(self.olig, np.maximum(self.icu_dur_h, need), self.icu_dur_h)
        self.stage_uo = np.where(self.olig, stage, 0)
        self.stage = np.where(self.rrt, 3, np.maximum(self.stage_cr, self.stage_uo))
        self.onset_h = np.where(self.olig, self.icu_start_h + self.ep_start, self.onset_h)

    def _finalise_los(self) -> None:
        los = np.minimum(self.los_h, self.los_max_h)
        cr_aki = self.aki & ~self.olig
        need = np.maximum.reduce([
            np.where(cr_aki, self.onset_h + self.rise_h + self.plateau_h + 24.0, 0.0),
            np.where(self.icu, self.icu_start_h + self.icu_dur_h + 6.0, 0.0),
            np.where(self.hypo_fall, self.fall_end + 74.0, 0.0),  # a Mg draw (<= 72 h apart) sees the nadir
            np.where(self.gap, self.gap_end + 24.0, 0.0),
        ])
        self.los_h = np.maximum(los, need)
        if float(self.los_h.max()) > self.los_max_h + 1e-6:  # the parameter file promises 2-20 days
            raise ValueError("synth parameters make a planted course longer than los_days.high; "
                             "shorten onset/plateau/ICU parameters")
        self.los_s = np.floor(self.los_h * _H).astype(np.int64)
        self.icu_start_s = np.floor(self.icu_start_h * _H).astype(np.int64)
        self.icu_dur_s = np.floor(self.icu_dur_h).astype(np.int64) * _H  # whole hours of charting
        for name in self.drug_end:  # no order runs past discharge
            self.drug_end[name] = np.minimum(self.drug_end[name], self.los_h)

    # --- trajectories (noise-free), evaluated at flat (admission, time) pairs ------------------
    def _death(self) -> None:
        """In-hospital death at discharge, logistic in AKI with the planted OR ``death_or_aki``.

        Drawn from its own random stream so that adding death left every other draw of a seed unchanged.
        """
        p = self.p
        base = p.value("death_prob")
        logit = np.log(base / (1 - base)) + np.where(self.aki, np.log(p.value("death_or_aki")), 0.0)
        rng = np.random.default_rng([self.seed, 0xDEAD])
        self.died = rng.random(self.n) < 1.0 / (1.0 + np.exp(-logit))

    def _creatinine(self, e: Ix, t: F) -> F:
        base, peak = self.cr_base[e], self.peak[e]
        t_peak = self.onset_h[e] + self.rise_h[e]
        t_pe = t_peak + self.plateau_h[e]
        rising = base + (peak - base) * np.clip((t - self.onset_h[e]) / self.rise_h[e], 0.0, 1.0)
        end = self.cr_end[e]
        falling = end + (peak - end) * np.exp(-np.maximum(t - t_pe, 0.0) / self.cr_tau[e])
        aki = self.aki[e] & ~self.olig[e]
        return np.where(aki, np.where(t <= t_pe, rising, falling), base)

    def _ratio(self, e: Ix, t: F) -> F:
        return self._creatinine(e, t) / self.cr_base[e]

    def _mg(self, e: Ix, t: F, repletion: bool) -> F:
        p = self.p
        fall = self.mg0[e] + (self.mg_nadir[e] - self.mg0[e]) * np.clip(
            (t - self.fall_start[e]) / (self.fall_end[e] - self.fall_start[e]), 0.0, 1.0)
        mg = np.where(self.hypo_adm[e], self.mg_nadir[e], np.where(self.hypo_fall[e], fall, self.mg0[e]))
        if self.pred is None:
            mg += np.minimum(p.value("mg_aki_per_ratio") * (self._ratio(e, t) - 1.0), p.value("mg_aki_max"))
        else:
            frac = np.clip((t - self.pf_start[e]) / (self.pf_end[e] - self.pf_start[e]), 0.0, 1.0)
            mg -= np.where(self.pf_on[e], self.pf_drop[e] * frac, 0.0)
        doses = [(self.prophylaxis, self.icu_start_h + self.proph_infusion, np.full(self.n, 2.0))]
        if repletion:
            doses.append((self.repl_on, self.repl_t + self.repl_infusion, self.repl_g))
        for on, t_end, grams in doses:  # effect from the end of the infusion, decaying
            dt = t - t_end[e]
            eff = grams[e] * self.rise_per_g[e] * np.exp(-np.maximum(dt, 0.0) / self.mg_tau[e])
            mg += np.where(on[e] & (dt >= 0.0), eff, 0.0)
        return mg

    def _scale(self) -> float:
        """Lab-interval scale that brings the mean events per patient to the target."""
        p = self.p
        mean = {k: sum(p.bounds(k)) / 2 for k in ("chem_interval_h", "gas_interval_h", "albumin_interval_h",
                                                   "mg_interval_h", "mg_interval_high_risk_h")}
        icu_h = np.where(self.icu, np.floor(self.icu_dur_h), 0.0)
        scaled = float((3 * self.los_h / mean["chem_interval_h"] + self.los_h / mean["albumin_interval_h"]
                        + 3 * icu_h / mean["gas_interval_h"]).sum())
        mg_mean = np.where(self.high_risk, mean["mg_interval_high_risk_h"], mean["mg_interval_h"])
        fixed = float((2 * (self.los_h / mg_mean + 0.5)).sum() + 3.5 + 4 + 1.5 * self.icu.sum())
        fixed += float((icu_h * (1 - p.value("uo_two_hour_share") / 2)).sum())
        fixed += float(np.where(self.rrt, (self.los_h - self.rrt_start) / 36.0, 0.0).sum())
        room = self.target * self.n - fixed
        lo, hi = p.bounds("lab_interval_scale_range")
        return float(np.clip(scaled / room, lo, hi)) if room > 0 else hi

    def _labs(self) -> list[_Stream]:
        p, rng, n = self.p, self.rng, self.n
        s = self.scale = self._scale()
        allx = np.arange(n)
        zero = np.zeros(n)
        streams: list[_Stream] = []
        # chemistry panel: creatinine, potassium, calcium
        lo, hi = p.bounds("chem_interval_h")
        e, t = _schedule(rng, allx, zero, self.los_h, lo * s, hi * s, 2.0)
        cr = self._creatinine(e, t)
        half = np.minimum(cr * p.value("creatinine_noise_rel"), p.value("creatinine_noise_abs_max"))
        streams.append(_Stream(e, t, "creatinine", cr + _uniform_noise(rng, half, e.size)))
        chem = (e, t)
        # Mg panel: magnesium, phosphate; schedules by risk, planted gaps removed
        # planted predictive mode: one schedule for all, so how often Mg is measured says nothing about risk
        hr = self.high_risk if self.pred is None else np.ones(n, bool)
        # planted repletion: the admission Mg follows the admission chemistry (first draws within 2 h), so the
        # creatinine the trial adjusts for is measured before time zero
        after = self.p.planted_repletion.first_mg_after_h if self.rep and self.p.planted_repletion else 0.0
        mg0_t = zero + after
        e1, t1 = _schedule(rng, np.flatnonzero(~hr), mg0_t[~hr], self.los_h[~hr], *p.bounds("mg_interval_h"), 2.0)
        e2, t2 = _schedule(rng, np.flatnonzero(hr), mg0_t[hr], self.los_h[hr], *p.bounds("mg_interval_high_risk_h"),
                           2.0)
        e, t = np.concatenate([e1, e2]), np.concatenate([t1, t2])
        order = _order(e, np.floor(t * _H).astype(np.int64))
        e, t = e[order], t[order]
        keep = ~(self.gap[e] & (t > self.gap_start[e]) & (t < self.gap_end[e]))
        e, t = e[keep], t[keep]
        mg_noise = _uniform_noise(rng, p.value("mg_noise_abs"), e.size)
        if self.plant:  # the admission value carries no lab noise, so its band is the planted one
            mg_noise[np.r_[True, e[1:] != e[:-1]] if e.size else np.zeros(0, bool)] = 0.0
        self._plan_repletion(e, t, self._mg(e, t, repletion=False) + mg_noise)
        mg = self._mg(e, t, repletion=True)
        streams.append(_Stream(e, t, "magnesium", mg + mg_noise))
        phos = self.phos0[e] + p.value("phosphate_aki_per_ratio") * (self._ratio(e, t) - 1.0)
        streams.append(_Stream(e, t, "phosphate", phos + _uniform_noise(rng, p.value("phosphate_noise_abs"), e.size)))
        # potassium and calcium of the chemistry panel, coupled to Mg in some hypomagnesemic patients
        e, t = chem
        ref_low = self.kb.magnesium.reference_range.low
        deficit = np.where(self.coupled[e], np.maximum(ref_low - self._mg(e, t, repletion=True), 0.0), 0.0)
        k = self.k0[e] + p.value("potassium_aki_per_ratio") * (self._ratio(e, t) - 1.0)
        k -= p.value("potassium_per_mg_deficit") * deficit
        streams.append(_Stream(e, t, "potassium", k + _uniform_noise(rng, p.value("potassium_noise_abs"), e.size)))
        streams.append(_Stream(e, t, "calcium", self._calcium(e, t, deficit)
                               + _uniform_noise(rng, p.value("calcium_noise_abs"), e.size)))
        # albumin
        lo, hi = p.bounds("albumin_interval_h")
        e, t = _schedule(rng, allx, zero, self.los_h, lo * s, hi * s, 12.0)
        streams.append(_Stream(e, t, "albumin", self.alb0[e] + _uniform_noise(rng, p.value("albumin_noise_abs"),
                                                                                e.size)))
        # ICU blood gases: pH, ionized calcium, potassium
        icu = np.flatnonzero(self.icu)
        lo, hi = p.bounds("gas_interval_h")
        e, t = _schedule(rng, icu, self.icu_start_h[icu], self.icu_start_h[icu] + self.icu_dur_h[icu],
                         lo * s, hi * s, 1.0)
        streams.append(_Stream(e, t, "ph", self.ph0[e] + _uniform_noise(rng, p.value("ph_noise_abs"), e.size)))
        deficit = np.where(self.coupled[e], np.maximum(ref_low - self._mg(e, t, repletion=True), 0.0), 0.0)
        to_mmol = factor("calcium", "mg/dL", "mmol/L")
        ica = self._calcium(e, t, deficit) * to_mmol * self.ica_frac[e]
        streams.append(_Stream(e, t, "ionized_calcium", ica + _uniform_noise(rng, 0.02, e.size)))
        k = self.k0[e] + p.value("potassium_aki_per_ratio") * (self._ratio(e, t) - 1.0)
        k -= p.value("potassium_per_mg_deficit") * deficit
        streams.append(_Stream(e, t, "potassium", k + _uniform_noise(rng, p.value("potassium_noise_abs"), e.size)))
        return streams

    def _calcium(self, e: Ix, t: F, deficit: F) -> F:
        p = self.p
        ref_alb = self.kb.value("calcium_correction_albumin_reference")
        return (self.ca0[e] + p.value("calcium_per_albumin") * (self.alb0[e] - ref_alb)
                - p.value("calcium_per_mg_deficit") * deficit)

    def _plan_repletion(self, e: Ix, t: F, measured: F) -> None:
        """MgSO4 after the first Mg result below the reference interval (measured, as a clinician sees it)."""
        low = np.flatnonzero(self._report("magnesium", e, measured) < self.kb.magnesium.reference_range.low)
        first_enc, first = np.unique(e[low], return_index=True)
        self.repl_on = np.zeros(self.n, bool)
        self.repl_t = np.full(self.n, np.nan)
        self.repl_on[first_enc] = True
        self.repl_t[first_enc] = t[low[first]] + self.repl_delay[first_enc]
        if self.rep:  # only the planted treated get MgSO4, after their planted delay
            self.repl_on &= self.rep_treat
            self.repl_t = np.where(self.repl_on, self.repl_t - self.repl_delay + self.rep_delay, np.nan)
        late = self.repl_on & (self.repl_t + self.repl_infusion >= self.los_h)
        self.repl_on &= ~late  # no dose after discharge
        self.repl_t = np.where(self.repl_on, self.repl_t, np.nan)

    def _urine(self) -> list[_Stream]:
        """Hourly urine flow in ICU, charted every 1-2 h as mL since the previous charting."""
        p, rng = self.p, self.rng
        icu = np.flatnonzero(self.icu)
        if icu.size == 0:
            return []
        hours = (self.icu_dur_s[icu] // _H).astype(np.int64)
        hmax = int(hours.max())
        h = np.arange(hmax)[None, :]
        valid = h < hours[:, None]
        base = p.draw(rng, "uo_rate", icu.size)
        lo, hi = p.bounds("uo_rate")
        rate = np.clip(base[:, None] * np.exp(rng.normal(0.0, 0.25, (icu.size, hmax))), lo, hi)
        olig = self.olig[icu][:, None]
        ep0 = self.ep_start[icu][:, None]
        ep1 = ep0 + self.ep_len[icu][:, None]
        in_ep = olig & (h >= ep0) & (h < ep1)
        near = olig & (h >= ep0 - 13) & (h < ep1 + 13) & ~in_ep
        rate = np.where(near, np.maximum(rate, p.value("uo_rate_near_episode")), rate)
        rate = np.where(in_ep, self.ep_rate[icu][:, None], rate)
        vol = rate * self.weight[icu][:, None]  # mL in each hour
        # chart at the end of each hour, skipping some (2-h intervals) away from episodes
        chart = valid & ~((rng.random((icu.size, hmax)) < p.value("uo_two_hour_share")) & ~near & ~in_ep)
        chart |= h == hours[:, None] - 1  # the last hour is always charted
        chart &= valid
        cum = np.cumsum(np.where(valid, vol, 0.0), axis=1)
        rows, cols = np.nonzero(chart)
        c = cum[rows, cols]
        prev = np.concatenate([[0.0], c[:-1]])
        first = np.concatenate([[True], rows[1:] != rows[:-1]])
        volume = c - np.where(first, 0.0, prev)
        e = icu[rows]
        t = (self.icu_start_s[e] + (cols + 1) * _H) / _H  # exact hours (seconds / 3600)
        return [_Stream(e, t, "urine_output", volume, icu=True)]

    def _rrt(self) -> tuple[Ix, F]:
        idx = np.flatnonzero(self.rrt)
        lo, hi = self.p.bounds("rrt_interval_h")
        e, t = _schedule(self.rng, idx, self.rrt_start[idx], self.los_h[idx], lo, hi, 0.0)
        return e, t + 0.0

    # --- reporting: site units, rounding, plausibility --------------------------------------------
    def _report(self, analyte: str, e: Ix, value: F) -> F:
        """Canonical values as the admission's site reports them: clipped, rounded in the site unit."""
        a = self.kb.analyte(analyte)
        out = np.empty(value.size)
        site = self.site[e]
        clipped = np.clip(value, a.plausible_min, a.plausible_max)
        for i, s in enumerate(self.p.sites):  # a few sites, each vectorised
            m = site == i
            su = s.units[analyte]
            unit = normalize_unit(su.unit)
            to_site, back = factor(analyte, a.canonical_unit, unit), factor(analyte, unit, a.canonical_unit)
            scale = 10.0 ** su.decimals
            k = np.rint(clipped[m] * to_site * scale)
            v = k / scale * back
            k = np.where(v < a.plausible_min, k + 1, np.where(v > a.plausible_max, k - 1, k))
            out[m] = k / scale * back
        return out

    # --- tables --------------------------------------------------------------------------------------
    def _tables(self, streams: list[_Stream], rrt: tuple[Ix, F]) -> dict[str, pa.Table]:
        n = self.n
        idx = np.arange(n, dtype=np.int64)
        self.subject_ids = _ids("S", idx + 1)
        self.adm_ids = _ids("A", idx + 1)
        self.icu_ids = pc.if_else(pa.array(self.icu), _ids("I", idx + 1), pa.nulls(n, pa.string()))
        enc_ids = pa.concat_arrays([self.adm_ids, pc.fill_null(self.icu_ids, "")])

        analytes = [s.analyte for s in streams] + ["rrt", DEATH]
        names = sorted(set(analytes))
        dead = np.flatnonzero(self.died)
        a_idx = np.concatenate([np.full(s.enc.size, names.index(s.analyte)) for s in streams]
                               + [np.full(rrt[0].size, names.index("rrt")), np.full(dead.size, names.index(DEATH))])
        enc = np.concatenate([s.enc for s in streams] + [rrt[0], dead])
        key = np.concatenate([s.enc + (n if s.icu else 0) for s in streams] + [rrt[0], dead])
        t_s = self.adm_s[enc] + np.concatenate([
            np.floor(np.concatenate([s.t_h for s in streams] + [rrt[1]]) * _H + 1e-6).astype(np.int64),
            self.los_s[dead]])  # death at the admission's end
        vals = np.concatenate([self._report(s.analyte, s.enc, s.value) for s in streams]
                              + [np.full(rrt[0].size + dead.size, np.nan)])
        order = _order(enc, t_s, a_idx)
        enc, key, t_s, vals, a_idx = enc[order], key[order], t_s[order], vals[order], a_idx[order]
        # code and unit per (site, analyte)
        site = self.site[enc]
        n_sites = len(self.p.sites)
        code_tab: list[str] = []
        unit_tab: list[str | None] = []
        for name in names:
            for s in self.p.sites:
                if name == "rrt":
                    code_tab.append(self.p.rrt_code.code)
                    unit_tab.append(None)
                elif name == DEATH:
                    code_tab.append(DEATH_CODE)
                    unit_tab.append(None)
                else:
                    code_tab.append(s.units[name].code)
                    unit_tab.append(self.kb.analyte(name).canonical_unit)
        ci = pa.array(a_idx * n_sites + site)
        events = pa.table({
            "subject_id": self.subject_ids.take(pa.array(enc)),
            "encounter_id": enc_ids.take(pa.array(key)),
            "time": pa.array(t_s * 1_000_000, pa.timestamp("us")),
            "code": pa.array(code_tab, pa.string()).take(ci),
            "analyte": pa.array(names, pa.string()).take(pa.array(a_idx)),
            "numeric_value": pa.array(vals, pa.float64(), from_pandas=True),
            "unit": pa.array(unit_tab, pa.string()).take(ci),
            "source": _source("events", enc.size),
        }, schema=TABLES["events"])
        return {
            "subjects": self._subjects(),
            "encounters": self._encounter_table(),
            "events": events,
            "weights": self._weights(),
            "medications": self._medications(),
            "contexts": self._contexts(),
            "quarantine": TABLES["quarantine"].empty_table(),
        }

    def _ts(self, seconds: Ix) -> pa.Array:
        return pa.array(seconds * 1_000_000, pa.timestamp("us"))

    def _subjects(self) -> pa.Table:
        year = (self.adm_s // 86400).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
        return pa.table({
            "subject_id": self.subject_ids,
            "sex": pa.array(np.where(self.female, "female", "male")),
            "birth_year": pa.array((year - self.age).astype(np.int32)),
            "source": _source("subjects", self.n),
        }, schema=TABLES["subjects"])

    def _encounter_table(self) -> pa.Table:
        icu = np.flatnonzero(self.icu)
        adm = pa.table({
            "subject_id": self.subject_ids, "encounter_id": self.adm_ids,
            "kind": pa.array(np.full(self.n, "inpatient")),
            "start": self._ts(self.adm_s), "end": self._ts(self.adm_s + self.los_s),
            "parent_id": pa.nulls(self.n, pa.string()), "source": pa.nulls(self.n, pa.string()),
        }, schema=TABLES["encounters"])
        t0 = self.adm_s[icu] + self.icu_start_s[icu]
        stays = pa.table({
            "subject_id": self.subject_ids.take(pa.array(icu)), "encounter_id": self.icu_ids.take(pa.array(icu)),
            "kind": pa.array(np.full(icu.size, "icu")),
            "start": self._ts(t0), "end": self._ts(t0 + self.icu_dur_s[icu]),
            "parent_id": self.adm_ids.take(pa.array(icu)), "source": pa.nulls(icu.size, pa.string()),
        }, schema=TABLES["encounters"])
        out = pa.concat_tables([adm, stays]).sort_by([("subject_id", "ascending"), ("start", "ascending")])
        return out.set_column(6, "source", _source("encounters", out.num_rows))

    def _weights(self) -> pa.Table:
        p, rng = self.p, self.rng
        icu = np.flatnonzero(self.icu)
        e_icu, t_icu = _schedule(rng, icu, self.icu_start_h[icu], self.icu_start_h[icu] + self.icu_dur_h[icu],
                                 24.0, 24.0, 1.0)
        e = np.concatenate([np.arange(self.n), e_icu])
        t = np.concatenate([rng.uniform(0.0, 1.0, self.n), t_icu])
        w = self.weight[e] * np.where(np.arange(e.size) < self.n, 1.0,
                                      1.0 + p.draw(rng, "weight_daily_drift", e.size))
        w = self._report("weight", e, w)
        t_s = self.adm_s[e] + np.floor(t * _H).astype(np.int64)
        order = _order(e, t_s)
        e, t_s, w = e[order], t_s[order], w[order]
        return pa.table({"subject_id": self.subject_ids.take(pa.array(e)), "time": self._ts(t_s),
                         "weight_kg": pa.array(w), "source": _source("weights", e.size)},
                        schema=TABLES["weights"])

    def _medications(self) -> pa.Table:
        kb, p = self.kb, self.p
        parts: list[pa.Table] = []

        def add(on: B, t0: F, t1: F, drug: str, name: str, rxcui: str | None, dose: F, unit: str,
                mmol: F | None) -> None:
            idx = np.flatnonzero(on)
            m = idx.size
            parts.append(pa.table({
                "subject_id": self.subject_ids.take(pa.array(idx)), "encounter_id": self.adm_ids.take(pa.array(idx)),
                "start": self._ts(self.adm_s[idx] + np.floor(t0[idx] * _H).astype(np.int64)),
                "end": self._ts(self.adm_s[idx] + np.floor(t1[idx] * _H).astype(np.int64)),
                "drug": pa.array([drug] * m, pa.string()),
                "name": pa.array([name] * m, pa.string()),
                "rxcui": pa.array([rxcui] * m, pa.string()), "route": pa.array(["iv"] * m, pa.string()),
                "dose_value": pa.array(dose[idx]), "dose_unit": pa.array([unit] * m, pa.string()),
                "mg_mmol": pa.array(mmol[idx]) if mmol is not None else pa.nulls(m, pa.float64()),
                "source": pa.nulls(m, pa.string()),
            }, schema=TABLES["medications"]))

        for d in p.drugs:
            info = kb.drug(d.ingredient)
            end = self.drug_end[d.ingredient]
            on = self.drug_on[d.ingredient] & (self.drug_start[d.ingredient] < end)
            add(on, self.drug_start[d.ingredient], end, d.ingredient, d.name, info.rxcui if info else None,
                np.full(self.n, d.dose), d.dose_unit, None)
        salt = kb.salt("magnesium_sulfate_heptahydrate")
        mmol_per_g = 1000.0 / salt.molar_mass_g_per_mol * salt.mg_per_formula_unit  # as normalize computes it
        mgso4 = kb.drug("magnesium sulfate")
        rx = mgso4.rxcui if mgso4 else None
        for grams in sorted(set(self.repl_g.tolist()) | {2.0}):
            g = np.full(self.n, grams)
            name = f"magnesium sulfate {grams:g} g IV"
            add(self.repl_on & (self.repl_g == grams), self.repl_t, self.repl_t + self.repl_infusion,
                "magnesium sulfate", name, rx, g, "g", g * mmol_per_g)
            if grams == 2.0:
                add(self.prophylaxis, self.icu_start_h, self.icu_start_h + self.proph_infusion,
                    "magnesium sulfate", name, rx, g, "g", g * mmol_per_g)
        out = pa.concat_tables(parts)
        out = out.sort_by([("subject_id", "ascending"), ("start", "ascending"), ("name", "ascending")])
        return out.set_column(11, "source", _source("medications", out.num_rows))

    def _contexts(self) -> pa.Table:
        none = self.ctx_labels.index("none")
        has = np.flatnonzero(self.ctx != none)
        icu = np.flatnonzero(self.icu)
        e = np.concatenate([has, icu])
        t = np.concatenate([self.adm_s[has] + np.floor(self.exposure_h[has] * _H).astype(np.int64),
                            self.adm_s[icu] + self.icu_start_s[icu]])
        labels = pa.array([*self.ctx_labels, "icu"], pa.string())
        li = np.concatenate([self.ctx[has], np.full(icu.size, len(self.ctx_labels))])
        order = _order(e, t, li)
        e, t, li = e[order], t[order], li[order]
        return pa.table({"subject_id": self.subject_ids.take(pa.array(e)),
                         "encounter_id": self.adm_ids.take(pa.array(e)), "time": self._ts(t),
                         "context": labels.take(pa.array(li)), "source": _source("contexts", e.size)},
                        schema=TABLES["contexts"])

    # --- truth -------------------------------------------------------------------------------------
    def _truth(self) -> pa.Table:
        n = self.n

        def ts(hours: F, on: B) -> pa.Array:
            sec = self.adm_s + np.floor(np.nan_to_num(hours) * _H).astype(np.int64)
            return pa.array(sec * 1_000_000, pa.timestamp("us"), mask=~on)

        mech = np.select([self.rrt, self.olig, self.aki], ["rrt", "oliguria", "creatinine"], "")
        pattern = np.select([self.hypo_adm, self.hypo_fall], ["admission", "falling"], "")
        cr_aki = self.aki & ~self.olig
        return pa.table({
            "subject_id": self.subject_ids, "encounter_id": self.adm_ids, "icu_encounter_id": self.icu_ids,
            "site": pa.array([s.id for s in self.p.sites]).take(pa.array(self.site)),
            "context": pa.array(self.ctx_labels).take(pa.array(self.ctx)),
            "age": pa.array(self.age.astype(np.int32)), "weight_kg": pa.array(self.weight),
            "ckd": pa.array(self.ckd), "ckd_high": pa.array(self.ckd_high),
            "baseline_creatinine": pa.array(self.cr_base),
            "aki": pa.array(self.aki), "aki_onset": ts(self.onset_h, self.aki),
            "aki_stage": pa.array(self.stage.astype(np.int32)),
            "aki_stage_creatinine": pa.array(self.stage_cr.astype(np.int32)),
            "aki_stage_urine": pa.array(self.stage_uo.astype(np.int32)),
            "aki_mechanism": pa.array(mech, mask=~self.aki),
            "anuria": pa.array(self.anuria), "rrt": pa.array(self.rrt),
            "rrt_start": ts(self.rrt_start, self.rrt), "aki_recovered": pa.array(self.recovered),
            "death": pa.array(self.died),
            "death_time": pa.array((self.adm_s + self.los_s) * 1_000_000, pa.timestamp("us"), mask=~self.died),
            "peak_creatinine": pa.array(self.peak, mask=~cr_aki),
            "nephrotoxic": pa.array(self.nephrotoxic), "mg_wasting_drug": pa.array(self.mg_wasting),
            "mg_high_risk": pa.array(self.high_risk),
            "hypomagnesemia": pa.array(self.hypo), "hypomg_pattern": pa.array(pattern, mask=~self.hypo),
            "mg_nadir": pa.array(self.mg_nadir, mask=~self.hypo),
            "mg_fall_start": ts(self.fall_start, self.hypo_fall),
            "mg_repleted": pa.array(self.repl_on), "mg_repletion_start": ts(self.repl_t, self.repl_on),
            "k_ca_coupled": pa.array(self.coupled),
            "mg_monitoring_gap": pa.array(self.gap), "mg_gap_start": ts(self.gap_start, self.gap),
            "mg_gap_end": ts(self.gap_end, self.gap),
            **self._planted_truth(), **self._predictive_truth(ts), **self._repletion_truth(),
        }).slice(0, n)

    def _predictive_truth(self, ts: Any) -> dict[str, pa.Array]:
        if self.pred is None:
            return {}
        return {"mg_fall_planted": pa.array(self.pf_on), "mg_fall_planted_start": ts(self.pf_start, self.pf_on),
                "mg_fall_planted_drop": pa.array(self.pf_drop, mask=~self.pf_on)}

    def _repletion_truth(self) -> dict[str, pa.Array]:
        if not self.rep:
            return {}
        return {"repletion_eligible": pa.array(self.hypo), "repletion_treated": pa.array(self.repl_on),
                "repletion_probability": pa.array(self.rep_prob), "aki_risk_untreated": pa.array(self.risk0),
                "aki_risk_treated": pa.array(self.risk1)}

    def _planted_truth(self) -> dict[str, pa.Array]:
        if not self.plant:
            return {}
        pm = self.p.planted_mg_aki
        assert pm is not None
        return {"mg_admission_planted": pa.array(self.mg_adm),
                "mg_band_planted": pa.array([b.label for b in pm.bands]).take(pa.array(self.band)),
                "planted_odds_ratio": pa.array(self.band_or)}


def _source(table: str, n: int) -> pa.Array:
    """'synth:<table>:<row index>' for every row, formatted in Arrow."""
    return pc.binary_join_element_wise(pa.scalar(f"synth:{table}:"),
                                       pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "")
