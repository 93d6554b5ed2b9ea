"""Issue 13 point 10: evidence flags read the Mg of each study's own exposure time, in both engines.

Differential: for every hospital encounter of the MIMIC-IV demo subset (real) and of a synthetic
cohort, the bedside engine (``engine.risk.match_evidence`` on a record of that encounter: its
stays, context times and the AKI onset) flags the same studies with the same Mg values as the
SQL evidence stage. End to end: hand-built FHIR bundles go through ``mgaki assess`` and through
the cohort path (fhir_bulk -> store -> surveillance), each engine finding the AKI onset itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

import mgaki
from mgaki.adapters.fhir_bulk import read_fhir
from mgaki.adapters.mimic import read_mimic
from mgaki.engine import risk
from mgaki.events import EventStore, normalize
from mgaki.knowledge import load
from mgaki.record import PatientRecord, Stay
from mgaki.surveillance.pipeline import run
from mgaki.synth import generate, to_raw
from mgaki.synth.fhir import BundleBuilder as B

MIMIC = Path(__file__).parents[1] / "data" / "mimic-iv-demo-subset"
ANALYTES = ("magnesium", "ionized_magnesium")


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def _store(tmp: Path, raw: dict[str, pa.Table]) -> EventStore:
    store = EventStore(tmp / "store")
    store.append(normalize(raw))
    return store


def _bedside_flags(store: EventStore, onsets: dict[tuple[str, str], datetime], as_of: datetime,
                   ) -> dict[tuple[str, str], set[tuple[str, float]]]:
    """(subject, encounter) -> {(study, value)} from the bedside rules on one record per encounter."""
    kb = load()
    con = store.connect(("events", "encounters", "contexts"))
    try:
        enc = con.sql('SELECT DISTINCT subject_id, encounter_id, kind, start, "end", parent_id FROM encounters'
                      ).to_arrow_table().to_pylist()
        ctx = con.sql("SELECT DISTINCT subject_id, encounter_id, time, context FROM contexts"
                      ).to_arrow_table().to_pylist()
        ev = con.sql("SELECT DISTINCT subject_id, analyte, time, numeric_value FROM events "
                     f"WHERE analyte IN {ANALYTES} AND numeric_value IS NOT NULL").to_arrow_table().to_pylist()
    finally:
        con.close()
    series: dict[str, dict[str, list[tuple[datetime, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(ev, key=lambda r: (r["time"], r["numeric_value"])):
        series[r["subject_id"]][r["analyte"]].append((_utc(r["time"]), r["numeric_value"]))
    out: dict[tuple[str, str], set[tuple[str, float]]] = {}
    for h in enc:
        if h["kind"] in ("icu", "emergency") and h["parent_id"] is not None:  # part of an admission
            continue
        sid, eid = h["subject_id"], h["encounter_id"]
        start, end = _utc(h["start"]), _utc(h["end"])
        icus = [Stay("icu", _utc(i["start"]), _utc(i["end"])) for i in enc
                if i["subject_id"] == sid and i["kind"] == "icu" and i["parent_id"] == eid]
        mine = [c for c in ctx if c["subject_id"] == sid and (c["encounter_id"] == eid or (
            c["encounter_id"] is None and c["time"] is not None
            and start <= _utc(c["time"]) <= (end or _utc(c["time"]))))]
        contexts = {c["context"] for c in mine} | ({"icu"} if icus else set())
        rec = PatientRecord(sid, stays=(Stay("hospital", start, end), *icus), contexts=frozenset(contexts),
                            context_times=tuple((c["context"], _utc(c["time"])) for c in mine if c["time"]))
        onset = onsets.get((sid, eid))
        anchors = risk.anchors_of(rec, onset, end or as_of)
        matches, _ = risk.match_evidence(kb, rec.contexts, series[sid], onset is not None, None, anchors)
        flags = {(m.study.id, round(m.exposure.value, 6)) for m in matches}
        if flags:
            out[(sid, eid)] = flags
    return out


def _sql_flags(store: EventStore) -> tuple[dict[tuple[str, str], set[tuple[str, float]]],
                                          dict[tuple[str, str], datetime], datetime]:
    res = run(store, outputs=("evidence_flags", "aki_episodes_out"))
    out: dict[tuple[str, str], set[tuple[str, float]]] = defaultdict(set)
    for r in res.tables["evidence_flags"].to_pylist():
        out[(r["subject_id"], r["encounter_id"])].add((r["study_id"], round(r["value_canonical"], 6)))
    onsets: dict[tuple[str, str], datetime] = {}
    for r in res.tables["aki_episodes"].to_pylist():
        key = (r["subject_id"], r["encounter_id"])
        onsets[key] = min(_utc(r["onset"]), onsets.get(key, _utc(r["onset"])))
    assert res.as_of is not None
    return dict(out), onsets, _utc(res.as_of)


def _differential(store: EventStore) -> dict[tuple[str, str], set[tuple[str, float]]]:
    sql, onsets, as_of = _sql_flags(store)
    bedside = _bedside_flags(store, onsets, as_of)
    assert bedside == sql
    return sql


def test_mimic_subset_flags_agree_row_for_row(tmp_path: Path) -> None:
    flags = _differential(_store(tmp_path, read_mimic(MIMIC)))
    studies = {s for v in flags.values() for s, _ in v}
    # real ICU patients with AKI: the AKI-onset, ICU-admission and ICU-stay exposures all occur
    assert {"suppadungsuk_2024", "ribeiro_2022", "alves_2013"} <= studies, studies


def test_synthetic_cohort_flags_agree_row_for_row(tmp_path: Path) -> None:
    flags = _differential(_store(tmp_path, to_raw(generate(120, seed=13), unit_mix=False)))
    assert len(flags) >= 20


# --- end to end from FHIR: each engine finds the AKI onset itself --------------------------------


def _icu_aki_patient(pid: str) -> B:
    """Admitted at 0 h, ICU from 2 h; Mg 2.4 at ICU admission, 1.6 at AKI onset (SCr x2 at 24 h), 2.0 later."""
    b = B(sex="male", birth="1957-01-01", pid=pid, id_prefix=f"{pid}-")
    b.encounter(0.0, icu=False, end_hours=120, eid=f"{pid}-h").encounter(2.0, icu=True, end_hours=72,
                                                                          eid=f"{pid}-i", part_of=f"{pid}-h")
    return (b.obs("creatinine", 0.9, "mg/dL", 3).obs("magnesium", 2.4, "mg/dL", 3)
            .obs("creatinine", 1.8, "mg/dL", 24).obs("magnesium", 1.6, "mg/dL", 24)
            .obs("creatinine", 1.7, "mg/dL", 48).obs("magnesium", 2.0, "mg/dL", 48))


def _postop_patient(pid: str) -> B:
    """Admitted at 0 h, cardiac surgery at 10 h; Mg 2.0 before it, 2.4 two hours after, 2.1 a day later."""
    b = B(sex="male", birth="1954-01-01", pid=pid, id_prefix=f"{pid}-")
    b.encounter(0.0, icu=False, end_hours=96, eid=f"{pid}-h").context("cardiac-surgery", 10)
    return (b.obs("creatinine", 1.0, "mg/dL", 2).obs("magnesium", 2.0, "mg/dL", 2).obs("magnesium", 2.4, "mg/dL", 12)
            .obs("creatinine", 1.0, "mg/dL", 36).obs("magnesium", 2.1, "mg/dL", 36))


def _admission_patient(pid: str) -> B:
    """General ward: admission Mg 1.4 (Cheungpasitporn < 1.5), 1.9 two days later."""
    b = B(pid=pid, id_prefix=f"{pid}-").encounter(0.0, icu=False, end_hours=96, eid=f"{pid}-h")
    return b.obs("creatinine", 0.8, "mg/dL", 1).obs("magnesium", 1.4, "mg/dL", 1).obs("magnesium", 1.9, "mg/dL", 50)


PATIENTS = {"icu-aki": (_icu_aki_patient, ("icu",), {"suppadungsuk_2024": 1.6, "alves_2013": 1.6}),
            "postop": (_postop_patient, ("cardiac-surgery",), {"xiong_2023": 2.4}),
            "ward": (_admission_patient, (), {"cheungpasitporn_2015": 1.4})}


@pytest.mark.parametrize("name", sorted(PATIENTS))
def test_fhir_bundle_flags_agree_at_the_bedside_and_in_the_cohort(name: str, tmp_path: Path) -> None:
    make, contexts, expected = PATIENTS[name]
    bundle = make(name).build()
    a = mgaki.assess(bundle, contexts)
    bedside = {f.data["study"]: f.data["value"] for f in a.findings if f.code == "mg_aki_risk"}
    assert bedside == pytest.approx(expected)
    (tmp_path / "b.json").write_text(json.dumps(bundle))
    tables = normalize(read_fhir(tmp_path / "b.json"))
    if contexts and contexts != ("icu",):  # a context given at the bedside is a recorded context in the cohort
        assert set(tables["contexts"].column("context").to_pylist()) == set(contexts)
    store = EventStore(tmp_path / "store")
    store.append(tables)
    flags = run(store, outputs=("evidence_flags",)).tables["evidence_flags"].to_pylist()
    assert {r["study_id"]: round(r["value_canonical"], 3) for r in flags} == pytest.approx(expected)


def test_a_study_is_not_applied_without_its_exposure_time() -> None:
    """Cardiac surgery given as a context with no time: Xiong's exposure (24 h after the operation) is unknown."""
    b = B(sex="male", birth="1954-01-01").obs("creatinine", 1.0, "mg/dL").obs("magnesium", 2.4, "mg/dL").build()
    a = mgaki.assess(b, ["cardiac-surgery"])
    assert not [f for f in a.findings if f.code == "mg_aki_risk"]
    assert any("xiong_2023" in w and "gives no time for cardiac-surgery" in w for w in a.warnings)


def test_every_applied_study_cites_where_its_exposure_time_was_read() -> None:
    kb = load()
    for s in kb.evidence.studies:
        if s.applied:
            assert s.exposure_time_source is not None and s.exposure_time_source.verification == "V", s.id
            assert s.exposure_time_source.doi == s.source.doi, s.id
    assert kb.evidence.exposure(next(s for s in kb.evidence.studies if s.id == "suppadungsuk_2024")).anchor \
        == "aki_onset"

