"""A lab feed at hospital peak (issue 18 point 2): HL7 ORU^R01 over MLLP into a real `mgaki serve` on a large store.

Run from the repository root with the project venv active::

    nice -n 15 python benchmarks/mllp.py --store-cache /tmp/mllp-cache   # 100 k patients, 200 msg/s, 300 s
    python benchmarks/mllp.py --quick                                    # 1 k patients, 10 s

What runs, in one command:

* **Store**: the ICU-shaped cohort of ``benchmarks/icu_cohort.py`` (seed 18; per patient ~50 creatinine,
  194 hourly urine outputs, 6 Mg: 24.4 M rows at 100 k patients), then one full surveillance run, as a
  hospital's store is before a feed is switched on. Built in a child process, or reused from
  ``--store-cache DIR`` (built there once), and copied into the server's temporary data folder.
* **Server**: ``python -m mgaki serve`` (uvicorn, as deployed; SQLite; ``--workers``, default 1) with the
  MLLP listener on, bearer tokens for a reader and a writer, ``warm_up`` on.
* **Warm-up** (not timed): a few alert-raising messages, until their alerts are in ``GET /alerts`` (the
  first surveillance run of a process copies the whole alert log into the database).
* **Feed, open loop**: ``--rate`` messages/s (default 200) for ``--duration`` s (default 300) spread over
  ``--connections`` MLLP connections (default 4), each message sent at its scheduled time whatever the ACKs
  did (a connection does not wait for an ACK before its next message; ACKs come back in order). Each message
  is one ORU^R01 for a random existing patient with a creatinine and a magnesium result dated now;
  ``--alert-share`` of them (default 2%) carry a magnesium of 1.0 mg/dL (0.41 mmol/L), which raises an
  ``mg_out_of_range`` alert: each for a patient the feed sends nothing else (another message could make the
  low value a suspect specimen, diluted, or a repeat within an open episode). ACK latency is from the
  scheduled send to the ACK (queueing in the client, the socket and the server counts). Alert latency is from
  the scheduled send to the first ``GET /alerts?kind=mg_out_of_range&limit=100`` poll (every ``--poll-s``,
  default 0.2 s) that lists the alert, so it includes up to one poll interval. The server runs with
  ``hl7_surveillance_delay_s`` ``--delay`` (default 0.25 s).
* **FHIR** (before the feed; ``--fhir-duration`` s, default 60; 0: off): ``--fhir-clients`` closed-loop writers posting
  one-Observation batch Bundles (a creatinine for a random patient) to ``POST /fhir``: requests/s and
  latency. A FHIR POST is answered after its store append *and* its incremental surveillance run.

Printed: store size, target and achieved rates, ACK codes, ACK and alert latency percentiles, the
server's CPU, the machine's load average at start and end, and PASS/FAIL for: >= the target rate
sustained (achieved rate within 2% of it, and the last ACK within 2 s of the last send: no backlog),
every message acknowledged AA and stored, alert latency p99 < 2 s. ``--out FILE`` writes every number as
JSON. Exit status 0 either way (a measurement); 1 if the server or the store could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # icu_cohort, servicebench beside this script

READER = "bench-reader-token-0123456789"
WRITER = "bench-writer-token-0123456789"
SEED = 18
MG, CREA = "19123-9", "2160-0"
ALERT_KIND = "mg_out_of_range"
TARGET_RATE = 200.0
TARGET_ALERT_P99_S = 2.0
# the newest alerts of the kind per poll: the feed's are the newest (dated now; the cohort's are older), and a
# poll lists every alert raised since the previous one while fewer than this many arrive between polls
POLL_LIMIT = 100
WARM_PATIENTS = 10  # the warm-up's alerts are for patients 0-9, the feed's for the others (one alert each)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (same units as xs); NaN for none."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def stats_ms(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_ms": pct(xs, 50) * 1e3, "p90_ms": pct(xs, 90) * 1e3, "p99_ms": pct(xs, 99) * 1e3,
            "max_ms": max(xs) * 1e3 if xs else float("nan")}


# --- the store ------------------------------------------------------------------------------------


def child_build(root: Path, patients: int) -> dict[str, Any]:
    """The cohort's event store at ``root``, then one full surveillance run (a child process: its memory goes)."""
    from icu_cohort import build_store
    from mgaki.events import EventStore
    from mgaki.surveillance import surveil

    rows, build_s = build_store(root, patients, SEED)
    t0 = time.perf_counter()
    surveil(EventStore(root), full=True)
    return {"patients": patients, "rows": rows, "build_s": build_s, "surveil_full_s": time.perf_counter() - t0}


