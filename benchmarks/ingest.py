"""`mgaki ingest` of the ICU-shaped cohort from the CSV layout: rows/s and peak RSS (issue 18, point 3).

    nice -n 15 python benchmarks/ingest.py --patients 10000 --scratch /tmp/ingest-bench
    nice -n 15 python benchmarks/ingest.py --patients 100000 --scratch /tmp/ingest-bench

1. write: the cohort of ``benchmarks/icu_cohort.py`` (seed 18: 50 creatinine + 194 hourly urine-output
   + 6 Mg rows and one weight per patient, admissions and ICU stays) in the CSV layout
   (``docs/adapters/csv.md``: ``events.csv`` with the weights as events, ``encounters.csv``, ...),
   chunk by chunk; kept in ``--scratch/csv-<patients>-<seed>-<hash of icu_cohort.py>`` and reused by later runs;
2. ingest: ``python -m mgaki ingest <csv> --format csv --store <fresh store>`` in a child process,
   timed from outside; peak RSS is the child's ``ru_maxrss`` (RUSAGE_CHILDREN, one child only).

Prints rows (data rows of the CSV files), seconds, rows/s, peak RSS, the load average before and
after, and PASS/FAIL for the targets: peak RSS < 2 GB, >= 1 M rows/s. ``--chunk-rows`` is passed on.
``--profile`` runs the child under cProfile (slower; top functions printed). JSON to
``benchmarks/results/ingest-<stamp>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_RSS_GB = 2.0
TARGET_ROWS_S = 1_000_000
GB = 1024**3
FILES = ("events", "encounters", "subjects", "medications", "contexts")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_csv(root: Path, patients: int, seed: int, size: int = 20_000) -> dict[str, int]:
    """The cohort in the CSV layout at `root` (data rows per file); written once, by chunks of patients."""
    done = root / "rows.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    sys.path.insert(0, str(HERE))
    from icu_cohort import chunks
    from mgaki.adapters.csv_layout import write_csv_layout

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rows = dict.fromkeys(FILES, 0)
    with tempfile.TemporaryDirectory(dir=root) as d:
        part = Path(d)
        for i, tabs in enumerate(chunks(patients, seed, size)):
            write_csv_layout(tabs, part)
            for name in FILES:
                with (part / f"{name}.csv").open("rb") as src, (root / f"{name}.csv").open("ab") as dst:
                    header = src.readline()
                    if i == 0:
                        dst.write(header)
                    n = 0
                    for block in iter(lambda: src.read(1 << 24), b""):
                        n += block.count(b"\n")
                        dst.write(block)
                    rows[name] += n
    done.write_text(json.dumps(rows))
    return rows


def run_ingest(src: Path, store: Path, chunk_rows: int | None, profile: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mgaki", "ingest", str(src), "--format", "csv", "--store", str(store)]
    if chunk_rows:
        cmd += ["--chunk-rows", str(chunk_rows)]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    s = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"ingest failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": s, "peak_rss": usage.ru_maxrss * 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "stdout": r.stdout, "command": " ".join(cmd)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "mgaki-ingest-bench",
                    help="folder for the CSV files (kept) and the store (removed after)")
    ap.add_argument("--chunk-rows", type=int, default=None, help="passed to mgaki ingest")
    ap.add_argument("--profile", action="store_true", help="cProfile the child (slower); top 25 by total time")
    ap.add_argument("--keep-store", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    # the generator's text in the name: a changed cohort is written anew, never read from an old cache
    tag = hashlib.sha1((HERE / "icu_cohort.py").read_bytes()).hexdigest()[:8]
    src = a.scratch / f"csv-{a.patients}-{a.seed}-{tag}"
    t0 = time.perf_counter()
    cached = (src / "rows.json").is_file()
    rows = write_csv(src, a.patients, a.seed)
    wrote = time.perf_counter() - t0
    total = sum(rows.values())
    size = sum((src / f"{n}.csv").stat().st_size for n in FILES)
    store = a.scratch / f"store-{a.patients}"
    shutil.rmtree(store, ignore_errors=True)
    prof = a.scratch / "ingest.prof" if a.profile else None
    load_start = _load()
    res = run_ingest(src, store, a.chunk_rows, prof)
    load_end = _load()
    if not a.keep_store:
        shutil.rmtree(store, ignore_errors=True)
    rate = total / res["seconds"]
    out = {"patients": a.patients, "seed": a.seed, "rows": rows, "csv_bytes": size, "write_s": wrote,
           "ingest_s": res["seconds"], "rows_per_s": rate, "cpu_s": res["cpu_s"], "peak_rss": res["peak_rss"],
           "load_start": load_start,
           "load_end": load_end, "command": res["command"], "chunk_rows": a.chunk_rows, "cores": os.cpu_count(),
           "started": datetime.now(UTC).isoformat(), "profiled": a.profile}
    print(res["stdout"])
    how = "cached" if cached else f"written in {wrote:.0f} s"
    print(f"ingest benchmark, ICU-shaped cohort, {a.patients} patients (seed {a.seed}), CSV layout "
          f"{size / GB:.2f} GB ({src}, {how})")
    print(f"  command: {res['command']}")
    print(f"  rows: {total:,} ({', '.join(f'{k} {v:,}' for k, v in rows.items() if v)})")
    print(f"  seconds: {res['seconds']:.1f}   rows/s: {rate:,.0f}   peak RSS: {res['peak_rss'] / GB:.2f} GB   "
          f"CPU (user+sys): {res['cpu_s']:.1f} s = {total / res['cpu_s']:,.0f} rows per CPU-second")
    print(f"  load average before {load_start}, after {load_end}, {os.cpu_count()} cores"
          + ("  [profiled: times inflated]" if a.profile else ""))
    print(f"  peak RSS < {TARGET_RSS_GB:g} GB: {'PASS' if res['peak_rss'] < TARGET_RSS_GB * GB else 'FAIL'}")
    print(f"  >= {TARGET_ROWS_S:,} rows/s: {'PASS' if rate >= TARGET_ROWS_S else 'FAIL'}")
    if prof:
        import pstats

        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
    RESULTS.mkdir(exist_ok=True)
    path = a.out or RESULTS / f"ingest-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
