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
  ``mgaki.service.cds.patient_view``, after ``mgaki.warm_up()``), i.e. everything but HTTP, JWT and the
  audit row; (2) ``GET /health`` (HTTP stack + one database round trip) at the same open-loop rate.
  The ratios service/in-process and service/health travel between machines better than milliseconds.
* **Ingest**: one writer posting, back to back, per-patient FHIR ``batch`` Bundles to ``POST /fhir``
  (a week of data with Encounter and Conditions) and NDJSON chunks of several patients to
  ``POST /fhir/$import-ndjson``; resources/s includes the incremental surveillance run by each request.
* **HL7 v2 (MLLP)**: ORU^R01 messages (one result each, built by ``mgaki.service.hl7.oru_r01``) sent one
  after another on one connection to the service's MLLP listener, each after the previous ACK: messages/s
  and send-to-ACK latency, ACK codes counted (an AA means stored durably, then surveilled).

Targets (SPEC, issue 4): patient-view p99 < 50 ms at 100 requests/s on 2 cores, and no errors; printed as
PASS/FAIL. Exit status 0 either way (a measurement, not a gate); 1 if the server could not be started or
a phase could not run. ``--out FILE`` also writes every number as JSON. On a shared machine the load
average (printed at start and end) inflates every latency: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_P99_MS = 50.0
TARGET_RATE = 100.0
PATIENT_VIEW = "/cds-services/mgaki-patient-view"
ISSUER = "https://ehr.bench.invalid"
WRITER = "bench-writer-token-0123456789"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# ---------------------------------------------------------------------------
# Synthetic patients: a week in hospital, values varying by patient (seeded)
# ---------------------------------------------------------------------------

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
CODES = {
    "magnesium": "19123-9", "creatinine": "2160-0", "potassium": "2823-3", "calcium": "17861-6",
    "albumin": "1751-7", "weight": "29463-7", "urine_output": "9187-6", "urine_magnesium": "19124-7",
    "urine_creatinine": "2161-8",
}
VITALS = ("weight", "urine_output")
# (display, RxCUI) of drugs mgaki knows; MgSO4 is always ordered, the others by chance
MGSO4 = ("magnesium sulfate 2 g IV over 2 h", "6585")
OTHER_DRUGS = [("furosemide 40 mg IV twice daily", "4603"), ("pantoprazole 40 mg daily", "40790"),
               ("cisplatin 75 mg/m2", "2555"), ("vancomycin 15 mg/kg IV every 12 h", "11124"),
               ("gentamicin 5 mg/kg IV daily", "4413")]


