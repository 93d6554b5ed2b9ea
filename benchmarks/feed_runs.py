"""What an incremental surveillance run of a lab feed costs per patient, part by part, in a process alone (issue 18
point 2): the runs the HL7 feed of ``mllp.py`` makes, without the server, the network and the feed's own CPU.

    python benchmarks/feed_runs.py --store-cache /work/bench/mllp-cache              # 100 k patients, 20 runs of 400
    python benchmarks/feed_runs.py --store-cache /work/bench/mllp-cache --read-threads 1   # an A/B of one setting
    python benchmarks/feed_runs.py --patients 200 --batch 20 --runs 3 --last 2       # smoke size

The store is ``mllp.py``'s (ICU-shaped cohort, seed 18, one full surveillance run; built once under
``--store-cache``), copied by hard links (parts and results are never rewritten in place). Then ``--runs`` times:
``--batch`` ORU^R01 messages of ``mllp.messages`` (a creatinine and a magnesium for random patients, 2 % of them a
low magnesium) parsed (``parse_oru``), normalized and appended as one batch, as the feed's apply thread does, and
one incremental ``surveil``. Folds are off (``DELTA_FOLD_GENS``) so that every run is alike. Printed, averaged
over the last ``--last`` runs: the run's seconds and its parts (``_materialise``: reading the patients' rows;
``_compute``: the stages; ``_write_some``: results, timers, alert log and index; with their own parts), per run
and per patient. ``--read-threads N`` sets ``pipeline.READ_THREADS`` (the DuckDB threads of the read).
``--out FILE``: JSON.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import add_seconds, save_json, timed  # noqa: E402
from mllp import linked_copy, messages  # noqa: E402

PARTS = ("_materialise", "_compute", "_write_some", "_write_delta", "_replace_rows", "_new_alerts", "_append_log",
         "_due_timers")


def measure(store_root: Path, batch: int, runs: int, last: int, patients: int,
            read_threads: int | None) -> dict[str, Any]:
    import pyarrow as pa

    from mgaki.events import EventStore
    from mgaki.events.normalize import normalize
    from mgaki.service.ingest.hl7 import parse_oru
    from mgaki.surveillance import pipeline

    pipeline.DELTA_FOLD_GENS = 10**9  # no fold: every run alike
    if read_threads is not None:
        pipeline.READ_THREADS = read_threads
    acc: dict[str, float] = {}
    for name in PARTS:
        timed(pipeline, name, functools.partial(add_seconds, acc, name))
    store = EventStore(store_root)
    clock = datetime.fromisoformat(pipeline._read_state(store_root / "results")["data_max"]).replace(tzinfo=UTC)
    start = clock + timedelta(hours=1)
    texts = [m[0] for m in messages(batch * runs, patients, 0.02, "feedruns", start, 200.0)]
    pipeline.surveil(store)  # the process's first run (knowledge base, databases): not counted
    rows = []
    for k in range(runs):
        part = texts[k * batch:(k + 1) * batch]
        t0 = time.perf_counter()
        parsed = [parse_oru(t).tables for t in part]
        raw = {n: pa.concat_tables([p[n] for p in parsed]) for n in parsed[0]}
        tables = normalize(raw, now=start + timedelta(seconds=(k + 1) * batch / 200.0 + 1))
        t1 = time.perf_counter()
        store.append(tables)
        t2 = time.perf_counter()
        acc.clear()
        res = pipeline.surveil(store)
        t3 = time.perf_counter()
        rows.append({"parse_normalize_s": t1 - t0, "append_s": t2 - t1, "run_s": t3 - t2,
                     "patients": res.subjects_recomputed, "new_alerts": res.new_alerts.num_rows,
                     **{f"{n}_s": acc.get(n, 0.0) for n in PARTS}})
        print(f"run {k + 1}/{runs}: {res.subjects_recomputed} patients, {t3 - t2:.2f} s", flush=True)
    tail = rows[-last:]
    mean = {key: sum(r[key] for r in tail) / len(tail) for key in tail[0]}
    return {"runs": rows, "mean_last": mean, "read_threads": pipeline.READ_THREADS}


def report(res: dict[str, Any]) -> None:
    m = res["mean_last"]
    per = max(m["patients"], 1.0)
    print(f"\nstore: {res['store']['patients']:,} patients, {res['store']['rows']:,} event rows; batches of "
          f"{res['args']['batch']} messages, the last {res['args']['last']} of {res['args']['runs']} runs averaged; "
          f"read threads {res['read_threads']}")
    print(f"{'part':28s} {'ms per run':>11s} {'ms per patient':>15s}")
    for key, label in [("run_s", "incremental run"), ("_materialise_s", "  read (_materialise)"),
                       ("_compute_s", "  stages (_compute)"), ("_write_some_s", "  results (_write_some)"),
                       ("_write_delta_s", "    generation"), ("_replace_rows_s", "    timers and index buckets"),
                       ("_new_alerts_s", "    new alerts"), ("_append_log_s", "    alert log part"),
                       ("parse_normalize_s", "parse and normalize (feed)"), ("append_s", "store append (feed)")]:
        print(f"{label:28s} {m[key] * 1e3:11.0f} {m[key] * 1e3 / per:15.2f}")
    print(f"patients per run {m['patients']:.0f}, new alerts per run {m['new_alerts']:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--store-cache", type=Path, default=None, help="build the store here once, reuse it after")
    ap.add_argument("--batch", type=int, default=400, help="messages (patients) per run")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--last", type=int, default=10, help="runs averaged, the last ones")
    ap.add_argument("--read-threads", type=int, default=None, help="pipeline.READ_THREADS (default: the code's)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not 1 <= a.last <= a.runs:
        ap.error("--last must be between 1 and --runs")
    with tempfile.TemporaryDirectory(prefix="mgaki-feedruns-") as d:
        copy, info = linked_copy(a.store_cache or Path(d) / "cache", a.patients, Path(d))
        res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "started": datetime.now(UTC).isoformat(), "store": info,
               **measure(copy, a.batch, a.runs, a.last, a.patients, a.read_threads)}
        shutil.rmtree(copy, ignore_errors=True)
    report(res)
    save_json(res, a.out, "feed-runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
