"""Streaming ingest (issue 18 point 3): chunk by chunk, the store and the summary are those of one append.

Differential: the same source ingested whole (``EventStore.append(normalize(read(...)))``, the
non-streaming path) and in chunks of a few rows (``ingest_path(..., chunk_rows=...)``), compared row
for row: every table as surveillance sees it, every stored part's rows, the versions ledger, and the
IngestSummary. Sources cover duplicates across chunk boundaries, record versions superseding each other
across chunks, identity conflicts across chunks and against the store, quarantine reasons of one kind
in several chunks, the synthetic cohort with its planted dirty rows, an ICU-shaped cohort and MIMIC.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from mgaki.adapters import registry
from mgaki.adapters.csv_layout import iter_csv_layout, write_csv_layout
from mgaki.cli.cohort import ingest_path
from mgaki.events import TABLES, EventStore, IngestSummary, normalize
from mgaki.events.store import _reason_kinds, reason_kind

ROOT = Path(__file__).resolve().parents[2]
MIMIC = ROOT / "tests" / "data" / "mimic-iv-demo-subset"


def _rows(store: EventStore, table: str, visible: bool) -> list[tuple[object, ...]]:
    if visible:
        tab = store.read(table)
    else:  # every stored row, hidden versions included
        con = duckdb.connect()
        tab = con.sql(f"SELECT * FROM {store.scan_sql(table, None if table != 'versions' else _ledger())}"
                      ).to_arrow_table()
        con.close()
    cols = [c for c in tab.column_names if c != "seq"]
    return sorted((tuple(r[c] for c in cols) for r in tab.to_pylist()), key=repr)


def _ledger() -> pa.Schema:
    from mgaki.events.store import _LEDGER
    return _LEDGER


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = EventStore(a), EventStore(b)
    for t in TABLES:
        assert _rows(sa, t, True) == _rows(sb, t, True), t
        assert _rows(sa, t, False) == _rows(sb, t, False), t
    assert _rows(sa, "versions", False) == _rows(sb, "versions", False)
    assert sa.pending()[0] == sb.pending()[0]


def assert_same_summary(a: IngestSummary, b: IngestSummary) -> None:
    assert a.received == b.received and list(a.received) == list(b.received)
    assert a.added == b.added
    assert (a.quarantined, a.superseded, a.stale) == (b.quarantined, b.superseded, b.stale)
    assert a.quarantine_reasons == b.quarantine_reasons
    assert a.affected_subjects == b.affected_subjects
    assert a.identity_conflicts == b.identity_conflicts


def whole_and_chunked(src: Path, fmt: str, tmp: Path, chunk_rows: int, prior: Path | None = None,
                      ) -> tuple[IngestSummary, IngestSummary]:
    """Ingest `src` whole into store A and in chunks into store B (each first given `prior`, if any)."""
    a, b = tmp / "whole", tmp / "chunked"
    if prior is not None:
        for s in (a, b):
            EventStore(s).append(normalize(registry.read("csv", prior)))
    whole = EventStore(a).append(normalize(registry.read(fmt, src)))
    chunked = ingest_path(src, fmt, b, chunk_rows=chunk_rows)
    assert_same_store(a, b)
    assert_same_summary(whole, chunked)
    return whole, chunked


def _csv(path: Path, header: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(lines) + "\n")


EVENTS = "subject_id,encounter_id,time,code,value,unit,source"


def tricky_layout(root: Path) -> None:
    """Rows that depend on each other across a 3-row chunk boundary."""
    _csv(root / "events.csv", EVENTS, [
        "p1,e1,2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL,lab:1",
        "p1,e1,2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL,lab:1",          # duplicate in the same chunk
        "p1,e1,2024-01-01T11:00:00Z,LOINC/2160-0,1.1,mg/dL,Observation/7/_history/1",
        "p1,e1,2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL,lab:1",          # duplicate, next chunk
        "p1,e1,2024-01-01T11:00:00Z,LOINC/2160-0,1.4,mg/dL,Observation/7/_history/3",  # supersedes v1
        "p1,e1,2024-01-01T11:00:00Z,LOINC/2160-0,1.2,mg/dL,Observation/7/_history/2",  # older than v3: stale
        "p2,e2,2024-01-02T10:00:00Z,LOINC/2160-0,0.9,mg/dL,Observation/8/_history/1",
        "p1,e1,2024-01-01T12:00:00Z,LOINC/2160-0,45,mg/mL,",                 # quarantined: unit
        "p2,e2,2024-01-02T11:00:00Z,LOINC/2160-0,0.9,mg/dL,Observation/8/_history/2",
        "p3,e3,2024-01-02T10:00:00Z,LOINC/2160-0,0.7,mg/dL,Observation/8/_history/3",  # identity of p2: conflict
        "p1,e1,2024-01-01T13:00:00Z,LOINC/2160-0,high,mg/dL,",               # quarantined: value
        "p2,e2,2024-01-02T12:00:00Z,LOINC/2160-0,12,mg/mL,",                 # same kind as line 8, other chunk
        "p4,e4,2024-01-03T10:00:00Z,LOINC/2160-0,1.0,mg/dL,Observation/9/_history/1",
        "p5,e5,2024-01-03T10:00:00Z,LOINC/2160-0,1.0,mg/dL,Observation/9/_history/1",  # two patients, one id
        "p4,e4,2024-01-03T10:00:00Z,LOINC/2345-7,104,mg/dL,",                # glucose: not read
        "p4,e4,2024-01-03T12:00:00Z,LOINC/2160-0,1.3,mg/dL,",
        "p6,e6,yesterday,LOINC/2160-0,1.0,mg/dL,",                           # quarantined: time
        "p6,e6,2024-01-03T12:00:00Z,LOINC/29463-7,70,kg,",                   # a weight
        "p6,e6,2024-01-03T12:00:00Z,LOINC/29463-7,70,kg,lab:1",              # a weight sharing a source
    ])
    _csv(root / "encounters.csv", "subject_id,encounter_id,kind,start,end,parent_id,source", [
        f"p{i},e{i},inpatient,2024-01-01T00:00:00Z,2024-01-05T00:00:00Z,," for i in range(1, 7)] + [
        "p1,e1,inpatient,2024-01-01T00:00:00Z,2024-01-05T00:00:00Z,,",      # the same admission twice
        "p9,e9,inpatient,2024-01-05T00:00:00Z,2024-01-01T00:00:00Z,,"])     # ends before it starts
    _csv(root / "subjects.csv", "subject_id,sex,birth_year,source", [
        "p1,F,1950,", "p2,M,1960,", "p3,F,1800,", "p4,M,1970,"])


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 1000])
def test_chunked_ingest_equals_one_append(tmp_path: Path, chunk_rows: int) -> None:
    src = tmp_path / "src"
    tricky_layout(src)
    whole, _ = whole_and_chunked(src, "csv", tmp_path, chunk_rows)
    # the cases are really there: duplicates, versions, conflicts, quarantine kinds merged across chunks
    assert whole.duplicates["events"] >= 2 and whole.stale == 2  # versions 1 and 2 of Observation/7
    assert {c.identity for c in whole.identity_conflicts} == {"Observation/8", "Observation/9"}
    assert any(n == 2 and "mg/mL" in r for r, n in whole.quarantine_reasons.items())
    assert whole.added["weights"] == 2 and whole.received["encounters"] == 7


def test_chunked_ingest_into_a_store_that_has_data(tmp_path: Path) -> None:
    """Duplicates of rows stored earlier, versions superseding stored ones, identities of stored patients."""
    prior, src = tmp_path / "prior", tmp_path / "src"
    _csv(prior / "events.csv", EVENTS, [
        "p1,e1,2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL,lab:1",
        "p2,e2,2024-01-02T10:00:00Z,LOINC/2160-0,0.9,mg/dL,Observation/8/_history/1",
        "p1,e1,2024-01-01T11:00:00Z,LOINC/2160-0,1.1,mg/dL,"])
    tricky_layout(src)
    whole, _ = whole_and_chunked(src, "csv", tmp_path, 2, prior=prior)
    assert any(c.stored == "p2" for c in whole.identity_conflicts)


def test_reingesting_adds_nothing(tmp_path: Path) -> None:
    src, store = tmp_path / "src", tmp_path / "store"
    tricky_layout(src)
    first = ingest_path(src, "csv", store, chunk_rows=3)
    again = ingest_path(src, "csv", store, chunk_rows=5)
    assert sum(first.added.values()) > 0
    assert sum(again.added.values()) == 0 and again.received == first.received


def test_synthetic_cohort_with_dirty_rows(tmp_path: Path) -> None:
    """The demo's CSV layout (site units, planted dirty rows) of 40 patients, in chunks of 997 rows."""
    from mgaki.synth import generate, to_raw

    src = tmp_path / "src"
    src.mkdir()
    for name, tab in to_raw(generate(40, seed=3)).items():
        if name in ("events", "medications", "encounters", "subjects", "contexts"):
            pacsv.write_csv(tab, src / f"{name}.csv")
    whole, _ = whole_and_chunked(src, "csv", tmp_path, 997)
    assert whole.received["events"] > 3 * 997 and whole.quarantined > 0 and whole.received["medications"] > 0


