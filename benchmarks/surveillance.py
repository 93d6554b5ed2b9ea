"""Cohort surveillance benchmark (issue 3, point 8): mgaki vs akiflagger and pyaki on the same data.

Run from the repository root with the project venv active::

    python benchmarks/surveillance.py                        # 1k, 10k, 100k patients, with peers
    python benchmarks/surveillance.py --sizes 1000,10000     # chosen sizes
    python benchmarks/surveillance.py --quick                # 1k only
    python benchmarks/surveillance.py --repeat 3             # fastest of 3 mgaki runs per size (shared machine)
    python benchmarks/surveillance.py --sizes 200 --no-peers # smoke run (what the test does)

Per size, three processes so that each peak memory is its own (``resource.getrusage`` in the child):

1. generation child: ``mgaki.synth.generate(n, seed)`` (timed alone, not counted), writes the
   canonical tables and the peers' inputs to Parquet in a temporary folder;
2. mgaki child: reads those tables, appends them to a fresh ``EventStore`` (ingest time), then
   ``mgaki.surveillance.run(store)`` (wall time and ``result.seconds`` per stage). "Creatinine staging
   work" is the sum of the stages up to and including ``kdigo_creatinine``; "creatinine + urine
   output work" up to ``kdigo_urine``. Peak RSS is the child's ``ru_maxrss``; the surveillance-only
   peak is ``VmHWM`` after resetting it between ingest and surveillance (Linux ``clear_refs``);
3. the peers (``benchmarks/peers.py``, their own Python 3.12 venv), one after the other, never
   concurrently with mgaki: akiflagger on every creatinine row (stay = patient) at every size that fits
   ``--peer-budget``; pyaki on creatinine + urine output + weight, every patient: pyaki only processes the
   stays of its first table (urine output), so it runs twice, once on the patients with urine output and
   once creatinine-only on the others, and the two times are added. Sizes above ``--pyaki-sample``
   patients are timed on a random subsample of that many patients and extrapolated linearly (labelled).

Prints a table, the targets of issue 3 with PASS/FAIL, the 10 slowest stages at the largest size, and
writes everything as JSON to ``benchmarks/results/surveillance-<date>.json`` (gitignored). Exit status 0
unless a child failed. Numbers are comparable only within one run on one machine; the machine may be
shared with other jobs, so the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

# Targets of issue 3, point 8 (the issue's text, not clinical knowledge).
TARGET_PATIENTS = 100_000
TARGET_SECONDS = 60.0  # 100k patients, whole surveillance pipeline
TARGET_RSS_GB = 8.0
TARGET_CORES = 2
TARGET_AKIFLAGGER_RATIO = 20.0  # akiflagger time / mgaki creatinine staging time
TARGET_PYAKI_RATIO = 100.0  # pyaki time / mgaki creatinine + urine output time

CREAT_STAGE = "kdigo_creatinine"
UO_STAGE = "kdigo_urine"
GB = 1024**3


# ------------------------------------------------------------------------------------------ helpers
def _maxrss_bytes() -> int:
    """This process's peak RSS (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so a later phase's peak can be read on its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if p:
            out.append(int(float(p[:-1]) * 1000) if p.endswith("k") else int(p))
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"--sizes: positive integers separated by commas, got {text!r}")
    return out


def _write_json(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script in a child mode; return the JSON it wrote, or an error record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        progress = Path(tmp) / "progress.jsonl"
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--child-out", str(out),
               "--child-progress", str(progress)]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc: int | None = r.returncode
            stderr = r.stderr
        except subprocess.TimeoutExpired as e:
            rc, stderr = None, (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or "")
        steps = [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []
        if rc == 0 and out.exists():
            res: dict[str, Any] = json.loads(out.read_text())
            return res
        what = f"timed out after {timeout:.0f} s" if rc is None else (
            f"killed by signal {-rc} (out of memory?)" if rc < 0 else f"exit status {rc}")
        return {"error": what, "after_seconds": round(time.perf_counter() - t0, 1),
                "last_completed_step": steps[-1] if steps else None, "stderr_tail": stderr.strip()[-2000:]}


# ------------------------------------------------------------------------------------------ child modes
def _progress_writer(path: str | None) -> Any:
    t0 = time.perf_counter()

    def note(step: str, **extra: Any) -> None:
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"step": step, "t": round(time.perf_counter() - t0, 3),
                                     "rss_gb": round((_proc_status_kb("VmRSS") or 0) / 1024**2, 3), **extra}) + "\n")
    return note


