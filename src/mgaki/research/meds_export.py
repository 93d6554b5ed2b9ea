"""MEDS-native output: the store as a MEDS 0.4 dataset, task labels in the MEDS label schema, ACES configs.

`export_meds` writes the canonical tables through `mgaki.adapters.meds.write_meds` with subjects split
into train / tuning / held_out (seeded, by subject) and, as derived rows, the KDIGO stages surveillance
computes (``MGAKI_KDIGO//CREATININE_STAGE`` at every creatinine, ``MGAKI_KDIGO//STAGE`` at every change
of the combined creatinine + urine-output stage), so MEDS tooling such as ACES can select AKI, which
needs a baseline and a 48-h/7-day window that a per-row predicate cannot express. The dataset is
validated with the `meds` package (the ``research`` extra) before it is moved into place.

`task_labels` computes mgaki's own labels of the shipped tasks (``TASKS``): one prediction time per
hospital admission, ``landmark_step_hours`` after its start, for admissions still open then and free of
the task's event so far; the label says whether the event happens in the next ``prediction_horizon_hours``
within the admission. The ACES configs in ``research/aces/`` state the same tasks for ACES
(docs/research.md#meds).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgaki.adapters.meds import EXTRA_SCHEMA, SUBJECT_MAP, write_meds
from mgaki.errors import InputError
from mgaki.events import EventStore
from mgaki.events.schema import DEATH
from mgaki.knowledge import KnowledgeBase, load
from mgaki.research._config import StudyConfig
from mgaki.research.cohort import ADMISSIONS_SQL
from mgaki.units import convert

__all__ = ["DERIVED_CODES", "SPLITS", "TASKS", "ExportSummary", "Task", "aces_config_path", "assign_splits",
           "export_meds", "label_table", "task_labels", "validate_meds", "write_labels"]

SPLITS = ("train", "tuning", "held_out")
DERIVED_CODES = {
    "MGAKI_KDIGO//CREATININE_STAGE": "KDIGO AKI stage (0-3) by the creatinine criteria at this creatinine result "
                                     "(mgaki surveillance kdigo_creatinine; RRT counts as stage 3)",
    "MGAKI_KDIGO//STAGE": "KDIGO AKI stage (0-3) by creatinine and urine output, at each change "
                          "(mgaki surveillance aki_stage_changes)",
}


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    aces: str  # the ACES task config shipped in research/aces/


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("aki_kdigo_48h", "AKI (full KDIGO: creatinine and urine output) within 48 h", "aki_kdigo_48h.yaml"),
    Task("aki_creatinine_48h", "AKI by the KDIGO creatinine criteria only within 48 h", "aki_creatinine_48h.yaml"),
    Task("hypomagnesaemia_48h", "hypomagnesaemia (Mg below the reference range) within 48 h",
         "hypomagnesaemia_48h.yaml"),
)}


def aces_config_path(task: str) -> Path:
    """The shipped ACES task config of a task (a file inside the installed package)."""
    if task not in TASKS:
        raise InputError("task", f"unknown task {task!r}; choose from {sorted(TASKS)}")
    return Path(str(resources.files("mgaki.research").joinpath("aces", TASKS[task].aces)))


def assign_splits(subject_ids: list[str], shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Each subject to train / tuning / held_out: a seeded permutation of the sorted ids cut by the shares."""
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-9:
        raise InputError("splits", f"three non-negative shares summing to 1 expected, got {shares}")
    ids = sorted(set(subject_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = np.round(np.cumsum(shares) * len(ids)).astype(int)
    out: dict[str, str] = {}
    for rank, i in enumerate(order):
        out[ids[i]] = SPLITS[int(np.searchsorted(cut, rank, side="right"))] if rank < cut[-1] else SPLITS[-1]
    return out


def _derived_rows(results: Mapping[str, pa.Table]) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("kc", results["kdigo_creatinine"])
        con.register("sc", results["aki_stage_changes"])
        tab = con.sql("""
            SELECT subject_id, time, 'MGAKI_KDIGO//CREATININE_STAGE' AS code, CAST(stage AS DOUBLE) AS numeric_value,
                   encounter_id FROM kc
            UNION ALL
            SELECT subject_id, time, 'MGAKI_KDIGO//STAGE', CAST(stage AS DOUBLE), encounter_id FROM sc
            """).to_arrow_table()
    finally:
        con.close()
    return tab.cast(EXTRA_SCHEMA)


@dataclass
class ExportSummary:
    root: Path
    subjects: dict[str, int]  # by split
    rows: int
    codes: int
    derived_rows: int


def export_meds(store: EventStore, out: Path, shares: tuple[float, float, float] = (0.7, 0.15, 0.15),
                seed: int = 0, derived: bool = True, kb: KnowledgeBase | None = None,
                dataset_name: str = "mgaki") -> ExportSummary:
    """The store as a validated MEDS 0.4 dataset at ``out`` (written beside it, then moved: never half-written)."""
    from mgaki.surveillance import run

    kb = kb or load()
    if out.exists() and any(out.iterdir()):
        raise InputError(str(out), "the output folder exists and is not empty")
    tables = {t: store.read(t) for t in ("subjects", "encounters", "events", "weights", "medications", "contexts")}
    subjects = sorted({s for t in tables.values() for s in t.column("subject_id").to_pylist() if s is not None})
    if not subjects:
        raise InputError(str(store.root), "the store holds no subjects")
    splits = assign_splits(subjects, shares, seed)
    extra = _derived_rows(run(store, kb=kb, outputs=("kdigo_creatinine", "aki_stage_changes")).tables) \
        if derived else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_meds(tables, tmp, splits=splits, dataset_name=dataset_name, extra=extra,
                   extra_codes=DERIVED_CODES if derived else None)
        validate_meds(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "data").glob("**/*.parquet"))
    by_split = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
    codes = pq.ParquetFile(out / "metadata" / "codes.parquet").metadata.num_rows
    return ExportSummary(out, by_split, rows, codes, 0 if extra is None else extra.num_rows)


def validate_meds(root: Path) -> None:
    """Check a MEDS dataset with the `meds` package's schemas; InputError naming the file and the problem.

    Beyond the schemas: every code of the data is in codes.parquet, every subject in subject_splits,
    each subject in one file only, and rows sorted by time within a subject (static rows first).
    """
    try:
        import meds.schema as meds
    except ImportError as exc:  # pragma: no cover - the research extra installs it
        raise InputError("meds", "validation needs the `meds` package (pip install 'mgaki[meds]')") from exc
    files = sorted((root / meds.data_subdirectory).glob("**/*.parquet"))
    if not files:
        raise InputError(str(root), "no data/**/*.parquet")
    seen: dict[int, Path] = {}
    codes: set[str] = set()
    for f in files:
        tab = pq.read_table(f)
        _check(meds.DataSchema, tab, f)
        sid = tab.column("subject_id").to_numpy()
        t = pc.fill_null(tab.column("time").cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
        if sid.size and (np.any(sid[1:] < sid[:-1]) or np.any((sid[1:] == sid[:-1]) & (t[1:] < t[:-1]))):
            raise InputError(str(f), "rows are not grouped by subject and sorted by time")
        for s in np.unique(sid).tolist():
            if s in seen:
                raise InputError(str(f), f"subject {s} is also in {seen[s]}")
            seen[s] = f
        codes.update(tab.column("code").unique().to_pylist())
    code_meta = pq.read_table(root / meds.code_metadata_filepath)
    _check(meds.CodeMetadataSchema, code_meta, root / meds.code_metadata_filepath)
    missing = codes - set(code_meta.column("code").to_pylist())
    if missing:
        raise InputError(str(root / meds.code_metadata_filepath), f"codes missing: {sorted(missing)[:5]}")
    split_tab = pq.read_table(root / meds.subject_splits_filepath)
    _check(meds.SubjectSplitSchema, split_tab, root / meds.subject_splits_filepath)
    if set(split_tab.column("subject_id").to_pylist()) != set(seen):
        raise InputError(str(root / meds.subject_splits_filepath), "subjects differ from the data's")
    meta_path = root / meds.dataset_metadata_filepath
    try:
        meds.DatasetMetadataSchema.validate(json.loads(meta_path.read_text("utf-8")))
    except Exception as exc:
        raise InputError(str(meta_path), f"not MEDS dataset metadata: {exc}") from exc


def _check(schema: type, tab: pa.Table, where: Path) -> None:
    try:
        schema.validate(tab)  # type: ignore[attr-defined]
    except Exception as exc:
        raise InputError(str(where), f"not MEDS {schema.__name__}: {exc}") from exc


# --- labels ----------------------------------------------------------------------------------------

def task_labels(store: EventStore, config: StudyConfig | None = None,
                kb: KnowledgeBase | None = None) -> dict[str, pa.Table]:
    """mgaki's labels of every task in ``TASKS``: subject_id (mgaki's), encounter_id, prediction_time,
    boolean_value; sorted by subject and prediction time."""
    from mgaki.surveillance import URINE_ANALYTES, run

    config = config or StudyConfig()
    kb = kb or load()
    full = run(store, kb=kb, outputs=("aki_episodes_out",)).tables["aki_episodes"]
    cr = run(store, kb=kb, outputs=("aki_episodes_out",), exclude_analytes=URINE_ANALYTES).tables["aki_episodes"]
    rr = kb.magnesium.reference_range
    low = convert(rr.low, "magnesium", rr.unit, "mg/dL")
    con = store.connect()
    try:
        con.register("aki_full", full)
        con.register("aki_cr", cr)
        return {name: label_table(con, name, config, low) for name in TASKS}
    finally:
        con.close()


def label_table(con: duckdb.DuckDBPyConnection, task: str, config: StudyConfig, mg_low: float) -> pa.Table:
    """One task's labels from a connection with the canonical tables and ``aki_full``/``aki_cr`` episodes."""
    step, horizon = config.landmark_step_hours, config.prediction_horizon_hours
    events = {
        "aki_kdigo_48h": "SELECT subject_id, encounter_id, onset AS time FROM aki_full",
        "aki_creatinine_48h": "SELECT subject_id, encounter_id, onset AS time FROM aki_cr",
        # Mg rows of the admission: naming it (or an ICU stay of it), else timed within it
        "hypomagnesaemia_48h": f"""
            SELECT e.subject_id, coalesce(a.encounter_id, i.parent_id, w.encounter_id) AS encounter_id, e.time
            FROM events e LEFT JOIN adm a ON a.subject_id = e.subject_id AND a.encounter_id = e.encounter_id
            LEFT JOIN encounters i ON i.subject_id = e.subject_id AND i.encounter_id = e.encounter_id
              AND i.kind = 'icu'
            LEFT JOIN adm w ON w.subject_id = e.subject_id AND e.encounter_id IS NULL
              AND e.time BETWEEN w.start AND coalesce(w."end", e.time)
            WHERE e.analyte = 'magnesium' AND e.numeric_value < {mg_low!r}""",
    }
    if task not in events:
        raise InputError("task", f"unknown task {task!r}; choose from {sorted(TASKS)}")
    sql = f"""
        WITH adm AS ({ADMISSIONS_SQL}),
        ev AS ({events[task]}),
        p AS (SELECT *, start + to_microseconds(CAST({step * 3600e6!r} AS BIGINT)) AS pt FROM adm),
        dth AS (SELECT subject_id, time FROM events WHERE analyte = '{DEATH}')
        SELECT p.subject_id, p.encounter_id, p.pt AS prediction_time,
          EXISTS (SELECT 1 FROM ev WHERE ev.subject_id = p.subject_id AND ev.encounter_id = p.encounter_id
                  AND ev.time > p.pt AND ev.time <= p.pt + to_microseconds(CAST({horizon * 3600e6!r} AS BIGINT))
                  AND (p."end" IS NULL OR ev.time <= p."end")) AS boolean_value
        FROM p
        WHERE (p."end" IS NULL OR p."end" > p.pt)
          AND NOT EXISTS (SELECT 1 FROM ev WHERE ev.subject_id = p.subject_id AND ev.encounter_id = p.encounter_id
                          AND ev.time <= p.pt)
          AND NOT EXISTS (SELECT 1 FROM dth WHERE dth.subject_id = p.subject_id AND dth.time <= p.pt
                          AND dth.time >= p.start)
        ORDER BY p.subject_id, p.pt, p.encounter_id"""
    return con.sql(sql).to_arrow_table()


def write_labels(labels: Mapping[str, pa.Table], out: Path, meds_root: Path | None = None) -> dict[str, Path]:
    """Each task's labels as ``<out>/<task>.parquet`` in the MEDS label schema (validated with `meds`).

    MEDS subject ids are int64: mgaki ids that are integers are cast; otherwise ``meds_root`` (an export
    of the same store) supplies its ``metadata/mgaki_subject_ids.parquet`` map.
    """
    import meds.schema as meds

    idmap: dict[str, int] | None = None
    if meds_root is not None and (meds_root / SUBJECT_MAP).is_file():
        m = pq.read_table(meds_root / SUBJECT_MAP).to_pylist()
        idmap = {r["mgaki_subject_id"]: int(r["subject_id"]) for r in m}
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for task, tab in labels.items():
        ids = tab.column("subject_id").to_pylist()
        if idmap is not None:
            unknown = sorted({i for i in ids if i not in idmap})
            if unknown:
                raise InputError(str(meds_root), f"subject(s) {unknown[:3]} are not in this MEDS export")
            sid = [idmap[i] for i in ids]
        else:
            try:
                sid = [int(i) for i in ids]
            except ValueError:
                raise InputError("labels", "subject ids are not integers: give the MEDS export (--meds) whose "
                                           "subject id map to use") from None
        label = pa.table({"subject_id": pa.array(sid, pa.int64()),
                          "prediction_time": tab.column("prediction_time").cast(pa.timestamp("us")),
                          "boolean_value": tab.column("boolean_value").cast(pa.bool_())})
        _check(meds.LabelSchema, label, out / f"{task}.parquet")
        paths[task] = out / f"{task}.parquet"
        pq.write_table(label, paths[task])
    return paths
