"""DuckDB vs Spark local on the same synthetic cohorts: wall time, peak memory, per-stage costs (issue 7, point 4).

Run from the repository root with the project venv active (needs mgaki[spark] and Java)::

    python benchmarks/spark.py                         # 10k and 100k patients
    python benchmarks/spark.py --curve                 # scaling curve: 10k, 30k, 100k, 300k, 1M patients + PNG
    python benchmarks/spark.py --sizes 2000 --master local[2] --duckdb-memory 4GB
    python benchmarks/spark.py --sizes 200 --no-warmup # smoke run (tests/test_benchmarks.py)

Per size, three child processes (so that each peak memory is its own):

1. **generate**: ``mgaki.synth.generate`` in chunks of ``--chunk`` patients (seed ``seed + k`` for chunk k,
   ids prefixed ``C<k>-`` so chunks never collide), each chunk written straight to the store layout
   (``<table>/part-<k>.parquet``) and freed: memory stays that of one chunk whatever the cohort size;
2. **duckdb**: ``mgaki.surveillance.run(store, duckdb_settings=...)`` with ``memory_limit`` and a
   ``temp_directory`` next to the data (DuckDB spills there instead of failing);
3. **spark**: ``run_spark(store files, eager=True)`` in local mode (every stage materialised, so each
   stage's seconds are its own), ``spark.local.dir`` next to the data, after a warm-up run on 50 patients
   (JVM start and first compilation not counted). The Spark UI's REST API gives each mgaki stage's
   input and shuffle bytes (``run_spark`` names every job after its stage).

Both engines read the same Parquet files and hand every output to Python as Arrow. Peak memory is sampled
every 0.25 s over the child and (Spark) its JVM, summed at the same instant; spill is the largest size the
temporary folder reached. The data is deleted after each size. Prints a table with Spark/DuckDB ratios from
this run, the slowest stages, and writes JSON to ``benchmarks/results/spark-<date>.json`` (``--curve`` also
a PNG of events vs wall time). The machine may be shared: load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
GB = 1024**3
CURVE_SIZES = "10000,30000,100000,300000,1000000"
BYTES_PER_EVENT_ON_DISK = 40  # measured ~25 (Parquet, all canonical tables); margin for spill checks


# ------------------------------------------------------------------------------------------ sampling
def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total


class Sampler:
    """Peak summed RSS of some processes and peak size of a folder, sampled in a thread."""

    def __init__(self, spill: Path | None, every: float = 0.25) -> None:
        self.pids = [os.getpid()]
        self.spill, self.every = spill, every
        self.peak_rss_kb = 0
        self.peak_spill = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.peak_rss_kb = max(self.peak_rss_kb, sum(_rss_kb(p) for p in self.pids))
            if self.spill is not None and i % 8 == 0:  # folder walks are dearer: every 2 s
                self.peak_spill = max(self.peak_spill, _dir_bytes(self.spill))
            i += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds so far of these processes (all their threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


class StageCpu:
    """Progress callback: CPU seconds spent by the processes between stages (robust to a shared machine)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = self.last = _cpu_s(pids)
        self.stage_cpu_s: dict[str, float] = {}

    def __call__(self, stage: str, i: int, n: int) -> None:
        now = _cpu_s(self.pids)
        self.stage_cpu_s[stage], self.last = now - self.last, now

    def total(self) -> float:
        return _cpu_s(self.pids) - self.start


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write_json(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


# ------------------------------------------------------------------------------------------ children
def child_generate(n: int, seed: int, chunk: int, store: Path) -> dict[str, Any]:
    """Generate ``n`` patients chunk by chunk into the store layout; memory is one chunk's."""
    rows: dict[str, int] = {}
    with Sampler(None) as s:
        t0 = time.perf_counter()
        _generate_chunks(n, seed, chunk, store, rows)
        secs = time.perf_counter() - t0
    return {"seconds": secs, "rows": rows, "events": rows.get("events", 0), "store_bytes": _dir_bytes(store),
            "chunk": chunk, "peak_rss_gb": s.peak_rss_kb / 1024**2}


def _generate_chunks(n: int, seed: int, chunk: int, store: Path, rows: dict[str, int]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mgaki.synth import generate

    for k, lo in enumerate(range(0, n, chunk)):
        cohort = generate(min(chunk, n - lo), seed=seed + k)
        prefix = pa.scalar(f"C{k}-")
        for name, given in cohort.tables.items():
            if given.num_rows == 0:
                continue
            tab = given
            for col in ("subject_id", "encounter_id", "parent_id"):
                if col in tab.column_names:
                    i = tab.schema.get_field_index(col)
                    tab = tab.set_column(i, col, pc.binary_join_element_wise(prefix, tab[col], ""))
            (store / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(tab, store / name / f"part-{k:04d}.parquet")
            rows[name] = rows.get(name, 0) + tab.num_rows
        del cohort


def child_duckdb(store: Path, spill: Path, memory: str) -> dict[str, Any]:
    from mgaki.events import EventStore
    from mgaki.knowledge import load
    from mgaki.surveillance import run

    kb = load()
    spill.mkdir(parents=True, exist_ok=True)
    settings = {"memory_limit": memory, "temp_directory": str(spill)}
    with Sampler(spill) as s:
        cpu = StageCpu([os.getpid()])
        t0 = time.perf_counter()
        res = run(EventStore(store), kb=kb, duckdb_settings=settings, progress=cpu)
        wall = time.perf_counter() - t0
        cpu_s = cpu.total()
    return {"wall_s": wall, "cpu_s": cpu_s, "stage_s": res.seconds, "stage_cpu_s": cpu.stage_cpu_s,
            "as_of": res.as_of.isoformat() if res.as_of else None,
            "output_rows": {k: v.num_rows for k, v in res.tables.items()}, "peak_rss_gb": s.peak_rss_kb / 1024**2,
            "peak_spill_gb": s.peak_spill / GB, "settings": settings}


def _stage_io(ui: str) -> dict[str, dict[str, float]]:
    """Input/shuffle bytes and task time per mgaki stage, from the Spark UI's REST API."""
    def get(path: str) -> Any:
        with urllib.request.urlopen(f"{ui}/api/v1/{path}", timeout=30) as r:
            return json.loads(r.read())

    app = get("applications")[0]["id"]
    stage_of: dict[int, str] = {}
    for job in get(f"applications/{app}/jobs"):
        desc = job.get("description") or ""
        if desc.startswith("mgaki "):
            for sid in job["stageIds"]:
                stage_of[sid] = desc.removeprefix("mgaki ")
    out: dict[str, dict[str, float]] = {}
    for st in get(f"applications/{app}/stages?status=complete"):
        name = stage_of.get(st["stageId"])
        if name is None:
            continue
        agg = out.setdefault(name, {"input_bytes": 0, "shuffle_read_bytes": 0, "shuffle_write_bytes": 0,
                                    "executor_run_s": 0.0, "executor_cpu_s": 0.0, "spill_disk_bytes": 0,
                                    "tasks": 0})
        agg["input_bytes"] += st.get("inputBytes", 0)
        agg["shuffle_read_bytes"] += st.get("shuffleReadBytes", 0)
        agg["shuffle_write_bytes"] += st.get("shuffleWriteBytes", 0)
        agg["executor_run_s"] += st.get("executorRunTime", 0) / 1000
        agg["executor_cpu_s"] += st.get("executorCpuTime", 0) / 1e9
        agg["spill_disk_bytes"] += st.get("diskBytesSpilled", 0)
        agg["tasks"] += st.get("numCompleteTasks", 0)
    return out


def child_spark(store: Path, spill: Path, as_of: str | None, master: str, partitions: int, driver_memory: str,
                warmup: bool) -> dict[str, Any]:
    from mgaki.events import EventStore
    from mgaki.knowledge import load
    from mgaki.surveillance.spark import CANONICAL, run_spark, session
    from mgaki.synth import generate

    kb = load()
    spill.mkdir(parents=True, exist_ok=True)
    extra = {"spark.driver.memory": driver_memory, "spark.driver.maxResultSize": "0", "spark.local.dir": str(spill),
             "spark.ui.enabled": "true", "spark.ui.port": "0", "spark.ui.retainedJobs": "100000",
             "spark.ui.retainedStages": "100000", "spark.sql.ui.retainedExecutions": "100000"}
    with Sampler(spill) as s:
        t_start = time.perf_counter()
        spark = session(master, partitions, app="mgaki-bench", extra=extra)
        spark.sparkContext.setLogLevel("ERROR")
        gw = spark.sparkContext._gateway
        jvm_pid = getattr(getattr(gw, "proc", None), "pid", None)
        if jvm_pid:
            s.pids.append(jvm_pid)
        start_s = time.perf_counter() - t_start
        warm_s = None
        if warmup:
            t0 = time.perf_counter()
            run_spark(generate(50, seed=1).tables, spark, kb=kb, eager=True)
            warm_s = time.perf_counter() - t0
        es = EventStore(store)
        cpu = StageCpu(list(s.pids))
        t0 = time.perf_counter()
        res = run_spark({t: es.files(t) for t in CANONICAL}, spark, eager=True, kb=kb, progress=cpu,
                        as_of=datetime.fromisoformat(as_of) if as_of else None)
        wall = time.perf_counter() - t0
        cpu_s = cpu.total()
        ui = spark.sparkContext.uiWebUrl
        io = _stage_io(ui) if ui else {}
        jvm_hwm = _rss_kb(jvm_pid, "VmHWM") / 1024**2 if jvm_pid else None
        spark.stop()
    return {"wall_s": wall, "cpu_s": cpu_s, "stage_s": res.seconds, "stage_cpu_s": cpu.stage_cpu_s,
            "stage_io": io, "start_s": start_s, "warmup_s": warm_s,
            "output_rows": {k: v.num_rows for k, v in res.tables.items()}, "peak_rss_gb": s.peak_rss_kb / 1024**2,
            "jvm_peak_rss_gb": jvm_hwm, "python_peak_rss_gb": _rss_kb(os.getpid(), "VmHWM") / 1024**2,
            "peak_spill_gb": s.peak_spill / GB, "master": master, "shuffle_partitions": partitions,
            "driver_memory": driver_memory}


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script in a child mode; its JSON result, or an error record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args, "--child-out", str(out)],
                               capture_output=True, text=True, timeout=timeout)
            rc: int | None = r.returncode
            err = r.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = None, e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        if rc == 0 and out.exists():
            res: dict[str, Any] = json.loads(out.read_text())
            res["child_wall_s"] = time.perf_counter() - t0
            return res
        what = f"timed out after {timeout:.0f} s" if rc is None else (
            f"killed by signal {-rc} (out of memory?)" if rc < 0 else f"exit status {rc}")
        return {"error": what, "after_s": round(time.perf_counter() - t0, 1), "stderr_tail": err.strip()[-3000:]}


# ------------------------------------------------------------------------------------------ report
def _partitions(events: int, given: int | None) -> int:
    """Shuffle partitions: ~1.5M events each (a few hundred MB per task at most), at least 8."""
    return given or max(8, round(events / 1.5e6))


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'patients':>9} {'events':>12} {'gen s':>7} {'DuckDB s':>9} {'cpu s':>7} {'GB':>5} {'spill':>5} "
          f"{'Spark s':>8} {'cpu s':>7} {'GB':>5} {'spill':>5} {'wall x':>6} {'cpu x':>6} {'rows equal':>10}")
    for s in report["sizes"]:
        d, sp, g = s.get("duckdb", {}), s.get("spark", {}), s.get("generate", {})

        def f(x: Any, spec: str) -> str:
            return "-" if x is None else format(x, spec)
        print(f"{s['patients']:>9,} {f(g.get('events'), ',d'):>12} {f(g.get('seconds'), '.1f'):>7} "
              f"{f(d.get('wall_s'), '.1f'):>9} {f(d.get('cpu_s'), '.1f'):>7} {f(d.get('peak_rss_gb'), '.1f'):>5} "
              f"{f(d.get('peak_spill_gb'), '.1f'):>5} {f(sp.get('wall_s'), '.1f'):>8} {f(sp.get('cpu_s'), '.1f'):>7} "
              f"{f(sp.get('peak_rss_gb'), '.1f'):>5} {f(sp.get('peak_spill_gb'), '.1f'):>5} "
              f"{f(s.get('ratio'), '.1f'):>6} {f(s.get('cpu_ratio'), '.1f'):>6} {f(s.get('same_row_counts'), ''):>10}")
    for s in report["sizes"]:
        for eng in ("generate", "duckdb", "spark"):
            if "error" in s.get(eng, {}):
                print(f"  {s['patients']:,} {eng} FAILED: {s[eng]['error']}: {s[eng]['stderr_tail'][-600:]}")
    print("cpu s = user + system CPU seconds of the engine's process(es) (Spark: Python + JVM); GB = peak RSS, "
          "summed at the same instant;\nspill = largest size of the temporary folder (DuckDB temp_directory, "
          "spark.local.dir); wall x / cpu x = Spark / DuckDB, wall time and CPU time")
    last = next((s for s in reversed(report["sizes"]) if "wall_s" in s.get("spark", {})), None)
    if last:
        for eng in ("duckdb", "spark"):
            top = sorted(last[eng]["stage_s"].items(), key=lambda kv: -kv[1])[:8]
            print(f"  {last['patients']:,} {eng:>6} slowest: " + ", ".join(f"{k} {v:.1f}" for k, v in top))


