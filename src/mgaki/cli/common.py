"""What every CLI command shares: the consoles, how an mgaki error becomes an exit status, and the
check that a command's optional extra is installed."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mgaki.errors import InputError, MgakiError

__all__ = ["console", "err", "missing_extra", "read_input_file", "require_extra", "require_store", "run_or_exit"]

T = TypeVar("T")
# Piped or redirected output is not cut at 80 columns (a DOI or a path must survive `| less` and `> file`);
# on a terminal rich uses the terminal's width.
_WIDE = 200
err = Console(stderr=True)
if not err.is_terminal:
    err = Console(stderr=True, width=_WIDE, soft_wrap=True)


def console() -> Console:
    """The stdout console: the terminal's width, or wide enough not to cut a line when piped."""
    c = Console()
    return c if c.is_terminal else Console(width=_WIDE, soft_wrap=True)


def run_or_exit(fn: Callable[[], T]) -> T:
    """``fn()``; bad input exits 2 and any other mgaki error 3, with the message on stderr, nothing on stdout."""
    try:
        return fn()
    except InputError as exc:  # escaped: a unit such as [pH] or [lb_av] in a message is text, not markup
        err.print(f"[red]invalid input:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3) from None


def missing_extra(extra: str) -> list[str]:
    """The distributions of mgaki's optional ``extra`` that are not installed (read from mgaki's own
    metadata, so the list is the one pyproject.toml declares)."""
    missing = []
    for req in metadata.requires("mgaki") or []:
        name, _, marker = req.partition(";")
        if not re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            continue
        dist = re.split(r"[\[<>=!~ ]", name.strip(), maxsplit=1)[0]
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def require_extra(extra: str, command: str) -> None:
    """Exit 2 with the install command when ``command`` needs the optional ``extra`` and it is missing."""
    missing = missing_extra(extra)
    if missing:
        err.print(f"[red]error:[/red] `mgaki {command}` needs the {extra} extra: "
                  f"pip install 'mgaki\\[{extra}]' (missing: {', '.join(missing)})")
        raise typer.Exit(2)


def read_input_file(path: Path, what: str) -> bytes:
    """The bytes of the input file ``path`` (``what`` it should be), or exit 2 naming the problem."""
    problem = None
    if not path.exists():
        problem = "no such file"
    elif path.is_dir():
        problem = f"is a folder, not a file: give {what}"
    else:
        try:
            return path.read_bytes()
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror})"
    err.print(f"[red]error:[/red] {path}: {problem}")
    raise typer.Exit(2)


def require_store(store: Path) -> None:
    """Exit 2 unless ``store`` holds an event store (any of its tables, the quarantine included)."""
    from mgaki.events.schema import TABLES

    if not (store.is_dir() and any((store / t).is_dir() for t in TABLES)):
        err.print(f"[red]error:[/red] {store}: no event store here (run `mgaki ingest` first)")
        raise typer.Exit(2)
