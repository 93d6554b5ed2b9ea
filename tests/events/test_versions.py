"""Record identity and version in the event store: one visible version per record, crash-safe."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mgaki.events import EventStore, normalize
from mgaki.events.store import versioned_source


def _obs(rows: list[tuple[str, str, str]], subject: str = "1") -> dict[str, pa.Table]:
    """Raw magnesium results: (record id, version, value in mg/dL); value 'void' = a quarantined version."""
    events = [r for r in rows if r[2] != "void"]
    void = [r for r in rows if r[2] == "void"]
    raw = {"events": pa.table({
        "subject_id": [subject] * len(events), "time": ["2024-01-01 08:00"] * len(events),
        "code": ["LOINC/19123-9"] * len(events), "analyte": ["magnesium"] * len(events),
        "value": [r[2] for r in events], "unit": ["mg/dL"] * len(events),
        "source": [versioned_source(f"Observation/{r[0]}", r[1]) for r in events]}, schema=pa.schema([
            ("subject_id", pa.string()), ("time", pa.string()), ("code", pa.string()), ("analyte", pa.string()),
            ("value", pa.string()), ("unit", pa.string()), ("source", pa.string())]))}
    if void:
        raw["quarantine"] = pa.table({
            "table": ["events"] * len(void), "subject_id": [subject] * len(void),
            "source": [versioned_source(f"Observation/{r[0]}", r[1]) for r in void],
            "raw": ["{}"] * len(void), "reason": ["Observation status 'entered-in-error'"] * len(void)})
    return normalize(raw)


def _values(store: EventStore) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in store.read("events").to_pylist():
        out.setdefault(r["source"].split("/_history/")[0], []).append(r["numeric_value"])
    return out


def test_same_version_twice_adds_nothing(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    first = store.append(_obs([("a", "1", "1.8")]))
    assert first.added["events"] == 1 and first.affected_subjects == {"1"}
    again = store.append(_obs([("a", "1", "1.8")]))
    assert again.added["events"] == 0 and again.affected_subjects == frozenset() and again.superseded == 0
    # a version already seen adds nothing even if its rows differ (the sender re-serialised it)
    odd = store.append(_obs([("a", "1", "1.9")]))
    assert odd.added["events"] == 0
    assert _values(store) == {"Observation/a": [1.8]}


def test_new_version_supersedes_and_names_the_subject(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.append(_obs([("a", "1", "1.8"), ("b", "1", "2.0")]))
    store.clear_pending(store.pending()[1])
    s = store.append(_obs([("a", "2", "1.2")]))
    assert s.added["events"] == 1 and s.superseded == 1 and s.affected_subjects == {"1"}
    assert store.pending()[0] == {"1"}  # surveillance recomputes the patient whose value changed
    assert _values(store) == {"Observation/a": [1.2], "Observation/b": [2.0]}
    assert store.counts()["events"] == 2


def test_entered_in_error_removes_the_value(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.append(_obs([("a", "1", "1.8"), ("b", "1", "2.0")]))
    store.clear_pending(store.pending()[1])
    s = store.append(_obs([("a", "2", "void")]))
    assert s.superseded == 1 and s.quarantined == 1 and s.added["events"] == 0
    assert s.affected_subjects == {"1"}  # taken from the rows it replaced
    assert _values(store) == {"Observation/b": [2.0]}
    assert [q["reason"] for q in store.read("quarantine").to_pylist()] == ["Observation status 'entered-in-error'"]


def test_versions_survive_a_restart_and_an_older_version_is_kept_out(tmp_path: Path) -> None:
    EventStore(tmp_path).append(_obs([("a", "3", "1.8")]))
    store = EventStore(tmp_path)  # a new process: the ledger is on disk
    assert store.append(_obs([("a", "3", "1.8")])).added["events"] == 0
    late = store.append(_obs([("a", "2", "0.9")]))  # an older version arriving late
    assert late.added["events"] == 0 and late.stale == 1 and late.superseded == 0
    newer = EventStore(tmp_path).append(_obs([("a", "4", "1.1")]))
    assert newer.superseded == 1
    assert _values(EventStore(tmp_path)) == {"Observation/a": [1.1]}


def test_two_versions_in_one_append_keep_the_newest(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    s = store.append(_obs([("a", "1", "1.8"), ("a", "2", "1.5")]))
    assert s.added["events"] == 1 and s.stale == 1
    assert _values(store) == {"Observation/a": [1.5]}
    # time-valued versions (meta.lastUpdated) compare as times, whatever their offsets
    store.append(_obs([("c", "2024-01-01T10:00:00+02:00", "1.0"), ("c", "2024-01-01T09:00:00Z", "2.2")]))
    assert _values(store)["Observation/c"] == [2.2]


def test_unversioned_rows_keep_identical_row_dedup(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    store.append(_obs([("a", "1", "1.8")]))
    plain = normalize({"events": pa.table({"subject_id": ["2", "2"], "time": ["2024-01-01"] * 2,
                                           "analyte": ["magnesium"] * 2, "value": ["1.7", "1.9"],
                                           "unit": ["mg/dL"] * 2, "source": ["row0", "row0"]})})
    assert store.append(plain).added["events"] == 2  # same source, different rows: both kept (no version)
    assert store.append(plain).added["events"] == 0
    assert store.counts()["events"] == 3


def test_a_crash_before_the_ledger_hides_the_rows_and_a_retry_commits_them_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mgaki.events.store as store_mod

    store = EventStore(tmp_path)
    store.append(_obs([("a", "1", "1.8")]))
    real = store_mod._write_atomic

    def crash_at_ledger(tab: pa.Table, folder: Path) -> Path:
        if folder.name == "versions":
            raise OSError("killed")
        return real(tab, folder)

    monkeypatch.setattr(store_mod, "_write_atomic", crash_at_ledger)
    with pytest.raises(OSError):
        store.append(_obs([("a", "2", "1.2")]))
    monkeypatch.setattr(store_mod, "_write_atomic", real)
    assert _values(store) == {"Observation/a": [1.8]}  # version 2's rows are on disk but not committed
    retry = store.append(_obs([("a", "2", "1.2")]))
    assert retry.added["events"] == 0 and retry.superseded == 1  # rows already there: not written twice
    assert _values(store) == {"Observation/a": [1.2]}
    assert len(store.files("events")) == 2 and not list(tmp_path.rglob(".*.tmp"))


def test_visible_files_hold_what_the_views_show(tmp_path: Path) -> None:
    """What file-reading engines (Spark) get: the parts, or a snapshot once a version was replaced."""
    import pyarrow.parquet as pq

    store = EventStore(tmp_path / "store")
    store.append(_obs([("a", "1", "1.8"), ("b", "1", "2.0")]))
    store.append(_obs([("a", "2", "1.2")]))
    files = store.visible_files(["events"], tmp_path)
    assert files["events"] == [tmp_path / "events.parquet"]
    assert sorted(pq.read_table(files["events"]).column("numeric_value").to_pylist()) == [1.2, 2.0]
    plain = EventStore(tmp_path / "plain")
    plain.append(normalize({"events": pa.table({"subject_id": ["2"], "time": ["2024-01-01"],
                                                "analyte": ["magnesium"], "value": ["1.7"], "unit": ["mg/dL"]})}))
    assert plain.visible_files(["events"], tmp_path)["events"] == plain.files("events")


def test_cohort_fhir_ingest_keeps_one_version_per_resource(tmp_path: Path) -> None:
    """`mgaki ingest --format fhir` goes through the same adapter and store: an update replaces."""
    import json

    from mgaki.cli.cohort import ingest_path

    def export(version: str, value: float, status: str = "final") -> Path:
        folder = tmp_path / f"export-{version}"
        folder.mkdir(exist_ok=True)
        obs = {"resourceType": "Observation", "id": "mg-1", "meta": {"versionId": version}, "status": status,
               "code": {"coding": [{"system": "http://loinc.org", "code": "19123-9"}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T08:00:00Z",
               "valueQuantity": {"value": value, "unit": "mg/dL", "code": "mg/dL"}}
        (folder / "Observation.ndjson").write_text(json.dumps(obs) + "\n")
        return folder

    store = tmp_path / "store"
    assert ingest_path(export("1", 1.0), "fhir", store).added["events"] == 1
    assert ingest_path(export("1", 1.0), "fhir", store).added["events"] == 0
    s = ingest_path(export("2", 1.6), "fhir", store)
    assert s.superseded == 1 and s.affected_subjects == {"p1"}
    assert _values(EventStore(store)) == {"Observation/mg-1": [1.6]}
    ingest_path(export("3", 1.6, "entered-in-error"), "fhir", store)
    assert _values(EventStore(store)) == {}


def test_a_death_corrected_in_a_new_patient_version_is_replaced(tmp_path: Path) -> None:
    """Death travels with its record's version (FHIR Patient.deceasedDateTime): a correction replaces it."""
    import json

    from mgaki.adapters.fhir_bulk import read_fhir

    def patient(version: str, deceased: str | None) -> dict[str, pa.Table]:
        res = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": version}, "gender": "female",
               "birthDate": "1950-01-01"} | ({"deceasedDateTime": deceased} if deceased else {})
        d = tmp_path / f"v{version}"
        d.mkdir()
        (d / "Patient.ndjson").write_text(json.dumps(res) + "\n")
        return normalize(read_fhir(d))

    store = EventStore(tmp_path / "store")
    store.append(patient("1", "2024-03-09T13:00:00+01:00"))
    deaths = [(r["analyte"], r["code"], r["time"].isoformat(), r["source"]) for r in store.read("events").to_pylist()]
    assert deaths == [("death", "MEDS_DEATH", "2024-03-09T12:00:00", "Patient/p1/_history/1")]
    s = store.append(patient("2", None))  # version 2: the death was recorded in error
    assert s.superseded == 1 and s.affected_subjects == {"p1"}
    assert store.read("events").num_rows == 0 and store.read("subjects").num_rows == 1


