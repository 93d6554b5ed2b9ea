"""The CLI's surveillance summary is counted by DuckDB over the stored results (issue 18: `mgaki surveil`
on a large store no longer reads whole tables into Python); its counts equal those of the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from tests.surveillance.cohort import random_cohort

from mgaki.events import EventStore
from mgaki.surveillance import pipeline, surveil


def _by_python(tables: Any) -> dict[str, Any]:
    eps = tables["aki_episodes"].to_pylist()
    sus = tables["suspect_specimens"].to_pylist()
    return {
        "mg_encounters": tables["mg_trajectory"].num_rows,
        "not_staged_dialysis": sum(1 for r in tables["kidney_status"].to_pylist()
                                   if r["kdigo_status"] != "applicable"),
        "baseline_rules": sorted({e["baseline_rule"] for e in eps if e.get("baseline_rule")}),
        "weights_rejected": tables["uo_weight_rejected"].num_rows,
        "episodes": len(eps), "peak_stage": {s: sum(1 for e in eps if e["peak_stage"] == s) for s in (1, 2, 3)},
        "recovered": sum(1 for e in eps if e["recovered"]),
        "evidence_flags": tables["evidence_flags"].num_rows,
        "suspect_specimens": {k: sum(1 for r in sus if r["kind"] == k) for k in sorted({r["kind"] for r in sus})},
    }


def test_summary_counts_equal_the_tables_with_generations_pending(tmp_path: Path) -> None:
    tables = random_cohort(40, seed=31)
    ev = tables["events"]
    half = ev.slice(0, ev.num_rows // 2)
    store = EventStore(tmp_path / "s")
    store.append({**tables, "events": half})
    surveil(store)
    store.append({"events": ev})
    res = surveil(store)  # incremental: the recomputed subjects' rows are a generation
    assert pipeline._gens(store.root / "results"), "the summary reads generations too"
    got = pipeline.summary(res.tables)
    want = _by_python(res.tables)
    assert want["episodes"] > 0 and want["mg_encounters"] > 0
    assert got == want
    # a mapping of Arrow tables gives the same counts
    plain = {name: res.tables[name] for name in pipeline.RESULT_TABLES}
    assert pipeline.summary(plain) == want
    # a table the results lack is None, not zero
    del plain["suspect_specimens"]
    assert pipeline.summary(plain)["suspect_specimens"] is None
    assert isinstance(plain["aki_episodes"], pa.Table)
