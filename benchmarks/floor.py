"""Full surveillance against the floor: a plain DuckDB KDIGO query on the same data (issue 18, point 3).

    nice -n 15 python benchmarks/floor.py --patients 10000          # one size
    nice -n 15 python benchmarks/floor.py --patients 1000,10000     # several, side by side

Per size, on the ICU-shaped cohort of ``benchmarks/icu_cohort.py`` (seed 18: 50 creatinine + 194
hourly urine-output + 6 Mg rows per patient), each step in its own process so that each peak RSS
(``ru_maxrss``) is its own:

1. build: the cohort appended chunk by chunk to a fresh ``EventStore`` (rows/s and peak RSS);
2. floor: the plain query below on the store's Parquet files, results written to Parquet:
   creatinine staged by the lowest value in 48 h / 7 days (window functions), urine output binned
   by hour with 6/12/24-h sums (RANGE windows) against the patient's weight;
3. mgaki: ``surveil(store, full=True)``, everything (KDIGO creatinine and urine output with
   prorated windows, episodes, trajectories, evidence, alerts, timers), results written, with no
   memory setting given by the caller (the default cap of ``surveillance.pipeline.default_settings``).

Prints time, peak RSS and the ratio mgaki / floor with PASS/FAIL against issue 18's targets
(ratio <= 1.5, peak RSS < 4 GB), the slowest stages, and the load average before and after (the
machine may be shared). JSON to ``benchmarks/results/floor-<date>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_RATIO = 1.5
TARGET_RSS_GB = 4.0
TARGET_P99_MS = 200.0
OPEN_SHARE = 0.5  # half the admissions still open: their monitoring gaps move with the clock
TARGET_SPREAD = 0.20
GB = 1024**3

FLOOR_SQL = """
CREATE TABLE cr_stage AS
SELECT subject_id, time, v,
  CASE WHEN v >= 4.0 AND (v - m48 >= 0.3 OR v / m7 >= 1.5) THEN 3
       WHEN v / m7 >= 3.0 THEN 3 WHEN v / m7 >= 2.0 THEN 2
       WHEN v / m7 >= 1.5 OR v - m48 >= 0.3 THEN 1 ELSE 0 END AS stage
FROM (SELECT subject_id, time, v,
        MIN(v) OVER (PARTITION BY subject_id ORDER BY t RANGE BETWEEN 172800 PRECEDING AND 1 PRECEDING) AS m48,
        MIN(v) OVER (PARTITION BY subject_id ORDER BY t RANGE BETWEEN 604800 PRECEDING AND 1 PRECEDING) AS m7
      FROM (SELECT subject_id, time, CAST(epoch(time) AS BIGINT) AS t, numeric_value AS v
            FROM events WHERE analyte = 'creatinine') c) w;
CREATE TABLE uo_stage AS
SELECT subject_id, h,
  CASE WHEN s24 / kg / 24 < 0.3 OR s12 = 0 THEN 3 WHEN s12 / kg / 12 < 0.5 THEN 2
       WHEN s6 / kg / 6 < 0.5 THEN 1 ELSE 0 END AS stage
FROM (SELECT b.subject_id, b.h, w.kg,
        SUM(vol) OVER (PARTITION BY b.subject_id ORDER BY b.t RANGE BETWEEN 18000 PRECEDING AND CURRENT ROW) AS s6,
        SUM(vol) OVER (PARTITION BY b.subject_id ORDER BY b.t RANGE BETWEEN 39600 PRECEDING AND CURRENT ROW) AS s12,
        SUM(vol) OVER (PARTITION BY b.subject_id ORDER BY b.t RANGE BETWEEN 82800 PRECEDING AND CURRENT ROW) AS s24
      FROM (SELECT subject_id, time_bucket(INTERVAL 1 HOUR, time) AS h,
                   CAST(epoch(time_bucket(INTERVAL 1 HOUR, time)) AS BIGINT) AS t, SUM(numeric_value) AS vol
            FROM events WHERE analyte = 'urine_output' GROUP BY ALL) b
      JOIN (SELECT subject_id, any_value(weight_kg) AS kg FROM weights GROUP BY subject_id) w
        ON w.subject_id = b.subject_id) x;