def plot_curve(report: dict[str, Any], path: Path) -> None:
    import altair as alt

    names = {"duckdb": "DuckDB", "spark": f"Spark {report['master']}"}
    rows = [{"events": s["generate"]["events"], "seconds": s[eng][key], "engine": names[eng], "measure": label}
            for s in report["sizes"] for eng in ("duckdb", "spark") if "wall_s" in s.get(eng, {})
            for key, label in (("wall_s", "wall time"), ("cpu_s", "CPU time (user + system)"))]
    if not rows:
        return
    chart = alt.Chart(alt.Data(values=rows)).mark_line(point=True).encode(
        x=alt.X("events:Q", scale=alt.Scale(type="log"), title="events (rows of the events table)"),
        y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="seconds"),
        color=alt.Color("engine:N", title=None),
    ).properties(width=300, height=220).facet(column=alt.Column("measure:N", title=None)).properties(
        title=f"mgaki surveillance on {report['machine']['cores']} cores ({report['started'][:10]}; "
              f"load average {report['machine']['load_avg_start'][0]:g} at start: wall time includes waiting)")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), scale_factor=1.0)


# ------------------------------------------------------------------------------------------ estimate
def estimate(report: dict[str, Any], events: float, cores: int, efficiency: tuple[float, float],
             read_mb_s: tuple[float, float], shuffle_mb_s: tuple[float, float],
             fixed_s: tuple[float, float]) -> dict[str, Any]:
    """A cluster run of ``events`` events from the measured per-stage Spark costs (docs/spark.md#estimate).

    Per stage: executor (task) CPU seconds and shuffle bytes per event, as the slope between the two
    largest measured sizes (fixed costs cancel), else the ratio at the largest. Compute = CPU work /
    (cores x efficiency), CPU work being the task CPU (low end) or all CPU of the Spark processes, GC and
    JIT included (high end). Reading the input and moving the shuffle are added in full at per-core rates
    (no overlap: an upper bound; the low end assumes full overlap), and a fixed driver cost for planning
    and scheduling ~45 stages (an assumption: this machine's fixed cost says little about a cluster's).
    Low/high take the optimistic/pessimistic end of each assumption.
    """
    runs = [s for s in report["sizes"] if s.get("spark", {}).get("stage_io")]
    if not runs:
        raise SystemExit("--estimate: no Spark run with per-stage I/O in that JSON")
    runs.sort(key=lambda s: s["generate"]["events"])
    big = runs[-1]
    prev = runs[-2] if len(runs) > 1 else None

    def per_event(key: str, stage: str) -> float:
        b = big["spark"]["stage_io"].get(stage, {}).get(key, 0.0)
        if prev is None:
            return float(b) / big["generate"]["events"]
        a = prev["spark"]["stage_io"].get(stage, {}).get(key, 0.0)
        slope = (b - a) / (big["generate"]["events"] - prev["generate"]["events"])
        return max(float(slope), 0.0)

    stages = {st: {"cpu_us_per_event": per_event("executor_cpu_s", st) * 1e6,
                   "shuffle_bytes_per_event": per_event("shuffle_write_bytes", st)}
              for st in big["spark"]["stage_io"]}
    cpu_s = sum(v["cpu_us_per_event"] for v in stages.values()) * 1e-6 * events
    # All CPU of the Spark processes (task threads plus GC, JIT, driver): the pessimistic end.
    big_cpu, n_big = big["spark"]["cpu_s"], big["generate"]["events"]
    proc_per_event = (big_cpu - prev["spark"]["cpu_s"]) / (n_big - prev["generate"]["events"]) if prev \
        else big_cpu / n_big
    cpu_hi_s = max(proc_per_event * events, cpu_s)
    shuffle_b = sum(v["shuffle_bytes_per_event"] for v in stages.values()) * events
    input_b = big["generate"]["store_bytes"] / big["generate"]["events"] * events
    out: dict[str, Any] = {"events": events, "cores": cores, "measured_at_events": big["generate"]["events"],
                           "slope_from_events": prev["generate"]["events"] if prev else None,
                           "cpu_core_hours": cpu_s / 3600, "cpu_core_hours_process": cpu_hi_s / 3600,
                           "shuffle_tb": shuffle_b / 1e12, "input_tb": input_b / 1e12,
                           "stages": stages}
    for end, i in (("low", 0), ("high", 1)):
        eff, read, shuf = efficiency[1 - i], read_mb_s[1 - i], shuffle_mb_s[1 - i]
        compute = (cpu_s, cpu_hi_s)[i] / (cores * eff)
        io = input_b / (cores * read * 1e6) + 2 * shuffle_b / (cores * shuf * 1e6)  # shuffle: written, then read
        out[f"{end}_minutes"] = (compute + io * i + fixed_s[i]) / 60
        out[f"{end}_parts_minutes"] = {"compute": compute / 60, "io": io / 60 * i}
    return out