def test_icu_shaped_cohort(tmp_path: Path) -> None:
    """benchmarks/icu_cohort.py's shape (hourly urine output, weights as events) written as the CSV layout."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from icu_cohort import chunk

    src = tmp_path / "src"
    write_csv_layout(chunk(0, 12, seed=18, open_share=0.5), src)
    whole, _ = whole_and_chunked(src, "csv", tmp_path, 1000)
    assert whole.added["events"] == 12 * 250 and whole.added["weights"] == 12
    # sources all generated: each chunk is compared with the parts stored before the ingest only
    again = ingest_path(src, "csv", tmp_path / "chunked", chunk_rows=700)
    assert sum(again.added.values()) == 0 and again.received["events"] == 12 * 250
    half = tmp_path / "half"  # a store holding the first 1,000 events rows: the rest is added, once
    EventStore(half).append(normalize(next(iter(iter_csv_layout(src, 1000))).tables))
    first = EventStore(half).counts()["events"]  # a few of the 1,000 rows are weights
    rest = ingest_path(src, "csv", half, chunk_rows=300)
    assert 990 < first < 1000 and rest.added["events"] == 12 * 250 - first and rest.duplicates["events"] == first
    assert_same_store(tmp_path / "whole", half)


def test_mimic_subset(tmp_path: Path) -> None:
    whole, _ = whole_and_chunked(MIMIC, "mimic", tmp_path, 50)
    assert whole.received["events"] > 200 and whole.received["medications"] > 50


def test_chunks_have_the_requested_size_and_file_order(tmp_path: Path) -> None:
    """Every chunk holds `chunk_rows` rows of one file (the last of a file fewer); rows keep their order."""
    _csv(tmp_path / "events.csv", "subject_id,time,code,value,unit",
         [f"p{i:03d},2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL" for i in range(23)])
    chunks = list(iter_csv_layout(tmp_path, 5))
    assert [c.rows for c in chunks] == [5, 5, 5, 5, 3]
    assert all(c.generated_sources for c in chunks)
    sources = [s for c in chunks for s in c.tables["events"].column("source").to_pylist()]
    subjects = [s for c in chunks for s in c.tables["events"].column("subject_id").to_pylist()]
    assert sources == [f"events.csv:{i}" for i in range(1, 24)] and subjects == [f"p{i:03d}" for i in range(23)]


def test_a_bad_file_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    from mgaki.errors import InputError

    src, store = tmp_path / "src", tmp_path / "store"
    tricky_layout(src)
    (src / "contexts.csv").write_text("subject_id,time\np1,2024-01-01\n")  # no context column
    with pytest.raises(InputError, match="missing column"):
        ingest_path(src, "csv", store, chunk_rows=2)
    assert not EventStore(store).files("events")


@pytest.mark.parametrize("reasons", [
    ["unknown unit 'mg/mL' for creatinine (known: mg/dL, umol/L)", "unknown unit 'g' for creatinine (known: x)",
     "non-numeric value 'high'", "non-numeric value 'x'", "creatinine 45 mg/mL (= 4.5 mg/dL) is outside 0.1 to 25",
     "creatinine 9 mg/mL (= 0.9 mg/dL) is outside 0.1 to 25", "unparseable time '2024-13-01'"],
])
def test_reason_kinds_merge_like_one_grouping(reasons: list[str]) -> None:
    """Merging per-chunk reason counts gives what grouping all rows at once gives (reason_kind = the SQL)."""
    con = duckdb.connect()
    whole = _reason_kinds(con, pa.table({"reason": reasons}))
    merged = IngestSummary()
    for i in range(0, len(reasons), 2):
        part = _reason_kinds(con, pa.table({"reason": reasons[i:i + 2]}))
        merged = merged.merge(IngestSummary(quarantine_reasons=part))
    assert merged.quarantine_reasons == whole
    assert len({reason_kind(r) for r in reasons}) == len(whole) == 4


def test_arrow_reader_reads_the_layout_as_duckdb_does(tmp_path: Path) -> None:
    """The documented dialect is read by Arrow's streaming reader; another (here ';') by DuckDB's sniffing
    read_csv. Both give the same RAW rows: quoted commas, quotes and line breaks, empty and quoted-empty
    fields (NULL), untrimmed spaces, a byte-order mark, CRLF line ends, a trailing empty line."""
    rows = [['"a,b"', "2024-01-01T10:00:00Z", "LOINC/2160-0", "1.0", "mg/dL", ""],
            ['"q""e"', " 2024-01-01T11:00:00Z ", '""', "", '"mg/dL"', '""'],
            ["x", '"2024-01-01\n12:00:00"', "LOINC/2160-0", " 1.0 ", "mg/dL", "s1"],
            ["NULL", "null", "", "NA", "\u00b5mol/L", ""],
            ["y", "2024-01-01T13:00:00Z", "", "0.9", "mg/dL", ""]]
    header = ["subject_id", "time", "code", "value", "unit", "source"]
    for sep, folder in ((",", "comma"), (";", "semicolon")):
        text = "\r\n".join(sep.join(r) for r in [header, *rows]) + "\r\n\r\n"
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "events.csv").write_text("\ufeff" + text, encoding="utf-8")
    comma, semi = (list(iter_csv_layout(tmp_path / f)) for f in ("comma", "semicolon"))
    assert comma[0].tables["events"].to_pylist() == semi[0].tables["events"].to_pylist()
    got = comma[0].tables["events"].to_pylist()
    assert [r["subject_id"] for r in got] == ["a,b", 'q"e', "x", "NULL", "y"]
    assert got[1]["code"] is None and got[1]["value"] is None and got[1]["time"] == " 2024-01-01T11:00:00Z "
    assert got[2]["time"] == "2024-01-01\n12:00:00" and got[2]["source"] == "s1" and got[3]["value"] == "NA"
    assert [r["source"] for r in got] == ["events.csv:1", "events.csv:2", "s1", "events.csv:4", "events.csv:5"]


@pytest.mark.parametrize("fmt", ["omop", "meds"])
def test_other_cohort_formats_stream_the_same(tmp_path: Path, fmt: str) -> None:
    """OMOP and MEDS (written from a synthetic cohort of 30) in chunks of 101 rows = whole (MIMIC: the subset)."""
    from mgaki.synth import generate

    src = tmp_path / "src"
    registry.write(fmt, generate(30, seed=5).tables, src)
    chunks = list(registry.read_chunks(fmt, src, 101))
    assert len(chunks) > 5 and max(c.size for c in chunks) == 101
    whole, _ = whole_and_chunked(src, fmt, tmp_path, 101)
    assert whole.received["events"] > 1000


def test_a_bad_line_midway_stops_with_the_chunks_before_it_stored(tmp_path: Path) -> None:
    """A line the CSV reader cannot read (past the first 8 MB block) is an InputError naming the file; the
    chunks before it are stored, and once the line is fixed, running the ingest again adds only the rest."""
    from mgaki.errors import InputError

    src, store = tmp_path / "src", tmp_path / "store"
    lines = [f"p{i:06d},2024-01-01T10:00:00Z,LOINC/2160-0,1.0,mg/dL" for i in range(220_000)]
    _csv(src / "events.csv", "subject_id,time,code,value,unit", [*lines[:210_000], "p,a,b,c,d,e,f", *lines[210_000:]])
    with pytest.raises(InputError, match=r"events\.csv: cannot be read as CSV"):
        ingest_path(src, "csv", store, chunk_rows=50_000)
    stored = EventStore(store).counts()["events"]
    assert 0 < stored < 220_000 and stored % 50_000 == 0
    _csv(src / "events.csv", "subject_id,time,code,value,unit", lines)
    s = ingest_path(src, "csv", store, chunk_rows=50_000)
    assert s.added["events"] == 220_000 - stored and EventStore(store).counts()["events"] == 220_000


def test_cli_prints_the_same_summary_for_any_chunk_size(tmp_path: Path) -> None:
    """`mgaki ingest --chunk-rows`: the printed summary (tables, quarantine kinds, versions, conflicts) is the
    same in chunks of 1,000 rows as in one chunk."""
    from typer.testing import CliRunner

    from mgaki.cli import app
    from mgaki.synth import generate, to_raw

    src = tmp_path / "src"
    src.mkdir()
    for name, tab in to_raw(generate(40, seed=3)).items():
        if name in ("events", "medications", "encounters", "subjects", "contexts"):
            pacsv.write_csv(tab, src / f"{name}.csv")
    out = {}
    for rows in (1000, 10_000_000):
        store = tmp_path / f"s{rows}"
        r = CliRunner().invoke(app, ["ingest", str(src), "-f", "csv", "-s", str(store), "--chunk-rows", str(rows)])
        assert r.exit_code == 0, r.output
        out[rows] = r.stdout.replace(str(store), "STORE")
    assert out[1000] == out[10_000_000] and "quarantined:" in out[1000] and "events" in out[1000]
