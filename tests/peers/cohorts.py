"""Cohorts for the differential tests against the KDIGO peers, and mgaki's side of the comparison.

All tables use the peers' interchange layout (pyaki's CLI layout, see ``run_peers.py``):
creatinine (stay_id, charttime, creat mg/dL), urineoutput (stay_id, charttime, urineoutput mL),
demographics (stay_id, weight kg), rrt (stay_id, charttime, rrt_status). Times are naive and read as UTC.

``mgaki_stages`` is the only place that computes mgaki's stages; it calls the single-patient reference
rules (``mgaki.engine.kidney``) stay by stay and can be switched to the batch SQL pipeline
(``mgaki.surveillance``) without touching the tests.

The synthetic cohort is built from scenarios. Each scenario either belongs to no deviation class (every
peer must agree with mgaki there) or is one documented deviation class (docs/peers.md); the
parameters keep each scenario clear of thresholds so the class, not noise, decides the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mgaki.engine.kidney import stage_creatinine, stage_urine_output
from mgaki.knowledge import KnowledgeBase

__all__ = [
    "CREAT_CLASSES",
    "UO_CLASSES",
    "Cohort",
    "mgaki_stages",
    "mimic_subset",
    "random_cohort",
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
    """One hand-made stay per deviation class (ids 1-99), the numbers quoted in docs/peers.md."""
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
    return Cohort(
        _frame([(s, _hours(h), v) for s, h, v in c], ["stay_id", "charttime", "creat"]),
        _frame([(s, _hours(h), v) for s, h, v in u], ["stay_id", "charttime", "urineoutput"]),
        _frame([(s, 70.0) for s in range(1, 12)], ["stay_id", "weight"]),
        _frame([(8, _hours(30), 1)], ["stay_id", "charttime", "rrt_status"]),
        _frame(labels, ["stay_id", "creat_class", "uo_class"]))


# ---------------------------------------------------------------- MIMIC-IV demo subset
def mimic_subset() -> tuple[Cohort, Cohort, dict[str, int]]:
    """(creatinine cohort keyed by hadm_id, urine cohort keyed by stay_id, counts of what was dropped)."""
    spec = yaml.safe_load((Path(__file__).with_name("mimic_urine_items.yaml")).read_text())
    lab = pd.read_csv(MIMIC / "hosp" / "labevents.csv.gz", usecols=["hadm_id", "itemid", "charttime", "valuenum"])
    cr = lab[lab["itemid"] == spec["creatinine_itemid"]["itemid"]]
    counts = {"creatinine_rows": len(cr), "creatinine_rows_without_hadm": int(cr["hadm_id"].isna().sum()),
              "creatinine_rows_without_value": int(cr["valuenum"].isna().sum())}
    cr = cr.dropna(subset=["hadm_id", "valuenum"])
    creat = pd.DataFrame({"stay_id": cr["hadm_id"].astype("int64"), "charttime": pd.to_datetime(cr["charttime"]),
                          "creat": cr["valuenum"].astype(float)})
    oe = pd.read_csv(MIMIC / "icu" / "outputevents.csv.gz", usecols=["stay_id", "itemid", "charttime", "value"])
    urine_ids = [i["itemid"] for i in spec["items"]]
    ur = oe[oe["itemid"].isin(urine_ids)]
    counts |= {"output_rows": len(oe), "urine_rows": len(ur), "urine_rows_negative": int((ur["value"] < 0).sum())}
    ur = ur[ur["value"] >= 0]
    # two urine items charted at one time (Foley + void) are one charting of their sum
    ur = ur.groupby(["stay_id", "charttime"], as_index=False)["value"].sum()
    urine = pd.DataFrame({"stay_id": ur["stay_id"].astype("int64"), "charttime": pd.to_datetime(ur["charttime"]),
                          "urineoutput": ur["value"].astype(float)})
    ie = pd.read_csv(MIMIC / "icu" / "inputevents.csv.gz", usecols=["stay_id", "starttime", "patientweight"])
    w = ie.dropna().sort_values("starttime").groupby("stay_id", as_index=False)["patientweight"].first()
    weights = w.rename(columns={"patientweight": "weight"})
    counts |= {"urine_stays": int(urine["stay_id"].nunique()),
               "urine_stays_without_weight": int((~urine["stay_id"].drop_duplicates().isin(weights["stay_id"])).sum())}
    urine = urine[urine["stay_id"].isin(weights["stay_id"])]
    hadm = creat["stay_id"].drop_duplicates()
    no_rrt = _frame([], ["stay_id", "charttime", "rrt_status"])
    creat_cohort = Cohort(creat, _frame([], ["stay_id", "charttime", "urineoutput"]),
                          pd.DataFrame({"stay_id": hadm, "weight": 70.0}), no_rrt,
                          pd.DataFrame({"stay_id": hadm, "creat_class": "mimic", "uo_class": "uo_none"}))
    ustays = urine["stay_id"].drop_duplicates()
    uo_cohort = Cohort(_frame([], ["stay_id", "charttime", "creat"]), urine,
                       weights[weights["stay_id"].isin(ustays)], no_rrt,
                       pd.DataFrame({"stay_id": ustays, "creat_class": "none", "uo_class": "mimic"}))
    counts |= {"creatinine_admissions": int(hadm.size), "urine_stays_compared": int(ustays.size)}
    return creat_cohort, uo_cohort, counts


# ---------------------------------------------------------------- files for the peer runner
def write_peer_dir(cohort: Cohort, d: Path) -> Path:
    """Write the cohort in the runner's (pyaki CLI) layout; empty tables are left out, as pyaki needs."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("urineoutput", "creatinine", "rrt", "demographics"):
        df: pd.DataFrame = getattr(cohort, name)
        if len(df):
            df.to_csv(d / f"{name}.csv", index=False)
    return d


