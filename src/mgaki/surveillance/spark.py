"""The surveillance stages on Apache Spark: the same SQL as DuckDB, run through `spark.sql`.

Nothing here restates a rule: the stages come from `stages(kb, SPARK, as_of)`, the
plan and the freeing of intermediates from `pipeline.needed`/`last_use`. What this
module adds is the Spark side of the contract: canonical tables become temp
views, times are naive UTC (TIMESTAMP_NTZ, session time zone UTC), and
double-quoted names are identifiers (ANSI), as in DuckDB. docs/spark.md covers
running it on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time as _time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pyarrow as pa

from mgaki.events import EventStore
from mgaki.events.schema import TABLES
from mgaki.knowledge import KnowledgeBase, load
from mgaki.surveillance.dialect import SPARK
from mgaki.surveillance.pipeline import (
    OUTPUTS,
    RESULT_NAMES,
    FullRun,
    Progress,
    SurveillanceResult,
    _drop_internal,
    _reads,
    last_use,
    needed,
    studies_table,
)
from mgaki.surveillance.stages import OPEN_END, Stage, stages

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["CANONICAL", "SESSION_CONF", "run_spark", "session", "store_runner"]

CANONICAL = ("events", "encounters", "weights", "medications", "contexts")
# What the shared SQL assumes of the engine; set on the session by run_spark.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",  # epoch seconds of a naive time are its UTC reading
    "spark.sql.timestampType": "TIMESTAMP_NTZ",  # CAST(... AS TIMESTAMP) is naive, like the inputs
    "spark.sql.ansi.enabled": "true",
    "spark.sql.ansi.doubleQuotedIdentifiers": "true",  # "end" is a column, as in DuckDB
    # Spark 4.x's runtime bloom filters generate Java that its Janino compiler rejects on the evidence join
    # ('Expression "java.lang.Long" is not an rvalue': two ERROR traces per run, then a fallback to
    # interpreted code with the same rows). The filtered tables here are small: nothing is lost without it.
    "spark.sql.optimizer.runtime.bloomFilter.enabled": "false",
}
# mgaki's Spark log: errors only unless MGAKI_SPARK_LOG says otherwise (the file's header)
LOG_CONFIG = Path(__file__).with_name("spark_log4j2.properties")

Source: TypeAlias = pa.Table | str | Path | Sequence[str | Path]  # Arrow, or Parquet file(s)/folder(s)/URL(s)


def session(master: str = "local[2]", shuffle_partitions: int = 4, app: str = "mgaki-surveillance",
            extra: Mapping[str, str] | None = None) -> SparkSession:
    """A Spark session configured for the stages (local mode by default; any master URL works)."""
    from pyspark.sql import SparkSession

    b = SparkSession.builder.master(master).appName(app)
    conf = {**SESSION_CONF, "spark.sql.shuffle.partitions": str(shuffle_partitions),
            "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}",
            **(extra or {})}
    for k, v in conf.items():
        b = b.config(k, v)
    return b.getOrCreate()


def _frame(spark: SparkSession, name: str, src: Source | None) -> DataFrame:
    """A canonical table as a DataFrame: Arrow in memory, or Parquet at a path/URL (s3a://, abfss://, ...)."""
    schema = TABLES[name]
    if src is None:
        return spark.createDataFrame(schema.empty_table())
    if isinstance(src, pa.Table):
        return spark.createDataFrame(src.select(schema.names).cast(schema))
    paths = [str(src)] if isinstance(src, str | Path) else [str(p) for p in src]
    if not paths:
        return spark.createDataFrame(schema.empty_table())
    df = spark.read.parquet(*paths)
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise ValueError(f"{src}: Parquet for table {name!r} lacks column(s) {missing}")
    return df.select(*schema.names)


def _as_of(spark: SparkSession) -> datetime | None:
    row = spark.sql("""SELECT greatest((SELECT max(time) FROM events), (SELECT max(start) FROM medications),
                                       (SELECT max(greatest(start, coalesce("end", start))) FROM encounters))"""
                    ).collect()[0][0]
    return row if isinstance(row, datetime) else None


def run_spark(tables: Mapping[str, Source], spark: SparkSession, outputs: Iterable[str] = OUTPUTS,
              as_of: datetime | None = None, kb: KnowledgeBase | None = None,
              progress: Progress | None = None, eager: bool = False,
              checkpoint_dir: str | Path | None = None, collect: bool = True,
              exclude_analytes: Iterable[str] = ()) -> SurveillanceResult:
    """Compute the surveillance outputs on Spark from canonical tables (Arrow tables or Parquet paths).

    `exclude_analytes` leaves those analytes' events out, as in `mgaki.surveillance.run`.

    A stage read by more than one later stage (or an output read again) is materialised as an eager
    local checkpoint; the others stay views that Spark plans into their reader. `eager=True`
    materialises every stage, so `seconds` holds each stage's own cost (benchmarks). A stage's data
    is released (view dropped) after its last reader. Tables not given are empty.

    `checkpoint_dir` (a local path or a URL such as ``s3a://...``) makes the run restartable: every
    materialised stage and every output is written there as Parquet (``<dir>/<stage>/``, complete when
    Spark's ``_SUCCESS`` marker is there) instead of held by the executors, and a rerun with the same
    folder reads the complete stages instead of computing them. The folder is tied to one run's inputs,
    `as_of` and stage SQL (a manifest is checked): a mismatch is an error, never a silent mix.
    `collect=False` (with `checkpoint_dir`) leaves the outputs there as Parquet instead of bringing them
    to the driver: the way to run cohorts whose outputs do not fit the driver's memory.
    """
    if not collect and checkpoint_dir is None:
        raise ValueError("collect=False needs a checkpoint_dir: the outputs would be computed and lost")
    kb = kb or load()
    outputs = tuple(outputs)
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown surveillance output(s) {sorted(unknown)}; known: {', '.join(OUTPUTS)}")
    extra = set(tables) - set(TABLES)
    if extra:
        raise ValueError(f"unknown canonical table(s) {sorted(extra)}; known: {', '.join(TABLES)}")
    for k, v in SESSION_CONF.items():
        spark.conf.set(k, v)
    drop = sorted(set(exclude_analytes))
    for name in CANONICAL:
        df = _frame(spark, name, tables.get(name))
        if name == "events" and drop:
            df = df.filter(~df["analyte"].isin(drop))
        df.createOrReplaceTempView(name)
    spark.createDataFrame(studies_table(kb)).createOrReplaceTempView("studies")
    as_of = as_of or _as_of(spark)
    as_of_epoch = int(as_of.replace(tzinfo=UTC).timestamp()) if as_of else OPEN_END
    plan = needed(stages(kb, SPARK, as_of_epoch), outputs)
    done_after = last_use(plan, outputs)
    readers = {st.name: sum(1 for o in plan if _reads(o, st)) for st in plan}
    held: dict[str, DataFrame] = {}
    seconds: dict[str, float] = {}
    sc = spark.sparkContext
    ckpt = _Checkpoints(spark, str(checkpoint_dir).rstrip("/"), _manifest(tables, as_of_epoch, plan)) \
        if checkpoint_dir is not None else None
    try:
        for i, st in enumerate(plan):
            t0 = _time.perf_counter()
            sc.setJobDescription(f"mgaki {st.name}")  # the Spark UI (and its REST API) names jobs by stage
            if ckpt and (eager or readers[st.name] > 1 or st.output):
                df = ckpt.stage(st.name, st.sql)
            elif ckpt is None and (eager or readers[st.name] > 1 or (st.output and readers[st.name])):
                # read again later: materialise once, and cut the lineage so later plans stay small
                df = spark.sql(st.sql).localCheckpoint(eager=True)
            else:
                df = spark.sql(st.sql)
            df.createOrReplaceTempView(st.name)
            held[st.name] = df
            for name in done_after.get(st.name, ()):  # no later stage reads it: its data can be collected
                held.pop(name)
                spark.catalog.dropTempView(name)
            seconds[st.name] = _time.perf_counter() - t0
            if progress:
                progress(st.name, i + 1, len(plan))
        result: dict[str, pa.Table] = {}
        for n in outputs if collect else ():
            t0 = _time.perf_counter()
            sc.setJobDescription(f"mgaki {n}")
            result[RESULT_NAMES.get(n, n)] = _nullable(_drop_internal(held[n].toArrow()))
            seconds[n] += _time.perf_counter() - t0
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]  # pyspark resets the property on None
        for name in held:
            spark.catalog.dropTempView(name)
    alerts = result["alerts"] if "alerts" in result else pa.table({})
    return SurveillanceResult(result, alerts, -1, as_of, seconds)


