"""The load client: the requests an EHR sends, the open-loop load generator (its own process, no
coordinated omission), the closed-loop probe, the in-process reference and the ingest/HL7 senders."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from servicebench.harness import WRITER, Server, cpu_seconds

PATIENT_VIEW = "/cds-services/mgaki-patient-view"

def hook_request(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The patient-view call an EHR sends for this patient: the prefetch the service advertises."""
    patient = resources[0]

    def searchset(kind: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in resources if r["resourceType"] == kind]}

    return {"hook": "patient-view", "hookInstance": str(uuid.UUID(int=random.Random(patient["id"]).getrandbits(128))),
            "fhirServer": "https://ehr.bench.invalid/fhir",
            "context": {"userId": "Practitioner/bench", "patientId": patient["id"]},
            "prefetch": {"patient": patient, "observations": searchset("Observation"),
                         "medicationRequests": searchset("MedicationRequest"),
                         "medicationAdministrations": searchset("MedicationAdministration")}}


def ingest_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def pct(sorted_s: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted seconds, in ms."""
    k = max(0, min(len(sorted_s) - 1, math.ceil(p / 100.0 * len(sorted_s)) - 1))
    return sorted_s[k] * 1e3


def lat_stats(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    if not s:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {"n": len(s), "p50": pct(s, 50), "p90": pct(s, 90), "p99": pct(s, 99), "max": s[-1] * 1e3}


# ---------------------------------------------------------------------------
# Open-loop load generator (runs in its own process)
# ---------------------------------------------------------------------------

@dataclass
class LoadSpec:
    url: str
    method: str  # GET | POST
    rate: float
    duration: float
    bodies: list[bytes]  # request i uses bodies[i % len(bodies)] (empty for GET)
    headers: list[dict[str, str]] = field(default_factory=list)  # per request (JWTs), else one shared
    expected: list[tuple[str, int]] | None = None  # per body: (summary card text, number of cards)
    warmup_s: float = 2.0
    timeout_s: float = 30.0


def check_cards(body: bytes, expected: tuple[str, int]) -> str | None:
    """Why a patient-view response is invalid, or None: CDS Hooks cards, the same as the engine's in process."""
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON"
    cards = data.get("cards") if isinstance(data, dict) else None
    if not isinstance(cards, list) or not cards:
        return "no cards"
    for c in cards:
        if not (isinstance(c, dict) and c.get("uuid") and c.get("summary")
                and c.get("indicator") in ("info", "warning", "critical") and isinstance(c.get("source"), dict)):
            return "a card lacks uuid, summary, indicator or source"
    if cards[0]["summary"] != expected[0]:
        return "summary card differs from the in-process result"
    if len(cards) != expected[1]:
        return f"{len(cards)} cards, {expected[1]} expected"
    return None


class Http1Pool:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    Why not httpx: its async client costs several ms of CPU per request, which on a 2-core machine is
    taken from the server under test; this one costs a fraction of a millisecond. Connections idle for
    more than ``max_idle_s`` are dropped rather than reused (uvicorn closes them after 5 s), so a
    stale connection never shows up as a server error.
    """

    def __init__(self, host: str, port: int, max_idle_s: float = 2.0) -> None:
        self.host, self.port, self.max_idle_s = host, port, max_idle_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.perf_counter() - since < self.max_idle_s and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        reader, writer = await self._conn()
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
            writer.write(head.encode() + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if "content-length" in hdrs:
                data = await reader.readexactly(int(hdrs["content-length"]))
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while size := int((await reader.readline()).split(b";")[0], 16):
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                await reader.readline()
                data = b"".join(parts)
            else:
                raise ConnectionError("response without Content-Length or chunked framing")
        except BaseException:
            writer.close()
            raise
        if hdrs.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.perf_counter()))
        return status, data

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def _open_loop(spec: LoadSpec, n: int, t_start: float, record: bool) -> dict[str, Any]:
    from urllib.parse import urlsplit

    u = urlsplit(spec.url)
    pool = Http1Pool(u.hostname or "127.0.0.1", u.port or 80)
    sched = [t_start + i / spec.rate for i in range(n)]
    done: list[tuple[float, int, bytes]] = [(math.nan, 0, b"")] * n
    lags: list[float] = []
    shared = spec.headers[0] if len(spec.headers) == 1 else None

    async def fire(i: int) -> None:
        body = spec.bodies[i % len(spec.bodies)] if spec.bodies else b""
        hdr = shared if shared is not None else (spec.headers[i] if spec.headers else {})
        try:
            status, data = await asyncio.wait_for(pool.request(spec.method, u.path, body, hdr), spec.timeout_s)
            done[i] = (time.perf_counter(), status, data)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            done[i] = (time.perf_counter(), -1, type(exc).__name__.encode())

    tasks = []
    try:
        for i in range(n):
            delay = sched[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - sched[i])
            tasks.append(asyncio.create_task(fire(i)))
        await asyncio.gather(*tasks)
    finally:
        pool.close()
    if not record:
        return {}
    return {"sched": sched, "done": done, "lags": lags}


def _loadgen_child(spec: LoadSpec, conn: Any) -> None:
    """Warm up (untimed), then the timed open-loop window; sends the measurements back through ``conn``."""
    try:
        n_warm = int(spec.warmup_s * spec.rate)
        n = max(1, round(spec.duration * spec.rate))
        timed = LoadSpec(**{**spec.__dict__, "headers": spec.headers[n_warm:] if len(spec.headers) > 1
                            else spec.headers})
        if n_warm:
            warm = LoadSpec(**{**spec.__dict__, "headers": spec.headers[:n_warm] if len(spec.headers) > 1
                               else spec.headers})
            asyncio.run(_open_loop(warm, n_warm, time.perf_counter() + 0.05, record=False))
        gc.collect()
        gc.disable()  # the client's own collections would add to the measured latency
        ru0 = os.times()
        t_start = time.perf_counter() + 0.05
        res = asyncio.run(_open_loop(timed, n, t_start, record=True))
        ru1 = os.times()
        gc.enable()
        lat: list[float] = []
        errors: dict[str, int] = {}
        for i, (t_end, status, body) in enumerate(res["done"]):
            lat.append(t_end - res["sched"][i])
            why: str | None = None
            if status != 200:
                why = f"HTTP {status}" if status > 0 else f"transport error {body.decode()}"
            elif spec.expected is not None:
                why = check_cards(body, spec.expected[i % len(spec.expected)])
            if why:
                errors[why] = errors.get(why, 0) + 1
        ends = [d[0] for d in res["done"]]
        first_send, last_send = res["sched"][0] + res["lags"][0], res["sched"][-1] + res["lags"][-1]
        trace = [(res["sched"][i] - res["sched"][0], lat[i], d[1]) for i, d in enumerate(res["done"])]
        conn.send({"latencies": lat, "trace": trace, "errors": errors, "n": n, "window_s": max(ends) - first_send,
                   "send_span_s": last_send - first_send,
                   "max_send_lag_ms": max(res["lags"]) * 1e3,
                   "client_cpu_s": (ru1.user - ru0.user) + (ru1.system - ru0.system)})
    except Exception as exc:
        conn.send({"failed": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_load(spec: LoadSpec, server: Server, py_spy: Path | None = None) -> dict[str, Any]:
    """The open-loop phase in a fresh process; latency stats, rates, errors and server CPU per request.

    ``py_spy``: also sample the server with py-spy (collapsed stacks to that file) during the phase.
    """
    spy = None
    if py_spy is not None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen([exe, "record", "--pid", str(server.pid), "--subprocesses", "--format", "raw",
                                "--output", str(py_spy), "--rate", "200", "--gil", "--nonblocking", "--duration",
                                str(math.ceil(spec.warmup_s + spec.duration + 5))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_loadgen_child, args=(spec, child), daemon=True)
    cpu0 = cpu_seconds(server.pid)
    proc.start()
    child.close()
    try:
        res: dict[str, Any] = parent.recv()
    except EOFError:
        res = {"failed": "load generator died"}
    proc.join(timeout=30)
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        _, err = spy.communicate(timeout=60)
        if spy.returncode not in (0, -signal.SIGINT) and not (py_spy and py_spy.exists()):
            print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    if "failed" in res:
        return res
    server_cpu = cpu_seconds(server.pid) - cpu0  # includes the warm-up requests
    res["drain_s"] = server.wait_idle()
    res["server_log"] = server.new_log_problems()
    total = res["n"] + int(spec.warmup_s * spec.rate)
    n_err = sum(res["errors"].values())
    return {**lat_stats(res.pop("latencies")), "trace": res.pop("trace"), "errors": n_err,
            "error_kinds": res["errors"],
            "offered_rate": (res["n"] - 1) / res["send_span_s"] if res["send_span_s"] > 0 else math.nan,
            "completed_rate": (res["n"] - n_err) / res["window_s"],
            "max_send_lag_ms": res["max_send_lag_ms"], "client_cpu_ms_per_req": 1e3 * res["client_cpu_s"] / res["n"],
            "server_cpu_ms_per_req": 1e3 * server_cpu / total, "requests": res["n"],
            "drain_s": res["drain_s"], "server_log": res["server_log"]}


def inprocess_reference(bodies: list[bytes], n: int) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """The endpoint's work without HTTP, JWT and audit: validate the request, assess, build the cards.

    Also gives, per body, the summary text and card count the server must answer.
    """
    import mgaki
    from mgaki.service.cds.hooks import patient_view
    from mgaki.service.cds.models import CdsRequest

    mgaki.warm_up()  # as the server does at start-up
    expected = []
    for b in bodies:
        cards = patient_view(CdsRequest.model_validate_json(b)).cards
        expected.append((cards[0].summary, len(cards)))
    samples = []
    for i in range(n):
        b = bodies[i % len(bodies)]
        t = time.perf_counter()
        patient_view(CdsRequest.model_validate_json(b)).model_dump_json(exclude_none=True)
        samples.append(time.perf_counter() - t)
    gc.unfreeze()  # warm_up froze this heap; let it be freed at exit like any other
    return lat_stats(samples), expected


def closed_loop(server: Server, bodies: list[bytes], headers: list[dict[str, str]], n: int,
                expected: list[tuple[str, int]]) -> dict[str, Any]:
    """One request at a time on one connection: the service time without queueing, the server's CPU per
    request, and so the most one server process can sustain (its Python work holds one GIL)."""
    from urllib.parse import urlsplit

    u = urlsplit(server.base_url)

    async def go() -> tuple[list[float], dict[str, int]]:
        pool = Http1Pool(u.hostname or "127.0.0.1", u.port or 80)
        lat: list[float] = []
        errors: dict[str, int] = {}
        try:
            for i in range(n):
                t = time.perf_counter()
                try:
                    status, data = await pool.request("POST", PATIENT_VIEW, bodies[i % len(bodies)],
                                                      headers[i] if len(headers) > 1 else headers[0])
                    why = f"HTTP {status}" if status != 200 else check_cards(data, expected[i % len(expected)])
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    why = f"transport error {type(exc).__name__}"
                lat.append(time.perf_counter() - t)
                if why:
                    errors[why] = errors.get(why, 0) + 1
        finally:
            pool.close()
        return lat, errors

    cpu0 = cpu_seconds(server.pid)
    t0 = time.perf_counter()
    lat, errors = asyncio.run(go())
    wall = time.perf_counter() - t0
    cpu_ms = 1e3 * (cpu_seconds(server.pid) - cpu0) / n
    return {**lat_stats(lat), "requests": n, "errors": sum(errors.values()), "error_kinds": errors,
            "completed_rate": n / wall, "server_cpu_ms_per_req": cpu_ms,
            "cpu_bound_capacity_per_s": 1e3 / cpu_ms if cpu_ms > 0 else math.nan,
            "server_log": server.new_log_problems()}


def measure_ingest(server: Server, url_path: str, payloads: list[tuple[bytes, int]],
                   content_type: str) -> dict[str, Any]:
    """Closed loop, one writer: POST each payload after the previous answer (the service serialises writers)."""
    import httpx

    headers = {"Authorization": f"Bearer {WRITER}", "Content-Type": content_type}
    lat, resources, events, alerts, errors = [], 0, 0, 0, []
    cpu0 = cpu_seconds(server.pid)
    t0 = time.perf_counter()
    with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
        for body, n_res in payloads:
            t = time.perf_counter()
            r = client.post(url_path, content=body, headers=headers)
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                continue
            js = r.json()
            resources += n_res
            events += int(js["added"].get("events", 0))
            alerts += int(js["new_alerts"])
    wall = time.perf_counter() - t0
    return {**lat_stats(lat), "requests": len(payloads), "resources": resources, "events_added": events,
            "new_alerts": alerts, "seconds": wall, "resources_per_s": resources / wall,
            "first_ms": lat[0] * 1e3, "last_ms": lat[-1] * 1e3, "errors": len(errors), "error_kinds": errors[:3],
            "server_cpu_s": cpu_seconds(server.pid) - cpu0, "server_log": server.new_log_problems()}


def oru_r01(pid: str, control_id: str, analyte_loinc: str, value: float, unit: str, when: datetime) -> bytes:
    """One HL7 v2.5.1 ORU^R01 with a single OBX and a visit (mgaki.service.ingest.hl7's builder), as bytes."""
    from mgaki.service.ingest.hl7 import Result
    from mgaki.service.ingest.hl7 import oru_r01 as build

    return build(pid, [Result(analyte_loinc, value, unit, when)], visit=f"{pid}-v", admitted=when,
                 control_id=control_id, order=control_id).encode()


def measure_hl7(address: tuple[str, int], messages: list[bytes], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send MLLP-framed messages one after another on one connection, each after the previous ACK."""
    acks: dict[str, int] = {}
    lat = []
    t0 = time.perf_counter()
    from mgaki.service.ingest.mllp import mllp_exchange

    with socket.create_connection(address, timeout=timeout_s) as s:
        for m in messages:
            t = time.perf_counter()
            reply = mllp_exchange(s, m)
            lat.append(time.perf_counter() - t)
            msa = next((seg for seg in reply.split(b"\r") if seg.startswith(b"MSA|")), b"")
            code = msa.split(b"|")[1].decode() if msa.count(b"|") >= 1 else "no MSA"
            acks[code] = acks.get(code, 0) + 1
    wall = time.perf_counter() - t0
    return {**lat_stats(lat), "messages": len(messages), "seconds": wall, "messages_per_s": len(messages) / wall,
            "acks": acks, "errors": sum(v for k, v in acks.items() if k != "AA")}

