"""Surveillance stages as portable SQL (DuckDB by default, Spark SQL unchanged but for `Dialect`).

Each stage is a SELECT over the canonical tables (``events``, ``encounters``,
``weights``, ``medications``, ``contexts``) or over earlier stages; the runner
materialises them in order. Numbers come from the knowledge base by id.
The KDIGO rules mirror ``mgaki.engine.kidney`` (the single-patient reference
they are differential-tested against); the choices a cohort pipeline adds
(encounter assignment, pre-admission baseline, recovery, alert de-duplication)
are documented in docs/surveillance.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mgaki.engine.kidney import THRESHOLD_EPS, ZERO_ML
from mgaki.knowledge import KnowledgeBase
from mgaki.knowledge.schema import DeltaRule
from mgaki.surveillance.dialect import Dialect
from mgaki.units import convert, normalize_unit

__all__ = ["OPEN_END", "H", "Stage", "stages"]

OPEN_END = 253402300799  # 9999-12-31T23:59:59: an encounter with no end is still open
_EPS = THRESHOLD_EPS  # the engine's float tolerances: the SQL decides exactly as engine/kidney.py
_VOL_EPS = ZERO_ML
H = 3600
DAY = 86400


@dataclass(frozen=True)
class Stage:
    name: str
    sql: str
    output: bool = False  # a result table the user gets (others are intermediate)


def stages(kb: KnowledgeBase, d: Dialect, as_of_epoch: int, baseline_rule: str | None = None) -> list[Stage]:
    """All stages in dependency order; `as_of_epoch` closes open encounters and monitoring gaps.

    `baseline_rule` (kidney.yaml ``baseline_rules``; default ``nhs_england``) chooses the reference
    creatinine of the ratio criterion, as ``engine.kidney.stage_creatinine(rule=...)`` does."""
    v = kb.value
    rule = kb.baseline_rule(baseline_rule).id
    ep = d.epoch
    ratio1, ratio2, ratio3 = v("kdigo_ratio_stage1"), v("kdigo_ratio_stage2"), v("kdigo_ratio_stage3")
    w48, w7d = int(v("kdigo_abs_window") * H), int(v("kdigo_ratio_window") * H)
    bl_min, bl_max = int(v("baseline_lookback_min_days") * DAY), int(v("baseline_lookback_max_days") * DAY)
    uo_h1, uo_h2, uo_h3 = v("kdigo_uo_stage1_hours"), v("kdigo_uo_stage2_hours"), v("kdigo_uo_stage3_hours")
    anuria_h = v("kdigo_anuria_hours")
    rr = kb.magnesium.reference_range
    mg_lo, mg_hi = (convert(x, "magnesium", rr.unit, "mg/dL") for x in (rr.low, rr.high))
    out: list[Stage] = []

    def add(name: str, sql: str, output: bool = False) -> None:
        out.append(Stage(name, sql, output))

    # --- encounters -----------------------------------------------------------------------
    # Hospital encounters carry the episodes; an ICU stay belongs to its parent admission.
    # An encounter may arrive twice (open, then closed): the closed version wins.
    add("enc", """
        SELECT subject_id, encounter_id, kind, start, "end", parent_id FROM (
          SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id, encounter_id
                                       ORDER BY CASE WHEN "end" IS NULL THEN 1 ELSE 0 END, "end" DESC) AS rn
          FROM encounters) x WHERE rn = 1""")
    # The emergency-department visit that led to an admission belongs to it (docs/surveillance.md): an ED
    # encounter naming the admission (MIMIC edregtime, FHIR Encounter.partOf, OMOP visit_detail), or an ED
    # visit the admission started during or within `ed_admission_link_hours` after (OMOP: preceding visit).
    link = int(v("ed_admission_link_hours") * H)
    attach = int(v("pre_admission_attach_hours") * H)
    add("ed_link", f"""
        SELECT subject_id, ed_id, adm_id, ed_t0 FROM (
          SELECT e.subject_id, e.encounter_id AS ed_id, a.encounter_id AS adm_id, {ep('e.start')} AS ed_t0,
                 ROW_NUMBER() OVER (PARTITION BY e.subject_id, e.encounter_id
                   ORDER BY CASE WHEN e.parent_id = a.encounter_id THEN 0 ELSE 1 END, a.start, a.encounter_id) AS rn
          FROM enc e JOIN enc a ON a.subject_id = e.subject_id AND a.encounter_id <> e.encounter_id
            AND a.kind NOT IN ('icu', 'emergency') AND a.parent_id IS NULL
          WHERE e.kind = 'emergency' AND (e.parent_id = a.encounter_id OR (e.parent_id IS NULL
            AND {ep('a.start')} >= {ep('e.start')}
            AND {ep('a.start')} <= COALESCE({ep('e."end"')}, {ep('e.start')}) + {link}))) x
        WHERE rn = 1""")
    # t0: admission; ta0: from when a row naming no encounter is attached to it (the linked ED visit's
    # start, else `pre_admission_attach_hours` before admission)
    add("hosp", f"""
        SELECT h.subject_id, h.encounter_id, h.start, h."end", {ep('h.start')} AS t0,
               COALESCE({ep('h."end"')}, {OPEN_END}) AS t1,
               CASE WHEN l.ed_t0 IS NULL THEN {ep('h.start')} - {attach}
                    WHEN l.ed_t0 < {ep('h.start')} THEN l.ed_t0 ELSE {ep('h.start')} END AS ta0
        FROM enc h LEFT JOIN (SELECT subject_id, adm_id, MIN(ed_t0) AS ed_t0 FROM ed_link
                              GROUP BY subject_id, adm_id) l
          ON l.subject_id = h.subject_id AND l.adm_id = h.encounter_id
        WHERE (h.kind <> 'icu' OR h.parent_id IS NULL)
          AND NOT EXISTS (SELECT 1 FROM ed_link x WHERE x.subject_id = h.subject_id AND x.ed_id = h.encounter_id)""")
    add("icu", f"""
        SELECT subject_id, encounter_id, parent_id, {ep('start')} AS t0,
               COALESCE({ep('"end"')}, {OPEN_END}) AS t1
        FROM enc WHERE kind = 'icu'""")
    # A row belongs to the hospital encounter its source names (an ICU stay or a linked ED visit: that
    # admission); a row naming none, or one mgaki does not know, to the latest-starting one containing its
    # time, else to the one whose pre-admission part [ta0, t0) contains it (ED labs without an admission id).
    add("ev_named", f"""
        SELECT e.subject_id, e.time, {ep('e.time')} AS t, e.analyte, e.numeric_value AS value,
               COALESCE(h.encounter_id, i.parent_id, l.adm_id) AS encounter_id, e.encounter_id AS named
        FROM events e LEFT JOIN hosp h ON h.subject_id = e.subject_id AND h.encounter_id = e.encounter_id
        LEFT JOIN icu i ON i.subject_id = e.subject_id AND i.encounter_id = e.encounter_id
        LEFT JOIN ed_link l ON l.subject_id = e.subject_id AND l.ed_id = e.encounter_id""")
    add("ev_enc", """
        SELECT subject_id, time, t, analyte, value, encounter_id FROM ev_named WHERE encounter_id IS NOT NULL
        UNION ALL
        SELECT subject_id, time, t, analyte, value, encounter_id FROM (
          SELECT e.subject_id, e.time, e.t, e.analyte, e.value, h.encounter_id,
                 ROW_NUMBER() OVER (PARTITION BY e.subject_id, e.t, e.analyte, e.value, e.named, e.rid
                                    ORDER BY CASE WHEN e.t >= h.t0 THEN 0 ELSE 1 END, h.t0 DESC,
                                             h.encounter_id) AS rn
          FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY t) AS rid
                FROM ev_named WHERE encounter_id IS NULL) e
          LEFT JOIN hosp h ON h.subject_id = e.subject_id AND e.t BETWEEN h.ta0 AND h.t1
        ) x WHERE rn = 1""")
    out += _specimen_stages(kb, d)
    # Pre-admission baseline: median creatinine 7-365 days before admission (Siew 2015).
    add("baseline", f"""
        SELECT h.subject_id, h.encounter_id, h.t0, h.t1,
               {d.median('e.value')} AS preadmission_baseline, COUNT(e.value) AS n_baseline_values
        FROM hosp h LEFT JOIN (SELECT DISTINCT subject_id, t, value FROM ev_named en WHERE analyte = 'creatinine'
                               AND NOT EXISTS (SELECT 1 FROM spec_flags f WHERE f.subject_id = en.subject_id
                                               AND f.analyte = en.analyte AND f.t = en.t AND f.value = en.value)) e
             ON e.subject_id = h.subject_id AND e.t BETWEEN h.t0 - {bl_max} AND h.t0 - {bl_min}
        GROUP BY h.subject_id, h.encounter_id, h.t0, h.t1""")
    # Maintenance dialysis (ESKD, docs/kdigo.md#maintenance-dialysis): KDIGO staging does not apply to the
    # encounter. Evidence: a maintenance_dialysis context (a diagnosis, problem-list Condition or flag) of
    # this encounter or recorded by its end, or an RRT session outside every hospital encounter within
    # the look-back before admission (outpatient dialysis).
    md = kb.kidney.maintenance_dialysis
    md_ctx, md_back = md.context.replace("'", "''"), int(md.rrt_lookback_days * DAY)
    vc = d.string_type
    add("eskd_ev", f"""
        SELECT c.subject_id, c.encounter_id AS c_enc, COALESCE({ep('c.time')}, ce.t0) AS ct,
               'context ' || c.context || ' (' || COALESCE(c.source, 'no source') || ')' AS why
        FROM contexts c LEFT JOIN hosp ce ON ce.subject_id = c.subject_id AND ce.encounter_id = c.encounter_id
        WHERE c.context = '{md_ctx}'""")
    add("eskd", f"""
        SELECT subject_id, encounter_id, MIN(why) AS why FROM (
          SELECT h.subject_id, h.encounter_id, x.why FROM hosp h JOIN eskd_ev x ON x.subject_id = h.subject_id
            AND (x.c_enc = h.encounter_id OR x.ct IS NULL OR x.ct <= h.t1)
          UNION ALL
          SELECT h.subject_id, h.encounter_id,
                 'RRT session outside hospital at ' || CAST(e.time AS {vc}) || ' (before admission)'
          FROM hosp h JOIN ev_enc e ON e.subject_id = h.subject_id AND e.analyte = 'rrt'
            AND e.encounter_id IS NULL AND e.t >= h.t0 - {md_back} AND e.t < h.t0) x
        GROUP BY subject_id, encounter_id""")
    # a value outside every encounter: not applicable once the patient is known to be on dialysis
    add("eskd_subject", """
        SELECT subject_id, MIN(ct) AS first_t, MAX(CASE WHEN ct IS NULL THEN 1 ELSE 0 END) AS timeless
        FROM eskd_ev GROUP BY subject_id""")
    add("rrt_first", """
        SELECT subject_id, encounter_id, MIN(t) AS first_rrt_t FROM ev_enc
        WHERE analyte = 'rrt' AND encounter_id IS NOT NULL GROUP BY subject_id, encounter_id""")

    # --- KDIGO creatinine ------------------------------------------------------------------
    # Identical results count once; the windows hold strictly earlier values (1 PRECEDING).
    cr = """
        SELECT DISTINCT c.subject_id, c.encounter_id, c.time, c.t, c.value,
               b.preadmission_baseline AS baseline, r.first_rrt_t,
               CASE WHEN x.encounter_id IS NOT NULL OR (c.encounter_id IS NULL AND s.subject_id IS NOT NULL
                                                        AND (s.timeless = 1 OR s.first_t <= c.t))
                    THEN 1 ELSE 0 END AS on_dialysis
        FROM (SELECT subject_id, encounter_id, time, t, value FROM ev_enc e WHERE analyte = 'creatinine'
              AND NOT EXISTS (SELECT 1 FROM spec_flags f WHERE f.subject_id = e.subject_id
                              AND f.analyte = 'creatinine' AND f.t = e.t AND f.value = e.value)) c
        LEFT JOIN baseline b ON b.subject_id = c.subject_id AND b.encounter_id = c.encounter_id
        LEFT JOIN rrt_first r ON r.subject_id = c.subject_id AND r.encounter_id = c.encounter_id
        LEFT JOIN eskd x ON x.subject_id = c.subject_id AND x.encounter_id = c.encounter_id
        LEFT JOIN eskd_subject s ON s.subject_id = c.subject_id"""
    # One statement from the windows to the stage (nested selects, no intermediate tables).
    add("cr_win", f"""
        SELECT *,
          MIN(value) OVER (PARTITION BY subject_id ORDER BY t RANGE BETWEEN {w48} PRECEDING AND 1 PRECEDING)
            AS min48,
          MIN(value) OVER (PARTITION BY subject_id ORDER BY t RANGE BETWEEN {w7d} PRECEDING AND 1 PRECEDING)
            AS min7d,
          MIN(value) OVER (PARTITION BY subject_id, encounter_id ORDER BY t
                           RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS run_min
        FROM ({cr}) c""")
    # NHS England RV2: the median of the values more than 7 days and at most 365 days before a value that
    # has none in the prior 7 days (identical results count once); computed only for those values.
    add("cr_rv2", f"""
        SELECT c.subject_id, c.t, {d.median('o.value')} AS rv2, COUNT(*) AS rv2_n, MAX(o.t) AS rv2_t
        FROM (SELECT DISTINCT subject_id, t FROM cr_win WHERE min7d IS NULL) c
        JOIN (SELECT DISTINCT subject_id, t, value FROM ev_enc WHERE analyte = 'creatinine') o
          ON o.subject_id = c.subject_id AND o.t < c.t - {w7d} AND o.t >= c.t - {bl_max}
        GROUP BY c.subject_id, c.t""")
    if rule == "nhs_england":
        reference = ("CASE WHEN min7d IS NOT NULL THEN min7d ELSE rv2 END",
                     "CASE WHEN min7d IS NOT NULL THEN 'lowest_prior_7d' WHEN rv2 IS NOT NULL THEN 'median_8_365d' "
                     "ELSE 'none' END")
        src = """(SELECT w.*, r.rv2, r.rv2_n, r.rv2_t FROM cr_win w
                  LEFT JOIN cr_rv2 r ON r.subject_id = w.subject_id AND r.t = w.t)"""
    elif rule == "kdigo_7day":
        reference = ("min7d", "CASE WHEN min7d IS NOT NULL THEN 'lowest_prior_7d' ELSE 'none' END")
        src = "cr_win"
    else:  # outpatient_median: the lower of the prior 7 days' lowest and the pre-admission median
        reference = ("CASE WHEN min7d IS NOT NULL AND (baseline IS NULL OR min7d <= baseline) THEN min7d "
                     "ELSE baseline END",
                     "CASE WHEN min7d IS NOT NULL AND (baseline IS NULL OR min7d <= baseline) THEN 'lowest_prior_7d' "
                     "WHEN baseline IS NOT NULL THEN 'preadmission_median' ELSE 'none' END")
        src = "cr_win"
    ref = f"""
        SELECT *, {reference[0]} AS reference, {reference[1]} AS reference_method,
          COALESCE(baseline, run_min) AS recovery_baseline,
          CASE WHEN baseline IS NOT NULL THEN 'preadmission_median' ELSE 'lowest_in_encounter_so_far' END
            AS recovery_baseline_method
        FROM {src} w"""
    stage0 = f"""
        SELECT *,
          CASE WHEN min48 IS NOT NULL AND value - min48 >= {v('kdigo_abs_rise')} - {_EPS} THEN 1 ELSE 0 END
            AS abs_stage,
          CASE WHEN reference IS NULL THEN 0
               WHEN value / reference >= {ratio3} - {_EPS} THEN 3
               WHEN value / reference >= {ratio2} - {_EPS} THEN 2
               WHEN value / reference >= {ratio1} - {_EPS} THEN 1 ELSE 0 END AS ratio_stage
        FROM ({ref}) r"""
    md_status = md.status.replace("'", "''")
    add("kdigo_creatinine", f"""
        SELECT subject_id, encounter_id, time, t, value, '{rule}' AS baseline_rule, reference, reference_method,
               value / reference AS ratio, value - min48 AS rise_48h, recovery_baseline, recovery_baseline_method,
          CASE WHEN on_dialysis = 1 THEN '{md_status}' ELSE 'applicable' END AS kdigo_status,
          CASE WHEN on_dialysis = 1 THEN NULL
               WHEN first_rrt_t IS NOT NULL AND t >= first_rrt_t THEN 3
               WHEN GREATEST(abs_stage, ratio_stage) >= 1 AND value >= {v('kdigo_scr_stage3')} THEN 3
               ELSE GREATEST(abs_stage, ratio_stage) END AS stage,
          CASE WHEN on_dialysis = 1 THEN NULL
               WHEN first_rrt_t IS NOT NULL AND t >= first_rrt_t THEN 'rrt'
               WHEN GREATEST(abs_stage, ratio_stage) >= 1 AND value >= {v('kdigo_scr_stage3')}
                    AND GREATEST(abs_stage, ratio_stage) < 3 THEN 'scr_ge_4_during_aki'
               WHEN ratio_stage > abs_stage THEN 'ratio_' || reference_method
               WHEN abs_stage = 1 THEN 'rise_0.3_48h' END AS criterion
        FROM ({stage0}) s""", output=True)

    # --- KDIGO urine output ----------------------------------------------------------------
    # Volumes charted at the same time are summed (two drains, one hour); each charted volume
    # accrued since the previous charting of the same stay.
    # Bladder irrigant instilled is not urine: it is subtracted from the output charted with it (the
    # nearest output charting within uo_irrigant_pair_hours, else its own time), so windows hold
    # output - irrigant in (docs/kdigo.md#irrigation).
    pair = int(v("uo_irrigant_pair_hours") * H)
    add("uo_irr", f"""
        SELECT subject_id, encounter_id, COALESCE(out_t, t) AS t, COALESCE(out_time, time) AS time, value FROM (
          SELECT r.subject_id, r.encounter_id, r.t, r.time, r.value, o.t AS out_t, o.time AS out_time,
                 ROW_NUMBER() OVER (PARTITION BY r.subject_id, r.rid ORDER BY ABS(o.t - r.t), o.t) AS rn
          FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY t, value, encounter_id) AS rid
                FROM ev_enc WHERE analyte = 'urine_irrigant') r
          LEFT JOIN (SELECT subject_id, t, MIN(time) AS time FROM ev_enc
                     WHERE analyte IN ('urine_output', 'urine_irrigant_out') GROUP BY subject_id, t) o
            ON o.subject_id = r.subject_id AND o.t >= r.t - {pair} AND o.t <= r.t + {pair}) x
        WHERE rn = 1""")
    # unknown = 1: an output holding irrigant (urine_irrigant_out) with no instillation netted against it.
    # An interval between chartings longer than uo_max_interval_hours (its volume may have accrued anywhere
    # in it), or with a negative net volume (irrigant not yet drained), makes every window overlapping it
    # not assessable (engine/kidney.py stage_urine_output): long_iv, with the previous charting (pt) and the
    # stay's first, in the same statement (the stay's weight is joined at the end, in kdigo_urine).
    max_gap = int(v("uo_max_interval_hours") * H)
    add("uo_stay", f"""
        SELECT *, CASE WHEN pt IS NOT NULL AND (t - pt > {max_gap} OR vol < -{_VOL_EPS} OR unknown = 1) THEN 1
                       ELSE 0 END AS long_iv FROM (
          SELECT s.*, MIN(s.t) OVER (PARTITION BY s.stay_id) AS first_t,
                 LAG(s.t) OVER (PARTITION BY s.stay_id ORDER BY s.t) AS pt FROM (
        SELECT u.subject_id, u.t, u.time, u.vol, u.unknown, COALESCE(i.encounter_id, u.encounter_id) AS stay_id,
               COALESCE(i.parent_id, u.encounter_id) AS encounter_id FROM (
          SELECT subject_id, encounter_id, t, MIN(time) AS time, SUM(v) AS vol,
                 CASE WHEN MAX(irr_out) = 1 AND MAX(irr_in) = 0 THEN 1 ELSE 0 END AS unknown FROM (
            SELECT subject_id, encounter_id, t, time, value AS v,
                   CASE WHEN analyte = 'urine_irrigant_out' THEN 1 ELSE 0 END AS irr_out, 0 AS irr_in
            FROM ev_enc WHERE analyte IN ('urine_output', 'urine_irrigant_out')
            UNION ALL
            SELECT subject_id, encounter_id, t, time, -value, 0, 1 FROM uo_irr) e
          GROUP BY subject_id, encounter_id, t) u
        LEFT JOIN icu i ON i.subject_id = u.subject_id AND u.t BETWEEN i.t0 AND i.t1
        WHERE COALESCE(i.encounter_id, u.encounter_id) IS NOT NULL) s) x""")
    add("stay_bounds", """
        SELECT stay_id, subject_id, MIN(t) AS first_t, MAX(t) AS last_t FROM uo_stay GROUP BY stay_id, subject_id""")
    # Weight (docs/kdigo.md#weight, engine.kidney.choose_weight): candidates from the look-back before the
    # first charting to the last; with enough of them, one far from their median is rejected as an outlier;
    # then a candidate before an older weight, the latest at or before the first charting, else the first after.
    wt_back = int(v("uo_weight_lookback_days") * DAY)
    wt_frac, wt_min_n = v("uo_weight_outlier_fraction"), v("uo_weight_outlier_min_n")
    add("w_cand", f"""
        SELECT s.stay_id, s.subject_id, s.first_t, w.time AS weight_time, {ep('w.time')} AS wt, w.weight_kg,
               w.source, CASE WHEN {ep('w.time')} >= s.first_t - {wt_back} AND {ep('w.time')} <= s.last_t
                              THEN 1 ELSE 0 END AS in_win
        FROM stay_bounds s JOIN (SELECT DISTINCT subject_id, time, weight_kg, source FROM weights) w
          ON w.subject_id = s.subject_id""")
    add("w_judged", f"""
        SELECT c.*, m.med, COALESCE(m.n, 0) AS n,
               CASE WHEN c.in_win = 1 AND m.n >= {wt_min_n} AND ABS(c.weight_kg - m.med) > {wt_frac} * m.med + {_EPS}
                    THEN 1 ELSE 0 END AS rejected
        FROM w_cand c LEFT JOIN (SELECT stay_id, {d.median('weight_kg')} AS med, COUNT(*) AS n FROM w_cand
                                 WHERE in_win = 1 GROUP BY stay_id) m ON m.stay_id = c.stay_id""")
    add("stay_weight", """
        SELECT stay_id, weight_kg, weight_time, source AS weight_source, n AS weights_considered, n_rejected
        FROM (SELECT *, SUM(rejected) OVER (PARTITION BY stay_id) AS n_rejected,
                     ROW_NUMBER() OVER (PARTITION BY stay_id
                       ORDER BY rejected, 1 - in_win, CASE WHEN wt <= first_t THEN 0 ELSE 1 END,
                                CASE WHEN wt <= first_t THEN -wt ELSE wt END, weight_kg, source) AS rn
              FROM w_judged) x
        WHERE rn = 1""")
    # every weight set aside, with the reason (an output: what the urine-output stage did not use)
    add("uo_weight_rejected", f"""
        SELECT subject_id, stay_id, weight_time AS time, weight_kg, source, med AS median_kg,
               CAST(n AS INTEGER) AS weights_considered,
               'outlier: ' || CAST(ROUND(100 * ABS(weight_kg - med) / med) AS {d.string_type})
                 || '% from the median of the candidate weights' AS reason
        FROM w_judged WHERE rejected = 1""", output=True)
    hours = sorted({uo_h1, uo_h2, uo_h3, anuria_h})
    win_cols, vol_cols = [], []
    # One pass over the chartings: per window length, the sum over [t-h, t] and the frame's first charting
    # (its volume, time and previous charting's time, one struct); for all lengths at once, the latest
    # charting at or before t that ends a long interval: one overlaps (t-h, t] when it is later than t-h.
    first = d.struct(vol="vol", t="t", pt="pt")
    for h in hours:
        sec, k = int(h * H), _k(h)
        frame = f"OVER (PARTITION BY stay_id ORDER BY t RANGE BETWEEN {sec} PRECEDING AND CURRENT ROW)"
        win_cols.append(f"SUM(vol) {frame} AS s{k}, FIRST_VALUE({first}) {frame} AS f{k}")
        # Volume over (t-h, t]: whole intervals ending in the window, the first one prorated;
        # NULL when not assessable (a long interval overlaps the window, or the net is negative).
        fv, ft, fp = f"f{k}.vol", f"f{k}.t", f"f{k}.pt"
        raw = f"s{k} - {fv} + {fv} * CAST({ft} - (t - {sec}) AS DOUBLE) / CAST({ft} - {fp} AS DOUBLE)"
        vol_cols.append(f"CASE WHEN first_t > t - {sec} OR long_t > t - {sec} OR {raw} < -{_VOL_EPS} THEN NULL "
                        f"ELSE {raw} END AS vol{k}")
    win_cols.append("MAX(CASE WHEN long_iv = 1 THEN t END) OVER (PARTITION BY stay_id ORDER BY t "
                    "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS long_t")
    add("uo_win", f"SELECT *, {', '.join(win_cols)} FROM uo_stay WHERE pt IS NOT NULL")
    add("uo_vol", f"SELECT subject_id, encounter_id, stay_id, time, t, vol, {', '.join(vol_cols)} FROM uo_win")
    # KDIGO means any 6 (12, 24) hours, not only windows ending at a charting. Volume is piecewise
    # linear in the window's position, so the least window ending between two chartings starts at
    # an earlier charting: for each charting and window length, the window starting there is
    # evaluated at the first charting that closes it (the moment it is knowable).
    add("uo_cum", """
        SELECT stay_id, t, pt, vol, SUM(CASE WHEN pt IS NULL THEN 0 ELSE vol END)
               OVER (PARTITION BY stay_id ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum,
               SUM(long_iv) OVER (PARTITION BY stay_id ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                 AS cum_long
        FROM uo_stay""")
    starts = " UNION ALL ".join(
        f"SELECT stay_id, t + {int(h * H)} AS e, '{_k(h)}' AS k, cum AS cum_i, cum_long AS cl_i, 0 AS kind,"
        " CAST(NULL AS BIGINT) AS ct, CAST(NULL AS BIGINT) AS cpt, CAST(NULL AS DOUBLE) AS cvol,"
        " CAST(NULL AS DOUBLE) AS ccum, CAST(NULL AS BIGINT) AS ccl FROM uo_cum"
        for h in hours)
    def nxt(col: str) -> str:  # the next charting's value (ties in (e, kind) only among starts: nulls)
        return d.bfill_over(col, "stay_id", ("e", "kind"))
    # Only a window ending strictly between two chartings can be a candidate: one ending on a charting
    # (every window when charting is hourly) or at or after the stay's last charting never is, so those
    # starts, and the chartings of stays left without a start, are dropped before the ordering.
    add("uo_start", f"""
        SELECT s.* FROM ({starts}) s
        JOIN (SELECT stay_id, MAX(t) AS last_t FROM uo_cum GROUP BY stay_id) m
          ON m.stay_id = s.stay_id AND s.e < m.last_t
        WHERE NOT EXISTS (SELECT 1 FROM uo_cum c WHERE c.stay_id = s.stay_id AND c.t = s.e)""")
    cand_vol = "ncum - nvol + nvol * CAST(e - npt AS DOUBLE) / CAST(nt - npt AS DOUBLE) - cum_i"
    add("uo_cand", f"""
        SELECT stay_id, nt AS t, k, MIN({cand_vol}) AS low_vol
        FROM (SELECT stay_id, e, k, cum_i, cl_i, kind,
                {nxt('ct')} AS nt, {nxt('cpt')} AS npt,
                {nxt('cvol')} AS nvol, {nxt('ccum')} AS ncum, {nxt('ccl')} AS ncl
              FROM (SELECT * FROM uo_start UNION ALL
                    SELECT stay_id, t, NULL, NULL, NULL, 1, t, pt, vol, cum, cum_long FROM uo_cum
                    WHERE pt IS NOT NULL AND stay_id IN (SELECT stay_id FROM uo_start)) u) x
        WHERE kind = 0 AND nt IS NOT NULL AND e > npt AND e < nt
          AND ncl - cl_i = 0 AND {cand_vol} >= -{_VOL_EPS}
        GROUP BY stay_id, nt, k""")
    low = ", ".join(f"MIN(CASE WHEN k = '{_k(h)}' THEN low_vol END) AS c{_k(h)}" for h in hours)
    add("uo_cand_min", f"SELECT stay_id, t, {low} FROM uo_cand GROUP BY stay_id, t")
    worst = ", ".join(f"CASE WHEN c.c{_k(h)} IS NULL THEN u.vol{_k(h)} WHEN u.vol{_k(h)} IS NULL THEN c.c{_k(h)} "
                      f"WHEN c.c{_k(h)} < u.vol{_k(h)} THEN c.c{_k(h)} ELSE u.vol{_k(h)} END AS w{_k(h)}"
                      for h in hours)
    add("uo_worst", f"""
        SELECT u.*, {worst} FROM uo_vol u LEFT JOIN uo_cand_min c ON c.stay_id = u.stay_id AND c.t = u.t""")
    r1, r3 = v("kdigo_uo_stage1_rate"), v("kdigo_uo_stage3_rate")
    k1, k2, k3, ka = _k(uo_h1), _k(uo_h2), _k(uo_h3), _k(anuria_h)
    add("kdigo_urine", f"""
        SELECT u.subject_id, u.encounter_id, u.stay_id, u.time, u.t, u.vol AS volume_ml, weight_kg, weight_time,
               weight_source, CAST(weights_considered AS INTEGER) AS weights_considered,
               CAST(weights_rejected AS INTEGER) AS weights_rejected,
               vol{k1} / weight_kg / {uo_h1} AS rate_{k1}h, vol{k2} / weight_kg / {uo_h2} AS rate_{k2}h,
               vol{k3} / weight_kg / {uo_h3} AS rate_{k3}h,
          CASE WHEN x.encounter_id IS NOT NULL THEN '{md_status}' ELSE 'applicable' END AS kdigo_status,
          CASE WHEN x.encounter_id IS NOT NULL OR weight_kg IS NULL THEN NULL
               WHEN w{ka} < {_VOL_EPS} THEN 3
               WHEN w{k3} / weight_kg / {uo_h3} < {r3} THEN 3
               WHEN w{k2} / weight_kg / {uo_h2} < {r1} THEN 2
               WHEN w{k1} / weight_kg / {uo_h1} < {r1} THEN 1 ELSE 0 END AS stage,
          CASE WHEN x.encounter_id IS NOT NULL THEN NULL
               WHEN weight_kg IS NULL THEN 'no_weight'
               WHEN w{ka} < {_VOL_EPS} THEN 'anuria_{ka}h'
               WHEN w{k3} / weight_kg / {uo_h3} < {r3} THEN 'uo_lt_{r3}_{k3}h'
               WHEN w{k2} / weight_kg / {uo_h2} < {r1} THEN 'uo_lt_{r1}_{k2}h'
               WHEN w{k1} / weight_kg / {uo_h1} < {r1} THEN 'uo_lt_{r1}_{k1}h' END AS criterion
        FROM uo_worst u LEFT JOIN eskd x ON x.subject_id = u.subject_id AND x.encounter_id = u.encounter_id
        LEFT JOIN (SELECT stay_id AS w_stay, weight_kg, weight_time, weight_source, weights_considered,
                          n_rejected AS weights_rejected FROM stay_weight) w ON w.w_stay = u.stay_id""",
        output=True)

    # --- AKI episodes ------------------------------------------------------------------------
    # A creatinine stage holds until the next creatinine; a urine-output stage until the next
    # charting but at most the stage-1 window (6 h): when charting stops (ICU discharge), the
    # last oliguric stage must not hold the episode open for ever.
    # Recovery (ADQI 16): creatinine back below 1.5 x baseline, urine output no longer staged, no
    # RRT since the episode began. Baseline for recovery: the pre-admission median, else the lowest
    # creatinine of the encounter so far (never a later value: alerts must not depend on the future).
    # Only encounters with some staged value need the episode machinery (most have none).
    add("pos_enc", """
        SELECT DISTINCT subject_id, encounter_id FROM kdigo_creatinine WHERE stage >= 1 AND encounter_id IS NOT NULL
        UNION
        SELECT DISTINCT subject_id, encounter_id FROM kdigo_urine WHERE stage >= 1""")
    add("asmt", f"""
        SELECT c.subject_id, c.encounter_id, c.time, c.t, 0 AS src, c.stage AS cr_stage,
               CAST(NULL AS INTEGER) AS uo_stage, c.criterion, c.value,
               CASE WHEN c.stage = 0 AND c.value < {ratio1} * c.recovery_baseline THEN 1 ELSE 0 END AS cr_resolved,
               c.recovery_baseline AS rb, c.recovery_baseline_method AS rb_method
        FROM kdigo_creatinine c JOIN pos_enc p ON p.subject_id = c.subject_id AND p.encounter_id = c.encounter_id
        UNION ALL
        SELECT u.subject_id, u.encounter_id, u.time, u.t, 1 AS src, CAST(NULL AS INTEGER), u.stage, u.criterion,
               CAST(NULL AS DOUBLE), CAST(NULL AS INTEGER), CAST(NULL AS DOUBLE), CAST(NULL AS {d.string_type})
        FROM kdigo_urine u JOIN pos_enc p ON p.subject_id = u.subject_id AND p.encounter_id = u.encounter_id
        WHERE u.stage IS NOT NULL""")
    order = "PARTITION BY subject_id, encounter_id ORDER BY t, src"
    add("asmt_ff", f"""
        SELECT *, GREATEST(COALESCE(cr_ff, 0), COALESCE(uo_ff, 0)) AS stage_now,
          CASE WHEN GREATEST(COALESCE(cr_ff, 0), COALESCE(uo_ff, 0)) >= 1 THEN 1
               WHEN (cr_ff IS NULL OR res_ff = 1) AND COALESCE(uo_ff, 0) = 0 THEN 0 END AS state
        FROM (SELECT *,
          {d.ffill('cr_stage')} OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cr_ff,
          {d.ffill('cr_resolved')} OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS res_ff,
          {d.ffill('rb')} OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rb_ff,
          {d.ffill('rb_method')} OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rbm_ff,
          {d.ffill('uo_stage')} OVER (PARTITION BY subject_id, encounter_id ORDER BY t
                                      RANGE BETWEEN {int(uo_h1 * H)} PRECEDING AND CURRENT ROW) AS uo_ff
          FROM asmt) x""")
    # the previous stage (for aki_stage_changes) in the same pass as the previous state: one sort
    add("asmt_ep", f"""
        SELECT *, CAST(SUM(is_start) OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS INTEGER)
                  AS episode
        FROM (SELECT *,
          CASE WHEN state = 1 AND COALESCE(
            {d.ffill('state')} OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) = 0
            THEN 1 ELSE 0 END AS is_start,
          LAG(stage_now) OVER ({order}) AS prev_stage FROM asmt_ff) x""")
    add("asmt_raw", """
        SELECT * FROM (
          SELECT *, MIN(CASE WHEN state = 0 THEN t END) OVER (PARTITION BY subject_id, encounter_id, episode)
                    AS end_t
          FROM asmt_ep WHERE episode > 0) x
        WHERE end_t IS NULL OR t < end_t""")
    # A relapse within `aki_relapse_merge_hours` of recovery continues the episode (no new onset
    # alert); decided at the relapse itself, so it never depends on later data.
    merge = int(v("aki_relapse_merge_hours") * H)
    add("ep_merge", f"""
        SELECT subject_id, encounter_id, episode AS raw_episode,
          SUM(new_group) OVER (PARTITION BY subject_id, encounter_id ORDER BY episode
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS merged
        FROM (SELECT subject_id, encounter_id, episode,
                CASE WHEN LAG(end_t) OVER (PARTITION BY subject_id, encounter_id ORDER BY episode) IS NULL
                       OR onset_t - LAG(end_t) OVER (PARTITION BY subject_id, encounter_id ORDER BY episode)
                          > {merge} THEN 1 ELSE 0 END AS new_group
              FROM (SELECT subject_id, encounter_id, episode, MIN(t) AS onset_t, MIN(end_t) AS end_t
                    FROM asmt_raw GROUP BY subject_id, encounter_id, episode) r) x""")
    add("asmt_in", """
        SELECT a.subject_id, a.encounter_id, a.time, a.t, a.src, a.cr_stage, a.criterion, a.stage_now,
               a.rb_ff, a.rbm_ff, a.end_t, a.episode AS raw_episode, CAST(m.merged AS INTEGER) AS episode,
               CASE WHEN a.is_start = 1 AND NOT EXISTS (
                 SELECT 1 FROM ep_merge p WHERE p.subject_id = a.subject_id AND p.encounter_id = a.encounter_id
                   AND p.merged = m.merged AND p.raw_episode < a.episode) THEN 1 ELSE 0 END AS is_start
        FROM asmt_raw a JOIN ep_merge m ON m.subject_id = a.subject_id AND m.encounter_id = a.encounter_id
          AND m.raw_episode = a.episode""")
    add("aki_episodes", f"""
        SELECT a.subject_id, a.encounter_id, a.episode,
          MIN(a.time) AS onset, MIN(a.t) AS onset_t,
          MAX(CASE WHEN a.is_start = 1 THEN a.criterion END) AS onset_criterion,
          MAX(CASE WHEN a.is_start = 1 THEN a.stage_now END) AS onset_stage,
          MAX(a.stage_now) AS peak_stage,
          COUNT(DISTINCT a.raw_episode) - 1 AS relapses,
          CASE WHEN SUM(CASE WHEN a.end_t IS NULL THEN 1 ELSE 0 END) > 0 THEN NULL
               ELSE {d.from_epoch('MAX(a.end_t)')} END AS recovery,
          SUM(CASE WHEN a.end_t IS NULL THEN 1 ELSE 0 END) = 0 AS recovered,
          CASE WHEN SUM(CASE WHEN a.end_t IS NULL THEN 1 ELSE 0 END) > 0 THEN NULL ELSE MAX(a.end_t) END
            AS recovery_t,
          MAX(CASE WHEN a.cr_stage = 3 AND a.criterion = 'rrt' THEN 1 ELSE 0 END) = 1 AS rrt,
          MAX(CASE WHEN a.is_start = 1 THEN a.rb_ff END) AS baseline,
          MAX(CASE WHEN a.is_start = 1 THEN a.rbm_ff END) AS baseline_method
        FROM asmt_in a
        GROUP BY a.subject_id, a.encounter_id, a.episode""")
    # The reference creatinine behind each episode: that of its first creatinine staged >= 1 (rule, value,
    # how it was chosen, the time of the value it is, or of the latest value of a median, and their number).
    cond = {
        "lowest_prior_7d": f"o.value = k.reference AND o.t >= k.t - {w7d}",
        "median_8_365d": f"o.t < k.t - {w7d} AND o.t >= k.t - {bl_max}",
        "preadmission_median": f"o.t >= h.t0 - {bl_max} AND o.t <= h.t0 - {bl_min}",
    }
    when = " ".join(f"WHEN k.reference_method = '{m}' AND {c} THEN 1" for m, c in cond.items())
    add("ep_ref", f"""
        SELECT k.subject_id, k.encounter_id, a.episode, k.baseline_rule, k.reference, k.reference_method,
               {d.from_epoch(f'MAX(CASE {when} ELSE NULL END * o.t)')} AS reference_time,
               SUM(CASE {when} ELSE 0 END) AS reference_n
        FROM (SELECT subject_id, encounter_id, episode, MIN(t) AS t FROM asmt_in WHERE src = 0 AND cr_stage >= 1
              GROUP BY subject_id, encounter_id, episode) a
        JOIN kdigo_creatinine k ON k.subject_id = a.subject_id AND k.encounter_id = a.encounter_id AND k.t = a.t
        JOIN hosp h ON h.subject_id = k.subject_id AND h.encounter_id = k.encounter_id
        LEFT JOIN (SELECT DISTINCT subject_id, t, value FROM ev_enc WHERE analyte = 'creatinine') o
          ON o.subject_id = k.subject_id AND o.t < k.t AND o.t >= LEAST(k.t, h.t0) - {bl_max}
        GROUP BY k.subject_id, k.encounter_id, a.episode, k.baseline_rule, k.reference, k.reference_method""")
    add("aki_episodes_out", f"""
        SELECT e.subject_id, e.encounter_id, e.episode, e.onset, e.onset_criterion, e.peak_stage,
               p.peak_time, e.relapses, e.recovery, e.recovered, e.rrt, e.baseline, e.baseline_method,
               '{rule}' AS baseline_rule, r.reference, r.reference_method, r.reference_time,
               CAST(r.reference_n AS INTEGER) AS reference_n
        FROM aki_episodes e LEFT JOIN ep_ref r ON r.subject_id = e.subject_id AND r.encounter_id = e.encounter_id
          AND r.episode = e.episode
        JOIN (
          SELECT a.subject_id, a.encounter_id, x.episode, MIN(a.time) AS peak_time
          FROM asmt_in a JOIN aki_episodes x ON x.subject_id = a.subject_id
            AND x.encounter_id = a.encounter_id AND x.episode = a.episode AND a.stage_now = x.peak_stage
          GROUP BY a.subject_id, a.encounter_id, x.episode) p
          ON p.subject_id = e.subject_id AND p.encounter_id = e.encounter_id AND p.episode = e.episode""",
        output=True)
    add("aki_stage_changes", """
        SELECT subject_id, encounter_id, time, stage_now AS stage, criterion, src FROM asmt_ep
        WHERE stage_now <> COALESCE(prev_stage, 0)""", output=True)

    # One row per hospital encounter: whether KDIGO staging applies, and why not.
    add("kidney_status", f"""
        SELECT h.subject_id, h.encounter_id,
               CASE WHEN x.encounter_id IS NOT NULL THEN '{md_status}' ELSE 'applicable' END AS kdigo_status,
               x.why AS status_evidence
        FROM hosp h LEFT JOIN eskd x ON x.subject_id = h.subject_id AND x.encounter_id = h.encounter_id""",
        output=True)

    # --- magnesium trajectories (C7) ----------------------------------------------------------
    chg = int(v("mg_change_window_hours") * H)
    add("mg", f"""
        SELECT subject_id, encounter_id, time, t, value,
          LEAD(t) OVER (PARTITION BY subject_id, encounter_id ORDER BY t, value) AS next_t,
          ROW_NUMBER() OVER (PARTITION BY subject_id, encounter_id ORDER BY t, value) AS i,
          ROW_NUMBER() OVER (PARTITION BY subject_id, encounter_id ORDER BY t DESC, value DESC) AS j,
          MIN(value) OVER (PARTITION BY subject_id, encounter_id ORDER BY t
                           RANGE BETWEEN {chg} PRECEDING AND 1 PRECEDING) AS min_prior,
          MAX(value) OVER (PARTITION BY subject_id, encounter_id ORDER BY t
                           RANGE BETWEEN {chg} PRECEDING AND 1 PRECEDING) AS max_prior
        FROM (SELECT DISTINCT subject_id, encounter_id, time, t, value FROM ev_enc e
              WHERE analyte = 'magnesium' AND encounter_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM spec_held f WHERE f.subject_id = e.subject_id
                                AND f.analyte = 'magnesium' AND f.t = e.t AND f.value = e.value)) x""")
    add("mg_trajectory", f"""
        SELECT g.*, CASE WHEN x.encounter_id IS NOT NULL THEN '{md_status}' ELSE 'applicable' END AS kdigo_status
        FROM (SELECT subject_id, encounter_id, COUNT(*) AS n_measurements,
          MAX(CASE WHEN i = 1 THEN value END) AS first_mg, MIN(value) AS min_mg, MAX(value) AS max_mg,
          MAX(CASE WHEN j = 1 THEN value END) AS last_mg,
          MIN(time) AS first_time, MAX(time) AS last_time,
          CAST(MAX(t) - MIN(t) AS DOUBLE) / {H} AS observed_hours,
          CASE WHEN MAX(t) > MIN(t)
               THEN SUM(value * COALESCE(next_t - t, 0)) / CAST(MAX(t) - MIN(t) AS DOUBLE)
               ELSE AVG(value) END AS time_weighted_mean,
          SUM(CASE WHEN value < {mg_lo} THEN COALESCE(next_t - t, 0) ELSE 0 END) / {d.double(H)} AS hours_below,
          SUM(CASE WHEN value > {mg_hi} THEN COALESCE(next_t - t, 0) ELSE 0 END) / {d.double(H)} AS hours_above,
          CASE WHEN MAX(t) > MIN(t) THEN SUM(CASE WHEN value < {mg_lo} THEN COALESCE(next_t - t, 0) ELSE 0 END)
               / CAST(MAX(t) - MIN(t) AS DOUBLE) END AS share_below,
          CASE WHEN MAX(t) > MIN(t) THEN SUM(CASE WHEN value > {mg_hi} THEN COALESCE(next_t - t, 0) ELSE 0 END)
               / CAST(MAX(t) - MIN(t) AS DOUBLE) END AS share_above,
          MAX(GREATEST(ABS(value - min_prior), ABS(max_prior - value))) AS max_change_24h,
          {d.slope('value', f'CAST(t AS DOUBLE) / {DAY}')} AS slope_per_day
        FROM mg GROUP BY subject_id, encounter_id) g
        LEFT JOIN eskd x ON x.subject_id = g.subject_id AND x.encounter_id = g.encounter_id""", output=True)
    out += _evidence_stages(kb, d)
    out += _alert_stages(kb, d, as_of_epoch, mg_lo, mg_hi)
    return out


def _specimen_stages(kb: KnowledgeBase, d: Dialect) -> list[Stage]:
    """Suspect specimens (issue 13 point 6), row for row as ``mgaki.engine.specimen.review_specimens``.

    ``spec_flags``: each suspect value with the first rule that marks it (infusion, co-dilution, delta check);
    ``spec_held``: every value not trustworthy when drawn (those, plus any jump before its repeat), which the
    alert stages ignore; ``suspect_specimens``: the output, each with its reason and "repeat the sample"."""
    rules = kb.surveillance.specimen
    names = ", ".join(f"'{a}'" for a in rules.analytes)
    # the encounter of each value of an analyte the rules check (the suspects' and the alerts' encounter)
    enc_of = f"""(SELECT subject_id, analyte, t, value, MIN(encounter_id) AS encounter_id
                  FROM ev_enc WHERE analyte IN ({names}) GROUP BY subject_id, analyte, t, value)"""
    vc = d.string_type
    w = "PARTITION BY subject_id, analyte ORDER BY t, value"

    def jump(r: DeltaRule, v: str, ref: str, ref_t: str, t: str, last_rrt: str) -> str:
        # no RRT between the two draws (last_rrt: the latest RRT at or before the later draw)
        conds = [f"{ref} IS NOT NULL", f"{t} - {ref_t} <= {r.within_hours * H:g}",
                 f"({last_rrt} IS NULL OR {last_rrt} < {ref_t})"]
        if r.direction == "rise":
            conds.append(f"{v} - {ref} > 0")
        elif r.direction == "fall":
            conds.append(f"{v} - {ref} < 0")
        if r.abs_change is not None:
            conds.append(f"ABS({v} - {ref}) >= {r.abs_change} - {_EPS}")
        if r.rel_change is not None:
            conds.append(f"{ref} > 0 AND ABS({v} - {ref}) / {ref} >= {r.rel_change} - {_EPS}")
        return " AND ".join(conds)

    def per_analyte(make: Callable[[DeltaRule], str]) -> str:
        if not rules.delta:
            return "0"
        whens = " ".join(f"WHEN analyte = '{r.analyte}' AND {make(r)} THEN 1" for r in rules.delta)
        return f"CASE {whens} ELSE 0 END"

    next_near = per_analyte(lambda r: f"nt - t <= {r.within_hours * H:g}")  # a repeat long after tells nothing
    delta_rule = "CASE " + " ".join(f"WHEN analyte = '{r.analyte}' THEN '{r.id}'" for r in rules.delta) + " END" \
        if rules.delta else "CAST(NULL AS " + vc + ")"
    infusion = " UNION ALL ".join(f"""
        SELECT e.subject_id, e.analyte, e.t, e.value, '{r.id}' AS rule, 'infusion' AS kind, 1 AS prio,
               e.analyte || ' ' || CAST(e.value AS {vc}) || ' drawn during or within {r.after_hours:g} h after an IV '
                 || m.drug || ' infusion: suspect specimen, repeat the sample' AS reason
        FROM spec_seq e JOIN (
          SELECT subject_id, drug, {d.epoch('start')} AS s,
                 COALESCE({d.epoch('"end"')}, {d.epoch('start')} + {int(r.assumed_hours * H)}) AS en
          FROM medications WHERE drug IN ({", ".join(f"'{i}'" for i in r.ingredients)}) AND start IS NOT NULL) m
          ON m.subject_id = e.subject_id AND e.analyte = '{r.analyte}'
         AND e.t >= m.s AND e.t <= m.en + {int(r.after_hours * H)}
        WHERE m.en - m.s <= {int(r.max_infusion_hours * H)} AND (e.p1 IS NULL OR e.value > e.p1 + {r.min_rise})"""
        for r in rules.infusion)
    codil = " UNION ALL ".join(f"""
        SELECT f.subject_id, f.analyte, f.t, f.value, '{c.id}', 'co_dilution', 2,
               f.analyte || ' ' || CAST(f.value AS {vc}) || ' (from ' || CAST(f.p1 AS {vc})
                 || ') fell with other analytes of the same draw: diluted sample suspected, repeat the sample'
        FROM (SELECT * FROM spec_seq WHERE analyte IN ({", ".join(f"'{a}'" for a in c.analytes)})
                AND p1t IS NOT NULL AND t - p1t <= {c.within_hours * H:g} AND p1 > 0
                AND (p1 - value) / p1 >= {c.rel_fall} - {_EPS}) f
        JOIN (SELECT subject_id, t FROM spec_seq WHERE analyte IN ({", ".join(f"'{a}'" for a in c.analytes)})
                AND p1t IS NOT NULL AND t - p1t <= {c.within_hours * H:g} AND p1 > 0
                AND (p1 - value) / p1 >= {c.rel_fall} - {_EPS}
              GROUP BY subject_id, t HAVING COUNT(DISTINCT analyte) >= {c.min_analytes}) g
          ON g.subject_id = f.subject_id AND g.t = f.t
        WHERE NOT EXISTS (SELECT 1 FROM ev_named r WHERE r.subject_id = f.subject_id AND r.analyte = 'rrt'
                          AND r.t >= f.t - {c.within_hours * H:g} AND r.t <= f.t)""" for c in rules.co_dilution)
    empty = f"SELECT CAST(NULL AS {vc}), CAST(NULL AS {vc}), CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), " \
            f"CAST(NULL AS {vc}), CAST(NULL AS {vc}), 0, CAST(NULL AS {vc}) WHERE 1 = 0"
    return [
        Stage("spec_ev", f"""
            SELECT DISTINCT subject_id, analyte, t, time, value FROM ev_named
            WHERE analyte IN ({names}) AND value IS NOT NULL"""),
        # the latest RRT at or before each value (dialysis between two draws explains a change)
        Stage("spec_rrt", """
            SELECT e.subject_id, e.analyte, e.t, e.time, e.value, MAX(r.t) AS last_rrt
            FROM spec_ev e LEFT JOIN (SELECT DISTINCT subject_id, t FROM ev_named WHERE analyte = 'rrt') r
              ON r.subject_id = e.subject_id AND r.t <= e.t
            GROUP BY e.subject_id, e.analyte, e.t, e.time, e.value"""),
        Stage("spec_seq", f"""
            SELECT *, LAG(value) OVER ({w}) AS p1, LAG(t) OVER ({w}) AS p1t, LAG(last_rrt) OVER ({w}) AS p1_rrt,
                   LAG(value, 2) OVER ({w}) AS p2, LAG(t, 2) OVER ({w}) AS p2t, LEAD(value) OVER ({w}) AS nv,
                   LEAD(t) OVER ({w}) AS nt
            FROM spec_rrt"""),
        # delta check: the reference is the previous value or, when that was itself a jump, the closer of it and the
        # value before it (engine/specimen.py)
        Stage("spec_delta", f"""
            SELECT *, {per_analyte(lambda r: jump(r, 'value', 'rv', 'rt', 't', 'last_rrt'))} AS jumped,
                   {delta_rule} AS rule
            FROM (SELECT *, CASE WHEN jp = 1 AND ABS(value - p2) < ABS(value - p1) THEN p2 ELSE p1 END AS rv,
                         CASE WHEN jp = 1 AND ABS(value - p2) < ABS(value - p1) THEN p2t ELSE p1t END AS rt
                  FROM (SELECT *, {per_analyte(lambda r: jump(r, 'p1', 'p2', 'p2t', 'p1t', 'p1_rrt'))} AS jp
                        FROM spec_seq) x) y"""),
        Stage("spec_any", f"""
            {infusion or empty}
            UNION ALL
            {codil or empty}
            UNION ALL
            SELECT subject_id, analyte, t, value, rule,
                   CASE WHEN nv IS NULL THEN 'delta_check_unconfirmed' ELSE 'delta_check' END, 3,
                   analyte || ' ' || CAST(value AS {vc}) || ' jumped from ' || CAST(rv AS {vc})
                     || CASE WHEN nv IS NULL THEN ' and has no repeat yet: unconfirmed, repeat the sample'
                             ELSE ' and returned to ' || CAST(nv AS {vc})
                                  || ' on the next value: suspect specimen, repeat the sample' END
            FROM spec_delta
            WHERE jumped = 1 AND (nv IS NULL OR ({next_near} = 1 AND ABS(nv - rv) < ABS(nv - value)))"""),
        Stage("spec_flags", """
            SELECT subject_id, analyte, t, value, rule, kind, reason FROM (
              SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id, analyte, t, value ORDER BY prio, rule) AS rn
              FROM spec_any) x WHERE rn = 1"""),
        Stage("spec_held", """
            SELECT DISTINCT subject_id, analyte, t, value FROM (
              SELECT subject_id, analyte, t, value FROM spec_any
              UNION ALL
              SELECT subject_id, analyte, t, value FROM spec_delta WHERE jumped = 1) x"""),
        # what the alert says when a held value arrives (one row per held value): its reason as known then, from
        # that value and those before it only (an infusion or co-dilution reason; a jump is unconfirmed until its
        # repeat), so an alert raised by an incremental run says what a full recomputation says
        Stage("spec_alert", f"""
            SELECT subject_id, analyte, t, value, reason FROM (
              SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id, analyte, t, value ORDER BY prio, rule) AS rn
              FROM (SELECT subject_id, analyte, t, value, rule, prio, reason FROM spec_any
                    WHERE kind IN ('infusion', 'co_dilution')
                    UNION ALL
                    SELECT subject_id, analyte, t, value, rule, 3,
                           analyte || ' ' || CAST(value AS {vc}) || ' jumped from ' || CAST(rv AS {vc})
                             || ': unconfirmed until a repeat, repeat the sample'
                    FROM spec_delta WHERE jumped = 1) x) y
            WHERE rn = 1"""),
        # one suspect_specimen alert per draw (held values of one patient at one time; the alert key has no
        # analyte): Mg's reason, else the first analyte's by name; its encounter is the value's
        Stage("spec_alert_draw", f"""
            SELECT s.subject_id, e.encounter_id, s.t, s.value, s.reason,
                   ROW_NUMBER() OVER (PARTITION BY s.subject_id, s.t
                                      ORDER BY CASE WHEN s.analyte = 'magnesium' THEN 0 ELSE 1 END, s.analyte,
                                               s.value) AS rn
            FROM spec_alert s LEFT JOIN {enc_of} e
              ON e.subject_id = s.subject_id AND e.analyte = s.analyte AND e.t = s.t AND e.value = s.value"""),
        Stage("suspect_specimens", f"""
            SELECT f.subject_id, e.encounter_id, {d.from_epoch('f.t')} AS time, f.analyte, f.value, f.rule, f.kind,
                   f.reason, 'repeat the sample' AS action
            FROM spec_flags f LEFT JOIN {enc_of} e
              ON e.subject_id = f.subject_id AND e.analyte = f.analyte AND e.t = f.t AND e.value = f.value""",
              output=True),
    ]


def _band_case(kb: KnowledgeBase, direction: str, col: str) -> str:
    """CTCAE v5 grade of a mg/dL value as a CASE expression (bands from magnesium.yaml)."""
    mg_dl = kb.analyte("magnesium").canonical_unit  # the unit of the events' values
    scale = next(g for g in kb.magnesium.grades if g.direction == direction and normalize_unit(g.unit) == mg_dl)
    whens = []
    for b in sorted(scale.bands, key=lambda b: -b.grade):
        conds = []
        if b.lower is not None:
            conds.append(f"{col} >= {b.lower}" if direction == "low" else f"{col} > {b.lower}")
        if b.upper is not None:
            conds.append(f"{col} < {b.upper}" if direction == "low" else f"{col} <= {b.upper}")
        whens.append(f"WHEN {' AND '.join(conds) or 'TRUE'} THEN {b.grade}")
    return f"CASE {' '.join(whens)} ELSE 1 END"


def _evidence_stages(kb: KnowledgeBase, d: Dialect) -> list[Stage]:
    """Mg-AKI evidence flags: each applied study only in its own population (engine/risk.py)."""
    return [
        # contexts of each encounter: recorded ones, plus 'icu' when it had an ICU stay
        Stage("enc_ctx", """
            SELECT DISTINCT h.subject_id, h.encounter_id, c.context, c.time AS ctx_time
            FROM hosp h JOIN contexts c ON c.subject_id = h.subject_id
              AND (c.encounter_id = h.encounter_id OR (c.encounter_id IS NULL
                   AND (c.time IS NULL OR c.time BETWEEN h.start AND COALESCE(h."end", c.time))))
            UNION
            SELECT DISTINCT h.subject_id, h.encounter_id, 'icu', CAST(NULL AS TIMESTAMP)
            FROM hosp h JOIN icu i ON i.subject_id = h.subject_id AND i.parent_id = h.encounter_id"""),
        # studied populations; 'general' where none of the encounter's contexts was studied
        Stage("enc_pop", """
            SELECT DISTINCT x.subject_id, x.encounter_id, x.context, x.ctx_time FROM enc_ctx x
            WHERE x.context IN (SELECT context FROM studies)
            UNION
            SELECT h.subject_id, h.encounter_id, 'general', CAST(NULL AS TIMESTAMP) FROM hosp h
            WHERE NOT EXISTS (SELECT 1 FROM enc_ctx x JOIN studies s ON s.context = x.context
                              WHERE x.subject_id = h.subject_id AND x.encounter_id = h.encounter_id)"""),
        # each applied study's anchor (evidence.yaml exposure_times) in each encounter of its population:
        # admission, the first ICU stay, the first AKI episode's onset, or the context's earliest time;
        # the window [lo, hi] in epoch seconds runs to the end of the stay the anchor opens when to_s is unset
        Stage("ev_anchor", f"""
            SELECT x.*, x.anchor_t + x.from_s AS lo,
                   CASE WHEN x.to_s IS NULL THEN x.stay_end ELSE x.anchor_t + x.to_s END AS hi
            FROM (SELECT p.subject_id, p.encounter_id, p.context, s.study_id, s.analyte, s.pick, s.from_s, s.to_s,
                    CASE s.anchor WHEN 'admission' THEN h.t0 WHEN 'icu_admission' THEN i.t0
                                  WHEN 'aki_onset' THEN a.onset_t WHEN 'context' THEN c.ctx_t END AS anchor_t,
                    CASE WHEN s.anchor = 'icu_admission' THEN i.t1 ELSE h.t1 END AS stay_end
                  FROM (SELECT DISTINCT subject_id, encounter_id, context FROM enc_pop) p
                  JOIN hosp h ON h.subject_id = p.subject_id AND h.encounter_id = p.encounter_id
                  JOIN (SELECT DISTINCT study_id, context, analyte, anchor, pick, from_s, to_s FROM studies) s
                    ON s.context = p.context
                  LEFT JOIN (SELECT subject_id, parent_id, t0, t1 FROM (
                               SELECT *, ROW_NUMBER() OVER (PARTITION BY subject_id, parent_id ORDER BY t0, t1) AS rn
                               FROM icu) f WHERE rn = 1) i
                    ON i.subject_id = p.subject_id AND i.parent_id = p.encounter_id
                  LEFT JOIN (SELECT subject_id, encounter_id, MIN(onset_t) AS onset_t FROM aki_episodes
                             GROUP BY subject_id, encounter_id) a
                    ON a.subject_id = p.subject_id AND a.encounter_id = p.encounter_id
                  LEFT JOIN (SELECT subject_id, encounter_id, context, MIN({d.epoch('ctx_time')}) AS ctx_t
                             FROM enc_ctx WHERE ctx_time IS NOT NULL GROUP BY subject_id, encounter_id, context) c
                    ON c.subject_id = p.subject_id AND c.encounter_id = p.encounter_id AND c.context = p.context
                 ) x WHERE x.anchor_t IS NOT NULL"""),
        # the patient's results inside each window (by time, whichever encounter they were filed under)
        Stage("ev_window", """
            SELECT DISTINCT a.subject_id, a.encounter_id, a.context, a.study_id, a.pick, a.anchor_t,
                   e.t, e.time, e.value
            FROM ev_anchor a JOIN ev_named e ON e.subject_id = a.subject_id AND e.analyte = a.analyte
              AND e.t >= a.lo AND e.t <= a.hi AND e.value IS NOT NULL"""),
        # the value each rule picks; ties: the earlier result, then the lower value (engine/risk.py)
        Stage("ev_exposure", f"""
            SELECT subject_id, encounter_id, context, study_id, value, time AS value_time FROM (
              SELECT w.*, ROW_NUMBER() OVER (PARTITION BY subject_id, encounter_id, context, study_id ORDER BY
                  CASE pick WHEN 'first' THEN t WHEN 'last' THEN -t WHEN 'nearest' THEN ABS(t - anchor_t)
                            ELSE 0 END,
                  CASE pick WHEN 'nearest' THEN t ELSE 0 END,
                  value, t) AS rn
              FROM ev_window w WHERE pick <> 'median') x WHERE rn = 1
            UNION ALL
            SELECT subject_id, encounter_id, context, study_id, {d.median('value')}, CAST(NULL AS TIMESTAMP)
            FROM ev_window WHERE pick = 'median' GROUP BY subject_id, encounter_id, context, study_id"""),
        Stage("evidence_flags", """
            SELECT m.subject_id, m.encounter_id, s.study_id, s.context, s.exposure_time, s.analyte,
                   m.value AS value_canonical, m.value_time, m.value * s.to_study_unit AS value_study_unit, s.unit,
                   s.label, s.effect, s.citation, s.doi
            FROM ev_exposure m JOIN studies s ON s.study_id = m.study_id AND s.context = m.context
            WHERE (NOT s.requires_aki OR EXISTS (SELECT 1 FROM aki_episodes a
                   WHERE a.subject_id = m.subject_id AND a.encounter_id = m.encounter_id))
              AND NOT EXISTS (SELECT 1 FROM eskd x  -- AKI-risk evidence: not for maintenance dialysis
                              WHERE x.subject_id = m.subject_id AND x.encounter_id = m.encounter_id)
              AND (s.lower IS NULL OR (CASE WHEN s.lower_exclusive THEN m.value * s.to_study_unit > s.lower
                                            ELSE m.value * s.to_study_unit >= s.lower END))
              AND (s.upper IS NULL OR (CASE WHEN s.upper_inclusive THEN m.value * s.to_study_unit <= s.upper
                                            ELSE m.value * s.to_study_unit < s.upper END))""", output=True),
    ]


def _alert_stages(kb: KnowledgeBase, d: Dialect, as_of: int, mg_lo: float, mg_hi: float) -> list[Stage]:
    """Alert candidates with their de-duplication; docs/surveillance.md states each rule."""
    v = kb.value
    fall, fall_w = v("mg_fall_abs"), int(v("mg_fall_window_hours") * H)
    proj_h = f"{v('mg_fall_projection_max_hours') * H:g}"
    ref_w, ref_gap = int(v("refractory_window_hours") * H), int(v("refractory_min_gap_hours") * H)
    gap = int(v("mg_monitoring_gap_hours") * H)
    drug_h = int(v("drug_exposure_default_hours") * H)
    k_lo = v("hypokalemia_mg_first_k_below")
    ca_lo = convert(kb.electrolytes.ranges["calcium"].low, "calcium", kb.electrolytes.ranges["calcium"].unit,
                    "mg/dL")
    sup_fall, sup_ref = (int(kb.alert(a).suppress_hours * H) for a in ("mg_falling", "refractory_k_ca"))
    risky = ", ".join(f"'{c}'" for c in kb.magnesium.high_risk_contexts)
    wasting = ", ".join(sorted(f"'{dr.ingredient}'" for dr in kb.drugs.drugs
                               if dr.nephrotoxic or dr.effect in ("renal_wasting", "nephrotoxic")))
    sev = {a.id: _sev_case(kb, a.id, "NULL") for a in kb.surveillance.alerts}  # kinds rated without a measure
    enc = "PARTITION BY subject_id, encounter_id ORDER BY t, value"
    lo_grade, hi_grade = _band_case(kb, "low", "value"), _band_case(kb, "high", "value")
    vc = d.string_type
    return [
        Stage("mg_status", f"""
            SELECT *, SUM(CASE WHEN status <> COALESCE(prev_status, '') THEN 1 ELSE 0 END)
                      OVER ({enc} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS run
            FROM (SELECT *, LAG(status) OVER ({enc}) AS prev_status,
                         LAG(value) OVER ({enc}) AS prev_value, LAG(t) OVER ({enc}) AS prev_t,
                         MAX(value) OVER (PARTITION BY subject_id, encounter_id ORDER BY t
                                          RANGE BETWEEN {fall_w} PRECEDING AND 1 PRECEDING) AS max_prior_fall
                  FROM (SELECT m.*, CASE WHEN value < {mg_lo} THEN 'low' WHEN value > {mg_hi} THEN 'high'
                                    ELSE 'normal' END AS status,
                               CASE WHEN value < {mg_lo} THEN {lo_grade} WHEN value > {mg_hi} THEN {hi_grade}
                                    ELSE 0 END AS grade
                        FROM mg m) x) y"""),
        Stage("mg_status_run", """
            SELECT *, MAX(grade) OVER (PARTITION BY subject_id, encounter_id, run ORDER BY t, value
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior_run_grade
            FROM mg_status"""),
        # A fall matters when it is below range now, or when the fall since the previous value, continued
        # until the next expected measurement (the patient's own last interval, at most mg_fall_projection_max_hours),
        # takes it below range (issue 13 point 9: a fall inside 1.7-2.5 that stays there is no alert).
        Stage("mg_fall_cand", f"""
            SELECT *, LAG(t) OVER (PARTITION BY subject_id, encounter_id ORDER BY t) AS prev_cand_t
            FROM (SELECT *, value - (prev_value - value)
                            * LEAST(CAST(1 AS DOUBLE), {proj_h} / CAST(t - prev_t AS DOUBLE)) AS projected
                  FROM mg_status WHERE max_prior_fall IS NOT NULL AND value <= max_prior_fall - {fall} + {_EPS}
                    AND prev_value IS NOT NULL AND value < prev_value AND t > prev_t) x
            WHERE value < {mg_lo} OR projected < {mg_lo}"""),
        # K or Ca low twice (>= min gap apart, within the window) with Mg low or unmeasured in 48 h
        Stage("kca", f"""
            SELECT subject_id, encounter_id, time, t, analyte, value, mg_v, mg_t,
              MAX(CASE WHEN is_low = 1 AND analyte <> 'magnesium' THEN t END) OVER (
                PARTITION BY subject_id, encounter_id, analyte_key ORDER BY t
                RANGE BETWEEN {ref_w} PRECEDING AND {ref_gap} PRECEDING) AS prior_low_t, is_low
            FROM (SELECT *, {d.ffill('mg_value')} OVER (PARTITION BY subject_id, encounter_id ORDER BY t, src
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS mg_v,
                         {d.ffill('mg_time')} OVER (PARTITION BY subject_id, encounter_id ORDER BY t, src
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS mg_t
                  FROM (SELECT subject_id, encounter_id, time, t, analyte, analyte AS analyte_key, value, 1 AS src,
                               CASE WHEN (analyte = 'potassium' AND value < {k_lo})
                                      OR (analyte = 'calcium' AND value < {ca_lo}) THEN 1 ELSE 0 END AS is_low,
                               CAST(NULL AS DOUBLE) AS mg_value, CAST(NULL AS BIGINT) AS mg_time
                        FROM ev_enc e WHERE encounter_id IS NOT NULL AND ((analyte = 'potassium' AND value < {k_lo})
                                                                     OR (analyte = 'calcium' AND value < {ca_lo}))
                          AND NOT EXISTS (SELECT 1 FROM spec_held f WHERE f.subject_id = e.subject_id
                                          AND f.analyte = e.analyte AND f.t = e.t AND f.value = e.value)
                        UNION ALL
                        SELECT subject_id, encounter_id, time, t, 'magnesium', 'magnesium', value, 0, 0, value, t
                        FROM mg) u) w"""),
        Stage("kca_cand", f"""
            SELECT *, LAG(t) OVER (PARTITION BY subject_id, encounter_id, analyte ORDER BY t) AS prev_cand_t
            FROM kca WHERE analyte <> 'magnesium' AND is_low = 1 AND prior_low_t IS NOT NULL
              AND (mg_t IS NULL OR t - mg_t > {gap} OR mg_v < {mg_lo})"""),
        # monitoring gaps: admission -> first Mg, Mg -> next Mg, last Mg -> discharge (or as-of). Every draw
        # counts, a suspect one too: Mg is being monitored (its repeat is asked for by suspect_specimens)
        Stage("mg_drawn", """
            SELECT subject_id, encounter_id, t,
                   LEAD(t) OVER (PARTITION BY subject_id, encounter_id ORDER BY t) AS next_t
            FROM (SELECT DISTINCT subject_id, encounter_id, t FROM ev_enc
                  WHERE analyte = 'magnesium' AND encounter_id IS NOT NULL) x"""),
        Stage("mg_gaps", f"""
            SELECT h.subject_id, h.encounter_id, h.t0 AS gap_start, COALESCE(MIN(m.t), LEAST(h.t1, {as_of})) AS gap_end
            FROM hosp h LEFT JOIN mg_drawn m ON m.subject_id = h.subject_id AND m.encounter_id = h.encounter_id
            GROUP BY h.subject_id, h.encounter_id, h.t0, h.t1
            UNION ALL
            SELECT m.subject_id, m.encounter_id, m.t, COALESCE(m.next_t, LEAST(h.t1, {as_of}))
            FROM mg_drawn m JOIN hosp h ON h.subject_id = m.subject_id AND h.encounter_id = m.encounter_id"""),
        Stage("risk_windows", f"""
            SELECT subject_id, parent_id AS encounter_id, t0 AS r0, t1 AS r1, 'icu' AS why FROM icu
            UNION ALL
            SELECT m.subject_id, h.encounter_id, {d.epoch('m.start')},
                   COALESCE({d.epoch('m."end"')}, {d.epoch('m.start')} + {drug_h}), 'drug:' || m.drug
            FROM medications m JOIN hosp h ON h.subject_id = m.subject_id
              AND {d.epoch('m.start')} BETWEEN h.t0 AND h.t1
            WHERE m.drug IN ({wasting})
            UNION ALL
            SELECT subject_id, encounter_id, onset_t, COALESCE(recovery_t, {OPEN_END}), 'aki' FROM aki_episodes
            UNION ALL
            SELECT c.subject_id, c.encounter_id, COALESCE({d.epoch('c.ctx_time')}, h.t0), h.t1,
                   'context:' || c.context
            FROM enc_ctx c JOIN hosp h ON h.subject_id = c.subject_id AND h.encounter_id = c.encounter_id
            WHERE c.context IN ({risky})
              -- an admission with ICU stays is at ICU risk during them (the first branch), not from the first
              -- ICU context to discharge: the 'icu' context stands only where no stay is recorded
              AND NOT (c.context = 'icu' AND EXISTS (SELECT 1 FROM icu i WHERE i.subject_id = c.subject_id
                                                     AND i.parent_id = c.encounter_id))"""),
        Stage("no_mg_cand", f"""
            SELECT subject_id, encounter_id, gap_start, due, why FROM (
              SELECT g.subject_id, g.encounter_id, g.gap_start, GREATEST(g.gap_start + {gap}, r.r0) AS due, r.why,
                     ROW_NUMBER() OVER (PARTITION BY g.subject_id, g.encounter_id, g.gap_start
                                        ORDER BY GREATEST(g.gap_start + {gap}, r.r0), r.why) AS rn
              FROM mg_gaps g JOIN risk_windows r ON r.subject_id = g.subject_id
                AND r.encounter_id = g.encounter_id
              WHERE GREATEST(g.gap_start + {gap}, r.r0) < LEAST(g.gap_end, r.r1)
                AND GREATEST(g.gap_start + {gap}, r.r0) <= {as_of}) x
            WHERE rn = 1"""),
        # The alerts the data raise, apart from those the clock raises (a monitoring gap falls due as time
        # passes): an incremental run evaluates the clock's again at the end of time for its timers
        # (pipeline._timer_stages), and only those; this part, read by both, is evaluated once.
        Stage("alerts_by_data", f"""
            SELECT subject_id, encounter_id, kind, time, severity, detail, value FROM (
            SELECT subject_id, encounter_id, 'mg_out_of_range' AS kind, time,
                   {_sev_case(kb, 'mg_out_of_range', 'grade')} AS severity,
                   'Mg ' || CAST(ROUND(value, 2) AS {vc}) || ' mg/dL ' || status
                     || ' (CTCAE grade ' || CAST(grade AS {vc}) || ')' AS detail, value
            FROM mg_status_run WHERE status <> 'normal' AND COALESCE(prev_status, '') <> status
            UNION ALL
            SELECT subject_id, encounter_id, 'mg_grade_worsened', time, {_sev_case(kb, 'mg_grade_worsened', 'grade')},
                   'Mg ' || CAST(ROUND(value, 2) AS {vc}) || ' mg/dL: CTCAE grade ' || CAST(grade AS {vc})
                     || ' (was ' || CAST(prior_run_grade AS {vc}) || ')', value
            FROM mg_status_run WHERE status <> 'normal' AND prior_run_grade IS NOT NULL
              AND grade > prior_run_grade
            UNION ALL
            SELECT subject_id, encounter_id, 'mg_falling', time, {sev['mg_falling']},
                   'Mg fell to ' || CAST(ROUND(value, 2) AS {vc}) || ' mg/dL from '
                     || CAST(ROUND(max_prior_fall, 2) AS {vc}) || ' within {v('mg_fall_window_hours'):g} h'
                     || CASE WHEN value < {mg_lo} THEN ' (below range)'
                             ELSE '; projected ' || CAST(ROUND(projected, 2) AS {vc})
                                  || ' mg/dL by the next expected measurement' END,
                   value
            FROM mg_fall_cand WHERE prev_cand_t IS NULL OR t - prev_cand_t > {sup_fall}
            UNION ALL
            SELECT subject_id, encounter_id, 'aki_onset', onset, {_sev_case(kb, 'aki_onset', 'onset_stage')},
                   'KDIGO AKI episode ' || CAST(episode AS {vc}) || ' began (' || onset_criterion || ')',
                   CAST(NULL AS DOUBLE)
            FROM aki_episodes
            UNION ALL
            SELECT subject_id, encounter_id, 'aki_worsening', time, {_sev_case(kb, 'aki_worsening', 'stage_now')},
                   'KDIGO stage ' || CAST(stage_now AS {vc}) || ' (' || criterion || ')',
                   CAST(stage_now AS DOUBLE)
            FROM (SELECT *, MAX(stage_now) OVER (PARTITION BY subject_id, encounter_id, episode ORDER BY t, src
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior_max FROM asmt_in) w
            WHERE is_start = 0 AND stage_now > prior_max
            UNION ALL
            SELECT subject_id, encounter_id, 'refractory_k_ca', time, {sev['refractory_k_ca']},
                   analyte || ' ' || CAST(ROUND(value, 2) AS {vc}) || ' low again; Mg '
                     || CASE WHEN mg_t IS NULL OR t - mg_t > {gap}
                             THEN 'not measured in {v('mg_monitoring_gap_hours'):g} h'
                             ELSE CAST(ROUND(mg_v, 2) AS {vc}) || ' mg/dL (low)' END, value
            FROM kca_cand WHERE prev_cand_t IS NULL OR t - prev_cand_t > {sup_ref}
            UNION ALL
            SELECT subject_id, encounter_id, 'suspect_specimen', {d.from_epoch('t')}, {sev['suspect_specimen']},
                   'Held until repeated: ' || reason, value
            FROM spec_alert_draw WHERE rn = 1
            UNION ALL
            SELECT x.subject_id, x.encounter_id, 'kdigo_not_applicable', h.start, {sev['kdigo_not_applicable']},
                   '{kb.kidney.maintenance_dialysis.status.replace("'", "''")} (' || x.why || ')', CAST(NULL AS DOUBLE)
            FROM eskd x JOIN hosp h ON h.subject_id = x.subject_id AND h.encounter_id = x.encounter_id) a"""),
        Stage("alerts", f"""
            SELECT subject_id, encounter_id, kind, time, severity, detail, value FROM alerts_by_data
            UNION ALL
            SELECT subject_id, encounter_id, 'no_mg_48h', {d.from_epoch('due')}, {sev['no_mg_48h']},
                   'No serum Mg for {v('mg_monitoring_gap_hours'):g} h in a high-risk patient (' || why || ')',
                   CAST(NULL AS DOUBLE)
            FROM no_mg_cand""", output=True),
    ]


def _sev_case(kb: KnowledgeBase, kind: str, measure: str) -> str:
    """The severity of an alert kind as SQL, from the cited mapping (surveillance.yaml ``severity``);
    ``measure`` is the column the rule reads (AKI stage, CTCAE grade), unused by rules read by none."""
    rule = kb.severity_rule(kind)
    if rule.by == "none" or len(rule.steps) == 1:
        return f"'{rule.steps[0].severity}'"
    whens = " ".join(f"WHEN {measure} >= {s.at_least:g} THEN '{s.severity}'" for s in reversed(rule.steps[1:]))
    return f"CASE {whens} ELSE '{rule.steps[0].severity}' END"


def _k(hours: float) -> str:
    """Column suffix for a window length in hours (6 -> '6', 1.5 -> '1_5')."""
    return f"{hours:g}".replace(".", "_")
