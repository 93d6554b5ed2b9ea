"""Small random cohorts in canonical form, for differential and incremental tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from mgaki.events.schema import TABLES

T0 = datetime(2024, 3, 1)  # noqa: DTZ001 - canonical tables hold naive UTC times (MEDS)


def random_cohort(n: int, seed: int) -> dict[str, pa.Table]:
    """n subjects, one admission each, creatinine / urine output / Mg / K series with planted rises."""
    rng = np.random.default_rng(seed)
    ev: dict[str, list[object]] = {k: [] for k in ("subject_id", "encounter_id", "time", "code", "analyte",
                                                   "numeric_value", "unit", "source")}
    enc: dict[str, list[object]] = {k: [] for k in ("subject_id", "encounter_id", "kind", "start", "end",
                                                    "parent_id", "source")}
    wt: dict[str, list[object]] = {"subject_id": [], "time": [], "weight_kg": [], "source": []}

    def event(s: str, e: str, t: datetime, analyte: str, v: float | None, unit: str | None) -> None:
        for k, x in zip(ev, (s, e, t, f"test/{analyte}", analyte, v, unit, f"row{len(ev['source'])}"),
                        strict=True):
            ev[k].append(x)

    for i in range(n):
        s, e = f"S{i:04d}", f"E{i:04d}"
        start = T0 + timedelta(hours=int(rng.integers(0, 500)))
        days = int(rng.integers(3, 15))
        end = start + timedelta(days=days)
        for k, x in zip(enc, (s, e, "inpatient", start, end, None, "test"), strict=True):
            enc[k].append(x)
        base = float(rng.uniform(0.6, 1.6)) * (3.5 if rng.random() < 0.08 else 1.0)
        t = start + timedelta(hours=int(rng.integers(0, 12)))
        level = base
        while t < end:
            if rng.random() < 0.15:
                level *= float(rng.choice([1.2, 1.35, 1.6, 2.1]))
            elif rng.random() < 0.2:
                level = max(base, level * 0.8)
            event(s, e, t, "creatinine", round(level * float(rng.normal(1, 0.04)), 2), "mg/dL")
            t += timedelta(minutes=int(rng.choice([30, 360, 720, 1440, 1500, 2900, 3000])))
        if rng.random() < 0.05:
            event(s, e, start + timedelta(days=float(rng.uniform(1, days))), "rrt", None, None)
        mg_t = start + timedelta(hours=2)
        while mg_t < end:
            event(s, e, mg_t, "magnesium", round(float(rng.uniform(1.0, 2.8)), 2), "mg/dL")
            event(s, e, mg_t, "potassium", round(float(rng.uniform(2.8, 4.8)), 1), "mmol/L")
            mg_t += timedelta(hours=int(rng.choice([12, 24, 60])))
        if rng.random() < 0.6:
            w = float(rng.uniform(45, 120))
            wt["subject_id"].append(s)
            wt["time"].append(start)
            wt["weight_kg"].append(w)
            wt["source"].append("test")
            u = start + timedelta(hours=1)
            rate = float(rng.uniform(0.1, 1.5))
            for _ in range(int(rng.integers(10, 80))):
                dt = int(rng.choice([30, 60, 60, 60, 120, 180]))
                if rng.random() < 0.1:
                    rate = float(rng.choice([0.0, 0.2, 0.4, 1.0]))
                if u >= end:
                    break
                event(s, e, u, "urine_output", round(rate * w * dt / 60.0, 1), "mL")
                u += timedelta(minutes=dt)
    return {
        "events": pa.table(ev, schema=TABLES["events"]),
        "encounters": pa.table(enc, schema=TABLES["encounters"]),
        "weights": pa.table(wt, schema=TABLES["weights"]),
    }