def test_versioned_and_unversioned_rows_in_one_append(tmp_path: Path) -> None:
    """New versions are written once each (two equal rows of one version: one row) without comparing them
    with the store; unversioned rows beside them in the same table are still compared with the store."""
    store = EventStore(tmp_path)
    plain = {"subject_id": ["1"], "time": ["2024-01-01 09:00"], "analyte": ["magnesium"], "value": ["1.7"],
             "unit": ["mg/dL"], "source": ["row0"]}
    store.append(normalize({"events": pa.table(plain)}))
    both = _obs([("a", "1", "1.8"), ("a", "1", "1.8")])
    extra = normalize({"events": pa.table({**plain, "value": ["1.7"]})})["events"]
    mixed = {"events": pa.concat_tables([both["events"], extra.cast(both["events"].schema)])}
    first = store.append(mixed)
    assert first.added["events"] == 1  # the version once; the unversioned row is stored already
    assert store.counts()["events"] == 2
    again = store.append(mixed)
    assert again.added["events"] == 0 and store.counts()["events"] == 2
    assert sorted(r["numeric_value"] for r in store.read("events").to_pylist()) == [1.7, 1.8]


def test_ledger_lookups_across_compacted_parts(tmp_path: Path) -> None:
    """The per-part identity index (read once per part) finds records in compacted ledger parts: a version
    sent again adds nothing, a new one replaces it, the ledger's seq keeps rising, another patient is refused."""
    import mgaki.events.store as store_mod
    from mgaki.events.store import IdentityConflictError

    n = store_mod.COMPACT_AT + 3
    store = EventStore(tmp_path)
    for i in range(n):  # one ledger part each: compacted along the way
        store.append(_obs([(f"r{i}", "1", "1.8")]))
    assert len(store.files("versions")) < n
    assert store.append(_obs([("r0", "1", "1.8")])).added["events"] == 0
    assert store.append(_obs([("r0", "2", "1.2")])).superseded == 1
    assert _values(store)["Observation/r0"] == [1.2]
    seqs = store._ledger_sql()
    con = store.connect(())
    try:
        got = con.sql(f"SELECT count(*), count(DISTINCT seq), max(seq) FROM {seqs}").fetchall()[0]
    finally:
        con.close()
    assert got == (n + 1, n + 1, n + 1)  # one seq per append that brought a new version, none reused
    with pytest.raises(IdentityConflictError):
        store.append(_obs([("r3", "2", "1.5")], subject="2"), conflicts="refuse")