def _at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def patient_week(i: int, seed: int = 20261121) -> list[dict[str, Any]]:
    """Every resource of synthetic inpatient ``i``: Patient, Encounter, Conditions, Observations, drugs."""
    rng = random.Random(seed * 100_003 + i)
    pid = f"bench-{i:05d}"
    ref = {"reference": f"Patient/{pid}"}
    out: list[dict[str, Any]] = [{"resourceType": "Patient", "id": pid,
                                  "gender": rng.choice(["male", "female"]),
                                  "birthDate": f"{rng.randint(1935, 1995)}-{rng.randint(1, 12):02d}-15"}]
    n = 0

    def rid(prefix: str) -> str:
        nonlocal n
        n += 1
        return f"{pid}-{prefix}{n}"

    def obs(analyte: str, value: float, unit: str, hours: float) -> None:
        out.append({
            "resourceType": "Observation", "id": rid("obs"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs" if analyte in VITALS else "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": CODES[analyte]}]}, "subject": ref,
            "effectiveDateTime": _at(hours),
            "valueQuantity": {"value": round(value, 2), "unit": unit, "system": UCUM, "code": unit}})

    def med(drug: tuple[str, str], hours: float, administered_g: float | None = None) -> None:
        res: dict[str, Any] = {"id": rid("med"), "subject": ref, "medicationCodeableConcept": {
            "text": drug[0], "coding": [{"system": RXNORM, "code": drug[1], "display": drug[0]}]}}
        if administered_g is None:
            res.update(resourceType="MedicationRequest", status="active", intent="order", authoredOn=_at(hours))
        else:
            res.update(resourceType="MedicationAdministration", status="completed", effectiveDateTime=_at(hours),
                       dosage={"dose": {"value": administered_g, "unit": "g", "system": UCUM, "code": "g"}})
        out.append(res)

    icu = rng.random() < 0.5
    out.append({"resourceType": "Encounter", "id": rid("enc"), "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
                "type": [{"text": "Intensive care unit stay" if icu else "Medical ward stay"}],
                "subject": ref, "period": {"start": _at(-2.0)}})
    for text, icd in rng.sample([("Sepsis, unspecified organism", "A41.9"), ("Essential hypertension", "I10"),
                                 ("Heart failure, unspecified", "I50.9"), ("Alcohol dependence", "F10.20"),
                                 ("Malignant neoplasm of lung", "C34.90")], 2):
        out.append({"resourceType": "Condition", "id": rid("cond"), "subject": ref,
                    "code": {"text": text, "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd}]}})
    days = 7
    mg0, mg_slope = rng.uniform(1.3, 2.4), rng.uniform(-0.07, 0.03)
    cr0, aki_from = rng.uniform(0.6, 1.3), rng.choice([None, None, 4, 6, 8])  # 12-h index where Cr starts rising
    k0, ca0, alb0, wt0 = rng.uniform(3.0, 4.6), rng.uniform(7.9, 9.6), rng.uniform(2.6, 4.2), rng.uniform(55, 110)
    for d in range(days + 1):
        obs("weight", wt0 - 0.3 * d, "kg", 24.0 * d)
        obs("albumin", max(1.8, alb0 - 0.05 * d), "g/dL", 24.0 * d + 0.5)
    for k in range(2 * days + 1):
        h = 12.0 * k + rng.uniform(-0.5, 0.5)
        cr = cr0 if aki_from is None or k < aki_from else cr0 * (1 + 0.25 * (k - aki_from + 1))
        obs("creatinine", cr, "mg/dL", h)
        obs("magnesium", max(0.6, mg0 + mg_slope * k + rng.uniform(-0.1, 0.1)), "mg/dL", h)
        obs("calcium", ca0 - 0.03 * k + rng.uniform(-0.2, 0.2), "mg/dL", h)
    for k in range(4 * days + 1):
        obs("potassium", k0 + rng.uniform(-0.3, 0.3), "mmol/L", 6.0 * k + 0.25)
    for h in (30.0, 126.0):  # spot urine for the fractional excretion of Mg
        obs("urine_magnesium", rng.uniform(2.0, 12.0), "mg/dL", h)
        obs("urine_creatinine", rng.uniform(40.0, 150.0), "mg/dL", h)
    if icu:
        end = 24.0 * days
        uo = rng.uniform(40.0, 120.0)
        for j in range(48):
            obs("urine_output", max(5.0, uo - (1.2 if aki_from is not None else 0.1) * j), "mL", end - 47 + j)
    for h in rng.sample([20.0, 44.0, 68.0, 92.0, 116.0, 140.0], rng.randint(1, 3)):
        med(MGSO4, h)
        med(MGSO4, h + 1.0, administered_g=2.0)
    for drug in rng.sample(OTHER_DRUGS, rng.randint(1, 3)):
        med(drug, rng.uniform(0.0, 100.0))
    return out


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
# The server under test
# ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (uvicorn's workers), all threads, from /proc.

    A worker that exits during a phase takes its CPU with it (reaped by the supervisor, counted in its
    cutime only once waited for); workers live as long as the server here.
    """
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(int(_stat(int(d.name))[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
        todo += children.get(p, [])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    log_seen: int = 0

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def new_log_problems(self) -> dict[str, int]:
        """Error lines the server logged since the last call (the app logs only the exception type: no PHI)."""
        text = self.log_path.read_text(errors="replace")
        fresh, self.log_seen = text[self.log_seen:], len(text)
        out: dict[str, int] = {}
        for line in fresh.splitlines():
            if "error" in line.lower() or "traceback" in line.lower() or "warning" in line.lower():
                key = line.strip()[:160]
                out[key] = out.get(key, 0) + 1
        return out

    def wait_idle(self, cpu_fraction: float = 0.15, timeout_s: float = 180.0) -> float:
        """Wait until the server has worked off what it still holds (requests an overloaded phase left
        queued), so that the next phase starts on an idle server; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            c0 = cpu_seconds(self.pid)
            time.sleep(1.0)
            if cpu_seconds(self.pid) - c0 < cpu_fraction:
                break
        return time.monotonic() - t0


def hl7_listener(server: Server) -> tuple[str, int] | None:
    """The (host, port) of the server's HL7 v2 MLLP listener (``hl7_config`` turns it on), or None."""
    port = server.config.get("mllp_port")
    return ("127.0.0.1", int(port)) if port else None


def hl7_config(port: int) -> dict[str, Any]:
    """The service-config keys that turn the MLLP listener on at ``port`` (shared by the workers)."""
    return {"mllp_port": port}


@contextlib.contextmanager
def start_server(tmp: Path, name: str, *, jwt_key: dict[str, Any] | None, database_url: str | None,
                 cpus: set[int], workers: int = 2, extra: dict[str, Any] | None = None,
                 startup_timeout: float = 120.0) -> Iterator[Server]:
    """``python -m mgaki serve --workers N`` on a free port, pinned to ``cpus``; stopped (SIGTERM, then kill)."""
    import httpx
    import yaml

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg: dict[str, Any] = {
        "data_dir": str(tmp / f"data-{name}"), "host": "127.0.0.1", "port": port, "public_base_url": base,
        "cds_require_jwt": jwt_key is not None,
        "cds_issuers": [{"iss": ISSUER, "keys": [jwt_key], "algorithms": ["RS384"]}] if jwt_key else [],
        "tokens": [{"name": "bench-feed", "token": WRITER, "roles": ["writer"]}],
        **hl7_config(free_port()), **(extra or {})}
    if database_url:
        cfg["database_url"] = database_url
    cfg_path = tmp / f"service-{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"server-{name}.log"
    cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))),
           sys.executable, "-m", "mgaki", "serve", "--config", str(cfg_path), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(base, proc, log_path, cfg)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} at start-up:\n{server.log_tail()}")
            try:
                if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {startup_timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A schema of its own on the PostgreSQL at ``url`` (search_path set in the returned URL), dropped after."""
    import sqlalchemy as sa

    admin = sa.create_engine(url, connect_args={"connect_timeout": 3})
    schema = f"mgaki_bench_{uuid.uuid4().hex[:12]}"
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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


# ---------------------------------------------------------------------------
# JWTs, in-process reference, ingest, HL7
# ---------------------------------------------------------------------------

def make_key() -> tuple[Any, dict[str, Any]]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench-1", "alg": "RS384", "use": "sig"})
    return key, jwk


def sign_tokens(key: Any, audience: str, n: int, lifetime_s: int) -> list[dict[str, str]]:
    """One Authorization header per request, each JWT with its own jti (the server refuses replays)."""
    import jwt

    now = int(time.time())
    return [{"Authorization": "Bearer " + jwt.encode(
        {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + lifetime_s, "jti": uuid.uuid4().hex,
         "sub": "bench-client"}, key, algorithm="RS384", headers={"kid": "bench-1"})} for _ in range(n)]


def inprocess_reference(bodies: list[bytes], n: int) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """The endpoint's work without HTTP, JWT and audit: validate the request, assess, build the cards.

    Also gives, per body, the summary text and card count the server must answer.
    """
    import mgaki
    from mgaki.service.cds import patient_view
    from mgaki.service.cds_models import CdsRequest

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
    """One HL7 v2.5.1 ORU^R01 with a single OBX and a visit (mgaki.service.hl7's builder), as bytes."""
    from mgaki.service.hl7 import Result
    from mgaki.service.hl7 import oru_r01 as build

    return build(pid, [Result(analyte_loinc, value, unit, when)], visit=f"{pid}-v", admitted=when,
                 control_id=control_id, order=control_id).encode()


def measure_hl7(address: tuple[str, int], messages: list[bytes], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send MLLP-framed messages one after another on one connection, each after the previous ACK."""
    acks: dict[str, int] = {}
    lat = []
    t0 = time.perf_counter()
    from mgaki.service.mllp import mllp_exchange

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


# Where a patient-view request's time goes, as named in py-spy's collapsed stacks ("function (file)")
PROFILE_STAGES = [
    ("event loop (uvicorn, h11, starlette, middleware)", "BaseEventLoop.run_forever (base_events.py)"),
    ("  request body read (event loop)", "Request.body (requests.py)"),
    ("worker threads (CDS call and sync endpoints)", "WorkerThread.run (_asyncio.py)"),
    ("  CDS call (cds_work)", "create_app.<locals>.cds_work (app.py)"),
    ("    CDS Hooks JWT verification", "check_cds_jwt (security.py)"),
    ("    body decode + validation (model_validate_json)", "BaseModel.model_validate_json (main.py)"),
    ("    jti + audit row, one commit", "record_jti (security.py)"),
    ("    patient_view (assess + cards)", "patient_view (cds.py)"),
    ("      mgaki.assess", "assess (__init__.py)"),
    ("        FHIR parse/validate (parse_bundle)", "parse_bundle (fhir.py)"),
    ("        rules (assess_record)", "assess_record (assess.py)"),
    ("    cards to JSON (model_dump_json)", "BaseModel.model_dump_json (main.py)"),
    ("SQLAlchemy execute (all threads)", "Connection.execute (base.py)"),
    ("SQLAlchemy commit (all threads)", "Transaction.commit (base.py)"),
]


def _frame(f: str) -> str:
    """'name (path/file.py:123)' -> 'name (file.py)'."""
    name, _, where = f.partition(" (")
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
    stages = [(label, 100 * incl.get(f, 0) / total) for label, f in PROFILE_STAGES]
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


if __name__ == "__main__":
    sys.exit(main())
