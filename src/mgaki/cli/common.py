"""What every CLI command shares: the stderr console and how an mgaki error becomes an exit status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from mgaki.errors import InputError, MgakiError

__all__ = ["err", "run_or_exit"]

T = TypeVar("T")
err = Console(stderr=True)


def run_or_exit(fn: Callable[[], T]) -> T:
    """``fn()``; bad input exits 2 and any other mgaki error 3, with the message on stderr, nothing on stdout."""
    try:
        return fn()
    except InputError as exc:
        err.print(f"[red]invalid input:[/red] {exc}")
        raise typer.Exit(2) from None
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(3) from None