def _manifest(tables: Mapping[str, Source], as_of_epoch: int, plan: Sequence[Stage]) -> str:
    """What a checkpoint folder belongs to: the inputs (paths, or Arrow row counts), as_of, the stage SQL."""
    def source(src: Source) -> object:
        if isinstance(src, pa.Table):
            return {"arrow_rows": src.num_rows, "schema": str(src.schema)}
        return [str(src)] if isinstance(src, str | Path) else [str(p) for p in src]
    body = {"inputs": {k: source(v) for k, v in sorted(tables.items())}, "as_of": as_of_epoch,
            "stages": [[st.name, st.sql] for st in plan]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class _Checkpoints:
    """Stage outputs as Parquet in one folder (any Hadoop file system), reused by a rerun of the same run."""

    def __init__(self, spark: SparkSession, root: str, manifest: str) -> None:
        self.spark, self.root = spark, root
        jvm = spark.sparkContext._jvm
        if jvm is None:
            raise ValueError("checkpoint_dir needs a classic Spark session (a JVM driver), not Spark Connect")
        self._path = jvm.org.apache.hadoop.fs.Path
        self._fs = self._path(root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        marker = f"{root}/_mgaki_manifest"
        if self._exists(marker):
            found = spark.read.text(marker).collect()[0][0]
            if found != manifest:
                raise ValueError(f"checkpoint folder {root} holds stages of another run (other inputs, as_of or "
                                 "stage definitions): use a fresh folder, or delete this one")
        else:
            spark.createDataFrame([(manifest,)], "m STRING").coalesce(1).write.mode("overwrite").text(marker)

    def _exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._path(path)))

    def stage(self, name: str, sql: str) -> DataFrame:
        """The stage read from its complete Parquet, else computed, written and read back."""
        path = f"{self.root}/{name}"
        if not self._exists(f"{path}/_SUCCESS"):
            self.spark.sql(sql).write.mode("overwrite").parquet(path)
        return self.spark.read.parquet(path)


def _nullable(tab: pa.Table) -> pa.Table:
    """Spark marks columns it proves non-null; DuckDB never does. The outputs keep DuckDB's schema."""
    return tab.cast(pa.schema([f.with_nullable(True) for f in tab.schema]))


def store_runner(store: EventStore, master: str = "local[*]") -> FullRun:
    """`pipeline.surveil(engine=...)` on Spark: every canonical table read from the store's Parquet files
    (current record versions only: `EventStore.visible_files`)."""
    def run(as_of: datetime | None, kb: KnowledgeBase, progress: Progress | None) -> SurveillanceResult:
        spark = session(master)
        with tempfile.TemporaryDirectory() as scratch:
            return run_spark(store.visible_files(CANONICAL, Path(scratch)), spark, as_of=as_of, kb=kb,
                             progress=progress)
    return run
