"""Cohorts for the differential tests against the KDIGO peers, and mgaki's side of the comparison.

All tables use the peers' interchange layout (pyaki's CLI layout, see ``run_peers.py``):
creatinine (stay_id, charttime, creat mg/dL), urineoutput (stay_id, charttime, urineoutput mL),
demographics (stay_id, weight kg), rrt (stay_id, charttime, rrt_status). Times are naive and read as UTC.

mgaki's stages always come from the batch SQL pipeline (``mgaki.surveillance.run`` over a temporary
``EventStore``): ``mgaki_stages`` for peer-layout cohorts (built into canonical tables column-wise),
``pipeline_comparison`` for cohorts that went the real way (``mgaki.synth``, the MIMIC-IV adapter), where
the peers are given the rows the pipeline staged. ``engine_stages`` (the single-patient reference rules,
stay by stay) only cross-checks the SQL on the small test cohorts.

The synthetic cohort is built from scenarios. Each scenario either belongs to no deviation class (every
peer must agree with mgaki there) or is one documented deviation class (docs/peers.md); the
parameters keep each scenario clear of thresholds so the class, not noise, decides the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mgaki.adapters.mimic import read_mimic
from mgaki.engine.kidney import stage_creatinine, stage_urine_output
from mgaki.events import TABLES, EventStore, normalize
from mgaki.knowledge import KnowledgeBase
from mgaki.surveillance import SurveillanceResult, run
from mgaki.synth import generate

__all__ = [
    "CREAT_CLASSES",
    "UO_CLASSES",
    "Cohort",
    "PipelineComparison",
    "canonical_tables",
    "engine_stages",
    "max_stages",
    "mgaki_stages",
    "mimic_comparison",
    "pipeline_comparison",
    "random_cohort",
    "run_pipeline",
    "sliding_uo_stage",
    "synthetic_comparison",
    "vignettes",
    "write_peer_dir",
]

MIMIC = Path(__file__).resolve().parents[1] / "data" / "mimic-iv-demo-subset"
T0 = pd.Timestamp("2024-01-01 00:00")

# creatinine scenario -> the peers for which it is a documented deviation class (empty: all must agree)
CREAT_CLASSES: dict[str, frozenset[str]] = {
    "stable": frozenset(),
    "aki": frozenset(),  # fast rise from a stable baseline (<= 24 h), stay shorter than 7 days
    "ckd_ge4_stable": frozenset({"pyaki"}),  # pyaki: >= 4.0 mg/dL is stage 3 without a rise
    "rise_at_50h": frozenset({"pyaki", "akiflagger"}),  # akiflagger: 48 h + 4 h padding; pyaki: ffill
    "rise_at_60h": frozenset({"pyaki"}),  # pyaki: hourly forward fill up to 72 h stretches the 48 h window
    "rise_at_80h": frozenset({"pyaki"}),
    "ratio_at_170h": frozenset({"pyaki", "akiflagger"}),  # akiflagger: 7 d + 4 h; pyaki: ffill into the 7 d
    "two_in_one_hour": frozenset({"pyaki"}),  # pyaki: hourly mean hides the higher of two values
    "aki_to_ge4": frozenset({"akiflagger"}),  # akiflagger: no >= 4.0 mg/dL rule
    "rrt": frozenset({"akiflagger"}),  # akiflagger: no RRT
    "no_urine_rows": frozenset({"pyaki"}),  # pyaki: stays absent from its first table are dropped
}
UO_CLASSES: dict[str, frozenset[str]] = {
    "uo_normal": frozenset(),
    "uo_low": frozenset(),  # oliguria 0.12-0.45 mL/kg/h for 6-36 h, hourly charting
    "uo_anuria": frozenset({"pyaki"}),  # pyaki: 0 mL is missing, so anuria is never stage 3
    "uo_near_anuria": frozenset({"pyaki"}),  # pyaki: < 0.1 mL/kg/h mean over 12 h counts as anuria
    "uo_none": frozenset(),  # no urine rows at all
    "uo_sparse_charting": frozenset({"pyaki"}),  # mgaki: windows end at chartings only (vignette 12)
}


@dataclass
class Cohort:
    """Peer-layout tables plus the scenario label of every stay."""

    creatinine: pd.DataFrame
    urineoutput: pd.DataFrame
    demographics: pd.DataFrame
    rrt: pd.DataFrame
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)  # stay_id, creat_class, uo_class

    def __add__(self, other: Cohort) -> Cohort:
        return Cohort(*(pd.concat([getattr(self, f), getattr(other, f)], ignore_index=True)
                        for f in ("creatinine", "urineoutput", "demographics", "rrt", "labels")))


def _frame(rows: list[tuple[object, ...]], cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=cols)


def _empty_cohort() -> Cohort:
    return Cohort(_frame([], ["stay_id", "charttime", "creat"]), _frame([], ["stay_id", "charttime", "urineoutput"]),
                  _frame([], ["stay_id", "weight"]), _frame([], ["stay_id", "charttime", "rrt_status"]),
                  _frame([], ["stay_id", "creat_class", "uo_class"]))


def _hours(h: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=float(h))


# ---------------------------------------------------------------- synthetic scenarios
def _creat_series(rng: np.random.Generator, kind: str) -> tuple[list[tuple[float, float]], float | None]:
    """(hour, mg/dL) samples and an RRT start hour for one creatinine scenario."""
    b = float(rng.uniform(0.6, 1.4))
    rrt = None
    if kind == "stable":
        t, pts = 0.0, []
        while t < rng.uniform(48, 140):
            pts.append((t, b + rng.uniform(-0.04, 0.04)))
            t += int(rng.integers(6, 25))
        return pts, None
    if kind in {"aki", "aki_to_ge4", "rrt", "no_urine_rows"}:
        if kind == "aki_to_ge4":  # reach >= 4.0 by a rise that is AKI but < 3x baseline
            b = float(rng.uniform(1.6, 2.2))
            f = float(rng.uniform(4.1 / b, min(2.9, 5.0 / b)))
        else:
            while True:
                f = float(rng.uniform(1.15, 3.6))
                rise = b * (f - 1)
                if (abs(rise - 0.3) > 0.03 and min(abs(f - x) for x in (1.5, 2.0, 3.0)) > 0.04
                        and b * f < 3.9 and (kind == "aki" or f > 1.6)):
                    break
        pts, t = [], 0.0
        for _ in range(int(rng.integers(2, 5))):  # stable baseline, samples 6-12 h apart
            pts.append((t, b))
            t += int(rng.integers(6, 13))
        peak = b * f
        pts.append((t, b + (peak - b) / 2))
        t += int(rng.integers(6, 13))
        pts.append((t, peak))
        for _ in range(int(rng.integers(1, 4))):  # plateau, then recovery; stay stays < 7 days
            t += int(rng.integers(8, 13))
            pts.append((t, peak))
        t += int(rng.integers(8, 13))
        pts.append((t, b + (peak - b) / 2))
        if kind == "rrt":
            rrt = pts[-2][0] + 1.0  # started after the plateau; one creatinine value follows it
        return pts, rrt
    if kind == "ckd_ge4_stable":
        b = float(rng.uniform(4.1, 5.5))
        return [(h, b + rng.uniform(-0.04, 0.04)) for h in np.cumsum(rng.integers(8, 25, size=4)) - 8], None
    if kind.startswith("rise_at_"):
        b = float(rng.uniform(1.0, 1.5))
        gap = {"rise_at_50h": 50, "rise_at_60h": 60, "rise_at_80h": 80}[kind]
        rise = float(rng.uniform(0.32, min(0.45, 0.45 * b)))  # >= 0.3 but ratio < 1.45
        return [(0.0, b), (24.0, b), (24.0 + gap, b + rise)], None
    if kind == "ratio_at_170h":
        return [(0.0, b), (170.0, b * float(rng.uniform(1.55, 1.9)))], None
    if kind == "two_in_one_hour":
        b = float(rng.uniform(0.9, 1.5))
        hi = b + float(rng.uniform(0.32, 0.4))  # 0.3 rise, ratio < 1.5 ...
        lo = b + float(rng.uniform(0.0, 0.05))  # ... averaged with a second draw 35 min later: < 0.3
        return [(0.0, b), (12.0, b), (30 + 5 / 60, hi), (30 + 40 / 60, lo), (42.0, b)], None
    raise ValueError(kind)


def _uo_series(rng: np.random.Generator, kind: str, weight: float) -> list[tuple[float, float]]:
    """Hourly (hour, mL) chartings for one urine scenario; the first 24 h are always normal."""
    normal_lo = 1.2 if kind == "uo_near_anuria" else 0.8
    rates = list(rng.uniform(normal_lo, 2.0) * np.ones(24))
    if kind == "uo_low":
        r, d = ((rng.uniform(0.32, 0.45), int(rng.integers(6, 31))) if rng.random() < 0.6
                else (rng.uniform(0.12, 0.25), int(rng.integers(6, 37))))
        rates += [r] * d
    elif kind == "uo_anuria":
        rates += [0.0] * int(rng.integers(12, 21))
    elif kind == "uo_near_anuria":
        rates += list(rng.uniform(0.02, 0.08, size=int(rng.integers(12, 15))))
    rates += list(rng.uniform(normal_lo, 2.0) * np.ones(int(rng.integers(10, 30))))
    noise = rng.uniform(0.9, 1.1, size=len(rates))
    return [(float(h), round(float(r * n * weight))) for h, (r, n) in enumerate(zip(rates, noise, strict=True))]


def random_cohort(n: int, seed: int = 20240601, first_id: int = 1000) -> Cohort:
    """``n`` synthetic stays, scenario mix drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    creat_kinds = list(CREAT_CLASSES)
    creat_p = np.array([0.2, 0.3, 0.06, 0.05, 0.05, 0.05, 0.05, 0.06, 0.06, 0.06, 0.06])
    uo_kinds = ["uo_normal", "uo_low", "uo_anuria", "uo_near_anuria"]
    uo_p = np.array([0.35, 0.4, 0.15, 0.1])
    cr, uo, demo, rrt, labels = [], [], [], [], []
    for i in range(n):
        sid = first_id + i
        ck = str(rng.choice(creat_kinds, p=creat_p / creat_p.sum()))
        uk = "uo_none" if ck == "no_urine_rows" else str(rng.choice(uo_kinds, p=uo_p / uo_p.sum()))
        # x.x3 kg: 3, 6 and 7.2 x weight are never whole, so integer mL sums never tie a threshold exactly
        weight = round(float(rng.uniform(50, 110)), 1) + 0.03
        pts, rrt_h = _creat_series(rng, ck)
        cr += [(sid, _hours(h), round(v, 2)) for h, v in pts]
        if uk != "uo_none":
            uo += [(sid, _hours(h), v) for h, v in _uo_series(rng, uk, weight)]
        if rrt_h is not None:
            rrt.append((sid, _hours(rrt_h), 1))
        demo.append((sid, weight))
        labels.append((sid, ck, uk))
    return Cohort(_frame(cr, ["stay_id", "charttime", "creat"]), _frame(uo, ["stay_id", "charttime", "urineoutput"]),
                  _frame(demo, ["stay_id", "weight"]), _frame(rrt, ["stay_id", "charttime", "rrt_status"]),
                  _frame(labels, ["stay_id", "creat_class", "uo_class"]))


