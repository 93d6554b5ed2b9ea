"""Cohort commands: `mgaki ingest`, `mgaki surveil`, `mgaki demo` (registered on the main app)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mgaki.cli.common import console, err, require_extra, require_store, run_or_exit
from mgaki.errors import InputError

if TYPE_CHECKING:  # pyarrow (and the store) are imported by the commands that run, not at CLI start-up
    import pyarrow as pa

    from mgaki.events import EventStore, IngestSummary
    from mgaki.surveillance import SurveillanceResult

__all__ = ["FORMATS", "Engine", "OutFmt", "demo", "export_tables", "ingest", "surveil_cmd", "truth_agreement"]

FORMATS = ("auto", "fhir", "mimic", "omop", "meds", "csv")


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


class OutFmt(StrEnum):
    parquet = "parquet"
    csv = "csv"
    json = "json"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=err, transient=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def ingest_path(source: Path, fmt: str, store_dir: Path, per_source: bool = False,
                chunk_rows: int | None = None, progress: Callable[[int], None] | None = None) -> IngestSummary:
    """Read `source` with its adapter, normalise, append to the store; the IngestSummary.

    Formats with a chunked reader (``registry.CHUNKED``: the CSV layout, MIMIC-IV, OMOP, MEDS) are read,
    normalised and stored ``chunk_rows`` raw rows at a time (``mgaki.events.stream``: the same rows and
    summary as one append of the whole); ``progress`` gets the raw rows read so far. A record that comes
    back naming another patient is quarantined with the reason, never moved (``EventStore.append``);
    ``per_source`` keeps FHIR identities per source system (meta.source).
    """
    from mgaki.adapters import registry
    from mgaki.events import EventStore, normalize
    from mgaki.events.stream import DEFAULT_CHUNK_ROWS, ingest_chunks

    if fmt == "auto":
        fmt = registry.detect_format(source)
    if per_source and fmt != "fhir":
        raise InputError("--identity-per-source", f"only FHIR carries a source system (meta.source), not {fmt}")
    if per_source:
        from mgaki.adapters.fhir_bulk import read_fhir

        return EventStore(store_dir).append(normalize(read_fhir(source, per_source=True)))
    if fmt not in registry.CHUNKED:
        return EventStore(store_dir).append(normalize(registry.read(fmt, source)))
    chunks = registry.read_chunks(fmt, source, chunk_rows or DEFAULT_CHUNK_ROWS)
    return ingest_chunks(EventStore(store_dir), chunks, progress)


def ingest(
    source: Annotated[Path, typer.Argument(help="File or folder to read")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (created if absent)")] = Path(
        "mgaki-store"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="auto | fhir | mimic | omop | meds | csv")] = "auto",
    identity_per_source: Annotated[bool, typer.Option(
        "--identity-per-source", help="FHIR: a record's identity includes its source system (meta.source), for "
                                      "exports whose ids are unique per system only")] = False,
    chunk_rows: Annotated[int | None, typer.Option(
        "--chunk-rows", min=1000, show_default=False,
        help="Rows read, normalised and stored at a time (CSV layout, MIMIC, OMOP, MEDS): memory grows with "
             "it, not with the files (default: 500,000, as mgaki.events.stream.DEFAULT_CHUNK_ROWS)")] = None,
) -> None:
    """Read EHR data into the event store; unusable rows go to quarantine, with the reason."""
    import gc
    import time

    if fmt not in FORMATS:
        raise _fail(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not source.exists():
        raise _fail(f"{source}: no such file or folder")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rows]} rows"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"ingesting {source} ({fmt})", total=None, rows="0", rate="")
        t0 = time.perf_counter()

        def tick(rows: int) -> None:
            rate = rows / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, rows=f"{rows:,}", rate=f"{rate:,.0f} rows/s")

        gc.disable()  # collections would walk every imported object again and again during a long ingest
        try:
            summary = run_or_exit(lambda: ingest_path(source, fmt, store, identity_per_source, chunk_rows, tick))
        finally:
            gc.enable()
    print_ingest(summary, store)


def print_ingest(summary: IngestSummary, store: Path) -> None:
    t = Table(title=f"ingested into {store}")
    for col in ("table", "rows read", "new", "already stored"):
        t.add_column(col, justify="right" if col != "table" else "left")
    dup = summary.duplicates
    for name, n in summary.received.items():
        if name != "quarantine":
            t.add_row(name, str(n), str(summary.added.get(name, 0)), str(dup.get(name, 0)))
    console().print(t)
    if summary.quarantined:
        q = Table(title=f"quarantined: {summary.quarantined} rows (kept in {store}/quarantine, with the raw row)")
        q.add_column("rows", justify="right")
        q.add_column("reason", overflow="fold")
        for reason, n in sorted(summary.quarantine_reasons.items(), key=lambda x: -x[1])[:15]:
            q.add_row(str(n), Text(reason))  # Text: a unit such as [pH] is not markup
        console().print(q)
    else:
        console().print("quarantined: 0 rows")
    if summary.superseded or summary.stale:
        console().print(f"record versions: {summary.superseded} replaced by a newer version, "
                        f"{summary.stale} older than the stored one (kept out)")
    if summary.identity_conflicts:
        console().print(f"record identities naming another patient: {len(summary.identity_conflicts)} version(s) "
                        "quarantined, no data moved between patients")
    console().print(f"subjects with new data: {len(summary.affected_subjects)}")


def export_tables(tables: Mapping[str, pa.Table], out: Path, fmt: OutFmt) -> list[Path]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, tab in tables.items():
        path = out / f"{name}.{fmt.value}"
        if fmt is OutFmt.parquet:
            pq.write_table(tab, path)
        elif fmt is OutFmt.csv:
            pacsv.write_csv(tab, path)
        else:
            # JSON has no NaN: a value that is not a number (the slope of a single Mg) is written as null
            rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                    for r in tab.to_pylist()]
            path.write_text(json.dumps(rows, default=str, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def surveil_cmd(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder")] = Path("mgaki-store"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also export the result tables here")] = None,
    fmt: Annotated[OutFmt, typer.Option("--format", "-f", help="Export format")] = OutFmt.parquet,
    full: Annotated[bool, typer.Option("--full", help="Recompute everyone, not only changed subjects")] = False,
    as_of: Annotated[str | None, typer.Option(help="ISO time closing open monitoring gaps (default: latest "
                                                   "time in the data)")] = None,
    engine: Annotated[Engine, typer.Option(help="duckdb (incremental) | spark (recomputes everyone; "
                                                "needs mgaki\\[spark] and Java)")] = Engine.duckdb,
    spark_master: Annotated[str, typer.Option(help="Spark master URL, with --engine spark")] = "local[*]",
    memory: Annotated[str | None, typer.Option(help="DuckDB memory limit, e.g. 8GB; beyond it DuckDB spills "
                                                    "to disk (default for a full run: a quarter of RAM, at most "
                                                    "3 GB)")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Reference creatinine rule: nhs-england (default) | kdigo-7day | outpatient-median "
                           "(kidney.yaml baseline_rules; a change recomputes everyone)")] = None,
    baseline_sensitivity: Annotated[bool, typer.Option(
        "--baseline-sensitivity", help="Also print AKI episodes by peak stage under every baseline rule")] = False,
) -> None:
    """KDIGO episodes, Mg trajectories, evidence flags and alerts for every encounter in the store."""
    from mgaki.events import EventStore
    from mgaki.knowledge import load
    from mgaki.surveillance import surveil

    require_store(store)
    rule = run_or_exit(lambda: load().baseline_rule(baseline).id)
    when = None
    if as_of:
        try:
            when = datetime.fromisoformat(as_of).replace(tzinfo=None)
        except ValueError:
            raise _fail(f"--as-of {as_of!r} is not an ISO date-time") from None
    with _progress() as bar:
        task = bar.add_task("surveillance", total=None)

        def tick(stage: str, i: int, n: int) -> None:
            bar.update(task, total=n, completed=i, description=f"stage {stage}")

        runner = None
        if engine is Engine.spark:
            require_extra("spark", "surveil --engine spark")
            from mgaki.surveillance.spark import store_runner
            runner = store_runner(EventStore(store), spark_master)
        res = run_or_exit(lambda: surveil(EventStore(store), full=full, as_of=when, progress=tick, engine=runner,
                                          duckdb_settings={"memory_limit": memory} if memory else None,
                                          baseline_rule=rule))
    print_surveillance(res.tables, res.new_alerts, res.subjects_recomputed, res.timer_alerts)
    print_alert_rates(EventStore(store), res)
    if baseline_sensitivity:
        from mgaki.surveillance import baseline_sensitivity as sensitivity

        print_baseline_sensitivity(sensitivity(EventStore(store), as_of=when))
    if out:
        for p in export_tables(res.tables, out, fmt):
            err.print(f"[dim]wrote {p}[/dim]")


def print_baseline_sensitivity(tab: pa.Table) -> None:
    t = Table(title="AKI episodes by baseline rule (kidney.yaml baseline_rules)")
    for col in ("baseline rule", "episodes", "peak stage 1", "peak stage 2", "peak stage 3", "encounters with AKI"):
        t.add_column(col, justify="left" if col == "baseline rule" else "right")
    for r in tab.to_pylist():
        t.add_row(r["baseline_rule"] + (" (default)" if r["default"] else ""), str(r["episodes"]),
                  *(str(r[f"peak_stage_{k}"]) for k in (1, 2, 3)), str(r["encounters_with_aki"]))
    console().print(t)


def print_surveillance(tables: Mapping[str, pa.Table], new_alerts: pa.Table, recomputed: int,
                       timer_alerts: int = 0) -> None:
    from mgaki.surveillance.pipeline import summary

    c = console()
    n = summary(tables)  # counted by DuckDB over the stored results, not read into Python
    t = Table(title="surveillance summary")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("subjects recomputed", "all" if recomputed < 0 else str(recomputed))
    t.add_row("encounters with Mg measured", str(n["mg_encounters"]))
    t.add_row("encounters not staged: maintenance dialysis", str(n["not_staged_dialysis"] or 0))
    t.add_row("baseline rule", ", ".join(n["baseline_rules"]) or "-")
    if n["weights_rejected"] is not None:
        t.add_row("weights rejected for urine output", str(n["weights_rejected"]))
    t.add_row("AKI episodes", str(n["episodes"]))
    for s in (1, 2, 3):
        t.add_row(f"  peak stage {s}", str(n["peak_stage"][s]))
    t.add_row("  recovered in hospital", str(n["recovered"]))
    t.add_row("evidence flags", str(n["evidence_flags"]))
    if n["suspect_specimens"] is not None:  # issue 13 point 6: set aside, never acted on until repeated
        t.add_row("suspect specimens (repeat the sample)", str(sum(n["suspect_specimens"].values())))
        for kind, count in n["suspect_specimens"].items():
            t.add_row(f"  {kind}", str(count))
    t.add_row("alerts emitted now", str(new_alerts.num_rows))
    if timer_alerts:  # monitoring gaps fallen due, logged as the run that found them kept them
        t.add_row("  of which timers fallen due (patients not recomputed)", str(timer_alerts))
    c.print(t)
    if new_alerts.num_rows:
        a = Table(title="new alerts by kind")
        a.add_column("kind")
        a.add_column("critical", justify="right")
        a.add_column("warning", justify="right")
        a.add_column("info", justify="right")
        counts: dict[str, dict[str, int]] = {}
        for r in new_alerts.select(["kind", "severity"]).to_pylist():
            counts.setdefault(r["kind"], {}).setdefault(r["severity"], 0)
            counts[r["kind"]][r["severity"]] += 1
        for kind, by in sorted(counts.items()):
            a.add_row(kind, str(by.get("critical", 0)), str(by.get("warning", 0)), str(by.get("info", 0)))
        c.print(a)


def print_alert_rates(store: EventStore, res: SurveillanceResult) -> None:
    """Alerts (the whole log) per 100 patient-days, by kind and severity (docs/surveillance.md#alert-rates)."""
    from mgaki.surveillance import alert_rates

    days, rates = alert_rates(store.read("encounters"), res.tables["alerts"], res.as_of)
    t = Table(title=f"alerts per 100 patient-days ({days:,.1f} patient-days)")
    for col in ("kind", "severity", "alerts", "per 100 patient-days"):
        t.add_column(col, justify="left" if col in ("kind", "severity") else "right")
    for r in rates.to_pylist():
        t.add_row(r["kind"], r["severity"], str(r["n"]), f"{r['per_100_patient_days']:.2f}")
    console().print(t)


def demo(
    patients: Annotated[int, typer.Option("--patients", "-n", min=10, help="Synthetic patients")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort)")] = 7,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for source data, store, results, plots")] = Path(
        "mgaki-demo"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="Format the cohort is written in and read back "
                                                            "from: csv | fhir | mimic | omop | meds")] = "csv",
    plots: Annotated[bool, typer.Option(help="Render PNG charts")] = True,
) -> None:
    """The whole pipeline on a synthetic cohort with planted truth: write, ingest, surveil, compare, plot."""
    import shutil

    import pyarrow.csv as pacsv

    from mgaki.adapters import registry
    from mgaki.events import EventStore, normalize
    from mgaki.surveillance import surveil
    from mgaki.synth import generate, to_raw

    if fmt not in FORMATS or fmt == "auto":
        raise _fail(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS[1:])}")
    if out.exists():
        shutil.rmtree(out)
    src, store_dir = out / "source", out / "store"
    with err.status(f"generating {patients} synthetic patients (seed {seed})"):
        cohort = generate(patients, seed=seed)
    with err.status(f"writing them as {fmt} to {src}"):
        if fmt == "csv":  # the CSV layout is the raw form: site units and planted dirty rows included
            src.mkdir(parents=True)
            for name, tab in to_raw(cohort).items():
                if name in ("events", "medications", "encounters", "subjects", "contexts"):
                    pacsv.write_csv(tab, src / f"{name}.csv")
        else:
            registry.write(fmt, cohort.tables, src)
    with err.status(f"ingesting {src}"):
        summary = EventStore(store_dir).append(normalize(registry.read(fmt, src)))
    print_ingest(summary, store_dir)
    with _progress() as bar:
        task = bar.add_task("surveillance", total=None)
        res = surveil(EventStore(store_dir),
                      progress=lambda st, i, n: bar.update(task, total=n, completed=i, description=f"stage {st}"))
    print_surveillance(res.tables, res.new_alerts, res.subjects_recomputed, res.timer_alerts)
    print_alert_rates(EventStore(store_dir), res)
    print_truth(cohort.truth, res.tables)
    export_tables(res.tables, out / "results", OutFmt.csv)
    if plots:
        with err.status("rendering charts"):
            paths = demo_plots(EventStore(store_dir), res.tables, cohort.truth, out / "plots")
        for p in paths:
            console().print(f"chart: {p}")
    console().print(f"results (CSV): {out / 'results'}; event store: {store_dir}")


