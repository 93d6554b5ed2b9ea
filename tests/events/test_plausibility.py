"""When a record can have happened (issue 16 point 6): the time window and birth dates of ``events.normalize``,
the same for batch ingest and the service; the window is data (``units.yaml`` ``plausibility``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from mgaki.events import RAW, normalize
from mgaki.events.normalize import time_window
from mgaki.knowledge import load


def _events(*times: str) -> pa.Table:
    n = len(times)
    return pa.table({"subject_id": ["p1"] * n, "encounter_id": ["e1"] * n, "time": list(times),
                     "code": ["LOINC/19123-9"] * n, "analyte": ["magnesium"] * n, "value": ["1.8"] * n,
                     "unit": ["mg/dL"] * n, "source": [f"s{i}" for i in range(n)]}, schema=RAW["events"])


def test_the_window_is_the_knowledge_base_s() -> None:
    kb = load()
    w = time_window(kb)
    assert (w.start, w.end, w.birth_min) == (datetime(int(kb.value("time_window_start_year")), 1, 1, tzinfo=UTC),
                                             datetime(int(kb.value("time_window_end_year")), 1, 1, tzinfo=UTC),
                                             int(kb.value("birth_year_min")))
    assert kb.threshold("time_window_end_year").source.verification == "design"
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    assert time_window(kb, now).end == datetime(2026, 12, 7, 5, 0, tzinfo=UTC)  # + live_feed_future_tolerance_hours


def test_placeholder_times_are_quarantined_in_batch_and_shifted_dates_kept() -> None:
    """A batch (no clock): 0001 and 9999 out, a MIMIC-style date-shifted 2150 in; an unparseable time keeps its
    own reason."""
    out = normalize({"events": _events("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2150-06-01T08:00:00Z",
                                       "1899-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "2024-02-30T00:00:00Z")})
    assert sorted(t.year for t in out["events"].column("time").to_pylist()) == [1900, 2150]
    reasons = sorted(out["quarantine"].column("reason").to_pylist())
    assert reasons == [
        "time '0001-01-01T00:00:00Z' is outside the plausible window 1900-01-01 to 2300-01-01",
        "time '1899-12-31T23:59:59Z' is outside the plausible window 1900-01-01 to 2300-01-01",
        "time '9999-12-31T23:59:59Z' is outside the plausible window 1900-01-01 to 2300-01-01",
        "unparseable time '2024-02-30T00:00:00Z'"]


def test_a_live_feed_refuses_what_is_dated_after_its_clock() -> None:
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    raw = {"events": _events("2026-12-07T04:59:59Z", "2026-12-07T05:00:00Z", "2150-06-01T08:00:00Z")}
    out = normalize(raw, now=now)
    assert [t.isoformat() for t in out["events"].column("time").to_pylist()] == ["2026-12-07T04:59:59"]
    assert sorted(out["quarantine"].column("reason").to_pylist())[0].endswith(
        "is outside the plausible window 1900-01-01 to 2026-12-07 05:00 UTC")
    assert normalize(raw)["events"].num_rows == 3  # the same rows in a batch: a research set may be shifted


def test_every_dated_table_has_the_window() -> None:
    bad = "9999-01-01T00:00:00Z"
    raw = {
        "medications": pa.table({"subject_id": ["p1", "p1"], "encounter_id": ["e1", "e1"],
                                 "start": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"], "end": [None, bad],
                                 "name": ["magnesium sulfate"] * 2, "rxcui": [None, None], "route": ["iv"] * 2,
                                 "dose_value": ["2", "2"], "dose_unit": ["g", "g"], "source": ["m1", "m2"]},
                                schema=RAW["medications"]),
        "encounters": pa.table({"subject_id": ["p1", "p1"], "encounter_id": ["e1", "e2"], "kind": ["inpatient"] * 2,
                                "start": ["2024-01-01T00:00:00Z", "0001-01-01T00:00:00Z"], "end": [None, None],
                                "parent_id": [None, None], "source": ["x1", "x2"]}, schema=RAW["encounters"]),
        "contexts": pa.table({"subject_id": ["p1", "p1"], "encounter_id": ["e1", "e1"],
                              "time": ["2024-01-01T00:00:00Z", bad], "context": ["icu", "icu"],
                              "source": ["c1", "c2"]}, schema=RAW["contexts"]),
    }
    out = normalize(raw)
    assert [out[t].num_rows for t in ("medications", "encounters", "contexts")] == [1, 1, 1]
    by_table = {r["table"]: r["reason"] for r in out["quarantine"].to_pylist()}
    assert by_table == {"medications": f"end '{bad}' is outside the plausible window 1900-01-01 to 2300-01-01",
                        "encounters": "start '0001-01-01T00:00:00Z' is outside the plausible window 1900-01-01 to "
                                      "2300-01-01",
                        "contexts": f"time '{bad}' is outside the plausible window 1900-01-01 to 2300-01-01"}


@pytest.mark.parametrize("birth_date, birth_year, kept, reason", [
    ("1950-02-28", None, 1950, None), ("1950-02", None, 1950, None), ("1950", None, 1950, None),
    (None, 1950, 1950, None), (None, None, None, None),
    ("1950-02-30", None, None, "birth date '1950-02-30' is not a date"),
    ("02/03/1950", None, None, "birth date '02/03/1950' is not a date"),
    ("2999-01-01", None, None, "birth date '2999-01-01' is outside the plausible range 1850 to 2300-01-01"),
    (None, 2999, None, "birth date '2999' is outside the plausible range 1850 to 2300-01-01"),
    ("1820-05-01", None, None, "birth date '1820-05-01' is outside the plausible range 1850 to 2300-01-01"),
])
def test_birth_dates(birth_date: str | None, birth_year: int | None, kept: int | None, reason: str | None) -> None:
    raw = {"subjects": pa.table({"subject_id": ["p1"], "sex": ["F"], "birth_year": [birth_year],
                                 "source": ["pt"], "birth_date": [birth_date]}, schema=RAW["subjects"])}
    out = normalize(raw)
    if reason is None:
        assert out["subjects"].to_pylist() == [{"subject_id": "p1", "sex": "female", "birth_year": kept,
                                                "source": "pt"}]
        assert out["quarantine"].num_rows == 0
    else:
        assert out["subjects"].num_rows == 0
        assert out["quarantine"].to_pylist()[0]["reason"] == reason


def test_a_birth_date_after_the_service_clock_is_refused() -> None:
    raw = {"subjects": pa.table({"subject_id": ["p1"], "sex": ["F"], "birth_year": [None], "source": ["pt"],
                                 "birth_date": ["2027-01-05"]}, schema=RAW["subjects"])}
    assert normalize(raw)["subjects"].num_rows == 1
    out = normalize(raw, now=datetime(2026, 12, 6, tzinfo=UTC))
    assert out["subjects"].num_rows == 0 and "outside the plausible range 1850 to 2026-12-07" in \
        out["quarantine"].column("reason")[0].as_py()
