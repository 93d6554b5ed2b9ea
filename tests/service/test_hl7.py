"""HL7 v2.5.1 ORU^R01: mapping to event rows, ACKs, and the MLLP listener through python-hl7's own client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from hl7.client import MLLPClient

from conftest import READER, auth, make_config
from mgaki.events import EventStore, normalize
from mgaki.service import create_app
from mgaki.service.ingest.hl7 import Hl7Error, Result, events_to_oru, oru_r01, parse_oru, read_ack

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
MG = "19123-9"  # Magnesium [Mass/volume] in Serum or Plasma
CREA = "2160-0"


def _msg(value: float = 1.0, status: str = "F", loinc: str = MG, **kw: object) -> str:
    base: dict[str, object] = {"visit": "v1", "admitted": T0 - timedelta(hours=2), "order": "ord-1",
                               "sex": "F", "birth_date": "19600501"}
    base.update(kw)
    return oru_r01("p1", [Result(loinc, value, "mg/dL", T0, status=status)], **base)  # type: ignore[arg-type]


def test_oru_maps_pid_pv1_obr_obx_to_event_rows() -> None:
    msg = (_msg(1.0)
           .replace("OBX|1|NM|19123-9^^LN||1.0|mg/dL^^UCUM|||||F|||20240301080000+0000",
                    "OBX|1|NM|19123-9^Mg^LN||1.0|mg/dL^^UCUM|||||F|||202403011000\r"
                    "OBX|2|SN|2160-0^^LN||<^0.5|mg/dL|||||F\r"
                    "OBX|3|NM|12345-6^^LN||7|mg/dL|||||F\r"
                    "OBX|4|NM|2160-0^^LN||2.5|mg/dL|||||X")
           .replace("|20240301080000+0000||ORU", "|20240301080000+0200||ORU")  # MSH-7 offset +02:00
           .replace("OBR|1||ord-1|", "OBR|1||ord-1^LAB|"))  # filler order number with its namespace
    parsed = parse_oru(msg)
    assert parsed.msh["control_id"] and parsed.observations == 4
    out = normalize(parsed.tables)
    ev = out["events"].to_pylist()
    assert len(ev) == 1
    mg = ev[0]
    assert (mg["subject_id"], mg["encounter_id"], mg["analyte"], mg["code"]) == \
        ("p1", "v1", "magnesium", "LOINC/19123-9")
    assert mg["numeric_value"] == pytest.approx(1.0) and mg["unit"] == "mg/dL"
    # OBX-14 10:00 at MSH-7's +02:00 is 08:00 UTC
    assert mg["time"] == T0.replace(tzinfo=None)
    assert mg["source"].startswith("HL7/ord-1@LAB/LN/19123-9/_history/h")
    reasons = sorted(q["reason"] for q in out["quarantine"].to_pylist())
    assert reasons[0] == "OBX-11 result status 'X' (cannot be obtained) is not used; only F and C are"
    assert "code LOINC/12345-6 is not mapped to an analyte" in reasons
    assert "non-numeric value '<0.5'" in reasons  # SN comparator kept, refused by normalize; OBR-7 time used
    enc = out["encounters"].to_pylist()
    assert enc == [{"subject_id": "p1", "encounter_id": "v1", "kind": "inpatient",
                    "start": (T0 - timedelta(hours=2)).replace(tzinfo=None), "end": None, "parent_id": None,
                    "source": enc[0]["source"]}]
    assert out["subjects"].select(["subject_id", "sex", "birth_year"]).to_pylist() == [
        {"subject_id": "p1", "sex": "female", "birth_year": 1960}]


@pytest.mark.parametrize(("change", "code", "where", "text"), [
    (lambda m: m.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), "AR", "MSH-9", "ADT^A01 is not accepted"),
    (lambda m: m.replace("ORU^R01^ORU_R01", "ORU^R30"), "AR", "MSH-9", "ORU^R30 is not accepted"),
    (lambda m: m.replace("p1^^^HOSP^MR", ""), "AE", "PID-3", "patient identifier missing"),
    (lambda m: m.replace("|P|2.5.1", "|P|3.0"), "AR", "MSH-12", "version '3.0'"),
    (lambda m: "PID|1||x\r" + m, "AE", "MSH", "does not start with an MSH segment"),
    (lambda m: m.split("OBR|")[0], "AE", "OBX", "no OBX segment"),
])
def test_unusable_messages_are_refused_naming_the_problem(change, code, where, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Hl7Error) as err:
        parse_oru(change(_msg()))
    assert err.value.ack_code == code and err.value.where == where and text in err.value.problem


def test_events_to_oru_round_trips_the_values() -> None:
    tables = normalize(parse_oru(_msg(1.3)).tables)
    again = list(events_to_oru(tables["events"], tables["encounters"]))
    assert len(again) == 1
    back = normalize(parse_oru(again[0]).tables)["events"]
    cols = ["subject_id", "encounter_id", "time", "analyte", "numeric_value", "unit"]
    assert back.select(cols).to_pylist() == tables["events"].select(cols).to_pylist()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[TestClient, int]]:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, mllp_port=0)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c, c.app.state.mllp.port  # type: ignore[attr-defined]


def test_mllp_round_trip_stores_alerts_corrects_and_survives_bad_input(served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client, port = served
    store = EventStore(tmp_path / "data" / "events")
    with MLLPClient("127.0.0.1", port) as mllp:
        first = _msg(1.0)
        reply = read_ack(mllp.send_message(first))
        assert (reply.code, reply.errors) == ("AA", [])
        assert reply.control_id == parse_oru(first).msh["control_id"]
        # AA once journaled (fsync'd); the store append follows in the feed's apply thread
        feed = client.app.state.mllp.feed  # type: ignore[attr-defined]
        assert feed.wait_applied(60)
        ev = store.read("events").to_pylist()
        assert [(e["subject_id"], e["analyte"], e["numeric_value"]) for e in ev] == [("p1", "magnesium", 1.0)]
        # surveillance follows the ACK in the background (the store says who is pending until it ran)
        ingestor = client.app.state.ingestor  # type: ignore[attr-defined]
        assert ingestor.wait_surveilled(60) and store.pending()[0] == frozenset()
        alerts = client.get("/alerts", headers=auth(READER)).json()["alerts"]
        low = [a for a in alerts if a["kind"] == "mg_out_of_range"]
        assert len(low) == 1 and low[0]["subject_id"] == "p1" and low[0]["value"] == 1.0

        # the same message again: AA, nothing added
        assert read_ack(mllp.send_message(first)).code == "AA"
        assert feed.wait_applied(60) and store.counts()["events"] == 1

        # malformed and wrong type: NACK naming the problem, connection still served
        bad = read_ack(mllp.send_message(first.replace("p1^^^HOSP^MR", "")))
        assert bad.code == "AE" and bad.errors == ["patient identifier missing"]
        wrong = read_ack(mllp.send_message(first.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")))
        assert wrong.code == "AR" and "ADT^A01 is not accepted" in wrong.errors[0]
        junk = read_ack(mllp.send(b"not mllp framed\x1c\r"))
        assert junk.code == "AE" and "<VT>" in junk.errors[0]

        # a correction (OBX-11 C) replaces the value; a preliminary result is set aside with a warning
        fix = read_ack(mllp.send_message(_msg(1.9, status="C", control_id="fix-1")))
        assert fix.code == "AA" and feed.wait_applied(60)
        assert [e["numeric_value"] for e in store.read("events").to_pylist()] == [1.9]
        prelim = read_ack(mllp.send_message(_msg(0.9, status="P", loinc=CREA, control_id="pre-1")))
        assert prelim.code == "AA" and "preliminary" in prelim.errors[0]
        # a result posted in error (W) removes it
        assert read_ack(mllp.send_message(_msg(1.9, status="W", control_id="w-1"))).code == "AA"
        assert feed.wait_applied(60) and store.read("events").num_rows == 0
    with client.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        import sqlalchemy as sa

        rows = con.execute(sa.text(
            "SELECT actor, endpoint, patient_id, detail FROM audit WHERE action = 'write'")).all()
    # plain TCP proves only the peer's address: that is the actor; MSH-3 is recorded as the sender's claim
    assert ("mllp:127.0.0.1", "MLLP ORU^R01", "p1", "MSH-3 LAB (the sender's own claim)") in rows


def test_each_result_belongs_to_the_patient_of_its_group() -> None:
    """An ORU^R01 with two PATIENT_RESULT groups: p2's result is p2's (it was once stored as the first PID's)."""
    first = _msg(1.0)
    second = oru_r01("p2", [Result(CREA, 2.4, "mg/dL", T0)], visit="v2", admitted=T0 - timedelta(hours=1),
                     order="ord-2", sex="M", birth_date="19500101")
    both = first.rstrip("\r") + "\r" + "\r".join(s for s in second.split("\r") if s and not s.startswith("MSH"))
    out = normalize(parse_oru(both).tables)
    ev = sorted((e["subject_id"], e["encounter_id"], e["analyte"], e["numeric_value"])
                for e in out["events"].to_pylist())
    assert ev == [("p1", "v1", "magnesium", pytest.approx(1.0)), ("p2", "v2", "creatinine", pytest.approx(2.4))]
    subjects = sorted((s["subject_id"], s["sex"]) for s in out["subjects"].to_pylist())
    assert subjects == [("p1", "female"), ("p2", "male")]
    visits = sorted((e["subject_id"], e["encounter_id"]) for e in out["encounters"].to_pylist())
    assert visits == [("p1", "v1"), ("p2", "v2")]
    # the second group's PID-3 missing is refused naming that PID, not stored under the first patient
    with pytest.raises(Hl7Error) as err:
        parse_oru(both.replace("p2^^^HOSP^MR", ""))
    assert (err.value.where, err.value.problem) == ("PID-3", "patient identifier missing (PID 2)")
    # a result before any PID has no patient: refused
    with pytest.raises(Hl7Error, match="before any PID"):
        parse_oru(first.replace("\rPID|", "\rNTE|1||x\rOBX|1|NM|19123-9^^LN||1.0|mg/dL|||||F\rPID|", 1))
