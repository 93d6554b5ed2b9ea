"""The surveillance stages on Spark (local mode) give DuckDB's outputs, row for row.

Same canonical tables into both engines; every output table compared after sorting
rows: identical schema, identical non-float values, floats within rel 1e-9 (the
engines may sum window frames in a different order). Skipped only without Java.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests.surveillance.build import Patient, tables
from tests.surveillance.cohort import random_cohort

from mgaki.events import EventStore
from mgaki.surveillance import SurveillanceResult, run, surveil
from mgaki.surveillance.pipeline import ResultTables
from mgaki.synth import generate

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime (java not on PATH)")

REL = 1e-9  # floats: relative tolerance between engines
ABS = 1e-12  # ... and absolute, for values that should be 0

if shutil.which("java") is not None:
    from pyspark.sql import SparkSession

    from mgaki.surveillance.spark import CANONICAL, run_spark, session


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    s = session("local[2]", shuffle_partitions=4, app="mgaki-tests")
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def _vignettes() -> dict[str, pa.Table]:
    """Patients from tests/surveillance/test_episodes_alerts.py, each under its own id, plus contexts."""
    ps = [
        Patient("V01", 20, "H01").ev("creatinine", (0, 1.0), (24, 1.2), (40, 1.6), (72, 2.2), (120, 3.1),
                                     (168, 1.8), (200, 1.3), (230, 1.1), (300, 1.2), (320, 1.6)),
        Patient("V02", encounter="H02").ev("creatinine", (-24 * 200, 0.8), (-24 * 100, 1.0), (-24 * 30, 0.9),
                                           (-24 * 3, 5.0), (2, 1.4), (30, 1.45)),
        Patient("V03", encounter="H03").ev("creatinine", (0, 1.0), (20, 1.4), (50, 2.0), (100, 1.0))
        .ev("rrt", (60, None)),
        Patient("V04", encounter="H04").icu(0, 48).weight(70)
        .ev("urine_output", *[(h, 60.0) for h in range(10)], *[(h, 0.0) for h in range(10, 23)])
        .ev("creatinine", (0, 1.0), (60, 1.0)),
        Patient("V05", encounter="H05").ev("magnesium", (0, 2.0), (24, 1.5), (48, 1.4), (72, 1.1), (96, 0.8),
                                           (120, 2.0), (144, 1.6)),
        Patient("V06", encounter="H06").ev("magnesium", (0, 2.4), (12, 2.2), (20, 2.05), (30, 1.9), (60, 1.8),
                                           (70, 1.5)),
        Patient("V07", encounter="H07").ev("potassium", (0, 3.1), (3, 3.2), (10, 3.0), (80, 3.3), (90, 3.2))
        .ev("magnesium", (1, 1.4)),
        Patient("V08", encounter="H08").icu(24, 200, "ICU8").ev("magnesium", (1, 2.0), (30, 2.0)),
        Patient("V09", encounter="H09").drug("cisplatin", 100).ev("magnesium", (1, 2.0)).context("cisplatin"),
        Patient("V10", 20, "H10").ev("creatinine", (0, 1.0), (30, 1.5), (50, 1.1), (70, 1.45), (90, 2.2),
                                     (140, 1.0)).context("cardiac-surgery").ev("magnesium", (2, 1.6), (30, 1.5)),
        Patient("V11", encounter="H11").icu(0, 100, "ICU11").weight(80).context("contrast")
        .ev("magnesium", (1, 1.5), (40, 2.6)).ev("creatinine", (0, 1.0), (24, 1.4), (48, 2.1))
        .ev("urine_output", *[(h, 20.0) for h in range(1, 14)]),
    ]
    return tables(*ps)


COHORTS = {
    "vignettes": _vignettes,
    "random": lambda: random_cohort(40, seed=5),
    "synthetic": lambda: generate(60, seed=3).tables,
}


def _key(v: object) -> tuple[bool, str]:
    return (v is None, f"{v:.8e}" if isinstance(v, float) else str(v))


def _sorted_rows(t: pa.Table) -> list[dict[str, object]]:
    return sorted(t.to_pylist(), key=lambda r: tuple(_key(v) for v in r.values()))


def assert_same(duck: dict[str, pa.Table], spark_out: dict[str, pa.Table]) -> int:
    """Every output: same schema, same rows; returns the number of rows compared."""
    assert duck.keys() == spark_out.keys()
    n = 0
    for name, a in duck.items():
        b = spark_out[name]
        assert a.schema == b.schema, f"{name}: schema\n{a.schema}\nvs\n{b.schema}"
        assert a.num_rows == b.num_rows, f"{name}: {a.num_rows} rows (DuckDB) vs {b.num_rows} (Spark)"
        for ra, rb in zip(_sorted_rows(a), _sorted_rows(b), strict=True):
            for col, x in ra.items():
                y = rb[col]
                if isinstance(x, float) and isinstance(y, float):
                    if math.isnan(x) or math.isnan(y):  # NaN is a value here (slope of one point), and equal to NaN
                        assert math.isnan(x) and math.isnan(y), f"{name}.{col}: {x} vs {y}\n{ra}"
                        continue
                    assert math.isclose(x, y, rel_tol=REL, abs_tol=ABS), f"{name}.{col}: {x} vs {y}\n{ra}"
                else:
                    assert x == y, f"{name}.{col}: {x!r} (DuckDB) vs {y!r} (Spark)\n{ra}\n{rb}"
            n += 1
    return n


def _duck(tmp: Path, canon: dict[str, pa.Table]) -> tuple[EventStore, SurveillanceResult]:
    store = EventStore(tmp)
    store.append(canon)
    return store, run(store)


def _prefixed(name: str, canon: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The cohort's ids under `name/` so several cohorts share one run (stays are keyed by id alone)."""
    out = {}
    for t, given in canon.items():
        tab = given
        for col in ("subject_id", "encounter_id", "parent_id"):
            if col in tab.column_names:
                tab = tab.set_column(tab.schema.get_field_index(col), col,
                                     pc.binary_join_element_wise(pa.scalar(name), tab.column(col), "/"))
        out[t] = tab
    return out


