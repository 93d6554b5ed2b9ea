"""The bedside assessment: runs every rule on one PatientRecord (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mgaki.engine import kidney as kd
from mgaki.engine import magnesium as mgs
from mgaki.engine import risk, workup
from mgaki.engine.repletion import PlanRequest, plan_repletion, predict_plan, therapeutic_range
from mgaki.knowledge import KnowledgeBase, load
from mgaki.knowledge.schema import Source
from mgaki.pk import toxicity_level_mg_dl
from mgaki.record import KidneyState, PatientRecord
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


@dataclass
class _Out:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, code: str, severity: Severity, message: str, sources: list[Source],
            **data: float | str | None) -> None:
        self.findings.append(Finding(code=code, severity=severity, message=message,
                                     evidence=[Evidence.of(s) for s in sources], data=data))


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def assess_record(rec: PatientRecord, opts: AssessOptions | None = None,
                  kb: KnowledgeBase | None = None) -> Assessment:
    kb = kb or load()
    opts = opts or AssessOptions()
    out = _Out(warnings=list(rec.warnings))
    contexts = frozenset(opts.contexts) | rec.contexts
    now = opts.now or rec.as_of()
    age = rec.age_years(now) if now else None
    pediatric = age is not None and age < kb.value("kdigo_pediatric_age_below")
    ther = therapeutic_range(kb, contexts, opts.jurisdiction)

    # --- kidney (C5) -------------------------------------------------------
    kidney, kstate = _kidney(kb, rec, opts, now, out, pediatric)

    # --- magnesium status (C2) --------------------------------------------------
    mg_m = rec.latest("magnesium")
    mg_val = mg_m.value if mg_m else None
    mg_res: MagnesiumResult | None = None
    status: str | None = None
    if mg_m is not None:
        status = mgs.status(kb, mg_m.value)
        grade = mgs.ctcae_grade(kb, mg_m.reported_value, mg_m.reported_unit)
        caveats = _caveats(kb, rec, status)
        ion = rec.latest("ionized_magnesium")
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
        if status == "low":
            sev: Severity = "critical" if grade.grade >= 3 else "warning"
            out.add("hypomagnesemia", sev,
                    f"Serum Mg {mg_res.reported} ({mg_res.value_mg_dl:.2f} mg/dL, "
                    f"{mg_res.value_mmol_l:.2f} mmol/L): low, CTCAE grade {grade.grade} "
                    f"({grade.label})", [rr, ctcae], grade=grade.grade)
        elif status == "high":
            tox = mgs.toxicity_levels(kb, mg_m.value)
            sev = "critical" if tox or grade.grade >= 3 else "warning"
            msg = (f"Serum Mg {mg_res.reported} ({mg_res.value_mg_dl:.2f} mg/dL): high, CTCAE "
                   f"grade {grade.grade}")
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
    else:
        out.warnings.append("No serum magnesium in the record: status, grade and plan need one")

    # --- cause work-up (C3) ---------------------------------------------------------
    drugs = workup.drug_causes(kb, rec.medications)
    for med, drug in drugs:
        out.add("drug_mg_loss", "warning" if status == "low" else "info",
                f"{drug.ingredient} ({drug.drug_class}, {med.source_id}): {drug.mechanism}",
                [drug.source], drug=drug.ingredient, effect=drug.effect)
    risk_conditions = _risk_conditions(kb, rec)
    if status == "low":
        _urine_workup(kb, rec, out, kidney, now)
    # --- normal serum, likely depleted (C2) -------------------------------------------
    k_m, ca_low = rec.latest("potassium"), _calcium_low(kb, rec)
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
    if ca_low and mg_low_or_depleted:
        pth = rec.latest("pth")
        pth_hi = kb.electrolytes.ranges["pth"].high
        if pth is None:
            pth_text = "PTH not measured"
        else:
            verdict = "inappropriately normal or low" if pth.value <= pth_hi else "raised"
            pth_text = f"PTH {pth.value:.0f} pg/mL ({verdict})"
        out.add("mg_dependent_hypocalcemia", "warning",
                f"Hypocalcaemia with low Mg; {pth_text}. Mg deficiency impairs PTH secretion "
                "and causes PTH resistance: Ca stays refractory until Mg is replaced",
                [kb.threshold("pth_impaired_mg_below").source, kb.electrolytes.ranges["pth"].source])
    if mg_val is not None:
        sym = kb.threshold("mg_symptomatic_below")
        if status == "low" and mg_val < convert(sym.value, "magnesium", sym.unit, "mg/dL"):
            out.add("neuromuscular_risk", "critical",
                    f"Mg {mg_val:.2f} mg/dL < {sym.value:g} {sym.unit}: tremor, tetany and seizures "
                    "(loss of the NMDA-receptor Mg block); check Chvostek/Trousseau, ECG", [sym.source])
        elif status == "high" and mgs.toxicity_levels(kb, mg_val):
            t = kb.threshold(mgs.toxicity_levels(kb, mg_val)[-1])
            # Toxicity thresholds still apply inside a therapeutic range (eclampsia), where
            # reduced reflexes are the sign to watch rather than an emergency.
            expected = ther is not None and mg_val <= ther[1]
            out.add("neuromuscular_risk", "warning" if expected else "critical",
                    f"Mg {mg_val:.2f} mg/dL: {t.meaning.lower()}; check reflexes and respiration"
                    + (" before each dose (expected at therapeutic levels)" if expected else ""),
                    [t.source])
        qtc = rec.latest("qtc")
        qt = kb.threshold("qtc_prolonged_above")
        if status == "low" and qtc is not None and qtc.value > qt.value:
            out.add("arrhythmia_risk", "critical",
                    f"QTc {qtc.value:.0f} ms > {qt.value:g} ms with low Mg: torsades risk", [qt.source])
        elif status == "high" and "mg_toxicity_cardiac_above" in mgs.toxicity_levels(kb, mg_val):
            t = kb.threshold("mg_toxicity_cardiac_above")
            out.add("arrhythmia_risk", "critical", f"Mg {mg_val:.2f} mg/dL: {t.meaning.lower()}",
                    [t.source])

    # --- AKI (C5) and Mg-AKI evidence (C6) ----------------------------------------
    if kidney.aki_stage >= 1:
        src = kb.threshold("kdigo_abs_rise").source
        out.add("aki", "critical" if kidney.aki_stage >= 2 else "warning",
                f"KDIGO AKI stage {kidney.aki_stage} ({kidney.criterion}); current stage "
                f"{kidney.current_stage}", [src], stage=kidney.aki_stage)
    values = {"magnesium": mg_val} if mg_val is not None else {}
    ion = rec.latest("ionized_magnesium")
    if ion is not None:
        values["ionized_magnesium"] = ion.value
    matches, skipped = risk.match_evidence(kb, contexts, values, kidney.aki_stage >= 1, age)
    for m in matches:
        s = m.study
        marker_only = s.timing == "stay_median"  # includes values after AKI: severity, not prediction
        out.add("mg_aki_risk", "info" if marker_only else "warning",
                f"{s.population}: Mg {m.region.label} — {s.finding}"
                + (f"; {m.region.effect}" if m.region.effect else "")
                + f" ({s.design}, n={s.n}; outcome: {s.outcome}). Association, not a probability.",
                [s.source], study=s.id)
    for s, reason in skipped:
        out.warnings.append(f"Evidence for {s.population} ({s.id}) not applied: {reason}")

    # --- monitoring gap (C7) -------------------------------------------------------
    nephrotoxic = [d for d in (kb.drug(m.ingredient) for m in rec.medications if m.ingredient and m.active)
                   if d and (d.nephrotoxic or d.effect == "renal_wasting")]
    gap = kb.threshold("mg_monitoring_gap_hours")
    high_risk = bool(contexts & set(kb.magnesium.high_risk_contexts)) or bool(nephrotoxic) or kidney.aki_stage >= 1
    if high_risk and now is not None and (mg_m is None or now - mg_m.time > timedelta(hours=gap.value)):
        last = ("no serum Mg on record" if mg_m is None
                else f"last serum Mg {(now - mg_m.time).total_seconds() / 3600:.0f} h ago")
        out.add("monitoring_gap", "warning",
                f"High-risk patient (ICU/AKI/nephrotoxic or Mg-wasting drugs) and {last}: "
                f"measure Mg (no value in {gap.value:g} h)", [kb.magnesium.high_risk_source, gap.source])

    # --- plan (C8) ------------------------------------------------------------------
    weight = rec.latest("weight")
    po = plan_repletion(kb, PlanRequest(mg_mg_dl=mg_val, contexts=contexts, nomogram_id=opts.nomogram,
                                        kidney=kstate, weight_kg=weight.value if weight else None,
                                        jurisdiction=opts.jurisdiction, pediatric=pediatric,
                                        operation_hours=opts.operation_hours), status)
    if po.adjusted:
        out.add("renal_dose_adjustment", "warning", "; ".join(po.adjusted),
                po.adjusted_sources, egfr=kidney.egfr, crcl=kidney.crcl)
    if po.holds:
        out.add("hold_magnesium", "critical" if status == "high" else "warning",
                "; ".join(r.meaning for r in po.holds), [r.source for r in po.holds])
    out.warnings.extend(po.warnings)
    plan = po.plan
    if not pediatric:  # the encoded PK models are adult (pregnant women): no prediction for a child
        pk = predict_plan(kb, plan, mg_val, weight.value if weight else None, kstate.crcl or kstate.egfr,
                          ther[1] if ther else None)
        if pk is not None:
            plan = plan.model_copy(update={"prediction": pk})
            tox_t = kb.threshold(toxicity_level_mg_dl(ther[1] if ther else 0.0, kb)[0])
            if pk.overshoot and pk.p_peak_above_toxicity is not None:
                out.add("pk_overshoot_risk", "warning",
                        f"Population PK ({pk.model}) predicts a {pk.p_peak_above_toxicity:.0%} chance that the "
                        f"planned doses raise serum Mg above {pk.toxicity_mg_dl:.2f} mg/dL ({tox_t.meaning.lower()}); "
                        f"typical peak {pk.peak_mg_dl:.2f} mg/dL at {pk.peak_time_h:g} h. Models from pregnant "
                        "women with a renal scaling that is an assumption: check levels early",
                        [kb.pk_model(pk.model).source, tox_t.source], peak_mg_dl=pk.peak_mg_dl,
                        p_peak_above_toxicity=pk.p_peak_above_toxicity)
    return Assessment(patient_id=rec.patient_id, as_of=_iso(now), contexts=sorted(contexts),
                      magnesium=mg_res, kidney=kidney, findings=out.findings, plan=plan,
                      warnings=out.warnings, disclaimer=DISCLAIMER, knowledge_version=kb.version)


def _kidney(kb: KnowledgeBase, rec: PatientRecord, opts: AssessOptions, now: datetime | None,
            out: _Out, pediatric: bool) -> tuple[KidneyResult, KidneyState]:
    cr = rec.series("creatinine")
    height = rec.latest("height")
    peds_height = height.value if (pediatric and height) else None
    stages = kd.stage_creatinine(kb, [(m.time, m.value) for m in cr],
                                 baseline=opts.baseline_creatinine_mg_dl, rrt_times=rec.rrt_times,
                                 pediatric_height_cm=peds_height)
    weight = rec.latest("weight")
    uo = rec.series("urine_output")
    ustages = (kd.stage_urine_output(kb, [(m.time, m.value) for m in uo], weight.value)
               if weight and uo else [])
    if uo and not weight:
        out.warnings.append("Urine output present but no body weight: UO criteria not applied")
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
    ref = peak_c.reference if peak_c and peak_c.stage >= 1 else (stages[-1].reference if stages else None)
    method = (peak_c.reference_method if peak_c and peak_c.stage >= 1
              else stages[-1].reference_method if stages else "no creatinine")
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
        baseline=Baseline(value_mg_dl=round(ref, 3) if ref else None, method=method),
        creatinine_mg_dl=round(last.value, 3) if last else None,
        creatinine_umol_l=round(convert(last.value, "creatinine", "mg/dL", "umol/L"), 1) if last else None,
        egfr=egfr, egfr_note=egfr_note, crcl=crcl, crcl_note=crcl_note, kinetic_egfr=kgfr,
        rrt=bool(rec.rrt_times),
    )
    # Kinetic GFR is the better dosing estimate while creatinine moves.
    dosing_gfr = kgfr if (stage and kgfr is not None) else egfr
    return result, KidneyState(egfr=dosing_gfr, crcl=crcl, aki_stage=stage,
                               creatinine_mg_dl=last.value if last else None,
                               rrt=bool(rec.rrt_times), anuric=anuric)


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


def _caveats(kb: KnowledgeBase, rec: PatientRecord, status: str) -> list[tuple[str, Source]]:
    out: list[tuple[str, Source]] = []
    alb = rec.latest("albumin")
    t = kb.threshold("albumin_low_below")
    if alb is not None and alb.value < t.value:
        out.append((f"Albumin {alb.value:.1f} g/dL: {t.meaning}; measure ionized Mg if the total "
                    "is borderline", t.source))
    ph = rec.latest("ph")
    t = kb.threshold("ph_alkalemia_above")
    if ph is not None and ph.value > t.value:
        out.append((f"pH {ph.value:.2f}: {t.meaning}; symptoms may occur at a 'normal' total Mg",
                    t.source))
    return out


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


def _calcium_low(kb: KnowledgeBase, rec: PatientRecord) -> bool:
    ica = rec.latest("ionized_calcium")
    if ica is not None:
        return ica.value < kb.electrolytes.ranges["ionized_calcium"].low
    ca = rec.latest("calcium")
    if ca is None:
        return False
    alb = rec.latest("albumin")
    corrected = ca.value
    if alb is not None:
        ref = kb.value("calcium_correction_albumin_reference")
        corrected += kb.value("calcium_correction_per_albumin") * (ref - alb.value)
    return corrected < kb.electrolytes.ranges["calcium"].low


def _hours_since(times: list[datetime], at: datetime | None) -> float | None:
    past = [(at - t).total_seconds() / 3600 for t in times if at is not None and t <= at]
    return min(past) if past else None


def _urine_workup(kb: KnowledgeBase, rec: PatientRecord, out: _Out, kidney: KidneyResult,
                  now: datetime | None) -> None:
    iv = [m.start for m in rec.medications
          if m.ingredient == "magnesium sulfate" and m.kind == "administration" and m.start]
    hours_iv = _hours_since(iv, now)
    readings = []
    u_mg, u_cr = rec.latest("urine_magnesium"), rec.latest("urine_creatinine")
    p_mg, p_cr = rec.latest("magnesium"), rec.latest("creatinine")
    if u_mg and u_cr and p_mg and p_cr:
        fe = workup.fe_mg(kb, u_mg.value, p_cr.value, p_mg.value, u_cr.value)
        readings.append((workup.interpret_fe_mg(kb, fe, kidney.egfr, kidney.aki_stage,
                                                _hours_since(iv, u_mg.time)),
                         kb.threshold("fe_mg_renal_wasting_above").source, "FE_Mg"))
    u24 = rec.latest("urine_magnesium_24h")
    if u24:
        readings.append((workup.interpret_urine_24h(kb, u24.value, kidney.egfr, kidney.aki_stage, hours_iv),
                         kb.threshold("urine_mg_24h_wasting_above").source, "24-h urine Mg"))
    for r, src, name in readings:
        if r.verdict == "renal_wasting":
            out.add("renal_mg_wasting", "warning",
                    f"{r.reason}: the kidney is losing Mg despite a low serum level (drugs such as "
                    "cisplatin, aminoglycosides, diuretics, calcineurin inhibitors; Gitelman)",
                    [src], value=round(r.value, 2), index=name)
        elif r.verdict == "extrarenal":
            out.add("extrarenal_mg_loss", "info",
                    f"{r.reason}: renal conservation intact, so the loss is extrarenal "
                    "(GI loss, poor intake, PPI)", [kb.threshold("fe_mg_extrarenal_below").source],
                    value=round(r.value, 2), index=name)
        elif r.verdict == "not_interpretable":
            out.add("urine_index_not_interpretable", "info", f"{name} {r.value:.1f} not interpreted: {r.reason}",
                    [kb.threshold("urine_index_min_egfr").source], index=name)
    if any(f.code == "renal_mg_wasting" for f in out.findings):
        k = rec.latest("potassium")
        u_ca = rec.latest("urine_calcium")
        t = kb.threshold("gitelman_urine_ca_cr_below")
        if k and k.value < kb.value("hypokalemia_mg_first_k_below") and u_ca and u_cr:
            ratio = workup.urine_ca_cr(u_ca.value, u_cr.value)
            if ratio < t.value:
                out.add("gitelman_like_pattern", "info",
                        f"Renal Mg wasting with hypokalaemia and hypocalciuria (urine Ca/Cr {ratio:.2f} "
                        f"< {t.value:g} mmol/mmol): Gitelman-like pattern (or thiazide effect); "
                        "consider genetic testing if no drug explains it", [t.source],
                        urine_ca_cr=round(ratio, 3))