# ---------------------------------------------------------------- mgaki's side
def _utc(s: pd.Series) -> list[datetime]:
    return [t.to_pydatetime().replace(tzinfo=UTC) for t in pd.to_datetime(s)]


def mgaki_stages(kb: KnowledgeBase, creat: pd.DataFrame, uo: pd.DataFrame, weights: pd.DataFrame,
                 rrt: pd.DataFrame | None = None) -> pd.DataFrame:
    """Max KDIGO creatinine(+RRT) stage and max urine-output stage per stay, no pre-admission baseline.

    Today: the single-patient reference rules, stay by stay (test-sized cohorts only). To be switched to
    ``mgaki.surveillance`` (batch SQL) once it exists; the tests only see this table.
    """
    rrt_first = ({} if rrt is None or rrt.empty else
                 rrt[rrt["rrt_status"] == 1].groupby("stay_id")["charttime"].min().to_dict())
    rows: dict[object, dict[str, float]] = {}
    for sid, g in creat.groupby("stay_id", sort=True):
        rt = _utc(pd.Series([rrt_first[sid]])) if sid in rrt_first else []
        st = stage_creatinine(kb, list(zip(_utc(g["charttime"]), g["creat"].astype(float), strict=True)),
                              rrt_times=rt)
        rows.setdefault(sid, {})["mgaki_creat_max"] = float(max(s.stage for s in st))
    wt = weights.set_index("stay_id")["weight"].to_dict()
    for sid, g in uo.groupby("stay_id", sort=True):
        if sid not in wt:
            continue
        us = stage_urine_output(kb, list(zip(_utc(g["charttime"]), g["urineoutput"].astype(float), strict=True)),
                                float(wt[sid]))
        rows.setdefault(sid, {})["mgaki_uo_max"] = float(max(s.stage for s in us)) if us else float("nan")
    out = pd.DataFrame.from_dict(rows, orient="index")
    for col in ("mgaki_creat_max", "mgaki_uo_max"):
        if col not in out.columns:
            out[col] = float("nan")
    return out.rename_axis("stay_id").reset_index()