@pytest.fixture(scope="module")
def both(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[SurveillanceResult,
                                                                                   SurveillanceResult]:
    """All cohorts in one run per engine (one Spark job graph, not three: the suite stays short)."""
    parts = [_prefixed(name, make()) for name, make in COHORTS.items()]
    canon = {t: pa.concat_tables([p[t] for p in parts if t in p]) for t in CANONICAL}
    store, duck = _duck(tmp_path_factory.mktemp("both"), canon)
    return duck, run_spark({t: store.read(t) for t in CANONICAL}, spark, as_of=duck.as_of)


@pytest.mark.parametrize("output", ["kdigo_creatinine", "kdigo_urine", "aki_episodes", "aki_stage_changes",
                                    "mg_trajectory", "evidence_flags", "alerts"])
def test_spark_equals_duckdb_row_for_row(output: str, both: tuple[SurveillanceResult, SurveillanceResult]) -> None:
    duck, got = both
    assert set(got.tables) == set(duck.tables)
    n = assert_same({output: duck.tables[output]}, {output: got.tables[output]})
    assert n >= 5
    # every cohort reaches this output
    prefixes = {str(s).split("/")[0] for s in duck.tables[output].column("subject_id").to_pylist()}
    assert prefixes == set(COHORTS) or (output == "evidence_flags" and len(prefixes) >= 2)


def test_vignettes_cover_every_alert_kind_and_evidence(tmp_path: Path) -> None:
    """Guards the vignette cohort itself: the equivalence above is only as good as what it contains."""
    _, duck = _duck(tmp_path, _vignettes())
    kinds = set(duck.tables["alerts"].column("kind").to_pylist())
    assert kinds == {"mg_out_of_range", "mg_grade_worsened", "mg_falling", "aki_onset", "aki_worsening",
                     "refractory_k_ca", "no_mg_48h"}
    assert duck.tables["evidence_flags"].num_rows >= 2


def test_parquet_paths_and_as_of_from_the_data(spark: SparkSession, tmp_path: Path) -> None:
    """Parquet files in (as on a cluster), as-of computed by Spark: still DuckDB's outputs."""
    store, duck = _duck(tmp_path, random_cohort(15, seed=9))
    got = run_spark({t: store.files(t) for t in CANONICAL}, spark, outputs=("kdigo_creatinine", "mg_trajectory"))
    assert got.as_of == duck.as_of
    assert assert_same({k: duck.tables[k] for k in ("kdigo_creatinine", "mg_trajectory")}, got.tables) > 20
    with pytest.raises(ValueError, match="unknown surveillance output"):
        run_spark({}, spark, outputs=("kdigo",))


class _Crash(RuntimeError):
    pass


def _complete(ckpt: Path) -> dict[str, int]:
    """Stages whose Parquet is complete (Spark's _SUCCESS marker), with the marker's write time."""
    return {p.parent.name: p.stat().st_mtime_ns for p in ckpt.glob("*/_SUCCESS") if p.parent.name != "_mgaki_manifest"}


def test_checkpointed_run_resumes_after_a_failure(spark: SparkSession, tmp_path: Path) -> None:
    """A run that dies after some stages restarts from their Parquet and still gives DuckDB's outputs."""
    store, duck = _duck(tmp_path / "store", random_cohort(20, seed=11))
    files = {t: store.files(t) for t in CANONICAL}
    ckpt = tmp_path / "ckpt"
    done: list[str] = []

    def crash_after_kdigo(stage: str, i: int, n: int) -> None:
        done.append(stage)
        if stage == "kdigo_creatinine":
            raise _Crash(stage)

    with pytest.raises(_Crash):
        run_spark(files, spark, as_of=duck.as_of, checkpoint_dir=ckpt, progress=crash_after_kdigo)
    written = _complete(ckpt)
    assert "kdigo_creatinine" in written and "alerts" not in written  # stopped part-way
    assert set(written) <= set(done)

    got = run_spark(files, spark, as_of=duck.as_of, checkpoint_dir=ckpt)
    assert_same(duck.tables, got.tables)
    after = _complete(ckpt)
    assert {k: after[k] for k in written} == written  # complete stages were read, not recomputed
    assert {"alerts", "mg_trajectory", "kdigo_urine"} <= set(after)

    # collect=False: nothing to the driver, the outputs stay as Parquet (internal epoch columns included)
    kept = run_spark(files, spark, as_of=duck.as_of, checkpoint_dir=ckpt, collect=False)
    assert kept.tables == {} and _complete(ckpt) == after
    on_disk = pq.read_table(ckpt / "alerts")
    on_disk = on_disk.drop_columns([c for c in ("t", "src") if c in on_disk.column_names])
    assert_same({"alerts": duck.tables["alerts"]}, {"alerts": on_disk.cast(duck.tables["alerts"].schema)})
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        run_spark(files, spark, collect=False)

    # the folder belongs to that run: another as_of is refused, not mixed in
    with pytest.raises(ValueError, match="holds stages of another run"):
        run_spark(files, spark, as_of=datetime(2030, 1, 1), checkpoint_dir=ckpt)  # noqa: DTZ001 (naive UTC)


def test_cli_surveil_engine_spark_is_quiet_and_writes_what_duckdb_writes(tmp_path: Path) -> None:
    """`mgaki surveil --engine spark` (a fresh JVM: the log config applies at start) writes DuckDB's results and
    alert log. It used to print ~410 log lines, two of them Janino codegen ERROR traces (Spark's runtime bloom
    filter); now errors only, and none."""
    import subprocess
    import sys

    canon = random_cohort(6, seed=4)
    a, b = EventStore(tmp_path / "a"), EventStore(tmp_path / "b")
    a.append(canon)
    b.append(canon)
    surveil(a)
    r = subprocess.run([sys.executable, "-m", "mgaki", "surveil", "--store", str(tmp_path / "b"), "--engine", "spark",
                        "--spark-master", "local[2]"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERROR" not in r.stderr and "Exception" not in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.splitlines()) < 15, r.stderr[-3000:]
    res_a, res_b = (ResultTables(s.root / "results") for s in (a, b))
    for name in ("kdigo_creatinine", "aki_episodes", "mg_trajectory"):
        assert_same({name: res_a[name]}, {name: res_b[name]})
    log_a, log_b = (r["alerts"].drop(["emitted_at"]) for r in (res_a, res_b))
    assert log_b.num_rows > 0
    assert_same({"alerts": log_a}, {"alerts": log_b})
