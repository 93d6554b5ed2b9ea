"""`mgaki study`: the research analysis (cohort, band ORs, spline, ROC, Cox, report) over an event store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mgaki.errors import MgakiError

__all__ = ["register", "study"]

err = Console(stderr=True)


def study(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (mgaki ingest)")] = Path(
        "mgaki-store"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html, figures, cohort, summary")] = Path(
        "mgaki-study"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding study defaults "
                                                                      "(docs/research.md)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout")] = False,
) -> None:
    """Admission Mg vs in-hospital AKI: cohort flow, Table 1, band ORs, spline, ROC, Cox and an HTML report."""
    from mgaki.events import EventStore
    from mgaki.research import load_config
    from mgaki.research.pipeline import STAGES, study_store, write_outputs

    if not (store / "events").exists():
        err.print(f"[red]error:[/red] {store}: no event store here (run `mgaki ingest` first)")
        raise typer.Exit(2)
    try:
        cfg = load_config(config)
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("surveillance", total=len(STAGES))
        try:
            res = study_store(EventStore(store), cfg,
                              progress=lambda st, i, n: bar.update(task, completed=i, description=f"done: {st}"))
        except (MgakiError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        bar.update(task, description="report")
        paths = write_outputs(res, out)
    summary = res.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=1, default=str) + "\n")
        return
    c = Console()
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
        c.print(f"ROC {r['predictor']}: AUC {r['auc']:.3f}, Youden cut-off {r['cutoff']:.2f} mg/dL "
                f"(sens {r['sensitivity']:.2f}, spec {r['specificity']:.2f})")
    c.print(f"report: {paths['report']}")


def register(app: typer.Typer) -> None:
    app.command("study")(study)