def cached_store(cache: Path, patients: int) -> tuple[Path, dict[str, Any]]:
    """The surveilled store of ``patients`` under ``cache`` (built there first if missing)."""
    root = cache / f"icu-{patients}-s{SEED}"
    ready = root / "bench-ready.json"
    if ready.exists():
        return root, {**json.loads(ready.read_text()), "reused": True}
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    out = cache / f".build-{patients}.json"
    print(f"{_now()} building the {patients:,}-patient store and its full surveillance run in {root} ...",
          flush=True)
    subprocess.run([sys.executable, __file__, "--child-build", str(root), "--patients", str(patients),
                    "--child-out", str(out)], check=True)
    info = json.loads(out.read_text())
    out.unlink()
    ready.write_text(json.dumps(info))
    return root, {**info, "reused": False}


def linked_copy(cache: Path, patients: int, into: Path) -> tuple[Path, dict[str, Any]]:
    """``cached_store`` copied to ``into/store`` by hard links (parts and results are never rewritten in place, so
    the copy's writes leave the cache as it was), and its build info."""
    src, info = cached_store(cache, patients)
    copy = into / "store"
    shutil.copytree(src, copy, copy_function=os.link, ignore=shutil.ignore_patterns("bench-ready.json"))
    return copy, info


def _now() -> str:
    return f"{datetime.now(UTC):%H:%M:%S}"


# --- the server -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(tmp: Path, store: Path, workers: int, extra: dict[str, Any], keep_log: Path | None = None) -> Any:
    import httpx
    import yaml

    from servicebench.harness import free_port

    data = tmp / "data"
    data.mkdir(mode=0o700)
    t0 = time.perf_counter()
    shutil.copytree(store, data / "events", ignore=shutil.ignore_patterns("bench-ready.json"))
    copy_s = time.perf_counter() - t0
    port, mllp = free_port(), free_port()
    cfg = {"data_dir": str(data), "host": "127.0.0.1", "port": port, "mllp_port": mllp, "workers": workers,
           "cds_require_jwt": False, "warm_up": True,
           "tokens": [{"name": "bench-ward", "token": READER, "roles": ["reader"]},
                      {"name": "bench-lab", "token": WRITER, "roles": ["writer"]}], **extra}
    (tmp / "service.yaml").write_text(yaml.safe_dump(cfg))
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mgaki", "serve", "--config", str(tmp / "service.yaml")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited at start-up:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": f"http://127.0.0.1:{port}", "mllp": mllp, "pid": proc.pid, "data": data, "log": log_path,
               "copy_s": copy_s}
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if keep_log is not None:
            shutil.copyfile(log_path, keep_log)
        wait_for_fold(data / "events" / "results")


def wait_for_fold(results: Path, timeout_s: float = 600.0) -> None:
    """Wait until no background fold holds `results` (a fold process outlives the server that started it, at
    the lowest priority): the temporary folder is removed after, and a fold writing into it made that fail."""
    from mgaki.surveillance.pipeline import _fold_lock

    if not results.is_dir():
        return
    lock, deadline = _fold_lock(results), time.monotonic() + timeout_s
    while not lock.acquire(blocking=False):
        if time.monotonic() > deadline:
            print(f"warning: a fold still holds {results} after {timeout_s:g} s", file=sys.stderr)
            return
        time.sleep(0.5)
    lock.release()


