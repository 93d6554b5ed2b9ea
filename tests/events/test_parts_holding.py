"""A few subjects' rows are read from the parts whose subject range may hold them (``store.parts_holding``):
never a row lost, whatever the parts' order, row groups, nulls or statistics."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mgaki.events import EventStore
from mgaki.events.normalize import connect
from mgaki.events.schema import TABLES
from mgaki.events.store import _subject_range, parts_holding


def _part(path: Path, subjects: list[str | None], row_group: int = 2, stats: bool = True) -> Path:
    pq.write_table(pa.table({"subject_id": pa.array(subjects, pa.string()), "v": list(range(len(subjects)))}),
                   path, row_group_size=row_group, write_statistics=stats)
    return path


def test_a_part_is_kept_when_its_range_holds_a_subject(tmp_path: Path) -> None:
    a = _part(tmp_path / "a.parquet", ["P1", "P3", "P5"])
    b = _part(tmp_path / "b.parquet", ["P6", "P9"])
    nulls = _part(tmp_path / "n.parquet", [None, None, None])  # e.g. quarantined rows without a patient
    blind = _part(tmp_path / "s.parquet", ["Q1"], stats=False)  # no statistics: may hold anyone
    parts = [a, b, nulls, blind]
    assert parts_holding(parts, ["P1"]) == [a, blind]  # the lowest id of a part is in its range
    assert parts_holding(parts, ["P9"]) == [b, blind]  # and the highest
    assert parts_holding(parts, ["P4"]) == [a, blind]  # inside a range, absent from the part: still kept
    assert parts_holding(parts, ["P55", "P0"]) == [blind]  # "P55" sorts between "P5" and "P6": in neither
    assert parts_holding(parts, ["Z"]) == [blind]
    assert parts_holding(parts, []) == [] and parts_holding([], ["P1"]) == []
    assert _subject_range(a) == ("P1", "P5") and _subject_range(blind) is None
    mixed = _part(tmp_path / "m.parquet", [None, "P7", None, None], row_group=2)
    assert _subject_range(mixed) == ("P7", "P7")
    _part(a, ["R1", "R2", "R3", "R4", "R5", "R6"])  # a file rewritten in place is read again, not taken from cache
    assert _subject_range(a) == ("R1", "R6") and parts_holding([a], ["P1"]) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.lists(st.one_of(st.none(), st.sampled_from([f"S{i:02d}" for i in range(30)])),
                               min_size=1, max_size=12), min_size=1, max_size=6),
       sort=st.booleans(), group=st.integers(1, 5),
       want=st.lists(st.sampled_from([f"S{i:02d}" for i in range(32)]), min_size=1, max_size=5))
def test_the_parts_holding_subjects_hold_all_their_rows(tmp_path_factory: object, parts: list[list[str | None]],
                                                         sort: bool, group: int, want: list[str]) -> None:
    folder = tmp_path_factory.mktemp("parts")  # type: ignore[attr-defined]
    paths = [_part(folder / f"p{i}.parquet", sorted(p, key=lambda s: (s is None, s or "")) if sort else p, group)
             for i, p in enumerate(parts)]
    con = connect()
    try:
        def rows(files: list[Path]) -> list[tuple[object, ...]]:
            if not files:
                return []
            listed = ", ".join(f"'{f.as_posix()}'" for f in files)
            return sorted(con.sql(f"SELECT subject_id, v, filename FROM read_parquet([{listed}], filename = true) "
                                  "WHERE subject_id IN (SELECT unnest(?))", params=[want]).fetchall())
        assert rows(parts_holding(paths, want)) == rows(paths)
    finally:
        con.close()


def test_an_append_and_an_incremental_read_open_only_the_parts_that_may_hold_the_subjects(tmp_path: Path) -> None:
    """A bulk-loaded history in parts of disjoint subject ranges: a new result for one patient is compared
    with (and read from) that patient's part alone, and re-sending a stored row adds nothing."""
    store = EventStore(tmp_path / "s")
    t = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    for chunk in range(4):
        ids = [f"P{chunk}{i}" for i in range(5)]
        store.append({"events": _events(ids, t)})
    parts = store.files("events")
    assert len(parts) == 4
    assert parts_holding(parts, ["P21"]) == [p for p in parts if _subject_range(p) == ("P20", "P24")]
    again = store.append({"events": _events(["P21"], t)})
    assert again.added["events"] == 0  # compared with the one part that holds P21
    con = store.connect(("events",), few=["P21", "P33"], few_prefix="few_")
    try:
        few = con.sql("SELECT count(*) FROM few_events WHERE subject_id IN ('P21', 'P33')").fetchall()[0][0]
        every = con.sql("SELECT count(*) FROM events WHERE subject_id IN ('P21', 'P33')").fetchall()[0][0]
        in_view = con.sql("SELECT count(DISTINCT subject_id) FROM few_events").fetchall()[0][0]
    finally:
        con.close()
    assert few == every == 2 and in_view == 10  # two parts of four


def _events(ids: list[str], t: datetime) -> pa.Table:
    n = len(ids)
    row = {name: [None] * n for name in TABLES["events"].names}
    row.update({"subject_id": ids, "time": [t] * n, "code": ["LOINC/2160-0"] * n, "analyte": ["creatinine"] * n,
                "numeric_value": [1.0] * n, "unit": ["mg/dL"] * n, "source": [f"bulk/{s}" for s in ids]})
    return pa.table(row).cast(TABLES["events"])