def child_generate(n: int, seed: int, data: Path, pyaki_sample: int, out: Path, progress: str | None) -> None:
    """Generate the cohort, write canonical tables and peer inputs as Parquet; report time and memory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mgaki.events.normalize import connect
    from mgaki.synth import generate, load_params

    note = _progress_writer(progress)
    load_params()
    generate(10, seed=seed)  # warm caches (parameter file, knowledge base)
    t0 = time.perf_counter()
    cohort = generate(n, seed=seed)
    gen_s = time.perf_counter() - t0
    gen_rss = _maxrss_bytes()
    note("generated")
    (data / "tables").mkdir(parents=True, exist_ok=True)
    for name, tab in cohort.tables.items():
        pq.write_table(tab, data / "tables" / f"{name}.parquet")
    rows = {k: v.num_rows for k, v in cohort.tables.items()}

    # Peer inputs (pyaki CLI layout): one stay per patient, as mgaki's creatinine windows are per patient.
    con = connect()
    con.register("events", cohort.tables["events"])
    con.register("weights", cohort.tables["weights"])
    con.execute("""CREATE TABLE ids AS SELECT subject_id, dense_rank() OVER (ORDER BY subject_id) AS stay_id
                   FROM (SELECT DISTINCT subject_id FROM events)""")
    con.execute("""CREATE TABLE creat AS SELECT i.stay_id, e.time AS charttime, e.numeric_value AS creat
                   FROM events e JOIN ids i USING (subject_id)
                   WHERE e.analyte = 'creatinine' AND e.numeric_value IS NOT NULL""")
    con.execute("""CREATE TABLE urine AS SELECT i.stay_id, e.time AS charttime, e.numeric_value AS urineoutput
                   FROM events e JOIN ids i USING (subject_id)
                   WHERE e.analyte = 'urine_output' AND e.numeric_value IS NOT NULL""")
    con.execute("""CREATE TABLE demo AS SELECT i.stay_id, arg_min(w.weight_kg, w.time) AS weight
                   FROM weights w JOIN ids i USING (subject_id) GROUP BY i.stay_id""")
    con.sql("SELECT * FROM creat ORDER BY stay_id, charttime").to_parquet(str(data / "akiflagger_creatinine.parquet"))

    all_ids = np.array([r[0] for r in con.execute("SELECT stay_id FROM ids ORDER BY 1").fetchall()], dtype=np.int64)
    sampled = len(all_ids) > pyaki_sample
    chosen = np.sort(np.random.default_rng(seed).choice(all_ids, pyaki_sample, replace=False)) if sampled else all_ids
    con.register("chosen", pa.table({"stay_id": chosen}))
    con.execute("CREATE TABLE uo_ids AS SELECT DISTINCT stay_id FROM urine "
                "WHERE stay_id IN (SELECT stay_id FROM chosen)")
    parts = {"with_urine": "stay_id IN (SELECT stay_id FROM uo_ids)",
             "creatinine_only": "stay_id IN (SELECT stay_id FROM chosen) "
                                "AND stay_id NOT IN (SELECT stay_id FROM uo_ids)"}
    pyaki_parts: dict[str, dict[str, int]] = {}
    for part, cond in parts.items():
        d = data / "pyaki" / part
        d.mkdir(parents=True, exist_ok=True)
        tabs = {"creatinine": "creat", "demographics": "demo"}
        if part == "with_urine":
            tabs["urineoutput"] = "urine"
        n_stays = int(con.execute(f"SELECT count(*) FROM chosen WHERE {cond}").fetchall()[0][0])
        counts = {"patients": n_stays}
        for fname, src in tabs.items():
            q = f"SELECT * FROM {src} WHERE {cond} ORDER BY stay_id" + (", charttime" if src != "demo" else "")
            rel = con.sql(q)
            counts[fname] = int(con.sql(f"SELECT count(*) FROM ({q})").fetchall()[0][0])
            if n_stays:
                rel.to_parquet(str(d / f"{fname}.parquet"))
        pyaki_parts[part] = counts
    creat_rows = int(con.execute("SELECT count(*) FROM creat").fetchall()[0][0])
    urine_rows = int(con.execute("SELECT count(*) FROM urine").fetchall()[0][0])
    urine_patients = int(con.execute("SELECT count(DISTINCT stay_id) FROM urine").fetchall()[0][0])
    con.close()
    _write_json({"seconds": gen_s, "peak_rss_gb": gen_rss / GB, "peak_rss_gb_incl_writing": _maxrss_bytes() / GB,
                 "rows": rows, "events": rows["events"], "creatinine_rows": creat_rows, "urine_rows": urine_rows,
                 "urine_patients": urine_patients,
                 "pyaki_input": {"sampled": bool(sampled), "patients": len(chosen), "parts": pyaki_parts}}, out)


def child_mgaki(data: Path, out: Path, progress: str | None) -> None:
    """Ingest the canonical tables into a fresh store, run the whole surveillance; report times and memory."""
    import pyarrow.parquet as pq

    from mgaki.events import EventStore
    from mgaki.knowledge import load
    from mgaki.surveillance import run

    note = _progress_writer(progress)
    kb = load()  # knowledge base loaded before the clocks start (a service loads it once)
    rss_start = _maxrss_bytes()
    tables = {p.stem: pq.read_table(p) for p in sorted((data / "tables").glob("*.parquet"))}
    note("read_input")
    with tempfile.TemporaryDirectory(dir=data) as root:
        store = EventStore(root)
        t0 = time.perf_counter()
        summary = store.append(tables)
        ingest_s = time.perf_counter() - t0
        note("ingested")
        del tables
        rss_after_ingest = _maxrss_bytes()
        vm_after_ingest = _proc_status_kb("VmRSS")
        reset = _reset_peak_rss()

        def progress_cb(stage: str, i: int, total: int) -> None:
            note("stage", stage=stage, index=i, total=total)

        t0 = time.perf_counter()
        res = run(store, kb=kb, progress=progress_cb)
        surveil_s = time.perf_counter() - t0
        note("surveilled")
        hwm = _proc_status_kb("VmHWM") if reset else None
        out_rows = {k: v.num_rows for k, v in res.tables.items()}
    same_input = _same_input_runs(data, kb, note)
    stage_s = dict(res.seconds)
    names = list(stage_s)

    def upto(stage: str) -> float | None:
        return sum(stage_s[s] for s in names[: names.index(stage) + 1]) if stage in stage_s else None

    _write_json({
        "ingest_s": ingest_s, "surveil_s": surveil_s, "stages_total_s": sum(stage_s.values()),
        "creatinine_staging_s": upto(CREAT_STAGE), "creat_uo_s": upto(UO_STAGE),
        "stage_seconds": stage_s, "added": summary.added, "output_rows": out_rows,
        "peak_rss_gb": _maxrss_bytes() / GB, "rss_gb_before_input": rss_start / GB,
        "peak_rss_gb_through_ingest": rss_after_ingest / GB,
        "rss_gb_after_ingest": None if vm_after_ingest is None else vm_after_ingest / 1024**2,
        "surveil_peak_rss_gb": None if hwm is None else hwm / 1024**2,
        "duckdb_threads": _duckdb_threads(),
        **same_input,
    }, out)


def _same_input_runs(data: Path, kb: Any, note: Any) -> dict[str, float]:
    """mgaki's whole pipeline on exactly the rows each peer gets: the ratio's fair denominator.

    akiflagger sees creatinine only; pyaki creatinine, urine output and weights. mgaki gets those
    rows (plus the encounters it stages within) in a fresh store, and `run()` computes what the peer
    computes (the KDIGO stage of every creatinine value, and of every urine charting): reading the
    store and those stages are timed, the ingest before it separately.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mgaki.events import EventStore
    from mgaki.surveillance import run

    out: dict[str, float] = {}
    subsets = {"creatinine_same_input_s": ("creatinine",), "creat_uo_same_input_s": ("creatinine", "urine_output")}
    outputs = {"creatinine_same_input_s": ("kdigo_creatinine",),
               "creat_uo_same_input_s": ("kdigo_creatinine", "kdigo_urine")}
    for key, analytes in subsets.items():
        ev = pq.read_table(data / "tables" / "events.parquet")
        tables = {"events": ev.filter(pc.is_in(ev["analyte"], value_set=pa_array(analytes))),
                  "encounters": pq.read_table(data / "tables" / "encounters.parquet")}
        if "urine_output" in analytes:
            tables["weights"] = pq.read_table(data / "tables" / "weights.parquet")
        del ev
        with tempfile.TemporaryDirectory(dir=data) as root:
            store = EventStore(root)
            t0 = time.perf_counter()
            store.append(tables)
            out[key.replace("_s", "_ingest_s")] = time.perf_counter() - t0
            t0 = time.perf_counter()  # like the peers' own computation: read the rows, stage them
            run(store, kb=kb, outputs=outputs[key])  # the same work: KDIGO stages of every row
            out[key] = time.perf_counter() - t0
        note(key)
    return out


