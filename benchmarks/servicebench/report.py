"""The benchmark's report: the table of phases with the ratios to the references of the same run,
the targets as PASS/FAIL, the py-spy stage shares, and the per-request latency trace (CSV + plot)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from servicebench.load import pct

TARGET_P99_MS = 50.0
TARGET_RATE = 100.0

# Where a patient-view request's time goes, as named in py-spy's collapsed stacks ("function (file)")
PROFILE_STAGES = [
    ("event loop (uvicorn, h11, starlette, middleware)", "BaseEventLoop.run_forever (base_events.py)"),
    ("  request body read (event loop)", "Request.body (requests.py)"),
    ("worker threads (CDS call and sync endpoints)", "WorkerThread.run (_asyncio.py)"),
    ("  CDS admission (cds_admit: JWT, body, jti + audit commit)", "create_app.<locals>.cds_admit (app.py)"),
    ("    CDS Hooks JWT verification", "check_cds_jwt (security.py)"),
    ("    body decode + validation (model_validate_json)", "BaseModel.model_validate_json (main.py)"),
    ("    jti insert (record_jti)", "record_jti (security.py)"),
    ("    audit row on the hash chain (append_audit)", "append_audit (db.py)"),
    ("  CDS cards (cds_cards, one at a time per worker)", "create_app.<locals>.cds_cards (app.py)"),
    ("    patient_view (assess + cards)", "patient_view (hooks.py)"),
    ("      mgaki.assess", "assess (__init__.py)"),
    ("        FHIR parse/validate (parse_bundle)", "parse_bundle (fhir.py)"),
    ("        rules (assess_record)", "assess_record (assess.py)"),
    ("    cards to JSON (model_dump_json)", "BaseModel.model_dump_json (main.py)"),
    ("SQLAlchemy execute (all threads)", "Connection.execute (base.py)"),
    ("SQLAlchemy commit (all threads)", "Transaction.commit (base.py)"),
]


def _frame(f: str) -> str:
    """'Class.name (path/file.py:123)' -> 'name (file.py)': py-spy 0.4.2 writes bare function names, earlier
    versions the qualified ones, so both sides are compared by the function's own name."""
    name, _, where = f.partition(" (")
    name = name.rsplit(".", 1)[-1]
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})" if where else f