# --- messages -------------------------------------------------------------------------------------


def messages(n: int, patients: int, alert_share: float, run: str, start: datetime, rate: float,
             alert_pool: range | None = None) -> list[tuple[str, str, bool, str]]:
    """(message, patient, raises an alert, result time ISO) for each scheduled send; results dated at their
    send time (to the second), so each alert is one (patient, time)."""
    from mgaki.service.ingest.hl7 import Result, oru_r01

    rng = random.Random(f"{run}-{n}")
    admitted = (start - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    # each alert for a patient of its own, whose only message of the feed it is: a second low Mg within its
    # episode raises no new alert, and a fall shared with the creatinine of an earlier message (or of another
    # message in the same second) is a diluted sample, a suspect specimen, which raises none either
    pool = alert_pool if alert_pool is not None else range(WARM_PATIENTS, patients)  # the warm-up's are apart
    sample = rng.sample(pool, min(len(pool), int(n * alert_share * 1.5) + 10))
    alerting, apart = iter(sample), set(sample)
    others = [p for p in range(patients) if p not in apart]
    for i in range(n):
        nxt = next(alerting, None) if rng.random() < alert_share else None
        alert = nxt is not None
        pid = f"P{nxt if nxt is not None else others[rng.randrange(len(others))]:08d}"
        when = (start + timedelta(seconds=i / rate)).replace(microsecond=0)
        mg = 1.0 if alert else round(rng.uniform(1.8, 2.4), 2)
        results = [Result(CREA, round(rng.uniform(0.6, 1.3), 2), "mg/dL", when),
                   Result(MG, mg, "mg/dL", when)]
        # an inpatient visit of this feed (PV1-19, admitted a day before the feed): results outside any
        # encounter raise no alert
        msg = oru_r01(pid, results, visit=f"V{pid[1:]}", admitted=admitted, order=f"{run}-{i}",
                      control_id=f"{run}-{i}", sending_app="BENCHLAB")
        out.append((msg, pid, alert, when.replace(tzinfo=None).isoformat()))
    return out


async def _send_connection(host: str, port: int, plan: list[tuple[int, float, bytes]], t0: float,
                           acks: dict[int, tuple[float, str]], sent: dict[int, float]) -> None:
    """Open loop on one connection: each message at t0 + its offset; ACKs read in order as they come."""
    reader, writer = await asyncio.open_connection(host, port)
    order: asyncio.Queue[int] = asyncio.Queue()

    async def read_acks() -> None:
        buf = b""
        for _ in plan:
            while b"\x1c\r" not in buf:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
            block, buf = buf.split(b"\x1c\r", 1)
            i = await order.get()
            text = block.strip(b"\x0b").decode()
            code = next((seg.split("|")[1] for seg in text.split("\r") if seg.startswith("MSA|")), "?")
            acks[i] = (time.monotonic(), code)

    task = asyncio.create_task(read_acks())
    for i, offset, msg in plan:
        delay = t0 + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i] = time.monotonic()
        order.put_nowait(i)
        writer.write(b"\x0b" + msg + b"\x1c\r")
        await writer.drain()
    try:
        await asyncio.wait_for(task, 120)
    finally:
        writer.close()


async def _poll_alerts(url: str, want: dict[tuple[str, str], int], seen: dict[int, float], stop: asyncio.Event,
                       every_s: float, polls: list[float]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {READER}"}) as c:
        while not stop.is_set():
            t = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get(f"{url}/alerts", params={"kind": ALERT_KIND, "limit": POLL_LIMIT})
                now = time.monotonic()
                polls.append(now - t)
                if r.status_code == 200:
                    for a in r.json()["alerts"]:
                        i = want.get((a["subject_id"], str(a["time"])[:19]))
                        if i is not None and i not in seen:
                            seen[i] = now
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t)))


