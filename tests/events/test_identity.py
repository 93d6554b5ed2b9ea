"""Issue 13 point 8: a record identity belongs to one patient; a version naming another is never stored.

Before, posting a bundle whose Observation ids equalled another patient's moved that patient's
results to the new one (the append reported only ``superseded``). Hand-built FHIR bundles
(``BundleBuilder``) and HL7 ORU^R01 messages go through the real adapters and the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.cli import app
from mgaki.events import EventStore, normalize
from mgaki.events.store import IdentityConflictError
from mgaki.service.ingest.hl7 import Result, oru_r01, parse_oru
from mgaki.synth.fhir import T0
from mgaki.synth.fhir import BundleBuilder as B


def _bundle(pid: str, values: list[float], status: str = "final", **kw: object) -> dict:
    """A patient's Mg results; resource ids obs1, obs2, ... as an EHR that numbers per request would send."""
    b = B(pid=pid, **kw)  # type: ignore[arg-type]
    for i, v in enumerate(values):
        b.obs("magnesium", v, "mg/dL", float(i), status=status)
    return b.build()


def _tables(tmp: Path, bundle: dict, name: str, per_source: bool = False) -> dict:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(bundle))
    return normalize(read_fhir(path, per_source=per_source))


def _results(store: EventStore) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in sorted(store.read("events").to_pylist(), key=lambda r: r["time"]):
        out.setdefault(r["subject_id"], []).append(r["numeric_value"])
    return out


