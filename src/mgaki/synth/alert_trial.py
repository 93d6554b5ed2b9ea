"""A synthetic pragmatic trial of alerts with a planted effect (issue 17 point 4).

Each patient has one admission (some start in the ICU); a normal Mg, then a low Mg (the alert's trigger),
then IV magnesium sulfate after a delay drawn from an exponential distribution whose mean depends on the
patient's arm: clinicians in the live arm (who see the alert) dose sooner by the planted effect. The arm comes
from the caller (``arm_of``, called in order of the trigger times: the order of first eligibility), so the
same allocation the service uses decides it. Raw adapter tables (``schema.RAW``) come out: normalise and
store them, surveil, and ``mgaki.research.alert_eval`` should recover the effect (or, when none was planted,
find none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from mgaki.events.schema import RAW

__all__ = ["TrialCohort", "alert_trial_cohort"]

_FMT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class TrialCohort:
    raw: dict[str, pa.Table]
    arms: dict[str, str]  # subject_id -> arm the caller gave
    trigger: dict[str, datetime]  # subject_id -> time of the low Mg
    delay_h: dict[str, float]  # subject_id -> planted lab-to-dose hours (inf: no dose)


def alert_trial_cohort(n: int, seed: int, arm_of: Callable[[str, str, datetime], str], *,
                       live_mean_h: float = 1.5, silent_mean_h: float = 4.0, p_icu: float = 0.3,
                       start: datetime = datetime(2031, 3, 1, tzinfo=UTC)) -> TrialCohort:
    """``n`` patients; ``arm_of(subject_id, care_unit, trigger_time)`` -> 'live' | 'silent'. Equal means: a null
    effect. Delays above 24 h mean no dose within the lab-to-action window."""
    rng = np.random.default_rng(seed)
    ev: list[list[str | None]] = []
    meds: list[list[str | None]] = []
    enc: list[list[str | None]] = []
    subj: list[list[str | int | None]] = []
    arms: dict[str, str] = {}
    trig: dict[str, datetime] = {}
    delays: dict[str, float] = {}
    plan = []
    for i in range(n):  # draws first, so arms are asked for in order of eligibility
        adm = start + timedelta(minutes=int(rng.integers(0, 30 * 24 * 60)))
        plan.append((i, adm, bool(rng.random() < p_icu), adm + timedelta(hours=float(rng.uniform(8, 20))),
                     str(rng.choice(["F", "M"])), int(rng.integers(1940, 2000)),
                     round(float(rng.uniform(1.1, 1.45)), 2), float(rng.exponential(1.0))))
    for i, adm, icu, low_t, sex, year, low_v, unit_delay in sorted(plan, key=lambda p: p[3]):
        sid, eid = f"T{seed % 1000:03d}{i:05d}", f"A{seed % 1000:03d}{i:05d}"
        dis = adm + timedelta(days=5)
        subj.append([sid, sex, year, "synthetic-trial", None])
        enc.append([sid, eid, "hospital", adm.strftime(_FMT), dis.strftime(_FMT), None, "synthetic-trial"])
        if icu:
            enc.append([sid, eid + "-icu", "icu", adm.strftime(_FMT), (adm + timedelta(days=2)).strftime(_FMT),
                        eid, "synthetic-trial"])
        trig[sid] = low_t
        for t, v in ((adm + timedelta(hours=1), 0.9), (adm + timedelta(hours=30), 0.9)):
            ev.append([sid, eid, t.strftime(_FMT), "2160-0", "creatinine", f"{v}", "mg/dL", "synthetic-trial"])
        ev.extend([sid, eid, t.strftime(_FMT), "19123-9", "magnesium", f"{v}", "mg/dL", "synthetic-trial"]
                  for t, v in ((adm + timedelta(hours=2), 2.0), (low_t, low_v)))
        arms[sid] = arm_of(sid, "icu" if icu else "ward", low_t)
        delay = unit_delay * (live_mean_h if arms[sid] == "live" else silent_mean_h)  # exponential, that mean
        delays[sid] = delay if delay <= 24 else float("inf")
        recheck = low_t + timedelta(hours=26)
        if delay <= 24:
            d0 = low_t + timedelta(hours=delay)
            meds.append([sid, eid, d0.strftime(_FMT), (d0 + timedelta(hours=1)).strftime(_FMT),
                         "magnesium sulfate", None, "IV", "2", "g", "synthetic-trial"])
            recheck = d0 + timedelta(hours=4)
        ev.append([sid, eid, recheck.strftime(_FMT), "19123-9", "magnesium", "1.9", "mg/dL", "synthetic-trial"])
        ev.append([sid, eid, (recheck + timedelta(hours=30)).strftime(_FMT), "19123-9", "magnesium", "2.0", "mg/dL",
                   "synthetic-trial"])

    def table(name: str, rows: list[list[str | int | None]] | list[list[str | None]]) -> pa.Table:
        schema = RAW[name]
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
        return pa.table({f.name: pa.array(c, f.type) for f, c in zip(schema, cols, strict=True)})

    raw = {"events": table("events", ev), "medications": table("medications", meds),
           "encounters": table("encounters", enc), "subjects": table("subjects", subj)}
    return TrialCohort(raw, arms, trig, delays)
