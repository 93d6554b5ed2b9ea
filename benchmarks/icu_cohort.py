"""An ICU-shaped synthetic cohort for the scale benchmarks of issue 18 (seeded, vectorised, by chunks).

Per patient: one hospital admission with one ICU stay of 8 days, about 50 creatinine results (one
every ~4 h, a random walk with planted rises in a quarter of patients), 194 hourly urine-output
chartings (oliguric spells planted), 6 magnesium results, one weight. 244 measurement rows per
patient: 24.4 M rows at 100 k patients, the shape of the independent cohort the issue measured on
(ICU data: hourly urine output dominates). `open_share` leaves that share of admissions without an
end (still in hospital), for the incremental benchmark.

    python benchmarks/icu_cohort.py --patients 1000 --out /tmp/icu   # writes an event store there
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

T0 = np.datetime64("2025-01-01T00:00:00", "s")  # in the past: a live feed refuses results dated ahead of its clock
CREAT_PER_PATIENT = 50
UO_PER_PATIENT = 194
MG_PER_PATIENT = 6
STAY_HOURS = 196
ROWS_PER_PATIENT = CREAT_PER_PATIENT + UO_PER_PATIENT + MG_PER_PATIENT


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    """Zero-padded ids (sorted as strings as by number): built once per patient, repeated by index."""
    uniq, inv = np.unique(idx, return_inverse=True)
    names = pa.array([f"{prefix}{i:08d}" for i in uniq.tolist()], pa.string())
    return names.take(pa.array(inv.astype(np.int32)))


def chunk(first: int, n: int, seed: int, open_share: float = 0.0) -> dict[str, pa.Table]:
    """Canonical tables (mgaki.events.schema) of patients first .. first+n-1 (the same for any chunking)."""
    from mgaki.events.schema import TABLES

    rng = np.random.default_rng([seed, first])
    pid = np.arange(first, first + n)
    start = T0 + (rng.integers(0, 365 * 24, n) * 3600).astype("timedelta64[s]")
    end = start + np.timedelta64(STAY_HOURS * 3600, "s")
    is_open = rng.random(n) < open_share
    subj = _ids("P", pid)
    enc = pa.table({
        "subject_id": pa.concat_arrays([subj, subj]),
        "encounter_id": pa.concat_arrays([_ids("H", pid), _ids("I", pid)]),
        "kind": pa.array(["inpatient"] * n + ["icu"] * n),
        "start": pa.array(np.concatenate([start, start + np.timedelta64(3600, "s")]), pa.timestamp("us")),
        "end": pa.array(np.concatenate([end, end - np.timedelta64(3600, "s")]), pa.timestamp("us"),
                        mask=np.concatenate([is_open, is_open])),
        "parent_id": pa.concat_arrays([pa.nulls(n, pa.string()), _ids("H", pid)]),
        "source": pa.array(["icu-cohort"] * (2 * n)),
    }).cast(TABLES["encounters"])
    # creatinine: every ~4 h, baseline 0.6-1.4 mg/dL, a rise to 1.5-3.5x in a quarter of patients
    k = CREAT_PER_PATIENT
    cr_t = start[:, None] + (np.arange(k)[None, :] * 4 * 3600 + rng.integers(0, 3600, (n, k))).astype("timedelta64[s]")
    base = rng.uniform(0.6, 1.4, n)
    rise = np.where(rng.random(n) < 0.25, rng.uniform(1.5, 3.5, n), 1.0)
    onset = rng.integers(5, k - 10, n)
    level = base[:, None] * np.where(np.arange(k)[None, :] >= onset[:, None], rise[:, None], 1.0)
    cr_v = np.round(level * rng.normal(1.0, 0.05, (n, k)), 2)
    # urine output: hourly from ICU admission, 0.3-1.5 mL/kg/h, oliguric spells (x0.2) in a fifth
    u = UO_PER_PATIENT
    w = rng.uniform(50, 110, n)
    uo_t = start[:, None] + ((np.arange(u)[None, :] + 2) * 3600).astype("timedelta64[s]")
    rate = rng.uniform(0.3, 1.5, n)[:, None] * np.exp(rng.normal(0, 0.3, (n, u)))
    spell = (rng.random(n) < 0.2)[:, None] & (np.abs(np.arange(u)[None, :] - rng.integers(20, 150, n)[:, None]) < 14)
    uo_v = np.round(np.where(spell, rate * 0.2, rate) * w[:, None], 1)
    m = MG_PER_PATIENT
    mg_t = start[:, None] + ((np.arange(m)[None, :] * 30 + 3) * 3600).astype("timedelta64[s]")
    mg_v = np.round(rng.uniform(1.2, 2.6, (n, m)), 2)
    rows = n * (k + u + m)
    times = np.concatenate([cr_t.ravel(), uo_t.ravel(), mg_t.ravel()])
    analyte = np.concatenate([np.full(n * k, 0), np.full(n * u, 1), np.full(n * m, 2)]).astype(np.int8)
    names = pa.array(["creatinine", "urine_output", "magnesium"])
    codes = pa.array(["LOINC/2160-0", "LOINC/9187-6", "LOINC/19123-9"])
    units = pa.array(["mg/dL", "mL", "mg/dL"])
    who = np.concatenate([np.repeat(pid, k), np.repeat(pid, u), np.repeat(pid, m)])
    idx = pa.array(analyte)
    events = pa.table({
        "subject_id": _ids("P", who),
        "encounter_id": pa.concat_arrays([_ids("H", np.repeat(pid, k)), _ids("I", np.repeat(pid, u)),
                                          _ids("H", np.repeat(pid, m))]),
        "time": pa.array(times, pa.timestamp("us")),
        "code": codes.take(idx), "analyte": names.take(idx),
        "numeric_value": pa.array(np.concatenate([cr_v.ravel(), uo_v.ravel(), mg_v.ravel()])),
        "unit": units.take(idx), "source": pa.nulls(rows, pa.string()),
    }).cast(TABLES["events"])
    weights = pa.table({"subject_id": subj, "time": pa.array(start, pa.timestamp("us")),
                        "weight_kg": pa.array(np.round(w, 1)), "source": pa.nulls(n, pa.string())}
                       ).cast(TABLES["weights"])
    return {"events": events, "encounters": enc, "weights": weights}


def chunks(patients: int, seed: int, size: int = 20_000, open_share: float = 0.0) -> Iterator[dict[str, pa.Table]]:
    for first in range(0, patients, size):
        yield chunk(first, min(size, patients - first), seed, open_share)


def build_store(root: Path, patients: int, seed: int = 18, open_share: float = 0.0) -> tuple[int, float]:
    """An event store of the cohort at `root`, appended chunk by chunk; (rows, seconds)."""
    from mgaki.events import EventStore

    store = EventStore(root)
    rows, t0 = 0, time.perf_counter()
    for tabs in chunks(patients, seed, open_share=open_share):
        store.append(tabs)
        rows += tabs["events"].num_rows
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--open-share", type=float, default=0.0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows, s = build_store(a.out, a.patients, a.seed, a.open_share)
    print(f"{datetime.now(UTC):%H:%M:%S} {a.patients} patients, {rows} event rows in {s:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
