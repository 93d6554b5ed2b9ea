"""``conform_rows``: a parser's Python rows as a RAW table, the same table ``conform`` gives of them."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgaki.adapters._cohort import conform, conform_rows
from mgaki.events.schema import RAW, TABLES

_NAMES = [*RAW, "quarantine"]


def _schema(name: str) -> pa.Schema:
    return RAW[name] if name != "quarantine" else TABLES["quarantine"]


def _by_column(rows: list[dict[str, object]], name: str) -> pa.Table:
    """What the rows say, column by column (``from_pylist`` without a schema takes the first row's keys only)."""
    text = [f.name for f in _schema(name) if f.type == pa.string()]
    return conform(pa.table({f: pa.array([r.get(f) for r in rows], pa.string()) for f in text}), name)


def _old(rows: list[dict[str, object]], name: str) -> pa.Table:
    return conform(pa.Table.from_pylist(rows) if rows else pa.table({}), name)


@st.composite
def _rows(draw: st.DrawFn) -> tuple[str, list[dict[str, object]]]:
    name = draw(st.sampled_from(_NAMES))
    fields = [f.name for f in _schema(name) if f.type == pa.string()]  # a parser gives text (and None)
    text = st.one_of(st.none(), st.text(max_size=8))
    # the subject and some of each row's other fields (missing: null), a field no schema has (ignored), text or
    # none (a row with no field of the schema at all no parser gives: from_pylist then makes no column, no row)
    others = {f: text for f in [*fields, "not_a_column"] if f != "subject_id"}
    row = st.fixed_dictionaries({"subject_id": text}, optional=others)
    return name, draw(st.lists(row, max_size=5))


@settings(max_examples=200, deadline=None)
@given(_rows())
def test_text_rows_give_what_conform_gives(case: tuple[str, list[dict[str, object]]]) -> None:
    name, rows = case
    got = conform_rows(rows, name)
    assert got.schema == _schema(name)
    assert got.equals(_by_column(rows, name))
    if all(r.keys() == rows[0].keys() for r in rows):  # a parser's rows (HL7: the same keys in each)
        assert got.equals(_old(rows, name))


@pytest.mark.parametrize("value", [1, 2.5, True])
def test_a_value_that_is_not_text_is_cast_as_conform_casts_it(value: object) -> None:
    rows = [{"subject_id": "P1", "value": value, "source": "s"}]
    got = conform_rows(rows, "events")
    assert got.column("value").to_pylist() == [str(value).lower() if isinstance(value, bool) else str(value)]
    assert got.equals(_old(rows, "events"))


def test_no_rows_give_the_empty_raw_table() -> None:
    for name in _NAMES:
        got = conform_rows([], name)
        assert got.num_rows == 0 and got.schema == _schema(name)