def print_estimate(e: dict[str, Any]) -> None:
    print(f"\n{e['events']:.3g} events on {e['cores']} cores, from Spark's measured per-stage costs at "
          f"{e['measured_at_events']:,} events" + (f" (slope from {e['slope_from_events']:,})"
                                                   if e["slope_from_events"] else ""))
    print(f"  CPU work {e['cpu_core_hours']:,.0f} (task CPU) to {e['cpu_core_hours_process']:,.0f} (all process "
          f"CPU) core-hours; input {e['input_tb']:.2f} TB (Parquet); "
          f"shuffle {e['shuffle_tb']:.2f} TB written")
    print(f"  wall time: {e['low_minutes']:.0f} (low) to {e['high_minutes']:.0f} (high) minutes")
    top = sorted(e["stages"].items(), key=lambda kv: -kv[1]["cpu_us_per_event"])[:10]
    print("  costliest stages (executor CPU us per event, shuffle bytes per event): "
          + ", ".join(f"{k} {v['cpu_us_per_event']:.2f}/{v['shuffle_bytes_per_event']:.0f}" for k, v in top))


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="patients per cohort, comma-separated (default 10000,100000)")
    ap.add_argument("--curve", action="store_true", help=f"scaling curve: sizes {CURVE_SIZES} and a PNG")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=100_000, help="patients generated (and held) at a time")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--shuffle-partitions", type=int, default=None, help="default: ~1.5M events each, >= 8")
    ap.add_argument("--driver-memory", default="10g")
    ap.add_argument("--duckdb-memory", default="8GB", help="DuckDB memory_limit (spills beyond it)")
    ap.add_argument("--engines", default="duckdb,spark")
    ap.add_argument("--no-warmup", action="store_true", help="count JVM warm-up in Spark's time (smoke runs)")
    ap.add_argument("--workdir", type=Path, default=None, help="where data and spill go (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per child")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the curve (default with --curve: results/)")
    ap.add_argument("--estimate", type=Path, default=None,
                    help="no run: estimate a cluster run from this result JSON's per-stage Spark costs")
    ap.add_argument("--events", type=float, default=1e10, help="--estimate: events of the cluster run")
    ap.add_argument("--cores", type=int, default=400, help="--estimate: executor cores of the cluster")
    ap.add_argument("--efficiency", type=_pair, default=(0.5, 0.8),
                    help="--estimate: fraction of the cores doing useful work, pessimistic,optimistic")
    ap.add_argument("--read-mb-s", type=_pair, default=(25.0, 100.0),
                    help="--estimate: object-storage read MB/s per core, pessimistic,optimistic")
    ap.add_argument("--shuffle-mb-s", type=_pair, default=(25.0, 100.0),
                    help="--estimate: shuffle write/read MB/s per core, pessimistic,optimistic")
    ap.add_argument("--fixed-s", type=_pair, default=(60.0, 300.0),
                    help="--estimate: driver planning/scheduling seconds for the whole run, optimistic,pessimistic")
    ap.add_argument("--child", choices=["generate", "duckdb", "spark"], help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-as-of", help=argparse.SUPPRESS)
    ap.add_argument("--child-partitions", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        spill = args.child_store.parent / f"spill-{args.child}"
        if args.child == "generate":
            res = child_generate(args.child_n, args.seed, args.chunk, args.child_store)
        elif args.child == "duckdb":
            res = child_duckdb(args.child_store, spill, args.duckdb_memory)
        else:
            res = child_spark(args.child_store, spill, args.child_as_of, args.master, args.child_partitions,
                              args.driver_memory, not args.no_warmup)
        shutil.rmtree(spill, ignore_errors=True)
        _write_json(res, args.child_out)
        return 0

    if args.estimate:
        est = estimate(json.loads(args.estimate.read_text()), args.events, args.cores, args.efficiency,
                       args.read_mb_s, args.shuffle_mb_s, args.fixed_s)
        print_estimate(est)
        return 0
    sizes = [int(x) for x in (args.sizes or (CURVE_SIZES if args.curve else "10000,100000")).split(",")]
    engines = [e for e in args.engines.split(",") if e]
    if not sizes or min(sizes) < 1 or set(engines) - {"duckdb", "spark"}:
        ap.error("--sizes: positive integers; --engines: duckdb and/or spark")
    stamp = datetime.now().astimezone()
    out = args.out or RESULTS / f"spark-{stamp:%Y-%m-%d-%H%M}.json"
    plot = args.plot or (out.with_suffix(".png") if args.curve else None)
    report: dict[str, Any] = {
        "benchmark": "spark", "started": stamp.isoformat(), "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "load_avg_start": _loadavg()}, "master": args.master,
        "driver_memory": args.driver_memory, "duckdb_memory": args.duckdb_memory, "seed": args.seed,
        "chunk": args.chunk, "sizes": []}
    work = args.workdir or Path(tempfile.gettempdir())
    work.mkdir(parents=True, exist_ok=True)
    failed = False
    for n in sizes:
        free = shutil.disk_usage(work).free
        need = n * 100 * BYTES_PER_EVENT_ON_DISK * 4  # data + DuckDB/Spark spill and shuffle
        entry: dict[str, Any] = {"patients": n, "load_avg_before": _loadavg(), "disk_free_gb": free / GB}
        report["sizes"].append(entry)
        if free < need:
            entry["generate"] = {"error": "not enough disk", "stderr_tail": f"{free / GB:.1f} GB free < "
                                 f"{need / GB:.1f} GB estimated need in {work}", "after_s": 0}
            failed = True
            continue
        with tempfile.TemporaryDirectory(prefix=f"mgaki-spark-bench-{n}-", dir=work) as tmp:
            store = Path(tmp) / "store"
            common = ["--seed", str(args.seed), "--chunk", str(args.chunk), "--child-store", str(store),
                      "--child-n", str(n), "--master", args.master, "--driver-memory", args.driver_memory,
                      "--duckdb-memory", args.duckdb_memory]
            print(f"[{datetime.now().astimezone():%H:%M:%S}] {n:,} patients: generating", file=sys.stderr, flush=True)
            gen = entry["generate"] = _child(["--child", "generate", *common], args.timeout)
            _write_json(report, out)
            if "error" in gen:
                failed = True
                continue
            as_of = None
            if "duckdb" in engines:
                print(f"[{datetime.now().astimezone():%H:%M:%S}]   {gen['events']:,} events; DuckDB",
                      file=sys.stderr, flush=True)
                d = entry["duckdb"] = _child(["--child", "duckdb", *common], args.timeout)
                failed |= "error" in d
                _write_json(report, out)
                as_of = d.get("as_of")
            if "spark" in engines:
                print(f"[{datetime.now().astimezone():%H:%M:%S}]   Spark", file=sys.stderr, flush=True)
                part = _partitions(gen["events"], args.shuffle_partitions)
                sp = entry["spark"] = _child(["--child", "spark", *common, "--child-partitions", str(part),
                                              *(["--child-as-of", as_of] if as_of else []),
                                              *(["--no-warmup"] if args.no_warmup else [])], args.timeout)
                failed |= "error" in sp
            d, sp = entry.get("duckdb", {}), entry.get("spark", {})
            if "wall_s" in d and "wall_s" in sp:
                entry["ratio"] = sp["wall_s"] / d["wall_s"]
                entry["cpu_ratio"] = sp["cpu_s"] / d["cpu_s"]
                entry["same_row_counts"] = d["output_rows"] == sp["output_rows"]
                failed |= not entry["same_row_counts"]
        entry["load_avg_after"] = _loadavg()
        _write_json(report, out)  # partial results survive a later failure
        print_table(report)
    report["machine"]["load_avg_end"] = _loadavg()
    _write_json(report, out)
    if plot:
        plot_curve(report, plot)
        print(f"curve: {plot}")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
