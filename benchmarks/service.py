"""Load benchmark for the mgaki service (`mgaki serve`): CDS Hooks patient-view latency and ingest throughput.

Run from the repository root with the project venv active::

    nice -n 10 python benchmarks/service.py                  # 100 req/s for 60 s, JWT on and off, ingest
    python benchmarks/service.py --rate 20 --duration 3      # quick run
    python benchmarks/service.py --jwt on --postgres         # PostgreSQL instead of SQLite (own schema, dropped)

What runs, all in one run on one machine so that the ratios mean something elsewhere:

* A real ``python -m mgaki serve`` subprocess (uvicorn, as deployed) on a free loopback port, with a
  temporary data folder and SQLite (or PostgreSQL with ``--postgres``), pinned to ``--cpus`` (default
  0,1: the production machine has 2 cores). ``mgaki.warm_up()`` runs at its start-up as in production.
* **patient-view, open loop**: a separate load-generator process (asyncio + httpx) sends
  ``POST /cds-services/mgaki-patient-view`` at a fixed arrival rate (``--rate``, default 100/s) for
  ``--duration`` s (default 60), each request at its scheduled time whatever earlier responses did.
  Latency is measured from the *scheduled* send time to the end of the response, so queueing in the
  server, the socket or the client counts (no coordinated omission). Each request carries the
  prefetch the service advertises (Patient, Observations, MedicationRequests,
  MedicationAdministrations) for one of ``--patients`` synthetic inpatients: a week of serum Mg,
  creatinine, K, Ca, albumin, weight, spot urine Mg/creatinine, hourly urine output for ICU
  patients, MgSO4 orders and administrations and other Mg-relevant drugs, values varying by patient.
  With ``--jwt on`` (production) each request carries its own RS384-signed CDS Hooks JWT (signed
  before the timed window; the server verifies signature, audience, lifetime and replay);
  ``--jwt off`` runs with ``cds_require_jwt: false``; ``both`` (default) measures both, on two servers.
  An error is a non-200 status, a transport error, or a body that is not the cards the engine gives
  in process for that patient (summary card text and number of cards compared).
* **References, same run**: (1) the same request handled in process (``CdsRequest`` validation +
  ``mgaki.service.cds.hooks.patient_view``, after ``mgaki.warm_up()``), i.e. everything but HTTP, JWT and the
  audit row; (2) ``GET /health`` (HTTP stack + one database round trip) at the same open-loop rate.
  The ratios service/in-process and service/health travel between machines better than milliseconds.
* **Ingest**: one writer posting, back to back, per-patient FHIR ``batch`` Bundles to ``POST /fhir``
  (a week of data with Encounter and Conditions) and NDJSON chunks of several patients to
  ``POST /fhir/$import-ndjson``; resources/s includes the incremental surveillance run by each request.
* **HL7 v2 (MLLP)**: ORU^R01 messages (one result each, built by ``mgaki.service.ingest.hl7.oru_r01``) sent one
  after another on one connection to the service's MLLP listener, each after the previous ACK: messages/s
  and send-to-ACK latency, ACK codes counted (an AA means durable: journaled, stored right after, then
  surveilled; docs/service.md#hl7-v251-oru-r01-over-mllp). The lab feed at hospital rates, open loop on a
  100 k-patient store with alert latency, is ``benchmarks/mllp.py``.

Targets (SPEC, issue 4): patient-view p99 < 50 ms at 100 requests/s on 2 cores, and no errors; printed as
PASS/FAIL. Exit status 0 either way (a measurement, not a gate); 1 if the server could not be started or
a phase could not run. ``--out FILE`` also writes every number as JSON. On a shared machine the load
average (printed at start and end) inflates every latency: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the servicebench parts beside this script

from mgaki.synth.fhir import CODES, T0, patient_week
from servicebench.harness import Server, hl7_listener, make_key, postgres_schema, sign_tokens, start_server
from servicebench.load import (
    PATIENT_VIEW,
    LoadSpec,
    closed_loop,
    hook_request,
    ingest_bundle,
    inprocess_reference,
    measure_hl7,
    measure_ingest,
    oru_r01,
    run_load,
)
from servicebench.report import TARGET_RATE, machine, report, write_trace

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="patient-view arrivals per second (100)")
    ap.add_argument("--duration", type=float, default=60.0, help="timed seconds per open-loop phase (60)")
    ap.add_argument("--warmup", type=float, default=3.0, help="untimed seconds at the same rate first (3)")
    ap.add_argument("--jwt", choices=["on", "off", "both"], default="both",
                    help="CDS Hooks JWT verification (production: on); both = two servers")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="client timeout per request, s (30); a timed-out request is an error")
    ap.add_argument("--probe-n", type=int, default=200,
                    help="closed-loop probe: requests sent one at a time before the open loop (200; 0: none)")
    ap.add_argument("--patients", type=int, default=50, help="distinct patients cycled through (50)")
    ap.add_argument("--health-duration", type=float, default=None,
                    help="seconds of the GET /health reference (default: --duration)")
    ap.add_argument("--ref-n", type=int, default=1000, help="in-process reference iterations (1000)")
    ap.add_argument("--ingest-bundles", type=int, default=40, help="per-patient Bundles POSTed to /fhir (40)")
    ap.add_argument("--ndjson-patients", type=int, default=100, help="patients sent as NDJSON (100)")
    ap.add_argument("--ndjson-chunk", type=int, default=10, help="patients per NDJSON POST (10)")
    ap.add_argument("--postgres", nargs="?", const=PG_DEFAULT, default=None, metavar="URL",
                    help=f"PostgreSQL instead of SQLite (default URL {PG_DEFAULT}); a schema of its own, dropped")
    ap.add_argument("--cpus", default="0,1", help="CPUs the server is pinned to (taskset; default 0,1)")
    ap.add_argument("--workers", type=int, default=2,
                    help="server worker processes (mgaki serve --workers; default 2, one per core of --cpus)")
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="server cds_max_in_flight per worker (default: the service's default)")
    ap.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default=None,
                    help="server sqlite_synchronous (default: the service's default)")
    ap.add_argument("--py-spy", type=Path, metavar="FILE",
                    help="sample the server with py-spy during the first patient-view phase: collapsed stacks "
                         "to FILE, busiest functions printed (needs py-spy, e.g. pip install py-spy)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("--trace", type=Path, metavar="PREFIX",
                    help="write each patient-view request (scheduled send offset s, latency ms, HTTP status) to "
                         "PREFIX-jwt-on.csv and a plot of latency over time to PREFIX-jwt-on.png: where the tail lies")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.patients < 1 or args.ref_n < 1 or args.workers < 1:
        ap.error("--rate, --duration, --patients, --ref-n and --workers must be positive")
    cpus = {int(c) for c in args.cpus.split(",")}
    server_extra = {k: v for k, v in (("cds_max_in_flight", args.max_in_flight),
                                      ("sqlite_synchronous", args.sqlite_synchronous)) if v is not None}
    health_s = args.health_duration if args.health_duration is not None else args.duration
    load_start = os.getloadavg()
    started = datetime.now(UTC)

    patients = [patient_week(i) for i in range(args.patients)]
    bodies = [json.dumps(hook_request(p)).encode() for p in patients]
    ref, expected = inprocess_reference(bodies, args.ref_n)

    results: dict[str, Any] = {"reference_inprocess": ref}
    modes = ["on", "off"] if args.jwt == "both" else [args.jwt]
    failed = False
    with tempfile.TemporaryDirectory(prefix="mgaki-svcbench-") as tmp_s:
        tmp = Path(tmp_s)
        key, jwk = make_key()
        db_ctx = postgres_schema(args.postgres) if args.postgres else contextlib.nullcontext(None)
        with db_ctx as db_url:  # with PostgreSQL, the servers use the same schema, one after the other
            for mode in modes:
                # a fresh server per patient-view phase: an overloaded phase leaves work queued in it
                try:
                    with start_server(tmp, f"jwt-{mode}", jwt_key=jwk if mode == "on" else None,
                                      database_url=db_url, cpus=cpus, workers=args.workers,
                                      extra=server_extra) as server:
                        results.setdefault("server_cmd", shlex.join(server.proc.args))  # type: ignore[arg-type]
                        if mode == modes[0]:
                            results["health"] = run_load(LoadSpec(
                                url=server.base_url + "/health", method="GET", rate=args.rate, duration=health_s,
                                bodies=[], headers=[{}], warmup_s=args.warmup), server)
                        n_req = int(args.warmup * args.rate) + max(1, round(args.duration * args.rate))
                        lifetime = int(args.warmup + args.duration) + 900
                        headers = (sign_tokens(key, server.base_url + PATIENT_VIEW, n_req + args.probe_n, lifetime)
                                   if mode == "on" else [{}])
                        for h in headers:
                            h["Content-Type"] = "application/json"
                        if args.probe_n:
                            results[f"probe_jwt_{mode}"] = closed_loop(
                                server, bodies, headers[-args.probe_n:] if mode == "on" else headers,
                                args.probe_n, expected)
                        results[f"patient_view_jwt_{mode}"] = run_load(LoadSpec(
                            url=server.base_url + PATIENT_VIEW, method="POST", rate=args.rate,
                            duration=args.duration, bodies=bodies,
                            headers=headers[:n_req] if mode == "on" else headers, expected=expected,
                            warmup_s=args.warmup, timeout_s=args.timeout),
                            server, py_spy=args.py_spy if mode == modes[0] else None)
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    results[f"patient_view_jwt_{mode}"] = {"failed": str(exc).splitlines()[0]}
                    failed = True
            if args.ingest_bundles or args.ndjson_patients:
                try:  # production settings (JWT on), a fresh server
                    with start_server(tmp, "ingest", jwt_key=jwk, database_url=db_url, cpus=cpus,
                                      workers=args.workers, extra=server_extra) as server:
                        results.update(run_ingest(server, args))
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    results["ingest_bundle"] = {"failed": str(exc).splitlines()[0]}
                    failed = True
    failed = failed or any(isinstance(v, dict) and "failed" in v for v in results.values())
    traces = {k: v.pop("trace") for k, v in results.items() if isinstance(v, dict) and "trace" in v}
    if args.trace:
        for k, tr in traces.items():
            if k.startswith("patient_view_"):
                write_trace(tr, Path(f"{args.trace}-{k.removeprefix('patient_view_').replace('_', '-')}"))
    report(args, results, started, load_start)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items()},
                                        "started": started.isoformat(), "load_avg_start": load_start,
                                        "load_avg_end": os.getloadavg(), "machine": machine(),
                                        "results": results}, indent=1, default=str))
    return 1 if failed else 0


def run_ingest(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Bundles then NDJSON chunks, on patients the CDS phase did not use; then HL7 if the hook is wired."""
    out: dict[str, Any] = {}
    base = 100_000
    bundles = []
    for i in range(args.ingest_bundles):
        res = patient_week(base + i)
        bundles.append((json.dumps(ingest_bundle(res)).encode(), len(res)))
    if bundles:
        out["ingest_bundle"] = measure_ingest(server, "/fhir", bundles, "application/fhir+json")
    chunks = []
    start = base + args.ingest_bundles
    for c in range(0, args.ndjson_patients, max(1, args.ndjson_chunk)):
        res = [r for i in range(c, min(c + args.ndjson_chunk, args.ndjson_patients))
               for r in patient_week(start + i)]
        chunks.append(("\n".join(json.dumps(r) for r in res).encode() + b"\n", len(res)))
    if chunks:
        out["ingest_ndjson"] = measure_ingest(server, "/fhir/$import-ndjson", chunks, "application/fhir+ndjson")
    addr = hl7_listener(server)
    if addr is None:
        out["ingest_hl7"] = {"not_measured": "HL7 v2 MLLP listener not wired (hl7_listener() returns None)"}
    else:
        msgs = [oru_r01(f"bench-{200_000 + i:05d}", f"B{i}", CODES["magnesium"], 1.6, "mg/dL",
                        T0 + timedelta(minutes=i)) for i in range(max(1, args.ingest_bundles * 10))]
        out["ingest_hl7"] = measure_hl7(addr, msgs)
    return out


if __name__ == "__main__":
    sys.exit(main())