def test_ledger_parts_written_before_it_named_the_patient(tmp_path: Path) -> None:
    """A store whose ledger parts lack ``subject_id`` (written by an earlier release): conflicts and replaced
    versions are still found from the rows, and a compaction merges old and new parts into one schema."""
    import uuid

    import pyarrow.parquet as pq

    import mgaki.events.store as store_mod
    from mgaki.events.store import IdentityConflictError

    store = EventStore(tmp_path)
    store.append(_obs([("a", "1", "1.8"), ("b", "1", "1.9")]))
    for part in store.files("versions"):  # the earlier release's schema, under a new name (parts never change)
        tab = pq.read_table(part)
        assert tab.column("subject_id").to_pylist() == ["1", "1"]
        pq.write_table(tab.drop_columns(["subject_id"]), part.with_name(f"part-{uuid.uuid4().hex}.parquet"))
        part.unlink()
    with pytest.raises(IdentityConflictError) as err:
        store.append(_obs([("a", "2", "1.5")], subject="2"), conflicts="refuse")
    assert err.value.conflicts[0].stored == "1"
    step = store.append(_obs([("b", "2", "1.2")]))
    assert step.superseded == 1 and step.affected_subjects == frozenset({"1"})
    assert _values(store) == {"Observation/a": [1.8], "Observation/b": [1.2]}
    for i in range(store_mod.COMPACT_AT):  # new parts beside the old one: merged together
        store.append(_obs([(f"c{i}", "1", "1.8")]))
    assert len(store.files("versions")) < store_mod.COMPACT_AT
    merged = store.read("events")
    assert merged.num_rows == store_mod.COMPACT_AT + 2
    con = store.connect(())
    try:
        names = con.sql(f"SELECT identity, subject_id FROM {store._ledger_sql()} ORDER BY seq").fetchall()
    finally:
        con.close()
    assert names[0][1] is None and names[-1] == (f"Observation/c{store_mod.COMPACT_AT - 1}", "1")