def truth_agreement(truth: pa.Table, results: Mapping[str, pa.Table]) -> dict[str, dict[str, float]]:
    """Planted vs detected, per admission: AKI, its peak stage, hypomagnesemia, monitoring gaps."""
    import duckdb

    con = duckdb.connect()
    con.register("truth", truth)
    for name in ("aki_episodes", "mg_trajectory", "alerts"):
        con.register(name, results[name])
    rows = con.sql("""
        WITH d AS (
          SELECT t.encounter_id, t.aki AS p_aki, t.aki_stage AS p_stage, t.hypomagnesemia AS p_hypo,
                 t.mg_monitoring_gap AS p_gap,
                 COALESCE((SELECT max(peak_stage) FROM aki_episodes e WHERE e.encounter_id = t.encounter_id), 0)
                   AS d_stage,
                 COALESCE((SELECT min(min_mg) FROM mg_trajectory m WHERE m.encounter_id = t.encounter_id), 99)
                   < 1.7 AS d_hypo,
                 EXISTS (SELECT 1 FROM alerts a WHERE a.encounter_id = t.encounter_id AND a.kind = 'no_mg_48h')
                   AS d_gap
          FROM truth t)
        SELECT 'AKI (any stage)', count(*) FILTER (p_aki AND d_stage > 0), count(*) FILTER (p_aki AND d_stage = 0),
               count(*) FILTER (NOT p_aki AND d_stage > 0), count(*) FILTER (NOT p_aki AND d_stage = 0) FROM d
        UNION ALL
        SELECT 'AKI peak stage equal', count(*) FILTER (p_aki AND d_stage = p_stage),
               count(*) FILTER (p_aki AND d_stage <> p_stage), 0, 0 FROM d
        UNION ALL
        SELECT 'hypomagnesemia', count(*) FILTER (p_hypo AND d_hypo), count(*) FILTER (p_hypo AND NOT d_hypo),
               count(*) FILTER (NOT p_hypo AND d_hypo), count(*) FILTER (NOT p_hypo AND NOT d_hypo) FROM d
        UNION ALL
        SELECT 'Mg monitoring gap alert', count(*) FILTER (p_gap AND d_gap), count(*) FILTER (p_gap AND NOT d_gap),
               count(*) FILTER (NOT p_gap AND d_gap), count(*) FILTER (NOT p_gap AND NOT d_gap) FROM d
    """).fetchall()
    con.close()
    return {r[0]: {"tp": r[1], "fn": r[2], "fp": r[3], "tn": r[4]} for r in rows}


