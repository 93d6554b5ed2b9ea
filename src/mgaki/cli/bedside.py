"""Bedside commands: `mgaki assess` (one patient) and `mgaki knowledge` (the cited catalogue)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mgaki import assess as assess_api
from mgaki.adapters.fhir import record_from_bundle
from mgaki.cli.common import console, err, read_input_file, run_or_exit
from mgaki.knowledge import iter_cited, load
from mgaki.result import Assessment


class Fmt(StrEnum):
    text = "text"
    json = "json"


def example_path(name: str = "hypomagnesemia-cisplatin.json") -> Path:
    return Path(str(resources.files("mgaki").joinpath("examples", name)))


def _context_help() -> str:
    """The ``--context`` help: every context the knowledge files name (evaluated when the CLI is built)."""
    return "Clinical context, repeatable, any case: " + ", ".join(load().contexts)


def assess(
    bundle: Annotated[Path | None, typer.Argument(help="FHIR R4 Bundle (JSON); '-' for stdin; "
                                                       "omit to run the shipped example")] = None,
    context: Annotated[list[str] | None, typer.Option("--context", "-c", help=_context_help())] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.text,
    nomogram: Annotated[str, typer.Option(help="vanderbilt-im | nhs-highland")] = "vanderbilt-im",
    baseline_creatinine: Annotated[float | None, typer.Option(
        help="Known pre-admission creatinine, mg/dL")] = None,
    operation_hours: Annotated[float | None, typer.Option(
        help="Duration of the operation, h (perioperative infusion; default in regimens.yaml)")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Reference creatinine rule: nhs-england (default) | kdigo-7day | outpatient-median "
                           "(kidney.yaml baseline_rules)")] = None,
    strict_fhir: Annotated[bool, typer.Option(
        "--strict-fhir", help="Validate every resource with fhir.resources (slower); by default "
                              "only the elements mgaki reads are validated")] = False,
) -> None:
    """Assess one patient: Mg status, cause, consequences, kidney, evidence and a plan."""
    if bundle is None:
        path = example_path()
        context = context or ["cisplatin", "malignancy"]
        err.print(f"[dim]No bundle given: assessing the shipped example {path.name} "
                  f"(context: {', '.join(context)})[/dim]")
        data = path.read_bytes()
    elif str(bundle) == "-":
        data = sys.stdin.buffer.read()
    else:
        data = read_input_file(bundle, "a FHIR R4 Bundle (JSON)")
    def go() -> Assessment:
        source = record_from_bundle(data, strict=True) if strict_fhir else data
        return assess_api(source, tuple(context or ()), nomogram=nomogram,
                          baseline_creatinine_mg_dl=baseline_creatinine, operation_hours=operation_hours,
                          baseline_rule=baseline)

    result = run_or_exit(go)
    if fmt is Fmt.json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        from mgaki.cli.render import render

        render(result, console())


def knowledge(
    section: Annotated[str | None, typer.Argument(help="File to show, e.g. evidence")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.text,
) -> None:
    """Print the knowledge catalogue: every entry with its source and verification."""
    kb = load()
    files = kb.files()
    if section and not any(name.startswith(section) for name in files):
        err.print(f"[red]error:[/red] no knowledge file {section!r}; the files are: {', '.join(files)}")
        raise typer.Exit(2)
    rows = []
    for name, f in files.items():
        if section and not name.startswith(section):
            continue
        for path, entry, src in iter_cited(f):
            ident = getattr(entry, "id", None) or getattr(entry, "ingredient", None) or \
                getattr(entry, "ucum", None) or getattr(entry, "code", None) or path
            rows.append({"file": name, "entry": str(ident), "verification": src.verification if src else "",
                         "source": src.citation if src else "", "doi": (src.doi or src.document) if src else ""})
    if fmt is Fmt.json:
        sys.stdout.write(json.dumps({"version": kb.version, "entries": rows}, indent=2) + "\n")
        return
    t = Table(title=f"mgaki knowledge {kb.version}")
    for col in ("file", "entry", "verification", "source", "doi"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    console().print(t)



def register(app: typer.Typer) -> None:
    app.command()(assess)
    app.command()(knowledge)
