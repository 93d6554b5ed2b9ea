"""DuckDB vs Spark local on the same synthetic cohort, with per-stage wall times (issue 7, point 4).

Run from the repository root with the project venv active (needs mgaki[spark] and Java)::

    python benchmarks/spark.py                          # 10k and 100k patients
    python benchmarks/spark.py --sizes 2000 --master local[2]

Per size: ``mgaki.synth.generate(n)`` into a fresh ``EventStore`` (Parquet), then
``mgaki.surveillance.run(store)`` (DuckDB) and ``run_spark(store files, eager=True)`` (Spark; every
stage materialised so each stage's time is its own; a warm-up run on a tiny cohort first, so JVM start
and first compilation are not counted). Both engines read the same Parquet files. Prints totals, the
events per second and the slowest stages of each engine; writes JSON to
``benchmarks/results/spark-<date>.json``. The machine may be shared: load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from mgaki.events import EventStore
    from mgaki.surveillance import run
    from mgaki.surveillance.spark import CANONICAL, run_spark, session
    from mgaki.synth import generate

    spark = session(args.master, args.shuffle_partitions, app="mgaki-bench",
                    extra={"spark.driver.memory": args.driver_memory})
    spark.sparkContext.setLogLevel("ERROR")
    report: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "load_avg_start": os.getloadavg()},
                              "master": args.master, "shuffle_partitions": args.shuffle_partitions, "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        warm = EventStore(Path(tmp) / "warm")
        warm.append(generate(50, seed=1).tables)
        run_spark({t: warm.files(t) for t in CANONICAL}, spark, eager=True)
        for n in (int(s) for s in args.sizes.split(",")):
            store = EventStore(Path(tmp) / f"s{n}")
            store.append(generate(n, seed=7).tables)
            events = store.read("events").num_rows
            t0 = time.perf_counter()
            duck = run(store)
            duck_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sp = run_spark({t: store.files(t) for t in CANONICAL}, spark, eager=True, as_of=duck.as_of)
            spark_s = time.perf_counter() - t0
            rows = {k: v.num_rows for k, v in duck.tables.items()}
            same_rows = rows == {k: v.num_rows for k, v in sp.tables.items()}
            size = {"patients": n, "events": events, "duckdb_s": duck_s, "spark_s": spark_s,
                    "duckdb_events_per_s": events / duck_s, "spark_events_per_s": events / spark_s,
                    "output_rows": rows, "same_row_counts": same_rows,
                    "duckdb_stage_s": duck.seconds, "spark_stage_s": sp.seconds}
            report["sizes"].append(size)
            print(f"{n:>8} patients {events:>11,} events  DuckDB {duck_s:8.2f} s  Spark {spark_s:8.2f} s  "
                  f"(x{spark_s / duck_s:.1f})  row counts equal: {same_rows}", flush=True)
            for eng, secs in (("DuckDB", duck.seconds), ("Spark", sp.seconds)):
                top = sorted(secs.items(), key=lambda kv: -kv[1])[:8]
                print(f"   {eng:>6} slowest: " + ", ".join(f"{k} {v:.2f}" for k, v in top), flush=True)
    report["machine"]["load_avg_end"] = os.getloadavg()
    spark.stop()
    out = args.out or ROOT / "benchmarks" / "results" / f"spark-{datetime.now().date()}.json"  # noqa: DTZ005
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