"""


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def child_build(root: Path, n: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from icu_cohort import build_store

    rows, s = build_store(root, n, seed, open_share=OPEN_SHARE)
    return {"rows": rows, "seconds": s, "rows_per_s": rows / s, "peak_rss": _maxrss()}


def child_floor(root: Path, out: Path) -> dict[str, Any]:
    from mgaki.events import EventStore

    con = EventStore(root).connect(("events", "weights"))
    t0 = time.perf_counter()
    for stmt in FLOOR_SQL.split(";"):
        if stmt.strip():
            con.execute(stmt)
    for t in ("cr_stage", "uo_stage"):
        con.execute(f"COPY {t} TO '{(out / t).as_posix()}.parquet' (FORMAT parquet)")
    s = time.perf_counter() - t0
    staged = {t: con.sql(f"SELECT count(*) FILTER (WHERE stage > 0), count(*) FROM {t}").fetchall()[0]
              for t in ("cr_stage", "uo_stage")}
    con.close()
    return {"seconds": s, "peak_rss": _maxrss(), "staged": staged}


def child_mgaki(root: Path) -> dict[str, Any]:
    from mgaki.events import EventStore
    from mgaki.surveillance import surveil

    t0 = time.perf_counter()
    res = surveil(EventStore(root), full=True)
    s = time.perf_counter() - t0
    return {"seconds": s, "peak_rss": _maxrss(), "stages": res.seconds}


def _patients(root: Path) -> int:
    """The store's patients (ids P00000000 up): the increments pick among them."""
    from mgaki.events import EventStore

    con = EventStore(root).connect(("encounters",))
    try:
        return int(con.sql("SELECT count(DISTINCT subject_id) FROM encounters").fetchall()[0][0])
    finally:
        con.close()


def child_increments(root: Path, k: int, seed: int) -> dict[str, Any]:
    """`k` times: one new creatinine for one random patient, stored, then incremental surveillance (after
    ``WARM`` such increments not timed, as through the service). The benchmark's clock moves a minute per
    increment: the monitoring-gap timers falling due meanwhile log their alerts in the same runs."""
    import numpy as np

    from mgaki.events import EventStore
    from mgaki.surveillance import surveil
    from mgaki.surveillance.pipeline import _read_state, wait_for_folds

    store = EventStore(root)
    state = _read_state(root / "results")
    n = _patients(root)
    rng = np.random.default_rng(seed)
    clock = datetime.fromisoformat(state["data_max"])
    lat, app, sur, recomputed, alerts, timer_alerts = [], [], [], [], 0, 0
    for i in range(k + WARM):
        clock = clock.replace(microsecond=0) + timedelta(minutes=1)
        pid = f"P{int(rng.integers(0, n)):08d}"
        row = creatinine_rows([pid], clock, [float(rng.uniform(0.5, 4.0))], [f"bench/{i}"])
        t0 = time.perf_counter()
        store.append({"events": row})
        t1 = time.perf_counter()
        res = surveil(store)
        t2 = time.perf_counter()
        if i < WARM:  # the first runs load the knowledge base and open the process's databases
            continue
        app.append(t1 - t0)
        sur.append(t2 - t1)
        lat.append(t2 - t0)
        recomputed.append(res.subjects_recomputed)
        alerts += res.new_alerts.num_rows
        timer_alerts += getattr(res, "timer_alerts", 0)  # absent before results layout 3 (an A/B against older code)
    batches = []
    for rep in range(BATCH_RUNS):  # then BATCH_SUBJECTS patients' results at once (a feed's busy second)
        clock = clock.replace(microsecond=0) + timedelta(minutes=1)
        pids = [f"P{int(x):08d}" for x in rng.choice(n, min(BATCH_SUBJECTS, n), replace=False)]
        rows = creatinine_rows(pids, clock, rng.uniform(0.5, 4.0, len(pids)).tolist(),
                               [f"bench/batch{rep}/{i}" for i in range(len(pids))])
        store.append({"events": rows})
        t0 = time.perf_counter()
        res = surveil(store)
        batches.append({"subjects": res.subjects_recomputed, "seconds": time.perf_counter() - t0,
                        "write_s": res.seconds.get("write_results", 0.0)})
    wait_for_folds()  # a fold left running would load the next step and lose its store when the size ends
    q = lambda xs, p: float(np.percentile(np.array(xs), p))  # noqa: E731
    return {"k": k, "p50": q(lat, 50), "p99": q(lat, 99), "max": max(lat), "lat": lat, "append_p50": q(app, 50),
            "surveil_p50": q(sur, 50), "recomputed_max": max(recomputed), "new_alerts": alerts,
            "timer_alerts": timer_alerts, "warm": WARM,
            "batches": batches, "peak_rss": _maxrss()}


