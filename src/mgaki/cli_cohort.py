"""Cohort commands: `mgaki ingest`, `mgaki surveil`, `mgaki demo` (registered on the main app)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mgaki.errors import MgakiError

__all__ = ["FORMATS", "OutFmt", "export_tables", "ingest", "surveil_cmd"]

err = Console(stderr=True)
FORMATS = ("auto", "fhir", "mimic", "omop", "meds", "csv")


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


def ingest_path(source: Path, fmt: str, store_dir: Path) -> object:
    """Read `source` with its adapter, normalise, append to the store; the IngestSummary."""
    from mgaki.adapters import registry
    from mgaki.events import EventStore, normalize

    if fmt == "auto":
        fmt = registry.detect_format(source)
    raw = registry.read(fmt, source)
    return EventStore(store_dir).append(normalize(raw))


def ingest(
    source: Annotated[Path, typer.Argument(help="File or folder to read")],
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (created if absent)")] = Path(
        "mgaki-store"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="auto | fhir | mimic | omop | meds | csv")] = "auto",
) -> None:
    """Read EHR data into the event store; unusable rows go to quarantine, with the reason."""
    if fmt not in FORMATS:
        raise _fail(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not source.exists():
        raise _fail(f"{source}: no such file or folder")
    with err.status(f"reading {source} ({fmt})"):
        try:
            summary = ingest_path(source, fmt, store)
        except MgakiError as exc:
            raise _fail(str(exc)) from None
    print_ingest(summary, store)


def print_ingest(summary: object, store: Path) -> None:
    from mgaki.events import IngestSummary

    assert isinstance(summary, IngestSummary)
    t = Table(title=f"ingested into {store}")
    for col in ("table", "rows read", "new", "already stored"):
        t.add_column(col, justify="right" if col != "table" else "left")
    dup = summary.duplicates
    for name, n in summary.received.items():
        if name != "quarantine":
            t.add_row(name, str(n), str(summary.added.get(name, 0)), str(dup.get(name, 0)))
    Console().print(t)
    if summary.quarantined:
        q = Table(title=f"quarantined: {summary.quarantined} rows (kept in {store}/quarantine, with the raw row)")
        q.add_column("rows", justify="right")
        q.add_column("reason", overflow="fold")
        for reason, n in sorted(summary.quarantine_reasons.items(), key=lambda x: -x[1])[:15]:
            q.add_row(str(n), reason)
        Console().print(q)
    else:
        Console().print("quarantined: 0 rows")
    Console().print(f"subjects with new data: {len(summary.affected_subjects)}")


def export_tables(tables: dict[str, pa.Table], out: Path, fmt: OutFmt) -> list[Path]:
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
            path.write_text(json.dumps(tab.to_pylist(), default=str, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


def surveil_cmd(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder")] = Path("mgaki-store"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also export the result tables here")] = None,
    fmt: Annotated[OutFmt, typer.Option("--format", "-f", help="Export format")] = OutFmt.parquet,
    full: Annotated[bool, typer.Option("--full", help="Recompute everyone, not only changed subjects")] = False,
    as_of: Annotated[str | None, typer.Option(help="ISO time closing open monitoring gaps (default: latest "
                                                   "time in the data)")] = None,
) -> None:
    """KDIGO episodes, Mg trajectories, evidence flags and alerts for every encounter in the store."""
    from mgaki.events import EventStore
    from mgaki.surveillance import surveil

    if not (store / "events").exists():
        raise _fail(f"{store}: no event store here (run `mgaki ingest` first)")
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

        res = surveil(EventStore(store), full=full, as_of=when, progress=tick)
    print_surveillance(res.tables, res.new_alerts, res.subjects_recomputed)
    if out:
        for p in export_tables(res.tables, out, fmt):
            err.print(f"[dim]wrote {p}[/dim]")


def print_surveillance(tables: dict[str, pa.Table], new_alerts: pa.Table, recomputed: int) -> None:
    c = Console()
    eps = tables["aki_episodes"].to_pylist()
    traj = tables["mg_trajectory"]
    t = Table(title="surveillance summary")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("subjects recomputed", "all" if recomputed < 0 else str(recomputed))
    t.add_row("encounters with Mg measured", str(traj.num_rows))
    t.add_row("AKI episodes", str(len(eps)))
    for s in (1, 2, 3):
        t.add_row(f"  peak stage {s}", str(sum(1 for e in eps if e["peak_stage"] == s)))
    t.add_row("  recovered in hospital", str(sum(1 for e in eps if e["recovered"])))
    t.add_row("evidence flags", str(tables["evidence_flags"].num_rows))
    t.add_row("alerts emitted now", str(new_alerts.num_rows))
    c.print(t)
    if new_alerts.num_rows:
        a = Table(title="new alerts by kind")
        a.add_column("kind")
        a.add_column("critical", justify="right")
        a.add_column("warning", justify="right")
        counts: dict[str, dict[str, int]] = {}
        for r in new_alerts.select(["kind", "severity"]).to_pylist():
            counts.setdefault(r["kind"], {}).setdefault(r["severity"], 0)
            counts[r["kind"]][r["severity"]] += 1
        for kind, by in sorted(counts.items()):
            a.add_row(kind, str(by.get("critical", 0)), str(by.get("warning", 0)))
        c.print(a)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("surveil")(surveil_cmd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `mgaki` command")