def profile_summary(path: Path, top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy collapsed stacks (sampled while holding the GIL): % of samples per stage
    (inclusive, PROFILE_STAGES) and the functions with the most samples of their own."""
    total = 0
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first element names the thread
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return [], []
    stages = [(label, 100 * incl.get(_frame(f), 0) / total) for label, f in PROFILE_STAGES]
    tops = [(f, 100 * c / total) for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return stages, tops


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def _row(label: str, r: dict[str, Any], rate: str) -> str:
    if "failed" in r:
        return f"{label:<34} FAILED: {r['failed']}"
    return (f"{label:<34} {int(r['requests']):>6} {rate:>7} {r['p50']:>8.1f} {r['p90']:>8.1f} {r['p99']:>8.1f} "
            f"{r['max']:>8.1f} {r['errors']:>6}")


def write_trace(trace: list[tuple[float, float, int]], prefix: Path) -> None:
    """Per-request CSV and a latency-over-time plot with the p99 and the target (altair, saved as PNG)."""
    import csv

    import altair as alt
    import pandas as pd

    with prefix.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent_offset_s", "latency_ms", "status"])
        w.writerows((f"{t:.4f}", f"{lat * 1e3:.2f}", st) for t, lat, st in trace)
    df = pd.DataFrame({"sent_offset_s": [t for t, _, _ in trace], "latency_ms": [lat * 1e3 for _, lat, _ in trace]})
    p99 = pct(sorted(lat for _, lat, _ in trace), 99)
    rules = pd.DataFrame({"ms": [p99, TARGET_P99_MS], "line": [f"p99 {p99:.1f} ms", f"target {TARGET_P99_MS:.0f} ms"]})
    points = alt.Chart(df).mark_circle(size=8, opacity=0.5).encode(
        x=alt.X("sent_offset_s:Q", title="scheduled send time (s into the timed window)"),
        y=alt.Y("latency_ms:Q", title="latency (ms)", scale=alt.Scale(type="log")))
    lines = alt.Chart(rules).mark_rule(strokeDash=[4, 3]).encode(y="ms:Q", color=alt.Color("line:N", title=None))
    (points + lines).properties(width=800, height=260, title="patient-view latency per request (open loop)") \
        .save(str(prefix.with_suffix(".png")))


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "niceness": os.nice(0)}


def report(args: argparse.Namespace, results: dict[str, Any], started: datetime,
           load_start: tuple[float, float, float]) -> None:
    import mgaki

    print("mgaki service benchmark")
    print(f"command : {shlex.join(sys.orig_argv)}")
    print(f"server  : {results.get('server_cmd', '?')} ({'PostgreSQL' if args.postgres else 'SQLite'}; "
          f"{args.workers} worker process(es))")
    m = machine()
    print(f"machine : {m['platform']}; os.cpu_count()={m['cpu_count']}; python {m['python']}; "
          f"niceness {m['niceness']}; mgaki {mgaki.__version__}")
    print(f"date    : {started.isoformat(timespec='seconds')}")
    print(f"load    : {', '.join(f'{x:.2f}' for x in load_start)} at start, "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at end (a loaded machine inflates every latency)")
    print(f"workload: {args.patients} patients, open loop {args.rate:g} req/s for {args.duration:g} s "
          f"after {args.warmup:g} s untimed warm-up; latency from the scheduled send time")
    print()
    hdr = f"{'phase':<34} {'n':>6} {'rate/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"
    print(hdr)
    print("-" * len(hdr))
    ref = results["reference_inprocess"]
    print(f"{'in-process patient_view (ref)':<34} {int(ref['n']):>6} {'-':>7} {ref['p50']:>8.1f} {ref['p90']:>8.1f} "
          f"{ref['p99']:>8.1f} {ref['max']:>8.1f} {'-':>6}")
    if "health" in results:
        h = results["health"]
        print(_row("GET /health (ref)", h, f"{h.get('completed_rate', math.nan):.1f}"))
    for k in ("probe_jwt_on", "probe_jwt_off"):
        if k in results:
            r = results[k]
            label = "closed loop 1 conn, JWT " + ("verified" if k.endswith("_on") else "off")
            print(_row(label, r, f"{r['completed_rate']:.1f}"))
    pv_rows = [(k, results[k]) for k in ("patient_view_jwt_on", "patient_view_jwt_off") if k in results]
    for k, r in pv_rows:
        label = "patient-view, JWT " + ("verified" if k.endswith("_on") else "off")
        print(_row(label, r, f"{r.get('completed_rate', math.nan):.1f}"))
    print()
    for k, r in pv_rows:
        if "failed" in r:
            continue
        tag = "JWT on " if k.endswith("_on") else "JWT off"
        print(f"detail  : {tag}: offered {r['offered_rate']:.1f} req/s, completed {r['completed_rate']:.1f} req/s, "
              f"max send lag {r['max_send_lag_ms']:.1f} ms, server CPU {r['server_cpu_ms_per_req']:.1f} ms/req, "
              f"client CPU {r['client_cpu_ms_per_req']:.1f} ms/req"
              + (f", errors {r['error_kinds']}" if r["errors"] else "")
              + (f"; server busy {r['drain_s']:.0f} s after the phase" if r["drain_s"] > 2 else ""))
        for line, count in r["server_log"].items():
            print(f"server  : {tag}: {count} x {line}")
        print(f"ratio   : {tag}: p50 / in-process p50 {r['p50'] / ref['p50']:6.2f}x; "
              f"p99 / in-process p99 {r['p99'] / ref['p99']:6.2f}x"
              + (f"; p99 / GET /health p99 {r['p99'] / results['health']['p99']:6.2f}x"
                 if "p99" in results.get("health", {}) else ""))
    for k in ("probe_jwt_on", "probe_jwt_off"):
        if k in results:
            r = results[k]
            tag = "JWT on " if k.endswith("_on") else "JWT off"
            par = min(args.workers, len({c for c in args.cpus.split(",") if c}))
            print(f"capacity: {tag}: server CPU {r['server_cpu_ms_per_req']:.1f} ms/request one at a time -> one "
                  f"worker process (one GIL) saturates near {r['cpu_bound_capacity_per_s']:.0f} req/s, "
                  f"{args.workers} worker(s) on {par} CPU(s) near {par * r['cpu_bound_capacity_per_s']:.0f} req/s "
                  "on this machine (if nothing else ran)")
            for line, count in r["server_log"].items():
                print(f"server  : {tag} probe: {count} x {line}")
    print()
    ing = [("FHIR Bundle POST /fhir", results.get("ingest_bundle")),
           ("NDJSON POST /fhir/$import-ndjson", results.get("ingest_ndjson"))]
    hdr2 = (f"{'ingest (one writer)':<34} {'posts':>6} {'res':>7} {'res/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'first ms':>8} {'last ms':>8} {'errors':>6}")
    if any(r is not None for _, r in ing):
        print(hdr2)
        print("-" * len(hdr2))
    for label, r in ing:
        if r is None:
            continue
        if "failed" in r:
            print(f"{label:<34} FAILED: {r['failed']}")
            continue
        print(f"{label:<34} {r['requests']:>6} {r['resources']:>7} {r['resources_per_s']:>8.0f} {r['p50']:>8.1f} "
              f"{r['p99']:>8.1f} {r['first_ms']:>8.1f} {r['last_ms']:>8.1f} {r['errors']:>6}")
        for line, count in {**dict.fromkeys(r["error_kinds"], 1), **r["server_log"]}.items():
            print(f"server  : {label}: {count} x {line}")
    hl7 = results.get("ingest_hl7", {})
    if "not_measured" in hl7:
        print(f"{'HL7 v2 ORU^R01 over MLLP':<34} not measured: {hl7['not_measured']}")
    elif hl7:
        print(f"{'HL7 v2 ORU^R01 over MLLP':<34} {hl7['messages']:>6} messages, {hl7['messages_per_s']:.0f} msg/s, "
              f"p50 {hl7['p50']:.1f} ms, p99 {hl7['p99']:.1f} ms, ACKs {hl7['acks']}")
    print()
    if args.py_spy is not None and args.py_spy.exists():
        which = "off" if args.jwt == "off" else "verified"
        stages, tops = profile_summary(args.py_spy)
        print(f"py-spy  : server during the open-loop patient-view phase (JWT {which}), samples taken while "
              f"holding the GIL, collapsed stacks in {args.py_spy}")
        for label, share in stages:
            print(f"  {share:5.1f}%  {label}")
        print("  most samples of their own:")
        for f, share in tops:
            print(f"  {share:5.1f}%  {f}")
        print()
    for k, r in pv_rows:
        if "failed" in r:
            print(f"target  : {k}: not measured -> FAIL")
            continue
        tag = "JWT verified" if k.endswith("_on") else "JWT off"
        at_target = abs(args.rate - TARGET_RATE) < 1e-9 and args.duration >= 60
        ok_p99 = r["p99"] < TARGET_P99_MS
        print(f"target  : patient-view ({tag}) p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f} req/s -> "
              f"{'PASS' if ok_p99 else 'FAIL'} (p99 = {r['p99']:.1f} ms"
              + ("" if at_target else f"; run at {args.rate:g} req/s for {args.duration:g} s, not the target load")
              + ")")
        print(f"target  : patient-view ({tag}) zero errors -> {'PASS' if r['errors'] == 0 else 'FAIL'} "
              f"({r['errors']} of {r['requests']})")

