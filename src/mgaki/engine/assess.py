"""The bedside assessment: runs every rule on one PatientRecord (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from mgaki.engine import kidney as kd
from mgaki.engine import magnesium as mgs
from mgaki.engine import risk, workup
from mgaki.engine.repletion import PlanRequest, plan_repletion, predict_plan, therapeutic_range
from mgaki.engine.specimen import Infusion, review_specimens
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import Source
from mgaki.record import KidneyState, Measurement, PatientRecord
from mgaki.result import (
    Assessment,
    Baseline,
    Evidence,
    Finding,
    KidneyResult,
    MagnesiumResult,
    Severity,
)
from mgaki.units import convert

__all__ = ["AssessOptions", "assess_record"]

DISCLAIMER = ("mgaki supports and does not replace clinical judgement. Every statement cites "
              "its source; check local protocols and the patient before acting.")


@dataclass(frozen=True)
class AssessOptions:
    contexts: frozenset[str] = frozenset()
    nomogram: str = "vanderbilt-im"
    baseline_creatinine_mg_dl: float | None = None
    jurisdiction: str = "us"
    now: datetime | None = None  # "as of" time; default: latest observation
    operation_hours: float | None = None  # intraoperative infusions run this long (default in regimens.yaml)
    baseline_rule: str | None = None  # reference creatinine rule (kidney.yaml baseline_rules); None: the default


@dataclass
class _Out:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)  # source ids already reported as too old to use

    def add(self, code: str, severity: Severity, message: str, sources: list[Source],
            **data: float | str | None) -> None:
        self.findings.append(Finding(code=code, severity=severity, message=message,
                                     evidence=[Evidence.of(s) for s in sources], data=data))


def _set_aside_suspect_specimens(kb: KnowledgeBase, rec: PatientRecord,
                                 out: _Out) -> tuple[PatientRecord, frozenset[str]]:
    """(the record without its suspect specimens, the analytes whose latest value is suspect).

    A suspect value (engine/specimen.py) is in no baseline, status, grade or critical finding. The latest value
    of an analyte, if suspect, is a ``suspect_specimen`` finding that says to repeat the sample; older ones are
    warnings."""
    rules = kb.surveillance.specimen
    series = {a: [(m.time, m.value) for m in rec.series(a)] for a in rules.analytes}
    infusions = [Infusion(m.ingredient, m.start, m.end) for m in rec.medications
                 if m.ingredient and m.start and m.active and m.kind == "administration"]
    review = review_specimens(kb, series, infusions, rec.rrt_times)
    if not review.suspects:
        return rec, frozenset()
    unconfirmed: set[str] = set()
    for s in sorted(review.suspects.values(), key=lambda s: (s.time, s.analyte)):
        latest = rec.latest(s.analyte)
        if latest is not None and (latest.time, latest.value) == (s.time, s.value):
            unconfirmed.add(s.analyte)
            out.add("suspect_specimen", kb.severity("suspect_specimen"),
                    f"{s.reason} (at {s.time.isoformat()}; not used for status, baselines or alerts until a repeat "
                    "confirms it)", [rules.source(s.rule)], analyte=s.analyte, value=s.value, time=s.time.isoformat(),
                    rule=s.rule, kind=s.kind)
        else:
            out.warnings.append(f"Set aside as a suspect specimen: {s.reason} (at {s.time.isoformat()})")
    keep = tuple(m for m in rec.measurements if not review.is_suspect(m.analyte, m.time, m.value))
    return replace(rec, measurements=keep, _series={}), frozenset(unconfirmed)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def assess_record(rec: PatientRecord, opts: AssessOptions | None = None,
                  kb: KnowledgeBase | None = None) -> Assessment:
    kb = kb or load()
    opts = opts or AssessOptions()
    out = _Out(warnings=list(rec.warnings))
    last_mg_draw = rec.latest("magnesium")  # a suspect draw is still a draw (monitoring gap)
    rec, unconfirmed = _set_aside_suspect_specimens(kb, rec, out)  # issue 13 point 6: not acted on until repeated
    contexts = frozenset(opts.contexts) | rec.contexts
    now = opts.now or rec.as_of()
    age = rec.age_years(now) if now else None
    pediatric = age is not None and age < kb.value("kdigo_pediatric_age_below")
    ther = therapeutic_range(kb, contexts, opts.jurisdiction)

    # --- kidney (C5) -------------------------------------------------------
    kidney, kstate = _kidney(kb, rec, opts, now, out, pediatric)

    # --- magnesium status (C2) --------------------------------------------------
    # The latest Mg is suspect: no status, grade or dose from an older value it may have superseded (a value drawn
    # before an infusion says nothing of the level after it) until the repeat.
    mg_m = None if "magnesium" in unconfirmed else rec.latest("magnesium")
    mg_val = mg_m.value if mg_m else None
    mg_res: MagnesiumResult | None = None
    status: str | None = None
    if mg_m is not None:
        status = mgs.status(kb, mg_m.value)
        grade = mgs.ctcae_grade(kb, mg_m.reported_value, mg_m.reported_unit)
        caveats = _caveats(kb, rec, now, out)
        ion = _current(kb, rec, "ionized_magnesium", now, out)
        mg_res = MagnesiumResult(
            value_mg_dl=round(mg_m.value, 3),
            value_mmol_l=round(convert(mg_m.value, "magnesium", "mg/dL", "mmol/L"), 3),
            value_meq_l=round(convert(mg_m.value, "magnesium", "mg/dL", "meq/L"), 3),
            reported=f"{mg_m.reported_value:g} {mg_m.reported_unit}",
            time=mg_m.time.isoformat(), source_id=mg_m.source_id, status=status,
            grade=grade.grade, grade_scale=grade.scale_id,
            reference_range_mg_dl=(kb.magnesium.reference_range.low,
                                   kb.magnesium.reference_range.high),
            ionized_mmol_l=round(ion.value, 3) if ion else None,
            ionized_status=mgs.ionized_status(kb, ion.value) if ion else None,
            caveats=[c for c, _ in caveats],
        )
        ctcae = next(s.source for s in kb.magnesium.grades)
        rr = kb.magnesium.reference_range.source
        shown = f"Serum Mg {mg_res.reported} ({', '.join(mg_res.in_other_units(('mg/dL', 'mmol/L')))})"
        if status == "low":
            sev: Severity = kb.severity("hypomagnesemia", grade.grade)
            out.add("hypomagnesemia", sev,
                    f"{shown}: low, CTCAE grade {grade.grade} ({grade.label})", [rr, ctcae], grade=grade.grade)
        elif status == "high":
            tox = mgs.toxicity_levels(kb, mg_m.value)
            sev = kb.severity("hypermagnesemia", grade.grade)
            msg = f"{shown}: high, CTCAE grade {grade.grade}"
            srcs = [rr, ctcae]
            if ther is not None and mg_m.value <= ther[1]:
                rng = ther[2].therapeutic_range
                sev = "info"
                msg += (f"; within the therapeutic range of {ther[2].name} ({ther[0]:.2f}-{ther[1]:.2f} "
                        "mg/dL): intended, not held")
                srcs += [rng.source] if rng else []
            if tox:
                worst = kb.threshold(tox[-1])
                msg += f"; above the level where {worst.meaning.lower()}"
                srcs.append(worst.source)
            out.add("hypermagnesemia", sev, msg, srcs, grade=grade.grade)
        for text, src in caveats:
            out.warnings.append(text + f" [{src.citation}]")
    elif "magnesium" in unconfirmed:
        out.warnings.append("The latest serum Mg is a suspect specimen: status, grade and plan wait for the repeat")
    else:
        out.warnings.append("No serum magnesium in the record: status, grade and plan need one")

    # --- cause work-up (C3) ---------------------------------------------------------
    drugs = workup.drug_causes(kb, rec.medications)
    for med, drug in drugs:
        out.add("drug_mg_loss", "warning" if status == "low" else "info",
                f"{drug.ingredient} ({drug.drug_class}, {med.source_id}): {drug.mechanism}",
                [drug.source], drug=drug.ingredient, effect=drug.effect)
    risk_conditions = _risk_conditions(kb, rec)
    _urine_workup(kb, rec, out, kidney, now)  # whenever a current urine sample exists, whatever the serum Mg
    # --- normal serum, likely depleted (C2) -------------------------------------------
    k_m = _current(kb, rec, "potassium", now, out)
    ca = _calcium(kb, rec, now, out)
    ca_low = ca is not None and ca[0]
    k_low = k_m is not None and k_m.value < kb.value("hypokalemia_mg_first_k_below")
    if status == "normal" and (drugs or risk_conditions or k_low or ca_low):
        why = [d.ingredient for _, d in drugs] + [c.label for c in risk_conditions]
        why += ["hypokalaemia"] * k_low + ["hypocalcaemia"] * ca_low
        out.add("possible_mg_depletion", "warning",
                "Serum Mg is normal but holds ~1% of body Mg; with " + ", ".join(why)
                + " total-body depletion is likely: consider empiric repletion or urine Mg",
                [kb.threshold("albumin_low_below").source,
                 *[c.source for c in risk_conditions][:1], *[d.source for _, d in drugs][:1]])

    # --- consequences (C4) -------------------------------------------------------
    mg_low_or_depleted = status == "low" or any(f.code == "possible_mg_depletion" for f in out.findings)
    if k_low and mg_low_or_depleted and k_m is not None:
        t = kb.threshold("hypokalemia_mg_first_k_below")
        out.add("refractory_hypokalemia_risk", "warning",
                f"K {k_m.value:.1f} mmol/L with low/depleted Mg: K will not correct until Mg is "
                "replaced (loss of the intracellular Mg block of ROMK): replace Mg first or together",
                [t.source], potassium=k_m.value)
    if ca is not None and ca_low and mg_low_or_depleted:
        pth = _current(kb, rec, "pth", now, out)
        pth_hi = kb.electrolytes.ranges["pth"].high
        if pth is None:
            pth_text = "PTH not measured"
        else:
            verdict = "inappropriately normal or low" if pth.value <= pth_hi else "raised"
            pth_text = f"PTH {pth.value:.0f} pg/mL ({verdict})"
        mg_text = "low Mg" if status == "low" else "likely Mg depletion (serum Mg normal)"
        out.add("mg_dependent_hypocalcemia", "warning",
                f"Hypocalcaemia ({ca[1]}) with {mg_text}; {pth_text}. Mg deficiency impairs PTH secretion "
                "and causes PTH resistance: Ca stays refractory until Mg is replaced",
                [kb.threshold("pth_impaired_mg_below").source, kb.electrolytes.ranges["pth"].source])
    if mg_val is not None:
        sym = kb.threshold("mg_symptomatic_below")
        if status == "low" and mg_val < convert(sym.value, "magnesium", sym.unit, "mg/dL"):
            # a risk, not an observed sign: rated by the Mg's CTCAE grade (critical from grade 3), as the
            # hypomagnesaemia itself (surveillance.yaml sev_mg_grade)
            out.add("neuromuscular_risk", kb.severity("neuromuscular_risk", grade.grade),
                    f"Mg {mg_val:.2f} mg/dL < {sym.value:g} {sym.unit}: risk of tremor, tetany and seizures "
                    "(loss of the NMDA-receptor Mg block); check Chvostek/Trousseau, ECG", [sym.source])
        elif status == "high" and mgs.toxicity_levels(kb, mg_val):
            t = kb.threshold(mgs.toxicity_levels(kb, mg_val)[-1])
            # Toxicity thresholds still apply inside a therapeutic range (eclampsia), where
            # reduced reflexes are the sign to watch rather than an emergency.
            expected = ther is not None and mg_val <= ther[1]
            out.add("neuromuscular_risk", "warning" if expected else kb.severity("neuromuscular_risk", grade.grade),
                    f"Mg {mg_val:.2f} mg/dL: {t.meaning.lower()}; check reflexes and respiration"
                    + (" before each dose (expected at therapeutic levels)" if expected else ""),
                    [t.source])
        qtc = _current(kb, rec, "qtc", now, out)
        qt = kb.threshold("qtc_prolonged_above")
        if status == "low" and qtc is not None and qtc.value > qt.value:
            out.add("arrhythmia_risk", kb.severity("arrhythmia_risk"),
                    f"QTc {qtc.value:.0f} ms > {qt.value:g} ms with low Mg: torsades risk", [qt.source])
        elif status == "high" and "mg_toxicity_cardiac_above" in mgs.toxicity_levels(kb, mg_val):
            t = kb.threshold("mg_toxicity_cardiac_above")
            out.add("arrhythmia_risk", kb.severity("arrhythmia_risk"), f"Mg {mg_val:.2f} mg/dL: {t.meaning.lower()}",
                    [t.source])

    # --- AKI (C5) and Mg-AKI evidence (C6) ----------------------------------------
    if kidney.aki_stage >= 1:
        src = kb.threshold("kdigo_abs_rise").source
        out.add("aki", kb.severity("aki", kidney.aki_stage),
                f"KDIGO AKI stage {kidney.aki_stage} ({kidney.criterion}); current stage "
                f"{kidney.current_stage}", [src], stage=kidney.aki_stage)
    # each study reads the Mg of its own exposure time (evidence.yaml exposure_times), not the latest
    series = {a: [(m.time, m.value) for m in rec.series(a) if now is None or m.time <= now]
              for a in ("magnesium", "ionized_magnesium")}
    onset = datetime.fromisoformat(kidney.onset) if kidney.onset else None
    matches, skipped = risk.match_evidence(kb, contexts, series, kidney.aki_stage >= 1, age,
                                           risk.anchors_of(rec, onset, now))
    if kidney.status:  # AKI-risk evidence does not apply to a patient on maintenance dialysis
        if matches:
            out.warnings.append(f"Mg-AKI evidence not applied: {kidney.status}")
        matches = []
    for m in matches:
        s, e = m.study, m.exposure
        marker_only = e.rule.pick == "median"  # a stay median includes values after AKI: severity, not prediction
        at = f"{e.rule.meaning}: {e.value:.2f} {kb.analyte(s.analyte).canonical_unit}" + (
            f" at {e.time.isoformat()}" if e.time else "") + (f"; {e.note}" if e.note else "")
        out.add("mg_aki_risk", "info" if marker_only else "warning",
                f"{s.population}: Mg {m.region.label} ({at}) — {s.finding}"
                + (f"; {m.region.effect}" if m.region.effect else "")
                + f" ({s.design}, n={s.n}; outcome: {s.outcome}). Association, not a probability.",
                [s.source, *([e.rule.source] if e.rule.source != s.source else [])], study=s.id,
                exposure_time=e.rule.id, value=round(e.value, 3), value_time=_iso(e.time))
    for s, reason in skipped:
        out.warnings.append(f"Evidence for {s.population} ({s.id}) not applied: {reason}")

    # --- monitoring gap (C7) -------------------------------------------------------
    nephrotoxic = [d for d in (kb.drug(m.ingredient) for m in rec.medications if m.ingredient and m.active)
                   if d and (d.nephrotoxic or d.effect == "renal_wasting")]
    gap = kb.threshold("mg_monitoring_gap_hours")
    high_risk = bool(contexts & set(kb.magnesium.high_risk_contexts)) or bool(nephrotoxic) or kidney.aki_stage >= 1
    drawn = last_mg_draw
    if high_risk and now is not None and (drawn is None or now - drawn.time > timedelta(hours=gap.value)):
        last = ("no serum Mg on record" if drawn is None
                else f"last serum Mg {(now - drawn.time).total_seconds() / 3600:.0f} h ago")
        out.add("monitoring_gap", kb.severity("monitoring_gap"),
                f"High-risk patient (ICU/AKI/nephrotoxic or Mg-wasting drugs) and {last}: "
                f"measure Mg (no value in {gap.value:g} h)", [kb.magnesium.high_risk_source, gap.source])

    # --- plan (C8) ------------------------------------------------------------------
    weight = rec.latest("weight")
    po = plan_repletion(kb, PlanRequest(mg_mg_dl=mg_val, mg_suspect="magnesium" in unconfirmed,
                                        contexts=contexts, nomogram_id=opts.nomogram,
                                        kidney=kstate, weight_kg=weight.value if weight else None,
                                        jurisdiction=opts.jurisdiction, pediatric=pediatric,
                                        operation_hours=opts.operation_hours), status)
    if po.adjusted:
        out.add("renal_dose_adjustment", "warning", "; ".join(po.adjusted),
                po.adjusted_sources, egfr=kidney.egfr, crcl=kidney.crcl)
    if po.holds:
        # rated by the CTCAE grade of a high Mg (grade 1, e.g. 2.6 mg/dL: hold and recheck, not critical)
        out.add("hold_magnesium", kb.severity("hold_magnesium", mg_res.grade if mg_res and status == "high" else None),
                "; ".join(r.meaning for r in po.holds), [r.source for r in po.holds])
    out.warnings.extend(po.warnings)
    plan = po.plan
    if not pediatric:  # the encoded PK models are adult (pregnant women): no prediction for a child
        pk, no_pk = predict_plan(kb, plan, mg_val, weight.value if weight else None, kstate, contexts, age,
                                 [(m.time, m.value) for m in rec.series("creatinine")], now)
        src = kb.pk_model().source
        if no_pk is not None:
            plan = plan.model_copy(update={"prediction_unavailable": no_pk})
            out.add("pk_prediction_unavailable", "info",
                    f"No PK prediction for the planned doses: {no_pk}. Check serum Mg early and before each dose",
                    [src])
        if pk is not None:
            plan = plan.model_copy(update={"prediction": pk})
            if pk.overshoot and pk.p_peak_above_toxicity is not None:
                out.add("pk_overshoot_risk", "warning",
                        f"Population PK ({pk.model}, built in {pk.population}) predicts a "
                        f"{pk.p_peak_above_toxicity:.0%} chance that the planned doses raise serum Mg above "
                        f"{pk.toxicity_mg_dl:.2f} mg/dL ({pk.context}: harm level {pk.toxicity_id}); typical peak "
                        f"{pk.peak_mg_dl:.2f} mg/dL at {pk.peak_time_h:g} h. Outside that population the "
                        "uncertainty is widened, not removed: check levels early",
                        [src, tox_source(kb, pk.context)], peak_mg_dl=pk.peak_mg_dl,
                        p_peak_above_toxicity=pk.p_peak_above_toxicity)
    return Assessment(patient_id=rec.patient_id, as_of=_iso(now), contexts=sorted(contexts),
                      magnesium=mg_res, kidney=kidney, findings=out.findings, plan=plan,
                      warnings=out.warnings, disclaimer=DISCLAIMER, knowledge_version=kb.version)


def _kidney(kb: KnowledgeBase, rec: PatientRecord, opts: AssessOptions, now: datetime | None,
            out: _Out, pediatric: bool) -> tuple[KidneyResult, KidneyState]:
    cr = rec.series("creatinine")
    dialysis = kd.maintenance_dialysis(kb, rec, frozenset(opts.contexts) | rec.contexts, now)
    if dialysis:
        return _on_maintenance_dialysis(kb, out, cr, dialysis)
    height = rec.latest("height")
    peds_height = height.value if (pediatric and height) else None
    admitted = [s.start for s in rec.stays if s.kind == "hospital" and (now is None or s.start <= now)]
    stages = kd.stage_creatinine(kb, [(m.time, m.value) for m in cr],
                                 baseline=opts.baseline_creatinine_mg_dl, rrt_times=rec.rrt_times,
                                 pediatric_height_cm=peds_height, rule=opts.baseline_rule,
                                 admission=max(admitted) if admitted else None)
    weight = rec.latest("weight")
    uo = rec.series("urine_output")
    irrigant = [(m.time, m.value) for m in rec.series("urine_irrigant")]  # not urine: subtracted
    irrigant_out = [(m.time, m.value) for m in rec.series("urine_irrigant_out")]  # urine + irrigant
    charted = sorted([m.time for m in uo] + [t for t, _ in irrigant_out])
    chosen = (kd.choose_weight(kb, [(m.time, m.value, m.source_id) for m in rec.series("weight")],
                               charted[0], charted[-1]) if charted else None)
    ustages = (kd.stage_urine_output(kb, [(m.time, m.value) for m in uo], chosen.weight_kg, irrigant, irrigant_out)
               if chosen else [])
    if charted and not chosen:
        out.warnings.append("Urine output present but no body weight: UO criteria not applied")
    for t_w, kg, src, why in chosen.rejected if chosen else ():
        out.warnings.append(f"Weight {kg:g} kg ({src}, {t_w.isoformat()}) not used for urine output: {why}")
    # The episode is the current admission's (as the batch stages count it): values from the same visit on,
    # i.e. from `pre_admission_attach_hours` before admission; earlier values are history for the windows.
    if admitted:
        since = max(admitted) - timedelta(hours=kb.value("pre_admission_attach_hours"))
        stages = [x for x in stages if x.time >= since]
        ustages = [x for x in ustages if x.time >= since]
    peak_c = max(stages, key=lambda s: (s.stage, s.time), default=None)
    peak_u = max(ustages, key=lambda s: (s.stage, s.time), default=None)
    stage, criterion, onset = 0, None, None
    for s in (peak_c, peak_u):
        if s is not None and s.stage > stage:
            stage, criterion = s.stage, s.criterion
    firsts = [s.time for s in stages if s.stage >= 1] + [u.time for u in ustages if u.stage >= 1]
    onset = min(firsts) if firsts else None
    current = max((stages[-1].stage if stages else 0), (ustages[-1].stage if ustages else 0))
    if rec.rrt_times:
        if stage < 3:
            criterion = "renal replacement therapy started"
        stage, current = 3, 3
    last = cr[-1] if cr else None
    behind = peak_c if peak_c and peak_c.stage >= 1 else (stages[-1] if stages else None)
    ref = behind.reference if behind else None
    method = behind.reference_method if behind else "no creatinine"
    age = rec.age_years(now) if now else None
    female = rec.sex == "female"
    egfr = crcl = kgfr = None
    egfr_note = crcl_note = None
    if pediatric and age is not None:
        _pediatric_kidney_finding(kb, out, age, peds_height, last is not None)
        egfr_note = "CKD-EPI 2021 not used: an adult equation (age <18)"
        crcl_note = "Cockcroft-Gault not used: an adult equation (age <18)"
        if last is not None and peds_height is not None:
            egfr = round(kd.schwartz_bedside(kb, last.value, peds_height), 1)
            egfr_note = "bedside Schwartz 2009 (0.413 x height/SCr), age <18; CKD-EPI 2021 not used" + (
                "; not valid when creatinine is changing (AKI)" if stage else "")
            if len(cr) >= 2 and ref:
                hours = (cr[-1].time - cr[-2].time).total_seconds() / 3600
                k = kd.kinetic_egfr(kb, ref, kd.schwartz_bedside(kb, ref, peds_height),
                                    cr[-2].value, cr[-1].value, hours)
                kgfr = round(k, 1) if k is not None else None
    elif last is not None and age is not None and rec.sex in ("female", "male"):
        egfr = round(kd.ckd_epi_2021(kb, last.value, age, female), 1)
        egfr_note = "CKD-EPI 2021 (race-free); not valid when creatinine is changing (AKI)" \
            if stage else "CKD-EPI 2021 (race-free)"
        if weight is not None:
            crcl = round(kd.cockcroft_gault(kb, last.value, age, weight.value, female), 1)
            crcl_note = "Cockcroft-Gault with actual body weight"
        if len(cr) >= 2 and ref:
            base_gfr = kd.ckd_epi_2021(kb, ref, age, female)
            hours = (cr[-1].time - cr[-2].time).total_seconds() / 3600
            k = kd.kinetic_egfr(kb, ref, base_gfr, cr[-2].value, cr[-1].value, hours)
            kgfr = round(k, 1) if k is not None else None
    elif last is not None:
        out.warnings.append("Age or sex unknown: eGFR and CrCl not computed")
    anuric = bool(ustages and ustages[-1].criterion and "anuria" in ustages[-1].criterion)
    result = KidneyResult(
        aki_stage=stage, criterion=criterion, onset=_iso(onset), current_stage=current,
        baseline=Baseline(value_mg_dl=round(ref, 3) if ref else None, method=method,
                          time=_iso(behind.reference_time) if behind else None,
                          rule=kb.baseline_rule(opts.baseline_rule).id,
                          n_values=behind.reference_n if behind else None),
        creatinine_mg_dl=round(last.value, 3) if last else None,
        creatinine_umol_l=round(convert(last.value, "creatinine", "mg/dL", "umol/L"), 1) if last else None,
        egfr=egfr, egfr_note=egfr_note, crcl=crcl, crcl_note=crcl_note, kinetic_egfr=kgfr,
        rrt=bool(rec.rrt_times),
        uo_weight_kg=round(chosen.weight_kg, 2) if chosen else None,
        uo_weight_source=chosen.source if chosen else None,
        uo_weights_rejected=[f"{kg:g} kg ({src}): {why}" for _, kg, src, why in chosen.rejected] if chosen else [],
    )
    # Kinetic GFR is the better dosing estimate while creatinine moves.
    kinetic = bool(stage and kgfr is not None)
    dosing_gfr = kgfr if kinetic else egfr
    label = ("kinetic " if kinetic else "") + ("Schwartz eGFR" if pediatric else "eGFR")
    return result, KidneyState(egfr=dosing_gfr, crcl=crcl, aki_stage=stage,
                               creatinine_mg_dl=last.value if last else None,
                               rrt=bool(rec.rrt_times), anuric=anuric, egfr_label=label)


def _on_maintenance_dialysis(kb: KnowledgeBase, out: _Out, cr: tuple[Measurement, ...],
                             reasons: tuple[str, ...]) -> tuple[KidneyResult, KidneyState]:
    """ESKD on maintenance dialysis: no KDIGO stage, no eGFR/CrCl, dialysis hold rules for Mg."""
    md = kb.kidney.maintenance_dialysis
    last = cr[-1] if cr else None
    out.add("maintenance_dialysis", "info",
            f"{md.status} ({'; '.join(reasons)}). Creatinine reflects dialysis, not kidney function: "
            "no eGFR or creatinine clearance, no renal dose adjustment by them",
            [md.source, *([md.rrt_lookback_source] if any(r.startswith("RRT") for r in reasons) else [])])
    result = KidneyResult(
        aki_stage=0, criterion=None, onset=None, current_stage=0,
        baseline=Baseline(value_mg_dl=None, method="not applicable: maintenance dialysis"),
        creatinine_mg_dl=round(last.value, 3) if last else None,
        creatinine_umol_l=round(convert(last.value, "creatinine", "mg/dL", "umol/L"), 1) if last else None,
        egfr=None, egfr_note="not computed: ESKD on maintenance dialysis", crcl=None,
        crcl_note="not computed: ESKD on maintenance dialysis", kinetic_egfr=None, rrt=True,
        status=md.status, maintenance_dialysis=list(reasons))
    return result, KidneyState(aki_stage=0, creatinine_mg_dl=last.value if last else None, rrt=True,
                               maintenance_dialysis=True, egfr_label="eGFR (not applicable: dialysis)")


def _pediatric_kidney_finding(kb: KnowledgeBase, out: _Out, age: float, height_cm: float | None,
                              has_creatinine: bool) -> None:
    """Say which adult rules were set aside for a child, and what replaced them."""
    t = kb.threshold("kdigo_pediatric_egfr_stage3")
    schwartz = next(c.source for c in kb.kidney.schwartz_bedside if c.id == "schwartz_k_cm")
    if height_cm is not None:
        kidney_text = (f"eGFR by bedside Schwartz 2009 (0.413 x {height_cm:.0f} cm / SCr) and KDIGO's paediatric "
                       f"criterion (eGFR <{t.value:g} mL/min/1.73 m2 during AKI: stage 3)")
    else:
        kidney_text = ("no height recorded, so no paediatric eGFR (bedside Schwartz needs height) and KDIGO's "
                       f"eGFR <{t.value:g} criterion cannot be checked; creatinine-ratio and UO criteria still apply")
    out.add("pediatric_adjustment", "warning",
            f"Age {age:.0f} y (<18): CKD-EPI 2021 and Cockcroft-Gault are not used (adult equations); "
            f"{kidney_text if has_creatinine else 'no creatinine'}. Adult nomograms, adult regimens and "
            "evidence from adult populations are not applied to a child",
            [t.source, schwartz], age=age, height_cm=height_cm)


def _caveats(kb: KnowledgeBase, rec: PatientRecord, now: datetime | None, o: _Out) -> list[tuple[str, Source]]:
    out: list[tuple[str, Source]] = []
    alb = _current(kb, rec, "albumin", now, o)
    t = kb.threshold("albumin_low_below")
    if alb is not None and alb.value < t.value:
        out.append((f"Albumin {alb.value:.1f} g/dL: {t.meaning}; measure ionized Mg if the total "
                    "is borderline", t.source))
    ph = _current(kb, rec, "ph", now, o)
    t = kb.threshold("ph_alkalemia_above")
    if ph is not None and ph.value > t.value:
        out.append((f"pH {ph.value:.2f}: {t.meaning}; symptoms may occur at a 'normal' total Mg",
                    t.source))
    return out


def _current(kb: KnowledgeBase, rec: PatientRecord, analyte: str, now: datetime | None, out: _Out,
             ) -> Measurement | None:
    """The latest ``analyte`` at or before ``now`` if it still stands for the patient now.

    A result older than its window (electrolytes.yaml ``current_within``) is set aside with a
    warning naming it, so an old value never overrides a current one of another test.
    """
    series = [m for m in rec.series(analyte) if now is None or m.time <= now]
    if not series:
        return None
    m = series[-1]
    window = kb.current_within_hours(analyte)
    if window is None or now is None:
        return m
    age = (now - m.time).total_seconds() / 3600
    if age <= window:
        return m
    if m.source_id not in out.stale:
        out.stale.add(m.source_id)
        out.warnings.append(f"{kb.analyte(analyte).name} {m.value:g} {m.unit} ({m.source_id}) is {age:.0f} h old: "
                            f"not used (a result older than {window:g} h does not describe the patient now)")
    return None


def _nearest(rec: PatientRecord, analyte: str, at: datetime, hours: float) -> Measurement | None:
    """The ``analyte`` result nearest in time to ``at``, at most ``hours`` away (a paired sample)."""
    near = [(abs((m.time - at).total_seconds()), m) for m in rec.series(analyte)]
    near = [(d, m) for d, m in near if d <= hours * 3600]
    return min(near, key=lambda x: (x[0], x[1].time))[1] if near else None


def _risk_conditions(kb: KnowledgeBase, rec: PatientRecord) -> list:  # type: ignore[type-arg]
    hits = []
    for rc in kb.magnesium.depletion_risk_conditions:
        for c in rec.conditions:
            text = c.text.lower()
            if any(k in text for k in rc.keywords) or (c.code and any(
                    c.code.upper().startswith(code) for code in rc.codes)):
                hits.append(rc)
                break
    return hits


def _calcium(kb: KnowledgeBase, rec: PatientRecord, now: datetime | None, out: _Out) -> tuple[bool, str] | None:
    """(low, what was read) from the current calcium: ionized Ca if current, else total Ca corrected
    for a current albumin; None when neither is current."""
    ica = _current(kb, rec, "ionized_calcium", now, out)
    if ica is not None:
        return (ica.value < kb.electrolytes.ranges["ionized_calcium"].low,
                f"ionized Ca {ica.value:.2f} {ica.unit}, {ica.source_id}")
    ca = _current(kb, rec, "calcium", now, out)
    if ca is None:
        return None
    alb = _current(kb, rec, "albumin", now, out)
    corrected = ca.value
    text = f"total Ca {ca.value:.1f} {ca.unit}, {ca.source_id}"
    if alb is not None:
        ref = kb.value("calcium_correction_albumin_reference")
        corrected += kb.value("calcium_correction_per_albumin") * (ref - alb.value)
        text += f"; {corrected:.1f} corrected for albumin {alb.value:.1f} {alb.unit}"
    return corrected < kb.electrolytes.ranges["calcium"].low, text


def _iv_mg(rec: PatientRecord, at: datetime) -> tuple[float | None, str | None]:
    """(hours from the last MgSO4 administration to ``at``, an active MgSO4 order running at ``at``).

    An order (an infusion, parenteral nutrition) started before ``at`` and not ended is a load the
    urine carries as much as a recorded administration.
    """
    past, running = [], None
    for m in rec.medications:
        if m.ingredient != "magnesium sulfate" or m.start is None or m.start > at:
            continue
        if m.kind == "administration":
            past.append((at - m.start).total_seconds() / 3600)
        elif m.active and (m.end is None or m.end >= at):
            running = running or m.source_id
    return (min(past) if past else None), running


def _urine_workup(kb: KnowledgeBase, rec: PatientRecord, out: _Out, kidney: KidneyResult,
                  now: datetime | None) -> None:
    """FE_Mg from a current spot urine Mg/creatinine pair, and 24-h urine Mg, whatever the serum Mg.

    The pair is one sample (urine creatinine within ``urine_pair_max_apart_hours`` of the urine
    Mg) read against the serum Mg and creatinine nearest it; the serum Mg of that time decides
    how the index is read (workup.interpret_fe_mg).
    """
    readings: list[tuple[workup.UrineReading, Source, str, str]] = []
    pair_h, plasma_h = kb.value("urine_pair_max_apart_hours"), kb.value("fe_mg_plasma_max_apart_hours")
    u_mg = _current(kb, rec, "urine_magnesium", now, out)
    u_cr = _nearest(rec, "urine_creatinine", u_mg.time, pair_h) if u_mg else None
    if u_mg is not None:
        p_mg, p_cr = _nearest(rec, "magnesium", u_mg.time, plasma_h), _nearest(rec, "creatinine", u_mg.time, plasma_h)
        if u_cr is None:
            out.warnings.append(f"Urine Mg ({u_mg.source_id}) has no urine creatinine from the same sample "
                                f"(within {pair_h:g} h): FE_Mg not computed")
        elif p_mg is None or p_cr is None:
            out.warnings.append(f"Urine Mg ({u_mg.source_id}) has no serum Mg and creatinine within {plasma_h:g} h "
                                "of it: FE_Mg not computed")
        else:
            fe = workup.fe_mg(kb, u_mg.value, p_cr.value, p_mg.value, u_cr.value)
            r = workup.interpret_fe_mg(kb, fe, kidney.egfr, kidney.current_stage, *_iv_mg(rec, u_mg.time),
                                       serum_status=mgs.status(kb, p_mg.value), serum_mg_dl=p_mg.value)
            readings.append((r, kb.threshold("fe_mg_renal_wasting_above").source, "FE_Mg", u_mg.source_id))
    u24 = _current(kb, rec, "urine_magnesium_24h", now, out)
    if u24:
        p_mg = _nearest(rec, "magnesium", u24.time, plasma_h)
        r = workup.interpret_urine_24h(kb, u24.value, kidney.egfr, kidney.current_stage, *_iv_mg(rec, u24.time),
                                       serum_status=mgs.status(kb, p_mg.value) if p_mg else None,
                                       serum_mg_dl=p_mg.value if p_mg else None)
        readings.append((r, kb.threshold("urine_mg_24h_wasting_above").source, "24-h urine Mg", u24.source_id))
    for r, src, name, sample in readings:
        if r.verdict == "renal_wasting":
            out.add("renal_mg_wasting", "warning",
                    f"{r.reason} ({sample}): the kidney is losing Mg " + (
                        "despite a low serum level" if r.serum_status == "low" else
                        "while the serum level is still normal (renal wasting can precede a low serum Mg; the "
                        "cut-off was set in hypomagnesaemia)")
                    + " (drugs such as cisplatin, aminoglycosides, diuretics, calcineurin inhibitors; Gitelman)",
                    [src], value=round(r.value, 2), index=name, sample=sample)
        elif r.verdict == "extrarenal":
            out.add("extrarenal_mg_loss", "info",
                    f"{r.reason} ({sample}): renal conservation intact, so the loss is extrarenal "
                    "(GI loss, poor intake, PPI)", [kb.threshold("fe_mg_extrarenal_below").source],
                    value=round(r.value, 2), index=name, sample=sample)
        elif r.verdict == "not_interpretable":
            out.add("urine_index_not_interpretable", "info",
                    f"{name} {r.value:.1f} ({sample}) not interpreted: {r.reason}",
                    [kb.threshold("urine_index_min_egfr").source], index=name, sample=sample)
        else:  # indeterminate in hypomagnesaemia, or no wasting at a normal serum Mg
            out.add("urine_mg_index", "info", f"{r.reason} ({sample})", [src],
                    value=round(r.value, 2), index=name, sample=sample)
    if any(f.code == "renal_mg_wasting" for f in out.findings):
        k = _current(kb, rec, "potassium", now, out)
        u_ca = _current(kb, rec, "urine_calcium", now, out)
        u_cr_ca = _nearest(rec, "urine_creatinine", u_ca.time, pair_h) if u_ca else None
        t = kb.threshold("gitelman_urine_ca_cr_below")
        if k and k.value < kb.value("hypokalemia_mg_first_k_below") and u_ca and u_cr_ca:
            ratio = workup.urine_ca_cr(u_ca.value, u_cr_ca.value)
            if ratio < t.value:
                out.add("gitelman_like_pattern", "info",
                        f"Renal Mg wasting with hypokalaemia and hypocalciuria (urine Ca/Cr {ratio:.2f} "
                        f"< {t.value:g} mmol/mmol): Gitelman-like pattern (or thiazide effect); "
                        "consider genetic testing if no drug explains it", [t.source],
                        urine_ca_cr=round(ratio, 3))


def tox_source(kb: KnowledgeBase, context: str | None) -> Source:
    """The source of the harm level a PK context judges overshoot against."""
    c = kb.pk_context(context)
    return c.harm.source if c.harm is not None else kb.threshold(c.harm_threshold_id or "").source
