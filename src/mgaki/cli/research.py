"""`mgaki study`: the research analysis (cohort, band ORs, spline, ROC, Cox, report) over an event store."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mgaki.cli.cohort import Engine
from mgaki.cli.common import console, err, require_extra, require_store
from mgaki.errors import MgakiError

__all__ = ["register", "study"]

def _peak_rss_bytes() -> int:
    """This process's peak resident memory since the last reset (Linux VmHWM; else the lifetime peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_peak() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM); a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class _StageClock:
    """Prints each finished stage with its wall time and the peak memory reached during it (stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        _reset_peak()
        self.t = time.perf_counter()

    def finished(self, stage: str) -> None:
        now = time.perf_counter()
        self.console.print(f"[green]done[/green] {stage:<13}{now - self.t:>8.1f} s"
                           f"   peak memory {_peak_rss_bytes() / 1e9:.2f} GB")
        _reset_peak()
        self.t = time.perf_counter()


def study(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (mgaki ingest)")] = Path(
        "mgaki-store"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html, figures, cohort, summary")] = Path(
        "mgaki-study"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding study defaults "
                                                                      "(docs/research.md)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout")] = False,
    engine: Annotated[Engine, typer.Option(help="duckdb | spark (surveillance and cohort extraction on Spark; "
                                                "needs the mgaki spark extra and Java)")] = Engine.duckdb,
    spark_master: Annotated[str, typer.Option(help="Spark master URL, with --engine spark")] = "local[*]",
) -> None:
    """Admission Mg vs in-hospital AKI: cohort flow, Table 1, band ORs, spline, ROC, Cox and an HTML report."""
    require_extra("research", "study")
    if engine is Engine.spark:
        require_extra("spark", "study --engine spark")
    from mgaki.events import EventStore
    from mgaki.research import load_config
    from mgaki.research.pipeline import STAGES, study_store, write_outputs

    require_store(store)
    try:
        cfg = load_config(config)
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    clock = _StageClock(err)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(f"running: {STAGES[0]}", total=len(STAGES) + 1)

        def done(stage: str, i: int, n: int) -> None:
            clock.finished(stage)
            nxt = STAGES[i] if i < n else "report"
            bar.update(task, completed=i, description=f"running: {nxt}")

        try:
            res = study_store(EventStore(store), cfg, progress=done, engine=engine.value,
                              spark_master=spark_master)
        except (MgakiError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        paths = write_outputs(res, out)
        clock.finished("report")
        bar.update(task, completed=len(STAGES) + 1)
    summary = res.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=1, default=str) + "\n")
        return
    c = console()
    t = Table(title=f"study: {summary['primary_outcome']} by admission Mg band (n = {summary['n']})")
    for col in ("band", "n", "events", "crude OR (CI)", "adjusted OR (CI)"):
        t.add_column(col, justify="left" if col == "band" else "right")
    for cr, ad in zip(summary["crude"], summary["adjusted"], strict=True):
        def fmt(r: dict[str, object]) -> str:
            if r["note"] == "reference":
                return "1 (ref)"
            if r["or"] is None:
                return str(r["note"])
            return f"{r['or']:.2f} ({r['lo']:.2f}-{r['hi']:.2f})"
        t.add_row(str(cr["band"]), str(cr["n"]), str(cr["events"]), fmt(cr), fmt(ad))
    c.print(t)
    sp = summary["spline"]
    c.print(f"spline non-linearity: chi2 {sp['lr_stat']:.2f} on {sp['df']} df, p = {sp['p_nonlinear']:.3g}")
    for r in summary["roc"]:
        cut = (f"Youden cut-off {r['cutoff']:.2f} mg/dL (sens {r['sensitivity']:.2f}, spec {r['specificity']:.2f})"
               if r["cutoff"] is not None else "a two-sided risk score: no Mg cut-off")
        c.print(f"ROC {r['predictor']}: AUC {r['auc']:.3f}, {cut}")
    c.print(f"report: {paths['report']}")


def register(app: typer.Typer) -> None:
    app.command("study")(study)