def print_truth(truth: pa.Table, results: Mapping[str, pa.Table]) -> None:
    t = Table(title="planted truth vs what surveillance found (per admission)")
    for col in ("finding", "found", "missed", "not planted", "true negative", "sensitivity", "PPV"):
        t.add_column(col, justify="left" if col == "finding" else "right")
    for name, c in truth_agreement(truth, results).items():
        sens = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
        ppv = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
        t.add_row(name, *(str(int(c[k])) for k in ("tp", "fn", "fp", "tn")), f"{sens:.1%}",
                  "" if name == "AKI peak stage equal" else f"{ppv:.1%}")
    console().print(t)
    console().print("[dim]'not planted' monitoring-gap alerts are real 48-h gaps in the data: the generator plants "
                    "one long gap per chosen patient, but Mg drawn every 24-72 h leaves others (docs/synthetic.md)."
                    "[/dim]")


def demo_plots(store: EventStore, results: Mapping[str, pa.Table], truth: pa.Table, out: Path) -> list[Path]:
    """Cohort chart plus the timelines of three instructive admissions."""
    import duckdb

    from mgaki.surveillance import plots

    paths = [plots.save(plots.cohort_mg_aki(results), out / "cohort-mg-aki.png")]
    tables = {t: store.read(t) for t in ("events", "medications", "encounters")}
    con = duckdb.connect()
    con.register("truth", truth)
    picks = con.sql("""
        SELECT subject_id, encounter_id, label FROM (
          SELECT subject_id, encounter_id, 'rrt' AS label, 1 AS k FROM truth WHERE rrt
          UNION ALL SELECT subject_id, encounter_id, 'aki-falling-mg', 2 FROM truth
            WHERE aki AND hypomg_pattern = 'falling'
          UNION ALL SELECT subject_id, encounter_id, 'oliguria', 3 FROM truth WHERE aki_mechanism = 'oliguria'
          UNION ALL SELECT subject_id, encounter_id, 'mg-gap', 4 FROM truth WHERE mg_monitoring_gap)
        QUALIFY row_number() OVER (PARTITION BY k ORDER BY subject_id) = 1 ORDER BY k""").fetchall()
    con.close()
    for subject, encounter, label in picks:
        chart = plots.patient_timeline(tables, results, subject, encounter)
        paths.append(plots.save(chart, out / f"timeline-{label}-{subject}.png"))
    return paths


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("surveil")(surveil_cmd)
    app.command("demo")(demo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `mgaki` command")