def pa_array(values: tuple[str, ...]) -> Any:
    import pyarrow as pa

    return pa.array(list(values), pa.string())


def _best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated mgaki runs (least disturbed by other jobs), with every run's numbers kept.

    Peak memory is the largest of all runs: memory does not get smaller by repeating.
    """
    if "error" in runs[-1]:
        return runs[-1] | {"runs_before_error": len(runs) - 1}
    best = dict(min(runs, key=lambda r: r["surveil_s"]))
    best["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    best["surveil_peak_rss_gb"] = max((r["surveil_peak_rss_gb"] or 0.0) for r in runs) or None
    best["runs"] = [{k: r[k] for k in ("ingest_s", "surveil_s", "creatinine_staging_s", "creat_uo_s",
                                       "creatinine_same_input_s", "creat_uo_same_input_s", "peak_rss_gb")}
                    for r in runs]
    return best


def _duckdb_threads() -> int | None:
    from mgaki.events.normalize import connect

    con = connect()
    try:
        return int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ peers
def _peer_env() -> tuple[Any, str | None]:
    """The peers module and None, or None and why the peers cannot run here."""
    sys.path.insert(0, str(HERE))
    try:
        import peers
        from peers_env import ensure_peer_env

        ensure_peer_env()
    except Exception as e:  # the peer venv needs a Python 3.12; say why and go on without peers
        return None, f"{type(e).__name__}: {e}"
    return peers, None


def _time_peer(fn: Any, path: Path, timeout: float) -> tuple[float | None, str | None]:
    try:
        return float(fn(path, timeout=timeout)), None
    except subprocess.TimeoutExpired:
        return None, f"did not finish within {timeout:.0f} s"
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e)[-500:]}"


def run_akiflagger(peers: Any, data: Path, rows: int, prev: dict[str, Any] | None, budget: float) -> dict[str, Any]:
    if prev and prev.get("seconds"):
        est = prev["seconds"] * rows / prev["rows"]
        if est > budget:
            return {"status": "skipped", "rows": rows,
                    "reason": f"estimated {est:.0f} s (linear in rows from the previous size) > budget {budget:.0f} s"}
    elif prev and prev.get("status") in ("skipped", "failed"):
        return {"status": "skipped", "rows": rows, "reason": "a smaller size already exceeded the budget"}
    secs, err = _time_peer(peers.time_akiflagger, data / "akiflagger_creatinine.parquet", budget + 120)
    if secs is None:
        return {"status": "failed", "rows": rows, "reason": err}
    if secs > budget:
        return {"status": "measured", "seconds": secs, "rows": rows, "note": f"over the {budget:.0f} s budget"}
    return {"status": "measured", "seconds": secs, "rows": rows}


def run_pyaki(peers: Any, data: Path, n: int, gen: dict[str, Any], budget: float) -> dict[str, Any]:
    info = gen["pyaki_input"]
    parts: dict[str, Any] = {}
    total = 0.0
    for part, counts in info["parts"].items():
        if not counts["patients"]:
            parts[part] = counts | {"seconds": 0.0}
            continue
        secs, err = _time_peer(peers.time_pyaki, data / "pyaki" / part, budget + 120)
        if secs is None:
            return {"status": "failed", "reason": f"{part}: {err}", "parts": parts}
        parts[part] = counts | {"seconds": secs}
        total += secs
    factor = n / info["patients"]
    out = {"status": "extrapolated" if info["sampled"] else "measured", "measured_seconds": total,
           "measured_patients": info["patients"], "seconds": total * factor, "parts": parts}
    if info["sampled"]:
        out["note"] = (f"timed on a random subsample of {info['patients']} patients, x{factor:g} (linear; a lower "
                       "bound if pyaki's per-stay loop with a growing pd.concat is superlinear)")
    return out


# ------------------------------------------------------------------------------------------ report
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def verdicts(sizes: list[dict[str, Any]], cores: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    big = next((s for s in sizes if s["patients"] == TARGET_PATIENTS), None)
    m = (big or {}).get("mgaki", {})
    core_note = None if cores == TARGET_CORES else f"machine has {cores} cores, target says {TARGET_CORES}"
    for target, key, limit in ((f"100k patients surveillance < {TARGET_SECONDS:g} s", "surveil_s", TARGET_SECONDS),
                               (f"100k patients peak RSS < {TARGET_RSS_GB:g} GB", "peak_rss_gb", TARGET_RSS_GB)):
        v = m.get(key)
        out.append({"target": target, "value": v, "pass": None if v is None else v < limit,
                    "note": "100k not run or failed" if v is None else core_note})
    for s in sizes:
        for peer, limit in (("akiflagger", TARGET_AKIFLAGGER_RATIO), ("pyaki", TARGET_PYAKI_RATIO)):
            r = s.get("ratios", {}).get(peer)
            status = s.get(peer, {}).get("status")
            # The issue gives the peers' speeds as throughput (rows/s, patients/s): the ratio is judged
            # at 100k patients; below that mgaki's fixed cost per run (~0.1-0.3 s) dominates, shown as info.
            judged = s["patients"] >= TARGET_PATIENTS
            notes = [n for n in (status if status not in (None, "measured") else None,
                                 None if judged else "info only: judged at 100k") if n]
            out.append({"target": f"{s['patients']:,} patients: {peer} / mgaki >= {limit:g}x", "value": r,
                        "pass": None if r is None or not judged else r >= limit,
                        "note": "; ".join(notes) or None})
    return out


def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"\nmgaki surveillance benchmark, {res['started']}, git {res['git_commit']}")
    print(f"machine: {m['cores']} cores ({m['affinity_cores']} usable), {m['mem_total_gb']} GB RAM, "
          f"{m['platform']}, python {m['python']}, duckdb {m['duckdb']} (threads {m['duckdb_threads']}); "
          f"load average start {m['load_avg_start']}, end {m['load_avg_end']} ({m['shared_note']})")
    head = (f"{'patients':>9} {'events':>11} {'gen s':>7} {'ingest s':>8} {'surveil s':>9} {'events/s':>10} "
            f"{'peak GB':>7} {'surv GB':>7} {'Cr s':>6} {'Cr+UO s':>7} {'akiflag s':>9} {'ratio':>6} "
            f"{'pyaki s':>8} {'ratio':>6}")
    print("\n" + head)
    for s in res["sizes"]:
        g, mg = s.get("generate", {}), s.get("mgaki", {})
        a, p = s.get("akiflagger", {}), s.get("pyaki", {})
        r = s.get("ratios", {})
        ptag = "*" if p.get("status") == "extrapolated" else " "
        print(f"{s['patients']:>9,} {_fmt(g.get('events'), ',d'):>11} {_fmt(g.get('seconds'), '.1f'):>7} "
              f"{_fmt(mg.get('ingest_s'), '.1f'):>8} {_fmt(mg.get('surveil_s'), '.1f'):>9} "
              f"{_fmt(mg.get('events_per_s'), ',.0f'):>10} {_fmt(mg.get('peak_rss_gb'), '.2f'):>7} "
              f"{_fmt(mg.get('surveil_peak_rss_gb'), '.2f'):>7} {_fmt(mg.get('creatinine_same_input_s'), '.2f'):>6} "
              f"{_fmt(mg.get('creat_uo_same_input_s'), '.2f'):>7} {_fmt(a.get('seconds'), '.1f'):>9} "
              f"{_fmt(r.get('akiflagger'), '.1f'):>6} {_fmt(p.get('seconds'), '.1f'):>7}{ptag} "
              f"{_fmt(r.get('pyaki'), '.1f'):>6}")
    for s in res["sizes"]:
        runs = s.get("mgaki", {}).get("runs", [])
        if len(runs) > 1:
            print(f"  {s['patients']:,}: fastest of {len(runs)} mgaki runs; surveil s of each: "
                  + ", ".join(f"{r['surveil_s']:.1f}" for r in runs))
    print("\nevents/s = events rows / surveillance wall time; peak GB = mgaki child (ingest + surveillance), "
          "surv GB = surveillance phase alone;\nCr s / Cr+UO s = mgaki's KDIGO staging (store read + stages) "
          "of exactly the rows akiflagger / pyaki get (creatinine; creatinine + urine + weights);\n"
          "ratio = peer seconds / that mgaki time; * = pyaki extrapolated from a subsample")
    for s in res["sizes"]:
        for key in ("mgaki", "generate"):
            if s.get(key, {}).get("error"):
                e = s[key]
                print(f"  {s['patients']:,}: {key} FAILED: {e['error']} after {e['after_seconds']} s; "
                      f"last completed step {e['last_completed_step']}")
        for peer in ("akiflagger", "pyaki"):
            d = s.get(peer, {})
            if d.get("status") not in (None, "measured") or d.get("note"):
                print(f"  {s['patients']:,}: {peer} {d.get('status')}: {d.get('reason') or d.get('note')}")
    print("\ntargets (issue 3):")
    for v in res["verdicts"]:
        verdict = "n/a " if v["pass"] is None else ("PASS" if v["pass"] else "FAIL")
        val = "-" if v["value"] is None else f"{v['value']:.2f}"
        print(f"  {verdict}  {v['target']:<48} {val:>9}" + (f"  ({v['note']})" if v.get("note") else ""))
    done = [s for s in res["sizes"] if s.get("mgaki", {}).get("stage_seconds")]
    if done:
        s = done[-1]
        st = s["mgaki"]["stage_seconds"]
        print(f"\n10 slowest stages at {s['patients']:,} patients (of {sum(st.values()):.1f} s in stages):")
        for name, sec in sorted(st.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {name:<20} {sec:8.2f} s")
    print(f"\nresults: {res['json_path']}")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _machine() -> dict[str, Any]:
    import duckdb

    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)
    return {"cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "mem_total_gb": mem, "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "duckdb": duckdb.__version__, "load_avg_start": _loadavg(),
            "shared_note": "the machine may be shared with other jobs; a high load average inflates every time"}


def _json_path(given: Path | None) -> Path:
    if given:
        return given
    stem = f"surveillance-{datetime.now().astimezone().date().isoformat()}"
    path, i = RESULTS / f"{stem}.json", 2
    while path.exists():
        path, i = RESULTS / f"{stem}-{i}.json", i + 1
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_parse_sizes, default=[1_000, 10_000, 100_000],
                    help="patients per cohort, comma-separated (1000,10000 or 1k,10k); default 1k,10k,100k")
    ap.add_argument("--quick", action="store_true", help="1k patients only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true", help="mgaki only (no peer venv needed)")
    ap.add_argument("--peer-budget", type=float, default=300.0,
                    help="seconds a peer may take at one size; bigger sizes are skipped (default 300)")
    ap.add_argument("--pyaki-sample", type=int, default=1000,
                    help="above this many patients, pyaki runs on a random subsample of it and is extrapolated")
    ap.add_argument("--repeat", type=int, default=1,
                    help="mgaki runs per size; the fastest is reported, all are kept in the JSON (default 1)")
    ap.add_argument("--child-timeout", type=float, default=3600.0, help="seconds per generation/mgaki child")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/surveillance-<date>.json)")
    ap.add_argument("--child", choices=["generate", "mgaki"], help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-progress", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "generate":
        child_generate(args.child_n, args.seed, args.child_data, args.pyaki_sample, args.child_out,
                       args.child_progress)
        return 0
    if args.child == "mgaki":
        child_mgaki(args.child_data, args.child_out, args.child_progress)
        return 0

    sizes = [1_000] if args.quick else args.sizes
    json_path = _json_path(args.out)
    res: dict[str, Any] = {"benchmark": "surveillance", "started": datetime.now().astimezone().isoformat(),
                           "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           "git_commit": _git_commit(), "machine": _machine(), "seed": args.seed,
                           "peer_budget_s": args.peer_budget, "pyaki_sample": args.pyaki_sample,
                           "json_path": str(json_path), "sizes": []}
    peers, why_not = (None, "--no-peers") if args.no_peers else _peer_env()
    res["peers"] = {"available": peers is not None, "reason": why_not}
    if peers is None and not args.no_peers:
        print(f"peers unavailable, mgaki only: {why_not}", file=sys.stderr)
    prev_aki: dict[str, Any] | None = None
    failed = False
    for n in sizes:
        print(f"[{datetime.now().astimezone():%H:%M:%S}] {n:,} patients: generating ...", file=sys.stderr, flush=True)
        entry: dict[str, Any] = {"patients": n}
        res["sizes"].append(entry)
        with tempfile.TemporaryDirectory(prefix=f"mgaki-bench-{n}-") as tmp:
            data = Path(tmp)
            common = ["--seed", str(args.seed), "--child-n", str(n), "--child-data", str(data),
                      "--pyaki-sample", str(args.pyaki_sample)]
            gen = entry["generate"] = _child(["--child", "generate", *common], args.child_timeout)
            if "error" in gen:
                failed = True
                continue
            print(f"[{datetime.now().astimezone():%H:%M:%S}] {n:,} patients: {gen['events']:,} events generated "
                  f"in {gen['seconds']:.1f} s; mgaki ingest + surveillance ...", file=sys.stderr, flush=True)
            runs = []
            for _ in range(args.repeat):
                runs.append(_child(["--child", "mgaki", *common], args.child_timeout))
                if "error" in runs[-1]:
                    break
            mg = entry["mgaki"] = _best_run(runs)
            if "error" in mg:
                failed = True
            else:
                mg["events_per_s"] = gen["events"] / mg["surveil_s"]
                res["machine"]["duckdb_threads"] = mg["duckdb_threads"]
            if peers is not None:
                print(f"[{datetime.now().astimezone():%H:%M:%S}] {n:,} patients: peers ...", file=sys.stderr,
                      flush=True)
                entry["akiflagger"] = prev_aki = run_akiflagger(peers, data, gen["creatinine_rows"], prev_aki,
                                                                args.peer_budget)
                entry["pyaki"] = run_pyaki(peers, data, n, gen, args.peer_budget)
        ratios: dict[str, float | None] = {}
        for peer, key in (("akiflagger", "creatinine_same_input_s"), ("pyaki", "creat_uo_same_input_s")):
            ps, ms = entry.get(peer, {}).get("seconds"), entry.get("mgaki", {}).get(key)
            ratios[peer] = ps / ms if ps and ms else None
        entry["ratios"] = ratios
        _write_json(res, json_path)  # partial results survive a later failure
    res["machine"]["load_avg_end"] = _loadavg()
    res["machine"].setdefault("duckdb_threads", None)
    res["finished"] = datetime.now().astimezone().isoformat()
    res["verdicts"] = verdicts(res["sizes"], res["machine"]["affinity_cores"])
    _write_json(res, json_path)
    print_report(res)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