def test_same_ids_for_another_patient_are_quarantined_not_moved(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s")
    store.append(_tables(tmp_path, _bundle("p1", [1.5, 1.6]), "a"))
    s = store.append(_tables(tmp_path, _bundle("p2", [2.5, 2.6]), "b"))
    assert s.superseded == 0 and s.added["events"] == 0 and s.quarantined == 2
    assert _results(store) == {"p1": [1.5, 1.6]}  # before: {"p2": [2.5, 2.6]}, p1's results gone
    assert [(c.identity, c.stored, c.incoming) for c in s.identity_conflicts] == [
        ("Observation/obs1", "p1", "p2"), ("Observation/obs2", "p1", "p2")]
    q = {r["source"]: r for r in store.read("quarantine").to_pylist()}
    assert len(q) == 2 and all(r["subject_id"] == "p2" for r in q.values())
    reason = next(iter(q.values()))["reason"]
    assert "belongs to patient 'p1'; this version names patient 'p2'" in reason
    assert json.loads(next(iter(q.values()))["raw"])["numeric_value"] in (2.5, 2.6)  # the refused row, kept
    # the refused version never enters the ledger: sending it again changes nothing, p1's values stay current
    again = store.append(_tables(tmp_path, _bundle("p2", [2.5, 2.6]), "b"))
    assert sum(again.added.values()) == 0
    assert store.append(_tables(tmp_path, _bundle("p1", [1.4, 1.6]), "c")).superseded == 1  # p1 may still correct
    assert _results(store) == {"p1": [1.4, 1.6]}


def test_refuse_mode_writes_nothing(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s")
    store.append(_tables(tmp_path, _bundle("p1", [1.5]), "a"))
    before = {t: store.files(t) for t in ("events", "quarantine", "subjects", "versions")}
    with pytest.raises(IdentityConflictError) as exc:
        store.append(_tables(tmp_path, _bundle("p2", [2.5]), "b"), conflicts="refuse")
    assert exc.value.where == "Observation/obs1"
    assert "belongs to patient 'p1'; this version names patient 'p2'" in exc.value.problem
    assert {t: store.files(t) for t in before} == before  # not a file written


def test_entered_in_error_for_the_wrong_patient_does_not_remove_the_result(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s")
    store.append(_tables(tmp_path, _bundle("p1", [1.5]), "a"))
    s = store.append(_tables(tmp_path, _bundle("p2", [1.5], status="entered-in-error"), "b"))
    assert s.superseded == 0 and _results(store) == {"p1": [1.5]}
    (q,) = [r for r in store.read("quarantine").to_pylist() if r["subject_id"] == "p2"]
    assert q["reason"].startswith("identity 'Observation/obs1' belongs to patient 'p1'")
    assert q["reason"].endswith("Observation status 'entered-in-error'")


def test_two_patients_naming_one_new_record_in_one_request(tmp_path: Path) -> None:
    one, two = _bundle("p1", [1.5]), _bundle("p2", [2.5])
    both = {"resourceType": "Bundle", "type": "collection", "entry": one["entry"] + two["entry"]}
    store = EventStore(tmp_path / "s")
    s = store.append(_tables(tmp_path, both, "both"))
    assert s.added["events"] == 0 and {c.stored for c in s.identity_conflicts} == {None}
    assert {c.incoming for c in s.identity_conflicts} == {"p1", "p2"}


def test_identities_kept_per_source_system(tmp_path: Path) -> None:
    """Two systems number their resources alike: per source system (meta.source) they are two records."""
    lab_a = _bundle("p1", [1.5])
    lab_b = _bundle("p2", [2.5])
    for b, system in ((lab_a, "http://lab-a.example.org"), (lab_b, "http://lab-b.example.org")):
        b["meta"] = {"source": system}
    store = EventStore(tmp_path / "s")
    store.append(_tables(tmp_path, lab_a, "a", per_source=True))
    s = store.append(_tables(tmp_path, lab_b, "b", per_source=True))
    assert not s.identity_conflicts and _results(store) == {"p1": [1.5], "p2": [2.5]}
    sources = sorted(r["source"].split("/_history/")[0] for r in store.read("events").to_pylist())
    assert sources == ["http://lab-a.example.org|Observation/obs1", "http://lab-b.example.org|Observation/obs1"]
    # within one system the rule still holds
    lab_b2 = _bundle("p3", [3.0])
    lab_b2["meta"] = {"source": "http://lab-b.example.org"}
    clash = store.append(_tables(tmp_path, lab_b2, "c", per_source=True))
    assert [(c.stored, c.incoming) for c in clash.identity_conflicts] == [("p2", "p3")]


def _oru(patient: str, value: float, order: str = "ord-1", visit: str = "v1", **kw: object) -> str:
    return oru_r01(patient, [Result("19123-9", value, "mg/dL", T0)], visit=visit, order=order,
                   admitted=T0, **kw)  # type: ignore[arg-type]


def test_hl7_filler_order_number_of_another_patient(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s")
    store.append(normalize(parse_oru(_oru("p1", 1.4)).tables))
    s = store.append(normalize(parse_oru(_oru("p2", 2.4, visit="v2")).tables))
    assert [(c.identity, c.stored, c.incoming) for c in s.identity_conflicts] == [
        ("HL7/ord-1/LN/19123-9", "p1", "p2")]
    assert _results(store) == {"p1": [1.4]}
    # the visit number reused for another patient is refused the same way (PV1-19)
    v = store.append(normalize(parse_oru(_oru("p3", 1.9, order="ord-9", visit="v1")).tables))
    assert [c.identity for c in v.identity_conflicts] == ["HL7/PV1/v1"]


def test_hl7_placer_numbers_per_sending_system(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "s")
    a = _oru("p1", 1.4, sending_app="LIS", sending_facility="NORTH")
    b = _oru("p2", 2.4, visit="v2", sending_app="LIS", sending_facility="SOUTH")
    store.append(normalize(parse_oru(a, per_source=True).tables))
    s = store.append(normalize(parse_oru(b, per_source=True).tables))
    assert not s.identity_conflicts and _results(store) == {"p1": [1.4], "p2": [2.4]}


def test_batch_ingest_quarantines_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "b.json").write_text(json.dumps(_bundle("p1", [1.5, 1.6])))
    (tmp_path / "b" / "b.json").write_text(json.dumps(_bundle("p2", [2.5, 2.6])))
    runner = CliRunner()
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(tmp_path / "a"), "--store", str(store)]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(tmp_path / "b"), "--store", str(store)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "record identities naming another patient: 2 version(s) quarantined" in r.output
    assert "belongs to patient" in r.output
    assert _results(EventStore(store)) == {"p1": [1.5, 1.6]}