def _held(data: Path, pid: str, when: str) -> str | None:
    """The suspect-specimen rule that set the patient's magnesium at ``when`` aside (surveillance results), if
    any: such a value raises no alert of the kind (issue 13 point 6)."""
    import duckdb

    from mgaki.surveillance.pipeline import result_sql

    src = result_sql(data / "events" / "results", "suspect_specimens", pid)
    if src is None:
        return None
    row = duckdb.sql(f"SELECT kind FROM {src} WHERE subject_id = ? AND analyte = 'magnesium' "
                     f"AND CAST(time AS VARCHAR) LIKE ?", params=[pid, when.replace("T", " ") + "%"]).fetchall()
    return str(row[0][0]) if row else None


async def _explain_missing(server: dict[str, Any], unseen: dict[int, tuple[str, str]]) -> dict[str, int]:
    """Why an expected alert was never listed: raised but missed by the polls (more than POLL_LIMIT between two
    polls), or not raised, and then whether the value was set aside as a suspect specimen (a fall shared with
    the creatinine of the same draw: dilution suspected; ``messages`` avoids it, so it is a defect of the
    benchmark), or an earlier message of the feed opened an episode of the kind in the same visit (no new
    alert), else unexplained (a defect)."""
    import httpx

    out: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {READER}"}) as c:
        for pid, when in unseen.values():
            r = await c.get(f"{server['url']}/patients/{pid}/alerts", params={"limit": 1000})
            kinds = [a for a in r.json().get("alerts", []) if a["kind"] == ALERT_KIND] if r.status_code == 200 else []
            if any(str(a["time"])[:19] == when for a in kinds):
                out["raised, missed by the polls"] += 1
            elif (held := _held(server["data"], pid, when)) is not None:
                out[f"not raised: set aside as a suspect specimen ({held}; a suspect_specimen alert asks for the "
                    "repeat)"] += 1
            elif any(a.get("encounter_id") == f"V{pid[1:]}" and str(a["time"])[:19] < when for a in kinds):
                out["not raised: an earlier alert of the kind in the feed's visit (an open episode raises none)"] += 1
            else:
                out["not raised, unexplained"] += 1
    return dict(out)