BATCH_SUBJECTS, BATCH_RUNS = 200, 3


def save_json(res: dict[str, Any], out: Path | None, name: str) -> Path:
    """`res` to `out`, else to ``benchmarks/results/<name>-<UTC time>.json``; says where."""
    path = out or HERE / "results" / f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(f"JSON: {path}")
    return path


def creatinine_rows(pids: list[str], clock: datetime, values: list[float], sources: list[str]) -> Any:
    """New creatinine results (mg/dL, rounded to 0.01) of patients ``P<n>`` at `clock`, each in its admission
    ``H<n>`` of the ICU-shaped cohort: the events rows an increment appends."""
    import pyarrow as pa

    from mgaki.events.schema import TABLES

    m = len(pids)
    return pa.table({"subject_id": pids, "encounter_id": [f"H{p[1:]}" for p in pids], "time": [clock] * m,
                     "code": ["LOINC/2160-0"] * m, "analyte": ["creatinine"] * m,
                     "numeric_value": [round(v, 2) for v in values], "unit": ["mg/dL"] * m,
                     "source": sources}).cast(TABLES["events"])


def child_service_increments(root: Path, k: int, seed: int) -> dict[str, Any]:
    """`k` times: one new creatinine for one random patient posted to the service (``POST /fhir``, a batch
    Bundle with one Observation, in-process ASGI with bearer tokens and SQLite): the response comes after the
    result is stored, surveilled incrementally and its alerts copied into the database (``GET /alerts``).
    ``parts``: the median milliseconds of the request's steps (``_timed_parts``), timed ones only."""
    import numpy as np
    from fastapi.testclient import TestClient

    from mgaki.service import ServiceConfig, create_app
    from mgaki.surveillance.pipeline import _read_state, wait_for_folds

    parts = _timed_parts()

    state = _read_state(root / "results")
    with tempfile.TemporaryDirectory(dir=root.parent) as d:
        data = Path(d) / "data"
        data.mkdir(mode=0o700)
        (data / "events").symlink_to(root.resolve(), target_is_directory=True)
        cfg = ServiceConfig.model_validate({
            "data_dir": data, "warm_up": True, "cds_require_jwt": False,
            "tokens": [{"name": "reader", "token": "r" * 24, "roles": ["reader"]},
                       {"name": "lab", "token": "w" * 24, "roles": ["writer"]}]})
        n = _patients(root)
        rng = np.random.default_rng(seed + 1)
        clock = datetime.fromisoformat(state["data_max"])
        lat, alerts = [], 0
        with TestClient(create_app(cfg)) as client:
            for i in range(k + WARM):
                clock = clock.replace(microsecond=0) + timedelta(minutes=1)
                pid = f"P{int(rng.integers(0, n)):08d}"
                obs = {"resourceType": "Observation", "id": f"bench-{seed}-{i}", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
                       "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/H{pid[1:]}"},
                       "effectiveDateTime": clock.replace(tzinfo=UTC).isoformat(),
                       "valueQuantity": {"value": round(float(rng.uniform(0.5, 4.0)), 2), "unit": "mg/dL",
                                         "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
                body = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": obs}]}
                t0 = time.perf_counter()
                r = client.post("/fhir", json=body, headers={"Authorization": "Bearer " + "w" * 24})
                dt = time.perf_counter() - t0
                if r.status_code != 200 or r.json()["added"]["events"] != 1:
                    raise RuntimeError(f"POST /fhir answered {r.status_code}: {r.text[:300]}")
                if i >= WARM:  # the first runs copy the whole alert log into the new database
                    lat.append(dt)
                    alerts += r.json()["new_alerts"]
                else:
                    for xs in parts.values():
                        xs.clear()
        # as in child_increments, and before the data folder goes: the fold reaches the results through its link
        wait_for_folds()
    q = lambda xs, p: float(np.percentile(np.array(xs), p))  # noqa: E731
    return {"k": k, "p50": q(lat, 50), "p99": q(lat, 99), "max": max(lat), "new_alerts": alerts, "lat": lat,
            "parts": {name: q(xs, 50) * 1e3 for name, xs in parts.items() if xs}, "peak_rss": _maxrss()}


def _timed_parts() -> dict[str, list[float]]:
    """Time the steps of a ``POST /fhir`` (in this child process only): the Bundle read into raw tables
    (``Ingestor.read``), ``normalize``, the store's ``append``, the incremental ``surveil`` and the alerts copied
    into the database (``Ingestor.sync_alerts``). Each step's seconds, one entry per call."""
    from mgaki.events import EventStore
    from mgaki.service.ingest import ingestor

    out: dict[str, list[float]] = {}
    for owner, attr, name in ((ingestor.Ingestor, "read", "read"), (ingestor, "normalize", "normalize"),
                              (EventStore, "append", "append"), (ingestor, "surveil", "surveil"),
                              (ingestor.Ingestor, "sync_alerts", "alerts_to_db")):
        timed(owner, attr, out.setdefault(name, []).append)
    return out


def add_seconds(acc: dict[str, float], name: str, seconds: float) -> None:
    """A ``timed`` record (with ``functools.partial``): the seconds of each call added to ``acc[name]``."""
    acc[name] = acc.get(name, 0.0) + seconds


def timed(owner: Any, attr: str, record: Any) -> None:
    """Replace ``owner.attr`` (in this process) by a wrapper passing the seconds of each call to `record`."""
    import functools

    f = getattr(owner, attr)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            record(time.perf_counter() - t0)

    setattr(owner, attr, wrapper)


WARM = 3  # increments not timed, on both paths: the first load the knowledge base and open databases (the
# service's first also copy the whole alert log into its database)


def _env(src: Path | None) -> dict[str, str]:
    """This process's environment, with `src` (another checkout's ``src/``) first on PYTHONPATH when given."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _child(args: list[str], src: Path | None = None) -> dict[str, Any]:
    """One step in a process of its own (`src`: the mgaki code it imports, default the installed one)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = Path(f.name)
    try:
        subprocess.run([sys.executable, __file__, *args, "--child-out", str(path)], check=True, env=_env(src))
        out: dict[str, Any] = json.loads(path.read_text())
        return out
    finally:
        path.unlink(missing_ok=True)


def run_size(n: int, seed: int, scratch: Path, increments: int = 0, service: bool = True) -> dict[str, Any]:
    root = scratch / f"store-{n}"
    shutil.rmtree(root, ignore_errors=True)
    build = _child(["--child", "build", "--n", str(n), "--seed", str(seed), "--root", str(root)])
    floor = _child(["--child", "floor", "--root", str(root)])
    load_mid = _load()
    mgaki = _child(["--child", "mgaki", "--root", str(root)])
    inc = _child(["--child", "increments", "--root", str(root), "--n", str(increments), "--seed", str(seed)]) \
        if increments else None
    svc = _child(["--child", "service", "--root", str(root), "--n", str(increments), "--seed", str(seed)]) \
        if increments and service else None
    shutil.rmtree(root, ignore_errors=True)
    return {"patients": n, "build": build, "floor": floor, "mgaki": mgaki, "load_mid": load_mid,
            "ratio": mgaki["seconds"] / floor["seconds"], "increments": inc, "service": svc,
            "load_after_increments": _load()}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(res: dict[str, Any]) -> None:
    print(f"\nfloor benchmark, ICU-shaped cohort (seed {res['seed']}), load before {res['load_start']}, "
          f"after {res['load_end']}, {os.cpu_count()} cores")
    print(f"{'patients':>9} {'rows':>11} {'build s':>8} {'rows/s':>10} {'floor s':>8} {'floor GB':>8} "
          f"{'mgaki s':>8} {'mgaki GB':>8} {'ratio':>6}  load")
    for r in res["sizes"]:
        b, f, m = r["build"], r["floor"], r["mgaki"]
        print(f"{r['patients']:>9} {b['rows']:>11} {b['seconds']:>8.1f} {b['rows_per_s']:>10.0f} {f['seconds']:>8.2f} "
              f"{f['peak_rss'] / GB:>8.2f} {m['seconds']:>8.2f} {m['peak_rss'] / GB:>8.2f} {r['ratio']:>6.2f}  "
              f"{r['load_mid']}")
    big = res["sizes"][-1]
    print(f"\ntargets (issue 18 point 3) at {big['patients']} patients:")
    print(f"  mgaki full surveillance <= {TARGET_RATIO}x the floor query, same run: {big['ratio']:.2f}x "
          f"{_verdict(big['ratio'] <= TARGET_RATIO)}")
    print(f"  peak RSS < {TARGET_RSS_GB} GB with no memory setting: {big['mgaki']['peak_rss'] / GB:.2f} GB "
          f"{_verdict(big['mgaki']['peak_rss'] < TARGET_RSS_GB * GB)}")
    slow = sorted(big["mgaki"]["stages"].items(), key=lambda kv: -kv[1])[:8]
    print("  slowest stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in slow))
    inc = [r for r in res["sizes"] if r.get("increments")]
    if inc:
        print("\nincremental latency: one new creatinine for one patient -> append + incremental surveillance "
              "(Python API)")
        print(f"{'store':>9} {'runs':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'append p50':>10} "
              f"{'surveil p50':>11} {'recomputed':>10} {'timer alerts':>12}  load after")  # ms
        for r in inc:
            x = r["increments"]
            print(f"{r['patients']:>9} {x['k']:>5} {x['p50'] * 1e3:>7.0f} {x['p99'] * 1e3:>7.0f} "
                  f"{x['max'] * 1e3:>7.0f} {x['append_p50'] * 1e3:>10.0f} {x['surveil_p50'] * 1e3:>11.0f} "
                  f"{x['recomputed_max']:>10} {x.get('timer_alerts', '-'):>12}  "
                  f"{r['load_after_increments']}")
        warm = {r["increments"].get("warm", 0) for r in inc}
        print(f"  (after {max(warm)} untimed increments per size; recomputed: the most subjects one run "
              "recomputed; timer alerts: monitoring-gap alerts logged from the timers without recomputing)")
        for r in inc:
            b = r["increments"].get("batches") or []
            if b:
                print(f"  {r['patients']} store, {BATCH_SUBJECTS} patients' results in one run: surveil "
                      + ", ".join(f"{x['seconds']:.2f} s (writing {x['write_s']:.2f} s)" for x in b))
        svc = [r for r in inc if r.get("service")]
        if svc:
            print("through the service: POST /fhir of one Observation -> response after store, incremental "
                  "surveillance and alert copy (in-process ASGI, SQLite)")
            print(f"{'store':>9} {'runs':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'new alerts':>10}")
            for r in svc:
                x = r["service"]
                print(f"{r['patients']:>9} {x['k']:>5} {x['p50'] * 1e3:>7.0f} {x['p99'] * 1e3:>7.0f} "
                      f"{x['max'] * 1e3:>7.0f} {x['new_alerts']:>10}")
        for label, key in (("Python API", "increments"), ("service", "service")):
            rows = [r for r in inc if r.get(key)]
            if not rows:
                continue
            p99 = [r[key]["p99"] for r in rows]
            worst = max(p99) * 1e3
            print(f"  {label}: p99 < {TARGET_P99_MS} ms at every size: {worst:.0f} ms "
                  f"{_verdict(worst < TARGET_P99_MS)}")
            if len(p99) > 1:
                spread = max(p99) / min(p99) - 1
                print(f"  {label}: p99 within {TARGET_SPREAD:.0%} across store sizes: {spread:.0%} "
                      f"{_verdict(spread <= TARGET_SPREAD)}")


def merge_runs(paths: list[Path]) -> dict[str, Any]:
    """The sizes of several runs' JSON as one run (by patients; a size measured twice: the later file's), with
    the first run's start and the last one's end; runs of different seeds are refused (not the same cohort)."""
    runs = [json.loads(p.read_text()) for p in paths]
    seeds = {r["seed"] for r in runs}
    if len(seeds) != 1:
        raise SystemExit(f"--merge: runs of different seeds {sorted(seeds)} are different cohorts")
    sizes = {s["patients"]: s for r in runs for s in r["sizes"]}
    return {"seed": seeds.pop(), "load_start": runs[0]["load_start"], "started": runs[0]["started"],
            "load_end": runs[-1].get("load_end"), "merged": [str(p) for p in paths],
            "sizes": [sizes[n] for n in sorted(sizes)]}


def plot_scale(res: dict[str, Any], path: Path) -> None:
    """Time and peak memory against rows, mgaki's full run and the floor query of the same run, with the
    straight line through the origin and the largest size (what linear in rows would give)."""
    import altair as alt

    rows = []
    for r in res["sizes"]:
        n = r["build"]["rows"]
        for who, key in (("mgaki full surveillance", "mgaki"), ("floor query (plain DuckDB KDIGO)", "floor")):
            rows.append({"rows": n, "value": r[key]["seconds"], "what": who, "measure": "seconds"})
            rows.append({"rows": n, "value": r[key]["peak_rss"] / GB, "what": who, "measure": "peak RSS, GB"})
    big = res["sizes"][-1]
    for key, who in (("mgaki", "mgaki full surveillance"), ("floor", "floor query (plain DuckDB KDIGO)")):
        per = big[key]["seconds"] / big["build"]["rows"]
        rows += [{"rows": r["build"]["rows"], "value": per * r["build"]["rows"], "what": f"{who}: linear",
                  "measure": "seconds"} for r in res["sizes"]]
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("rows:Q", title="rows (events + urine output + weights)"),
        y=alt.Y("value:Q", title=None), color=alt.Color("what:N", title=None))
    chart = alt.layer(
        base.transform_filter("indexof(datum.what, 'linear') < 0").mark_line(point=True),
        base.transform_filter("indexof(datum.what, 'linear') >= 0").mark_line(strokeDash=[4, 4]),
    ).properties(width=320, height=230).facet(column=alt.Column("measure:N", title=None)).resolve_scale(
        y="independent").properties(
        title=f"ICU-shaped cohort, {os.cpu_count()} cores, {res['started'][:10]}, load {res['load_start'][0]:g} "
              f"at start (benchmarks/floor.py --patients {','.join(str(r['patients']) for r in res['sizes'])}"
              f"{', runs merged' if res.get('merged') else ''})")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), scale_factor=1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", default="10000", help="comma-separated sizes")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--scratch", type=Path, default=None, help="folder for the temporary stores")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--increments", type=int, default=0,
                    help="after the full run, this many single-result increments on the same store (latency)")
    ap.add_argument("--plot", type=Path, help="also plot time and peak memory against rows (PNG)")
    ap.add_argument("--no-service", action="store_true", help="increments through the Python API only")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="measure nothing: report (and --plot) the sizes of these earlier runs' JSON together, "
                         "each size's load as measured (a size too long to rerun with the others)")
    ap.add_argument("--child", choices=["build", "floor", "mgaki", "increments", "service"])
    ap.add_argument("--n", type=int)
    ap.add_argument("--root", type=Path)
    ap.add_argument("--child-out", type=Path)
    a = ap.parse_args()
    if a.child:
        if a.child == "build":
            out = child_build(a.root, a.n, a.seed)
        elif a.child == "increments":
            out = child_increments(a.root, a.n, a.seed)
        elif a.child == "service":
            out = child_service_increments(a.root, a.n, a.seed)
        elif a.child == "floor":
            with tempfile.TemporaryDirectory() as d:
                out = child_floor(a.root, Path(d))
        else:
            out = child_mgaki(a.root)
        a.child_out.write_text(json.dumps(out))
        return 0
    if a.merge:
        res = merge_runs(a.merge)
        report(res)
        if a.plot:
            plot_scale(res, a.plot)
            print(f"plot: {a.plot}")
        return 0
    sizes = [int(x) for x in a.patients.split(",")]
    res: dict[str, Any] = {"seed": a.seed, "load_start": _load(), "started": datetime.now(UTC).isoformat()}
    RESULTS.mkdir(exist_ok=True)
    path = a.out or RESULTS / f"floor-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    res["sizes"] = []
    with tempfile.TemporaryDirectory(dir=a.scratch) as d:
        for n in sizes:  # each size's figures saved as soon as measured (a long run may be stopped)
            res["sizes"].append(run_size(n, a.seed, Path(d), a.increments, not a.no_service))
            res["load_end"] = _load()
            path.write_text(json.dumps(res, indent=1))
            print(f"{n} patients measured: {path}", flush=True)
    report(res)
    print(f"\nJSON: {path}")
    if a.plot:
        plot_scale(res, a.plot)
        print(f"plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