def vignettes() -> Cohort:
    """One hand-made stay per deviation class (ids 1-12), the numbers quoted in docs/peers.md."""
    normal_uo = [(float(h), 70.0) for h in range(30)]  # 1 mL/kg/h at 70 kg
    c: list[tuple[int, float, float]] = []
    u: list[tuple[int, float, float]] = []
    labels: list[tuple[int, str, str]] = []

    def add(sid: int, creat: list[tuple[float, float]], ck: str, urine: list[tuple[float, float]] | None = None,
            uk: str = "uo_normal") -> None:
        c.extend((sid, h, v) for h, v in creat)
        if urine is not None or uk != "uo_none":
            u.extend((sid, h, v) for h, v in (urine if urine is not None else normal_uo))
        labels.append((sid, ck, uk))

    add(1, [(0, 1.0), (24, 1.0), (84, 1.3)], "rise_at_60h")  # 0.3 rise 60 h after the last value
    add(2, [(0, 1.0), (24, 1.0), (104, 1.35)], "rise_at_80h")
    add(3, [(0, 1.0), (24, 1.0), (74, 1.3)], "rise_at_50h")
    add(4, [(0, 4.2), (24, 4.3), (48, 4.2)], "ckd_ge4_stable")  # stable CKD: not AKI
    add(5, [(0, 1.0), (12, 1.0), (30 + 5 / 60, 1.35), (30 + 40 / 60, 1.05)], "two_in_one_hour")
    add(6, [(0, 2.0), (12, 2.0), (30, 4.2)], "aki_to_ge4")  # 2.1x and >= 4.0: stage 3, not 2
    add(7, [(0, 1.0), (170, 1.6)], "ratio_at_170h")
    add(8, [(0, 1.0), (24, 2.1), (36, 2.2)], "rrt")
    add(9, [(0, 1.0), (24, 2.1)], "no_urine_rows", uk="uo_none")
    anuric = [(float(h), 70.0 if h < 24 or h >= 38 else 0.0) for h in range(48)]  # 14 h of 0 mL
    add(10, [(0, 1.0), (24, 1.0)], "stable", anuric, "uo_anuria")
    near = [(float(h), 84.0 if h < 24 or h >= 37 else 3.5) for h in range(48)]  # 13 h at 0.05 mL/kg/h
    add(11, [(0, 1.0), (24, 1.0)], "stable", near, "uo_near_anuria")
    # charted every 5 h from 0 h (70 kg); mL/kg/h over the intervals ending at 5-40 h: 1.0 x3, 3.0, 0.2, 0.9,
    # 1.0 x2. Prorated, (20 h, 26 h] holds 5 h at 0.2 and 1 h at 0.9: 0.32 mL/kg/h, but no charting closes that
    # window (the 6 h before 25 h: 0.67; before 30 h: 0.78)
    sparse = [(float(h), r * 5 * 70) for h, r in zip(range(0, 45, 5), (1.0, 1.0, 1.0, 1.0, 3.0, 0.2, 0.9, 1.0, 1.0),
                                                      strict=True)]
    add(12, [(0, 1.0), (24, 1.0)], "stable", sparse, "uo_sparse_charting")
    return Cohort(
        _frame([(s, _hours(h), v) for s, h, v in c], ["stay_id", "charttime", "creat"]),
        _frame([(s, _hours(h), v) for s, h, v in u], ["stay_id", "charttime", "urineoutput"]),
        _frame([(s, 70.0) for s in range(1, 13)], ["stay_id", "weight"]),
        _frame([(8, _hours(30), 1)], ["stay_id", "charttime", "rrt_status"]),
        _frame(labels, ["stay_id", "creat_class", "uo_class"]))