def _window_hidden(store: EventStore) -> set[str]:
    """The non-current sources as an earlier release ranked them: stale, or not the last by seq."""
    led = store._ledger_sql()
    con = store.connect(())
    try:
        rows = con.sql(f"""SELECT source FROM {led} WHERE stale UNION ALL SELECT source FROM (SELECT source FROM {led}
                           WHERE NOT stale QUALIFY row_number() OVER (PARTITION BY identity ORDER BY seq DESC) > 1)"""
                       ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def _hidden_now(store: EventStore) -> set[str]:
    con = store.connect(())
    try:
        return {r[0] for r in con.sql("SELECT source FROM _mgaki_hidden").fetchall()}
    finally:
        con.close()


def test_hidden_versions_from_what_each_ledger_row_replaced(tmp_path: Path) -> None:
    """The views hide what each ledger row says it made non-current (read once per part): the same set as
    ranking every identity's versions by seq, through corrections, stale and entered-in-error versions, two
    versions in one append, compaction, and for a store whose parts predate the column (ranked as before)."""
    import uuid

    import pyarrow.parquet as pq

    import mgaki.events.store as store_mod

    steps = [[("a", "1", "1.8"), ("b", "1", "1.9")], [("a", "2", "1.2")], [("a", "1", "1.7")],
             [("b", "3", "2.0"), ("b", "2", "2.1")], [("c", "5", "1.5")], [("c", "6", "void")], [("a", "3", "1.1")],
             [("a", "0", "1.3")]]  # late and older: stale, it replaces nothing
    store, old = EventStore(tmp_path / "now"), EventStore(tmp_path / "old")
    for rows in steps:
        for s in (store, old):
            s.append(_obs(rows))
        assert _hidden_now(store) == _window_hidden(store)
    assert _values(store) == {"Observation/a": [1.1], "Observation/b": [2.0]}
    hidden = _hidden_now(store)
    assert {versioned_source("Observation/a", v) for v in ("1", "2")} <= hidden
    for i in range(store_mod.COMPACT_AT):  # compacted: the merged part says the same
        store.append(_obs([(f"d{i}", "1", "1.8")]))
    assert len(store.files("versions")) < store_mod.COMPACT_AT and _hidden_now(store) == hidden
    for part in old.files("versions"):  # an earlier release's parts (no compaction yet): ranked by seq instead
        tab = pq.read_table(part).drop_columns(["replaces"])
        pq.write_table(tab, part.with_name(f"part-{uuid.uuid4().hex}.parquet"))
        part.unlink()
    assert _hidden_now(old) == hidden
    assert old.append(_obs([("a", "4", "1.0")])).superseded == 1
    assert _values(old)["Observation/a"] == [1.0] and _hidden_now(old) == _window_hidden(old)


def test_a_reader_never_sees_two_versions_of_a_record_corrected_while_it_lists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's append commits a correction between the reader's ledger listing and its parts listing:
    the reader lists again and shows one version (as it would have, either before or after the append)."""
    EventStore(tmp_path).append(_obs([("a", "1", "1.8")]))
    other = EventStore(tmp_path)  # another process's store on the same folder
    reader = EventStore(tmp_path)
    files = EventStore.files
    commits = []

    def racing(self: EventStore, table: str) -> list[Path]:  # the reader lists the parts of its views
        if self is reader and table == "events" and not commits:
            commits.append(other.append(_obs([("a", "2", "1.2")])))  # its intent, parts, ledger: all meanwhile
        return files(self, table)

    monkeypatch.setattr(EventStore, "files", racing)
    con = reader.connect(("events",))
    try:
        rows = con.sql("SELECT numeric_value FROM events").fetchall()
    finally:
        con.close()
    assert commits and commits[0].superseded == 1
    assert rows == [(1.2,)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["new-1", "new-2", "new-3", "new-4", "new-5"]),
                          st.sampled_from(["1", "2", "2024-05-01T00:00:00Z", "h0a1b"]),
                          st.sampled_from(["1", "2", ""]), st.sampled_from(["events", "quarantine"])),
                min_size=1, max_size=8, unique_by=lambda r: r[0]))
def test_new_records_are_decided_without_a_statement_as_the_statement_would(
        tmp_path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """An append of new records, one version each (a lab feed's, a POST's), is decided in Arrow
    (``_accept_all``): the same ledger rows as the one statement that ranks versions against the stored ones
    (``_decide``), run here on a ledger that holds other records."""
    from mgaki.events.normalize import work_cursor
    from mgaki.events.store import _VERSIONS, _accept_all, _by_source

    store = EventStore(tmp_path / f"s{abs(hash(tuple(rows)))}")
    store.append(_obs([("old-1", "1", "2.0"), ("old-2", "3", "void")]))
    incoming = {t: pa.table({"subject_id": [r[2] or None for r in rows if r[3] == t],
                             "source": [versioned_source(f"Observation/{r[0]}", r[1]) for r in rows if r[3] == t]})
                for t in ("events", "quarantine")}
    with work_cursor(len(rows)) as con:
        by_source = _by_source(EventStore._brought(con, {t: x for t, x in incoming.items() if x.num_rows}))
        held_in, top = store._ledger_parts_holding(con, by_source.column("h").to_numpy())
        assert held_in == [] and top == 1
        fast = _accept_all(by_source, top)
        slow = store._decide(con, by_source, store.files(_VERSIONS), top)  # every ledger part read
    def key(t: pa.Table) -> list[dict]:
        return sorted(t.select(fast.column_names).to_pylist(), key=lambda r: r["source"])
    assert len(key(fast)) == len(rows) and key(fast) == key(slow.cast(fast.schema))
