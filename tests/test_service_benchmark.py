"""benchmarks/service.py at a tiny rate runs against a real `mgaki serve` and reports sane numbers, so it cannot rot.

No timing assertions (timings belong to the benchmark): only that every phase ran, the counts add up,
the server answered every request with the engine's cards, and the report prints its table and verdicts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "service.py"
sys.path.insert(0, str(SCRIPT.parent))  # the benchmark's parts (benchmarks/servicebench)

from mgaki.synth.fhir import T0, patient_week  # noqa: E402
from servicebench import load  # noqa: E402


def test_service_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "svc.json"
    cmd = [sys.executable, str(SCRIPT), "--rate", "10", "--duration", "2", "--warmup", "0.5", "--patients", "3",
           "--ref-n", "10", "--health-duration", "1", "--ingest-bundles", "2", "--ndjson-patients", "3",
           "--ndjson-chunk", "2", "--jwt", "both", "--probe-n", "5", "--out", str(out),
           "--trace", str(tmp_path / "trace")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())["results"]

    for key in ("patient_view_jwt_on", "patient_view_jwt_off", "health"):
        ph = res[key]
        assert "failed" not in ph, ph
        n = 20 if key != "health" else 10
        assert ph["requests"] == n
        # every request answered 200 with the cards the engine gives in process for that patient
        assert ph["errors"] == 0 and ph["error_kinds"] == {}, ph
        assert 0 < ph["p50"] <= ph["p90"] <= ph["p99"] <= ph["max"]
        # n arrivals at 10/s span (n-1)/10 s; a little slack for the client's scheduling jitter
        ceiling = 10 * n / (n - 1) * 1.2
        assert 0 < ph["completed_rate"] <= ceiling and 0 < ph["offered_rate"] <= ceiling
        assert ph["server_cpu_ms_per_req"] > 0
    for key in ("probe_jwt_on", "probe_jwt_off"):  # closed loop, one request at a time
        probe = res[key]
        assert probe["requests"] == 5 and probe["errors"] == 0, probe
        assert probe["server_cpu_ms_per_req"] > 0 and probe["cpu_bound_capacity_per_s"] > 0
    for mode in ("jwt-on", "jwt-off"):  # --trace: every timed request, and the plot of them
        rows = (tmp_path / f"trace-{mode}.csv").read_text().splitlines()
        assert rows[0] == "sent_offset_s,latency_ms,status" and len(rows) == 1 + 20
        offsets = [float(r.split(",")[0]) for r in rows[1:]]
        assert offsets[0] == 0.0 and offsets == sorted(offsets) and {r.split(",")[2] for r in rows[1:]} == {"200"}
        assert (tmp_path / f"trace-{mode}.png").read_bytes().startswith(b"\x89PNG")
    ref = res["reference_inprocess"]
    assert ref["n"] == 10 and 0 < ref["p50"] <= ref["p99"]

    bundle, ndjson = res["ingest_bundle"], res["ingest_ndjson"]
    assert bundle["requests"] == 2 and bundle["errors"] == 0 and bundle["resources_per_s"] > 0
    assert ndjson["requests"] == 2 and ndjson["errors"] == 0  # 3 patients, 2 per POST
    assert bundle["resources"] == sum(len(patient_week(100_000 + i)) for i in range(2))
    assert ndjson["resources"] == sum(len(patient_week(100_002 + i)) for i in range(3))
    assert bundle["events_added"] > 0 and ndjson["events_added"] > 0  # new patients: rows were stored
    hl7 = res["ingest_hl7"]  # 10 ORU^R01 per ingest bundle, through the service's MLLP listener
    assert hl7["messages"] == 20 and hl7["acks"] == {"AA": 20} and hl7["errors"] == 0 and hl7["messages_per_s"] > 0

    text = r.stdout
    header = next(line for line in text.splitlines() if line.startswith("phase"))
    assert header.split() == ["phase", "n", "rate/s", "p50", "ms", "p90", "ms", "p99", "ms", "max", "ms", "errors"]
    for label in ("in-process patient_view (ref)", "GET /health (ref)", "patient-view, JWT verified",
                  "patient-view, JWT off", "closed loop 1 conn, JWT verified", "FHIR Bundle POST /fhir",
                  "NDJSON POST /fhir/$import-ndjson", "HL7 v2 ORU^R01 over MLLP"):
        assert any(line.startswith(label) for line in text.splitlines()), label
    assert "target  : patient-view (JWT verified) zero errors -> PASS (0 of 20)" in text
    assert "p99 < 50 ms at 100 req/s ->" in text and "not the target load" in text
    assert "ratio   : JWT on : p50 / in-process p50" in text


def test_invalid_cards_are_counted_as_errors() -> None:
    good = json.dumps({"cards": [{"uuid": "u", "summary": "Mg 1.20 mg/dL", "indicator": "warning",
                                  "source": {"label": "mgaki"}}]}).encode()
    assert load.check_cards(good, ("Mg 1.20 mg/dL", 1)) is None
    assert load.check_cards(good, ("Mg 1.30 mg/dL", 1)) == "summary card differs from the in-process result"
    assert load.check_cards(good, ("Mg 1.20 mg/dL", 2)) == "1 cards, 2 expected"
    assert load.check_cards(b'{"cards": []}', ("x", 1)) == "no cards"
    assert load.check_cards(b"<html>", ("x", 1)) == "body is not JSON"
    no_source = json.dumps({"cards": [{"uuid": "u", "summary": "s", "indicator": "info"}]}).encode()
    assert load.check_cards(no_source, ("s", 1)) == "a card lacks uuid, summary, indicator or source"


@pytest.fixture
def mllp_ack_server():
    """A stand-in MLLP peer that ACKs AA, except AE for a message whose control id is BAD."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        con, _ = srv.accept()
        with con:
            buf = b""
            while chunk := con.recv(65536):
                buf += chunk
                while b"\x1c\x0d" in buf:
                    msg, buf = buf.split(b"\x1c\x0d", 1)
                    control = msg.strip(b"\x0b").split(b"\r")[0].split(b"|")[9]
                    code = b"AE" if control == b"BAD" else b"AA"
                    con.sendall(b"\x0bMSH|^~\\&|MGAKI|X|LAB|X|20240301||ACK|A1|P|2.5.1\rMSA|" + code + b"|"
                                + control + b"\r\x1c\x0d")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()
    srv.close()


def test_hl7_client_counts_acks(mllp_ack_server) -> None:
    """The MLLP client the lead will point at the HL7 listener: framing, one ACK per message, AE counted."""
    msgs = [load.oru_r01("p1", f"C{i}", "19123-9", 1.6, "mg/dL", T0) for i in range(4)]
    msgs.append(load.oru_r01("p1", "BAD", "19123-9", 1.6, "mg/dL", T0))
    assert msgs[0].startswith(b"MSH|^~\\&|LAB|") and b"\rOBX|1|NM|19123-9^^LN||1.6|mg/dL^^UCUM" in msgs[0]
    res = load.measure_hl7(mllp_ack_server, msgs)
    assert res["messages"] == 5 and res["acks"] == {"AA": 4, "AE": 1} and res["errors"] == 1
    assert res["messages_per_s"] > 0 and res["n"] == 5