# ---------------------------------------------------------------- files for the peer runner
def write_peer_dir(cohort: Cohort, d: Path) -> Path:
    """Write the cohort in the runner's (pyaki CLI) layout; empty tables are left out, as pyaki needs."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("urineoutput", "creatinine", "rrt", "demographics"):
        df: pd.DataFrame = getattr(cohort, name)
        if len(df):
            df.to_csv(d / f"{name}.csv", index=False)
    return d


# ---------------------------------------------------------------- mgaki's side: the batch SQL pipeline
def _events(df: pd.DataFrame, analyte: str, col: str | None, unit: str | None) -> pd.DataFrame:
    return pd.DataFrame({"stay_id": df["stay_id"].to_numpy(), "time": pd.to_datetime(df["charttime"]).to_numpy(),
                         "analyte": analyte, "numeric_value": df[col].astype(float).to_numpy() if col else np.nan,
                         "unit": unit})


def canonical_tables(creat: pd.DataFrame, uo: pd.DataFrame, weights: pd.DataFrame,
                     rrt: pd.DataFrame | None = None) -> dict[str, pa.Table]:
    """Peer-layout tables -> canonical tables (``mgaki.events.TABLES``), column-wise.

    Each stay becomes one subject with one inpatient encounter spanning all its rows: the pipeline stages
    creatinine per hospital encounter and urine output per ICU stay or encounter, so every row of a stay is
    staged and nothing else is (no history before the stay, as the peers see none). The weight is recorded
    at the encounter's start, i.e. before the first urine charting.
    """
    on_rrt = rrt[rrt["rrt_status"] == 1] if rrt is not None and len(rrt) else _frame([], ["stay_id", "charttime"])
    ev = pd.concat([_events(creat, "creatinine", "creat", "mg/dL"), _events(uo, "urine_output", "urineoutput", "mL"),
                    _events(on_rrt, "rrt", None, None)], ignore_index=True)
    ev["subject_id"] = ev["stay_id"].astype(str)
    ev["encounter_id"] = ev["subject_id"]
    ev["code"] = "peers/" + ev["analyte"]
    ev["source"] = "peers:" + ev["analyte"] + ":" + pd.Series(np.arange(len(ev)), dtype=str)
    span = ev.groupby("subject_id", as_index=False)["time"].agg(start="min", end="max")
    enc = span.assign(encounter_id=span["subject_id"], kind="inpatient", parent_id=None, source="peers")
    w = pd.DataFrame({"subject_id": weights["stay_id"].astype(str), "weight_kg": weights["weight"].astype(float)})
    w = w.merge(span[["subject_id", "start"]], on="subject_id").rename(columns={"start": "time"})
    w["source"] = "peers:demographics"
    out = {"events": ev, "encounters": enc, "weights": w}
    return {name: pa.Table.from_pandas(df, schema=TABLES[name], preserve_index=False) for name, df in out.items()}


# The deviation catalogue (docs/peers.md) was written against the outpatient-median baseline rule, mgaki's
# only rule before issue 13.4; the comparison keeps it (the NHS England default reaches past 7 days as the
# peers do, which would merge the 'ratio_at_170h' class into agreement).
PEER_BASELINE_RULE = "outpatient_median"


def run_pipeline(tables: Mapping[str, pa.Table], kb: KnowledgeBase) -> SurveillanceResult:
    """``mgaki.surveillance.run`` over a throw-away event store holding ``tables``."""
    with tempfile.TemporaryDirectory(prefix="mgaki-peers-") as d:
        store = EventStore(d)
        store.append(tables)
        return run(store, kb=kb, baseline_rule=PEER_BASELINE_RULE)


def max_stages(res: SurveillanceResult) -> tuple[pd.Series, pd.Series]:
    """(max creatinine(+RRT) stage per hospital encounter, max urine-output stage per ICU stay or encounter).

    A stay whose urine output is never staged (no weight, a single charting) has NaN, as does a creatinine
    value outside every encounter (the pipeline assigns it to none and stages no encounter with it).
    """
    cr = res.tables["kdigo_creatinine"].select(["encounter_id", "stage"]).to_pandas()
    uo = res.tables["kdigo_urine"].select(["stay_id", "stage"]).to_pandas()
    return (cr.dropna(subset=["encounter_id"]).groupby("encounter_id")["stage"].max().astype(float),
            uo.groupby("stay_id")["stage"].max().astype(float))


def mgaki_stages(kb: KnowledgeBase, creat: pd.DataFrame, uo: pd.DataFrame, weights: pd.DataFrame,
                 rrt: pd.DataFrame | None = None) -> pd.DataFrame:
    """Max KDIGO creatinine(+RRT) stage and max urine-output stage per stay, from the batch SQL pipeline."""
    cr_max, uo_max = max_stages(run_pipeline(canonical_tables(creat, uo, weights, rrt), kb))
    stays = pd.concat([creat["stay_id"], uo["stay_id"]]).drop_duplicates().sort_values()
    key = stays.astype(str)
    return pd.DataFrame({"stay_id": stays.to_numpy(), "mgaki_creat_max": key.map(cr_max).to_numpy(dtype=float),
                         "mgaki_uo_max": key.map(uo_max).to_numpy(dtype=float)})


def _utc(s: pd.Series) -> list[datetime]:
    return [t.to_pydatetime().replace(tzinfo=UTC) for t in pd.to_datetime(s)]


def engine_stages(kb: KnowledgeBase, creat: pd.DataFrame, uo: pd.DataFrame, weights: pd.DataFrame,
                  rrt: pd.DataFrame | None = None) -> pd.DataFrame:
    """The same table from the single-patient reference rules (``mgaki.engine.kidney``), stay by stay.

    Only a cross-check that the SQL equals the engine on the test cohorts (a few hundred stays); the
    comparison with the peers uses ``mgaki_stages``.
    """
    rrt_first = ({} if rrt is None or rrt.empty else
                 rrt[rrt["rrt_status"] == 1].groupby("stay_id")["charttime"].min().to_dict())
    rows: dict[object, dict[str, float]] = {}
    for sid, g in creat.groupby("stay_id", sort=True):
        rt = _utc(pd.Series([rrt_first[sid]])) if sid in rrt_first else []
        st = stage_creatinine(kb, list(zip(_utc(g["charttime"]), g["creat"].astype(float), strict=True)),
                              rrt_times=rt, rule=PEER_BASELINE_RULE)
        rows.setdefault(sid, {})["mgaki_creat_max"] = float(max(s.stage for s in st))
    wt = weights.set_index("stay_id")["weight"].to_dict()
    for sid, g in uo.groupby("stay_id", sort=True):
        rows.setdefault(sid, {})
        if sid not in wt:
            continue
        us = stage_urine_output(kb, list(zip(_utc(g["charttime"]), g["urineoutput"].astype(float), strict=True)),
                                float(wt[sid]))
        rows[sid]["mgaki_uo_max"] = float(max(s.stage for s in us)) if us else float("nan")
    out = pd.DataFrame.from_dict(rows, orient="index")
    for col in ("mgaki_creat_max", "mgaki_uo_max"):
        if col not in out.columns:
            out[col] = float("nan")
    return out.rename_axis("stay_id").reset_index().sort_values("stay_id", ignore_index=True)


# ---------------------------------------------------------------- real pipelines: synthetic cohort, MIMIC-IV subset
@dataclass
class PipelineComparison:
    """Peer inputs built from the rows the pipeline staged, and mgaki's answers on them.

    ``creat``: every creatinine value the pipeline assigned to a hospital encounter (one peer stay per
    encounter) and the encounter's RRT events; ``urine``: every urine charting of an ICU stay (or of an
    encounter without one) with the weight the pipeline used. Peer stay ids are integers; ``ids`` maps them
    to mgaki's encounter / ICU-stay ids.
    """

    creat: Cohort
    urine: Cohort
    mgaki: pd.DataFrame  # stay_id, mgaki_creat_max, mgaki_uo_max
    ids: pd.DataFrame  # stay_id (int), encounter_id (str)
    counts: dict[str, int]
    result: SurveillanceResult


def _hospital_of(encounters: pa.Table) -> pd.Series:
    """encounter_id -> its hospital encounter (an ICU stay's parent, else itself)."""
    e = encounters.select(["encounter_id", "kind", "parent_id"]).to_pandas().drop_duplicates("encounter_id")
    hosp = e["parent_id"].where((e["kind"] == "icu") & e["parent_id"].notna(), e["encounter_id"])
    return pd.Series(hosp.to_numpy(), index=e["encounter_id"].to_numpy())


def pipeline_comparison(tables: Mapping[str, pa.Table], res: SurveillanceResult, creat_class: pd.Series,
                        uo_class: pd.Series) -> PipelineComparison:
    """Peer inputs and mgaki's max stages for a cohort that went through the real pipeline.

    ``creat_class`` is indexed by hospital encounter id, ``uo_class`` by ICU stay / encounter id.
    """
    kc = res.tables["kdigo_creatinine"].select(["encounter_id", "time", "value"]).to_pandas()
    kc = kc.dropna(subset=["encounter_id"])
    ku = res.tables["kdigo_urine"].select(["stay_id", "time", "weight_kg"]).to_pandas()
    ev = tables["events"].select(["encounter_id", "time", "analyte", "numeric_value"]).to_pandas()
    hosp = _hospital_of(tables["encounters"])
    # urine chartings as the pipeline reads them: simultaneous volumes summed, per ICU stay (the adapter names
    # it); a charting timed outside its ICU stay (MIMIC rounds the first one to the hour before intime) is
    # staged by the pipeline in no ICU stay, so the peers do not get it either
    ur = ev[ev["analyte"] == "urine_output"].groupby(["encounter_id", "time"], as_index=False)["numeric_value"].sum()
    bounds = tables["encounters"].select(["encounter_id", "kind", "start", "end"]).to_pandas()
    ur = ur.merge(bounds.drop_duplicates("encounter_id"), on="encounter_id", how="left")
    inside = (ur["kind"] != "icu") | ((ur["time"] >= ur["start"]) & (ur["time"] <= ur["end"]))
    n_outside = int((~inside).sum())
    ur = ur[inside]
    weight = ku.dropna(subset=["weight_kg"]).groupby("stay_id")["weight_kg"].first()
    staged = ku.merge(ur, left_on=["stay_id", "time"], right_on=["encounter_id", "time"], how="left")
    n_rows = ur.groupby("encounter_id").size()
    counts = {
        "creatinine_events": int((ev["analyte"] == "creatinine").sum()),
        "creatinine_values_staged_in_an_encounter": len(kc),
        "encounters_with_creatinine": int(kc["encounter_id"].nunique()),
        "urine_chartings": len(ur) + n_outside, "urine_chartings_outside_their_icu_stay": n_outside,
        "urine_stays": int(ur["encounter_id"].nunique()),
        # a stay with one charting (no interval closed) or without weight has no urine-output stage
        "urine_stays_not_staged": int(ur["encounter_id"].nunique() - weight.index.isin(ur["encounter_id"]).sum()),
        # the pipeline must stage exactly these chartings (the first of a stay closes no interval: no row)
        "urine_rows_placed_differently": int(staged["encounter_id"].isna().sum()
                                             + (ku.groupby("stay_id").size() + 1 - n_rows).abs().sum()),
    }
    ur = ur[ur["encounter_id"].isin(weight.index)]
    rrt = ev[(ev["analyte"] == "rrt")].assign(hosp=lambda d: d["encounter_id"].map(hosp))
    rrt = rrt[rrt["hosp"].isin(kc["encounter_id"])]
    keys = pd.Index(sorted(set(kc["encounter_id"]) | set(ur["encounter_id"])))
    ids = pd.DataFrame({"stay_id": np.arange(1, len(keys) + 1, dtype=np.int64), "encounter_id": keys})
    num = pd.Series(ids["stay_id"].to_numpy(), index=keys)
    cr_max, uo_max = max_stages(res)
    enc, stays = kc["encounter_id"].drop_duplicates().sort_values(), ur["encounter_id"].drop_duplicates()
    creat = Cohort(
        pd.DataFrame({"stay_id": kc["encounter_id"].map(num), "charttime": kc["time"], "creat": kc["value"]}),
        _frame([], ["stay_id", "charttime", "urineoutput"]),
        pd.DataFrame({"stay_id": enc.map(num).to_numpy(), "weight": 70.0}),  # pyaki wants one; unused for creat
        pd.DataFrame({"stay_id": rrt["hosp"].map(num), "charttime": rrt["time"], "rrt_status": 1}),
        pd.DataFrame({"stay_id": enc.map(num).to_numpy(), "creat_class": enc.map(creat_class).to_numpy(),
                      "uo_class": "none"}))
    urine = Cohort(
        _frame([], ["stay_id", "charttime", "creat"]),
        pd.DataFrame({"stay_id": ur["encounter_id"].map(num), "charttime": ur["time"],
                      "urineoutput": ur["numeric_value"]}),
        pd.DataFrame({"stay_id": stays.map(num).to_numpy(), "weight": stays.map(weight).to_numpy()}),
        _frame([], ["stay_id", "charttime", "rrt_status"]),
        pd.DataFrame({"stay_id": stays.map(num).to_numpy(), "creat_class": "none",
                      "uo_class": stays.map(uo_class).to_numpy()}))
    mg = pd.DataFrame({"stay_id": ids["stay_id"], "mgaki_creat_max": keys.map(cr_max).to_numpy(dtype=float),
                       "mgaki_uo_max": keys.map(uo_max).to_numpy(dtype=float)})
    return PipelineComparison(creat, urine, mg, ids, counts, res)


def synthetic_comparison(kb: KnowledgeBase, n: int, seed: int) -> PipelineComparison:
    """``mgaki.synth.generate(n, seed)`` through store and pipeline; classes from the planted truth.

    Creatinine class per admission: ckd_advanced (stable >= 4.4 mg/dL, never AKI), rrt, creatinine_stage<k>,
    oliguria_only (AKI by urine output, creatinine flat) or no_aki. Urine class per ICU stay: anuria,
    oliguria_stage<k> or no_oliguria.
    """
    c = generate(n, seed=seed)
    res = run_pipeline(c.tables, kb)
    t = c.truth.to_pandas()
    mech = t["aki_mechanism"].fillna("")
    cc = np.select([t["ckd_high"], t["rrt"], mech == "creatinine", mech == "oliguria"],
                   ["ckd_advanced", "rrt", "creatinine_stage" + t["aki_stage_creatinine"].astype(str),
                    "oliguria_only"], "no_aki")
    icu = t["icu_encounter_id"].notna()
    uc = np.select([t["anuria"], mech == "oliguria"], ["anuria", "oliguria_stage" + t["aki_stage_urine"].astype(str)],
                   "no_oliguria")
    return pipeline_comparison(c.tables, res, pd.Series(cc, index=t["encounter_id"]),
                               pd.Series(uc[icu], index=t.loc[icu, "icu_encounter_id"]))


def sliding_uo_stage(kb: KnowledgeBase, hours: np.ndarray, volumes: np.ndarray, weight: float,
                     at_chartings_only: bool = False) -> int:
    """Max KDIGO urine-output stage of one stay over EVERY window, volumes spread evenly over their intervals.

    Test oracle for class 14 (docs/peers.md): the prorated volume of a sliding window is piecewise linear in
    its end, with kinks where its end or start crosses a charting, so the extremes lie at windows ending at
    a charting t_i or at t_i + 6/12/24 h; ``at_chartings_only`` keeps the first kind (what the SQL evaluates).
    """
    v = kb.value
    h1, h2, h3, ha = (v(k) for k in ("kdigo_uo_stage1_hours", "kdigo_uo_stage2_hours", "kdigo_uo_stage3_hours",
                                     "kdigo_anuria_hours"))
    r1, r3 = v("kdigo_uo_stage1_rate"), v("kdigo_uo_stage3_rate")
    cum = np.concatenate([[0.0], np.cumsum(volumes[1:])])  # the first charting closes no interval
    ends = hours if at_chartings_only else np.unique(np.concatenate([hours, *(hours + x for x in (h1, h2, h3, ha))]))
    ends = ends[ends <= hours[-1]]

    def vol(x: float) -> np.ndarray:
        return np.where(ends - x >= hours[0], np.interp(ends, hours, cum) - np.interp(ends - x, hours, cum), np.nan)

    stage = np.select([vol(ha) == 0, vol(h3) / weight / h3 < r3, vol(h2) / weight / h2 < r1,
                       vol(h1) / weight / h1 < r1], [3, 3, 2, 1], 0)
    return int(stage.max()) if stage.size else 0


def mimic_comparison(kb: KnowledgeBase) -> tuple[PipelineComparison, dict[str, int]]:
    """The MIMIC-IV demo subset through the real adapter path: read_mimic -> normalize -> store -> run.

    Creatinine class per admission: ``history`` when the subject has creatinine before the admission that the
    pipeline may use (within 7 days before it, or a pre-admission baseline 7-365 days before), else
    ``admission_only``; the peers see the admission's values only. Urine class per ICU stay:
    ``low_window_between_chartings`` when a window the SQL does not evaluate has a higher stage
    (``sliding_uo_stage``), else ``icu``.
    Also returns the quarantine counts by reason.
    """
    tables = normalize(read_mimic(MIMIC), kb)
    res = run_pipeline(tables, kb)
    ev = tables["events"].select(["subject_id", "time", "analyte"]).to_pandas()
    cr = ev[ev["analyte"] == "creatinine"]
    enc = tables["encounters"].select(["subject_id", "encounter_id", "kind", "start"]).to_pandas()
    hosp = enc[enc["kind"] != "icu"].merge(cr, on="subject_id")
    before = (hosp["time"] < hosp["start"]) & (hosp["time"] >= hosp["start"] - pd.Timedelta(days=365))
    has_history = before.groupby(hosp["encounter_id"]).any()
    creat_class = pd.Series(np.where(has_history, "history", "admission_only"), index=has_history.index)
    uo_class = pd.Series("icu", index=enc.loc[enc["kind"] == "icu", "encounter_id"].to_numpy())
    first = pipeline_comparison(tables, res, creat_class, uo_class)
    u = first.urine.urineoutput.assign(h=lambda d: (d["charttime"] - d["charttime"].min()) / pd.Timedelta(hours=1))
    w = first.urine.demographics.set_index("stay_id")["weight"]
    ids = first.ids.set_index("stay_id")["encounter_id"]
    for sid, g in u.groupby("stay_id"):  # ~20 ICU stays: a test oracle, not the pipeline
        args = (kb, g["h"].to_numpy(), g["urineoutput"].to_numpy(dtype=float), float(w[sid]))
        if sliding_uo_stage(*args) > sliding_uo_stage(*args, at_chartings_only=True):
            uo_class[ids[sid]] = "low_window_between_chartings"
    q = tables["quarantine"].select(["reason"]).to_pandas()["reason"].value_counts().sort_index()
    return (pipeline_comparison(tables, res, creat_class, uo_class), {str(k): int(v) for k, v in q.items()})