async def feed(server: dict[str, Any], msgs: list[tuple[str, str, bool, str]], rate: float, connections: int,
               poll_s: float, t0: float, settle_s: float) -> dict[str, Any]:
    plans: list[list[tuple[int, float, bytes]]] = [[] for _ in range(connections)]
    for i, (m, _, _, _) in enumerate(msgs):
        plans[i % connections].append((i, i / rate, m.encode()))
    want = {(pid, when): i for i, (_, pid, alert, when) in enumerate(msgs) if alert}
    acks: dict[int, tuple[float, str]] = {}
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    polls: list[float] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll_alerts(server["url"], want, seen, stop, poll_s, polls))
    await asyncio.gather(*(_send_connection("127.0.0.1", server["mllp"], p, t0, acks, sent) for p in plans))
    deadline = time.monotonic() + settle_s  # alerts of the last messages: seen, or given up on
    while len(seen) < len(want) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await poller
    missing = await _explain_missing(server, {i: k for k, i in want.items() if i not in seen})
    ack_lat = [acks[i][0] - (t0 + i / rate) for i in acks]
    alert_lat = [seen[i] - (t0 + i / rate) for i in seen]
    last_send = max(sent.values()) if sent else t0
    last_ack = max(a[0] for a in acks.values()) if acks else t0
    # throughput per 10 s window of ACKs (sustained: the slowest window)
    windows = Counter(int((a[0] - t0) // 10) for a in acks.values())
    full_windows = [windows.get(w, 0) / 10 for w in range(int(len(msgs) / rate // 10))]
    return {"sent": len(sent), "acked": len(acks), "codes": dict(Counter(a[1] for a in acks.values())),
            "ack_rate": len(acks) / max(last_ack - t0, 1e-9), "send_rate": len(sent) / max(last_send - t0, 1e-9),
            "min_10s_window_rate": min(full_windows) if full_windows else float("nan"),
            "last_ack_after_last_send_s": last_ack - last_send,
            "ack": stats_ms(ack_lat), "alerts_expected": len(want), "alerts_seen": len(seen),
            "alert": stats_ms(alert_lat), "polls": len(polls), "poll": stats_ms(polls), "missing": missing}


def warm(server: dict[str, Any], patients: int, timeout_s: float, alerts: bool = True) -> float:
    """A few alert-raising messages until their alerts are listed (the first run copies the alert log)."""
    msgs = messages(3, patients, 1.0, f"warm{os.getpid()}", datetime.now(UTC) - timedelta(minutes=5), 1.0,
                    alert_pool=range(WARM_PATIENTS))
    t0 = time.monotonic()

    async def go() -> dict[str, Any]:
        return await feed(server, msgs, 10.0, 1, 0.5, time.monotonic(), timeout_s if alerts else 0.0)

    res = asyncio.run(go())
    if res["codes"] != {"AA": 3} or res["alerts_seen"] != (3 if alerts else res["alerts_seen"]):
        raise RuntimeError(f"warm-up: {res['codes']} ACKs, {res['alerts_seen']} of 3 alerts listed")
    return time.monotonic() - t0


RUN_LINE = re.compile(r"deferred surveillance: (?P<alerts>\d+) new alert\(s\), run (?P<seconds>[0-9.]+) s"
                      r"(?: \((?P<patients>\d+) patient\(s\)(?:, (?P<timer_alerts>\d+) timer alert\(s\))?: "
                      r"read (?P<read>[0-9.]+) s, stages (?P<stages>[0-9.]+) s, results (?P<results>[0-9.]+) s, "
                      r"other (?P<other>-?[0-9.]+) s, alerts to the database (?P<to_db>[0-9.]+) s\))?")
RUN_PARTS = ("seconds", "patients", "timer alerts", "read", "stages", "results", "other", "alerts to the database")
_RUN_GROUPS = ("seconds", "patients", "timer_alerts", "read", "stages", "results", "other", "to_db")


def surveillance_runs(log_path: Path) -> list[dict[str, float]]:
    """Each deferred surveillance run the server logged so far (``log_level: info``): its seconds, and (from
    this release's servers) its patients, timer alerts (from 7e9b805) and where its time went."""
    return [{k: float(m[g]) for k, g in zip(RUN_PARTS, _RUN_GROUPS, strict=True) if m[g] is not None}
            for m in RUN_LINE.finditer(log_path.read_text(errors="replace"))]


def stored_messages(data: Path, run: str) -> int:
    from mgaki.events import EventStore

    con = EventStore(data / "events").connect(("events",))
    try:
        return int(con.sql(f"SELECT count(DISTINCT split_part(source, '/', 2)) FROM events "
                           f"WHERE source LIKE 'HL7/{run}-%'").fetchall()[0][0])
    finally:
        con.close()


def wait_stored(data: Path, run: str, n: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (got := stored_messages(data, run)) < n and time.monotonic() < deadline:
        time.sleep(1.0)
    return got


def fhir_phase(server: dict[str, Any], patients: int, clients: int, duration: float) -> dict[str, Any]:
    """Closed-loop POST /fhir of one-Observation batch Bundles: each answered after store + surveillance."""
    import httpx

    lat: list[float] = []
    codes: Counter[int] = Counter()
    added = 0

    async def client(k: int, end: float) -> None:
        nonlocal added
        rng = random.Random(f"fhir-{k}")
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {WRITER}",
                                                           "Content-Type": "application/fhir+json"}) as c:
            i = 0
            while time.monotonic() < end:
                pid = f"P{rng.randrange(patients):08d}"
                obs = {"resourceType": "Observation", "id": f"fb-{os.getpid()}-{k}-{i}", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": CREA}]},
                       "subject": {"reference": f"Patient/{pid}"},
                       "effectiveDateTime": datetime.now(UTC).replace(microsecond=0).isoformat(),
                       "valueQuantity": {"value": round(rng.uniform(0.6, 1.3), 2), "unit": "mg/dL",
                                         "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
                body = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": obs}]})
                t = time.monotonic()
                try:
                    r = await c.post(f"{server['url']}/fhir", content=body)
                    codes[r.status_code] += 1
                    if r.status_code == 200:
                        added += r.json()["added"].get("events", 0)
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1  # type: ignore[index]
                lat.append(time.monotonic() - t)
                i += 1

    t0 = time.monotonic()

    async def go() -> None:
        await asyncio.gather(*(client(k, t0 + duration) for k in range(clients)))

    asyncio.run(go())
    wall = time.monotonic() - t0
    return {"clients": clients, "requests": len(lat), "per_s": len(lat) / wall, "codes": dict(codes),
            "events_added": added, "latency": stats_ms(lat)}


# --- main -----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="messages/s, open loop")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of feed")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--alert-share", type=float, default=0.02)
    ap.add_argument("--poll-s", type=float, default=0.2, help="GET /alerts interval")
    ap.add_argument("--settle-s", type=float, default=120.0,
                    help="after the last send, wait this long at most for the alerts not yet listed")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--log-level", default="info", choices=["debug", "info"],
                    help="the server's log_level (info: a line per surveillance run; debug: per stored HL7 batch)")
    ap.add_argument("--delay", type=float, default=0.25,
                    help="hl7_surveillance_delay_s (the service's default is 1 s; under a steady feed runs follow each "
                         "other back to back whatever it is, it bounds the wait of a lone message)")
    ap.add_argument("--no-surveil", action="store_true",
                    help="surveil_on_ingest: false (the ingest path alone: ACKs and store, no alerts)")
    ap.add_argument("--ack-after", choices=["journal", "store"], default=None, help="mllp_ack_after")
    ap.add_argument("--thread-runs", action="store_true",
                    help="surveillance_process: false (the runs in a thread of the server, as before 2026-12-07)")
    ap.add_argument("--fhir-duration", type=float, default=60.0, help="seconds of POST /fhir (0: off)")
    ap.add_argument("--fhir-clients", type=int, default=2)
    ap.add_argument("--store-cache", type=Path, default=None, help="build the store here once, reuse it after")
    ap.add_argument("--quick", action="store_true", help="1,000 patients, 10 s, 10 s of FHIR")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here at the end")
    ap.add_argument("--build-only", action="store_true", help="build the --store-cache store, then stop")
    ap.add_argument("--child-build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_build:
        a.child_out.write_text(json.dumps(child_build(a.child_build, a.patients)))
        return 0
    if a.quick:
        a.patients, a.duration, a.fhir_duration = min(a.patients, 1000), min(a.duration, 10.0), min(a.fhir_duration,
                                                                                                     10.0)
    if a.build_only:
        if a.store_cache is None:
            ap.error("--build-only needs --store-cache")
        print(json.dumps(cached_store(a.store_cache, a.patients)[1]))
        return 0
    load_start = os.getloadavg()
    started = datetime.now(UTC)
    from servicebench.harness import cpu_seconds

    extra: dict[str, Any] = {}
    if a.delay is not None:
        extra["hl7_surveillance_delay_s"] = a.delay
    if a.ack_after is not None:
        extra["mllp_ack_after"] = a.ack_after
    extra["log_level"] = a.log_level  # a line per deferred surveillance run: their number and seconds are reported
    if a.thread_runs:
        extra["surveillance_process"] = False
    if a.no_surveil:
        extra["surveil_on_ingest"] = False
        a.alert_share, a.settle_s = 0.0, 0.0
    res: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                           "started": started.isoformat(), "load_avg_start": load_start, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="mgaki-mllp-") as d:
        tmp = Path(d)
        try:
            store, info = cached_store(a.store_cache or tmp / "cache", a.patients)
        except subprocess.CalledProcessError as exc:
            print(f"error: the store could not be built ({exc})", file=sys.stderr)
            return 1
        res["store"] = info
        run = f"b{os.getpid()}"
        try:
            with serve(tmp, store, a.workers, extra, a.keep_log) as server:
                res["store"]["copy_s"] = server["copy_s"]
                print(f"{_now()} server up; warming up (first surveillance run, alert log copy) ...", flush=True)
                res["warm_up_s"] = warm(server, a.patients, 900.0, alerts=not a.no_surveil)
                if a.fhir_duration > 0:  # before the feed: on a server with no surveillance backlog
                    print(f"{_now()} FHIR: POST /fhir, {a.fhir_clients} closed-loop client(s), "
                          f"{a.fhir_duration:g} s ...", flush=True)
                    cpu0 = cpu_seconds(server["pid"])
                    res["fhir"] = fhir_phase(server, a.patients, a.fhir_clients, a.fhir_duration)
                    res["fhir"]["server_cpu_s"] = cpu_seconds(server["pid"]) - cpu0
                n = int(a.rate * a.duration)
                start = datetime.now(UTC) - timedelta(seconds=2)
                msgs = messages(n, a.patients, a.alert_share, run, start, a.rate)
                print(f"{_now()} feed: {n:,} messages at {a.rate:g}/s over {a.connections} connection(s) ...",
                      flush=True)
                load_feed = os.getloadavg()
                cpu0 = cpu_seconds(server["pid"])
                t0 = time.monotonic() + 0.5
                runs_before = len(surveillance_runs(server["log"]))
                out = asyncio.run(feed(server, msgs, a.rate, a.connections, a.poll_s, t0, a.settle_s))
                out["runs"] = surveillance_runs(server["log"])[runs_before:]
                out["server_cpu_s"] = cpu_seconds(server["pid"]) - cpu0
                out["wall_s"] = time.monotonic() - t0
                out["load_avg_before"] = load_feed
                out["load_avg_after"] = os.getloadavg()
                out["stored"] = wait_stored(server["data"], run, n, 120.0)
                res["feed"] = out
                problems = [ln for ln in server["log"].read_text(errors="replace").splitlines()
                            if "ERROR" in ln or "Traceback" in ln]
                res["server_log_errors"] = problems[:20]
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    res["load_avg_end"] = os.getloadavg()
    report(a, res)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1, default=str))
    return 0


def report(a: argparse.Namespace, res: dict[str, Any]) -> None:
    s, f = res["store"], res["feed"]
    print()
    print(f"store: {s['patients']:,} patients, {s['rows']:,} event rows (ICU-shaped cohort, seed {SEED}); "
          + ("reused from the cache" if s["reused"] else f"built in {s['build_s']:.0f} s, full surveillance "
                                                         f"{s['surveil_full_s']:.0f} s"))
    print(f"machine: {res['cores']} cores; load average at start {_la(res['load_avg_start'])}, "
          f"before the feed {_la(f['load_avg_before'])}, after it {_la(f['load_avg_after'])}, "
          f"at the end {_la(res['load_avg_end'])}")
    print(f"warm-up (first surveillance run and alert-log copy): {res['warm_up_s']:.1f} s")
    print(f"feed: target {a.rate:g} msg/s for {a.duration:g} s over {a.connections} MLLP connection(s); "
          f"sent {f['sent']:,} at {f['send_rate']:.1f}/s, acknowledged {f['acked']:,} at {f['ack_rate']:.1f}/s "
          f"(slowest 10 s window {f['min_10s_window_rate']:.1f}/s); last ACK "
          f"{f['last_ack_after_last_send_s'] * 1e3:.0f} ms after the last send")
    print(f"  ACK codes {f['codes']}; stored {f['stored']:,} of {f['sent']:,}; server CPU "
          f"{f['server_cpu_s']:.0f} s in {f['wall_s']:.0f} s ({f['server_cpu_s'] / f['wall_s']:.2f} cores)")
    print(f"  ACK latency    p50 {f['ack']['p50_ms']:7.1f}  p90 {f['ack']['p90_ms']:7.1f}  "
          f"p99 {f['ack']['p99_ms']:7.1f}  max {f['ack']['max_ms']:7.1f} ms")
    print(f"  alert latency  p50 {f['alert']['p50_ms']:7.0f}  p90 {f['alert']['p90_ms']:7.0f}  "
          f"p99 {f['alert']['p99_ms']:7.0f}  max {f['alert']['max_ms']:7.0f} ms  ({f['alerts_seen']} of "
          f"{f['alerts_expected']} alerts seen; GET /alerts every {a.poll_s:g} s, p50 "
          f"{f['poll']['p50_ms']:.0f} ms per poll)")
    if f.get("missing"):
        print(f"  alerts not seen: {f['missing']}")
    if f.get("runs"):
        r = sorted(x["seconds"] for x in f["runs"])
        print(f"  surveillance runs during the feed: {len(r)}, each p50 {pct(r, 50):.2f}  p90 {pct(r, 90):.2f}  "
              f"max {r[-1]:.2f} s ({sum(r):.0f} s in all)")
        parts = {k: [x[k] for x in f["runs"] if k in x] for k in RUN_PARTS[1:]}
        if parts["patients"]:
            print("  each run, p50: " + ", ".join(f"{k} {pct(v, 50):.0f}" if k in ("patients", "timer alerts") else
                                                 f"{k} {pct(v, 50):.2f} s" for k, v in parts.items()))
    if "fhir" in res:
        h = res["fhir"]
        print(f"FHIR POST /fhir (one Observation; answered after store + incremental surveillance): "
              f"{h['clients']} client(s), {h['requests']} requests, {h['per_s']:.1f}/s, codes {h['codes']}, "
              f"p50 {h['latency']['p50_ms']:.0f} ms, p99 {h['latency']['p99_ms']:.0f} ms")
    if res.get("server_log_errors"):
        print(f"server log: {len(res['server_log_errors'])} error line(s), e.g. {res['server_log_errors'][0][:160]}")
    sustained = (f["ack_rate"] >= 0.98 * a.rate and f["last_ack_after_last_send_s"] < 2.0
                 and a.rate >= TARGET_RATE and a.duration >= 300)
    print()
    print(f"{verdict(sustained)}  >= {TARGET_RATE:g} msg/s sustained for 300 s (ran {a.rate:g}/s for {a.duration:g} s: "
          f"{f['ack_rate']:.1f}/s acknowledged, the last ACK {f['last_ack_after_last_send_s']:.1f} s after the "
          f"last send)")
    all_aa = f["codes"] == {"AA": f["sent"]} and f["stored"] == f["sent"] and f["sent"] == int(a.rate * a.duration)
    print(f"{verdict(all_aa)}  every message acknowledged AA and stored ({f['codes']}, {f['stored']:,} stored)")
    alert_ok = f["alerts_seen"] == f["alerts_expected"] > 0 and f["alert"]["p99_ms"] < TARGET_ALERT_P99_S * 1e3
    if a.no_surveil:
        print("(no surveillance: --no-surveil; alert latency not measured)")
        return
    print(f"{verdict(alert_ok)}  alert latency p99 < {TARGET_ALERT_P99_S:g} s ({f['alert']['p99_ms']:.0f} ms, "
          f"{f['alerts_seen']} of {f['alerts_expected']} alerts)")
    if s["patients"] < 100_000:
        print(f"(a store of {s['patients']:,} patients: the targets are set for 100,000)")


def _la(x: Any) -> str:
    return "/".join(f"{v:.2f}" for v in x)


if __name__ == "__main__":
    sys.exit(main())
