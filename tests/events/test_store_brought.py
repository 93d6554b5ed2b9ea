"""``EventStore._brought`` in Arrow gives what the one DuckDB statement it replaced gave (the statement is kept
here as the reference): the same rows, identities, versions and ``hash(identity)`` keys of the ledger index."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from mgaki.events import store as store_mod
from mgaki.events.normalize import work_cursor
from mgaki.events.store import _BROUGHT, HISTORY, EventStore


def _statement(con, incoming):  # type: ignore[no-untyped-def]
    """The statement ``_brought`` was before it moved to Arrow (commit fff519b)."""
    ident = "regexp_extract(source, '^(.+)/_history/([^/]+)$', 1)"
    ver = "regexp_extract(source, '^(.+)/_history/([^/]+)$', 2)"
    parts = []
    for n, t in incoming.items():
        con.register(f"ref_{n}", t.select(["subject_id", "source"]))
        parts.append(f"SELECT '{n}' AS tbl, source, subject_id FROM ref_{n} WHERE contains(source, '{HISTORY}')")
    return con.sql(f"SELECT tbl, source, subject_id, identity, {ver} AS version, hash(identity) AS h "
                   f"FROM (SELECT *, {ident} AS identity FROM (SELECT DISTINCT * FROM "
                   f"({' UNION ALL '.join(parts)}) u) d) x WHERE identity <> ''").to_arrow_table().cast(_BROUGHT)


def _rows(t: pa.Table) -> list[tuple[object, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


_PIECE = st.sampled_from(["Observation/1", "HL7/x-0/LN/2160-0", "a/_history/b", "", "é", "a\nb", "x/y"])
_SOURCE = st.one_of(
    st.none(),
    st.builds(lambda i, v: f"{i}{HISTORY}{v}", _PIECE, st.sampled_from(["1", "h0a1b", "", "a/b", "v\n", "2"])),
    st.sampled_from(["bulk.csv", "HL7/x/_history", "/_history/1", "plain"]),
)
_TABLE = st.lists(st.tuples(st.sampled_from(["P1", "P2", "", None]), _SOURCE), max_size=12)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(["events", "encounters", "quarantine"]), _TABLE, max_size=3))
def test_brought_in_arrow_equals_the_statement(tables: dict[str, list[tuple[str | None, str | None]]]) -> None:
    incoming = {n: pa.table({"subject_id": pa.array([r[0] for r in rows], pa.string()),
                             "source": pa.array([r[1] for r in rows], pa.string())}) for n, rows in tables.items()}
    with work_cursor(sum(len(r) for r in tables.values())) as con:
        got = EventStore._brought(con, incoming)
        want = _statement(con, incoming) if incoming else _BROUGHT.empty_table()
    assert got.schema == _BROUGHT
    assert _rows(got) == _rows(want)


def test_many_identities_are_hashed_from_a_registered_table(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Above ``_HASH_LIST_MAX`` distinct identities the hashes come from a registered table: the same keys."""
    monkeypatch.setattr(store_mod, "_HASH_LIST_MAX", 3)
    sources = [f"Observation/{i}{HISTORY}{i % 2}" for i in range(10)] * 2
    incoming = {"events": pa.table({"subject_id": pa.array(["P1"] * 20, pa.string()),
                                    "source": pa.array(sources, pa.string())})}
    with work_cursor(20) as con:
        got = EventStore._brought(con, incoming)
        want = _statement(con, incoming)
    assert got.num_rows == 10 and pc.count_distinct(got.column("h")).as_py() == 10
    assert _rows(got) == _rows(want)
