"""The study cohort on Spark (local mode) is DuckDB's, row for row.

The same canonical tables and surveillance outputs go into `build_cohort` on both
engines; the analysis frame (in its order), the time-varying Cox table and the
cohort flow are compared: identical columns and dtypes, identical non-float values
and flow counts, floats within rel 1e-9 (eGFR's pow and the per-hour Mg average may
round differently across engines). Skipped only without Java.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from mgaki.events import EventStore
from mgaki.research import StudyConfig, build_cohort, connect_tables
from mgaki.research.cohort import ALTERNATIVE, StudyCohort
from mgaki.surveillance import URINE_ANALYTES, run
from mgaki.synth import generate

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime (java not on PATH)")

REL = 1e-9  # floats: relative tolerance between engines
ABS = 1e-12

if shutil.which("java") is not None:
    from pyspark.sql import SparkSession

    from mgaki.research.cohort import spark_tables
    from mgaki.surveillance.spark import session

MIMIC = Path(__file__).parents[1] / "data" / "mimic-iv-demo-subset"

CONFIGS = {
    "default": StudyConfig(),
    # creatinine not required: admissions without one have no eGFR, which must not exclude them; a child stays
    "loose": StudyConfig(require_creatinine=False, min_age_years=None, exclude_aki_at_entry=False),
    "creatinine": StudyConfig(outcome_definition="creatinine"),
}


@dataclass
class Data:
    tables: dict[str, pa.Table]
    results: dict[str, pa.Table]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    s = session("local[2]", shuffle_partitions=4, app="mgaki-tests-study")
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def data() -> Data:
    """300 synthetic patients with the planted Mg-AKI link (so outcomes exist), plus a child, RRT at entry
    (at a sub-second time) and ten patients without creatinine (unknown eGFR)."""
    t = dict(generate(300, seed=4, plant_mg_aki=True).tables)
    subj = t["subjects"]
    by = pc.if_else(pc.equal(subj["subject_id"], "S0000001"), pa.scalar(2020, pa.int32()), subj["birth_year"])
    t["subjects"] = subj.set_column(subj.schema.get_field_index("birth_year"), "birth_year", by)
    enc = t["encounters"].filter(pc.equal(t["encounters"]["encounter_id"], "A0000002")).to_pylist()[0]
    rrt = pa.Table.from_pylist([{"subject_id": "S0000002", "encounter_id": "A0000002",
                                 "time": enc["start"] + timedelta(hours=2, microseconds=250_000),
                                 "code": "SNOMED/714749008", "analyte": "rrt", "numeric_value": None, "unit": None,
                                 "source": "test"}], schema=t["events"].schema)
    ev = pa.concat_tables([t["events"], rrt])
    no_cr = pa.array([f"S{i:07d}" for i in range(3, 13)], pa.string())
    t["events"] = ev.filter(pc.invert(pc.and_(pc.equal(ev["analyte"], "creatinine"),
                                             pc.is_in(ev["subject_id"], no_cr))))
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d))
        store.append(t)
        res = run(store)
        # the creatinine-only episodes: the sens_* columns (and outcome_definition: creatinine) are compared too
        res.tables[ALTERNATIVE] = run(store, outputs=("aki_episodes_out",),
                                      exclude_analytes=URINE_ANALYTES).tables["aki_episodes"]
    return Data(t, res.tables)


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str) -> int:
    """Same columns and dtypes, same rows in the same order; floats within REL/ABS. Returns rows compared."""
    assert list(a.columns) == list(b.columns), what
    assert a.dtypes.astype(str).tolist() == b.dtypes.astype(str).tolist(), f"{what}: dtypes\n{a.dtypes}\n{b.dtypes}"
    assert len(a) == len(b), f"{what}: {len(a)} rows (DuckDB) vs {len(b)} (Spark)"
    for i, (ra, rb) in enumerate(zip(a.astype(object).to_dict("records"), b.astype(object).to_dict("records"),
                                     strict=True)):
        for col, x in ra.items():
            y = rb[col]
            if pd.isna(x) or pd.isna(y):
                assert pd.isna(x) and pd.isna(y), f"{what}[{i}].{col}: {x!r} (DuckDB) vs {y!r} (Spark)"
            elif isinstance(x, float):
                assert math.isclose(x, y, rel_tol=REL, abs_tol=ABS), f"{what}[{i}].{col}: {x} vs {y}"
            else:
                assert x == y, f"{what}[{i}].{col}: {x!r} (DuckDB) vs {y!r} (Spark)"
    return len(a)


def assert_same_cohort(duck: StudyCohort, sp: StudyCohort) -> None:
    assert [s.__dict__ for s in sp.flow] == [s.__dict__ for s in duck.flow]
    assert sp.all_admissions == duck.all_admissions
    assert list(sp.frame["mg_band"].cat.categories) == list(duck.frame["mg_band"].cat.categories)
    assert assert_frames_equal(duck.frame, sp.frame, "frame") == duck.flow[-1].remaining
    assert_frames_equal(duck.time_varying, sp.time_varying, "time_varying")
    assert_frames_equal(duck.admissions, sp.admissions, "admissions")
    assert sp.has_alternative == duck.has_alternative


@pytest.mark.parametrize("name", list(CONFIGS))
def test_spark_cohort_equals_duckdb_row_for_row(name: str, data: Data, spark: SparkSession) -> None:
    cfg = CONFIGS[name]
    duck = build_cohort(connect_tables(data.tables), data.results, cfg)
    spark_tables(spark, data.tables)
    got = build_cohort(spark, data.results, cfg, engine="spark")
    assert_same_cohort(duck, got)
    # the comparison has something to compare: exclusions, outcomes and Mg steps with AKI events
    flow = {s.label: s.excluded for s in duck.flow}
    f = duck.frame
    assert sum(flow.values()) > 0 and len(f) >= 20 and f["aki"].sum() >= 5 and f["egfr"].notna().any()
    assert len(duck.time_varying) > len(f) and duck.time_varying["event"].sum() >= 5
    assert f["sens_aki"].notna().all() and f["index_hours"].notna().all()
    if name == "default":
        assert flow["age >= 18 years (age and sex known)"] == 1 and flow["no RRT at entry"] == 1
    elif name == "loose":
        # admissions without creatinine are kept, with no eGFR (not one computed from a missing value)
        assert f["admission_creatinine"].isna().any()
        assert (f["egfr"].isna() == (f["admission_creatinine"].isna() | ~f["sex"].isin(["female", "male"]))).all()


def test_spark_cohort_refuses_a_duckdb_connection(data: Data) -> None:
    from mgaki.errors import InputError

    with pytest.raises(InputError, match="needs a SparkSession"):
        build_cohort(connect_tables(data.tables), data.results, engine="spark")


def test_cli_study_engine_spark_gives_duckdbs_cohort(spark: SparkSession, tmp_path: Path) -> None:
    """`mgaki study --engine spark` (surveillance and cohort on Spark) on the MIMIC demo subset: DuckDB's cohort."""
    from mgaki.cli import app

    runner = CliRunner()
    store = tmp_path / "store"
    assert runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)]).exit_code == 0
    cfg = tmp_path / "study.yaml"
    cfg.write_text("bootstrap_reps: 20\nprediction: false\n")
    outs = {}
    for engine in ("duckdb", "spark"):
        r = runner.invoke(app, ["study", "--store", str(store), "--out", str(tmp_path / engine), "--config",
                                str(cfg), "--json", "--engine", engine, "--spark-master", "local[2]"])
        assert r.exit_code == 0, r.output
        outs[engine] = json.loads(r.stdout)
    duck, sp = outs["duckdb"], outs["spark"]
    assert sp["flow"] == duck["flow"] and sp["n"] == duck["n"] > 0 and sp["events"] == duck["events"]
    frames = {e: pd.read_parquet(tmp_path / e / "cohort.parquet") for e in outs}
    assert assert_frames_equal(frames["duckdb"], frames["spark"], "cohort.parquet") == duck["n"]
