"""The `mgaki` command line: one module per command group, each with a ``register(app)``.

- ``bedside``: ``assess``, ``knowledge``
- ``cohort``: ``ingest``, ``surveil``, ``demo``
- ``store``: ``quarantine``
- ``pk``: ``pk simulate | fit | find``
- ``research``: ``study``
- ``evaluate``: ``evaluate`` (do the alerts help? docs/evaluation.md)
- ``meds``: ``export meds``, ``labels``
- ``service``: ``serve``
- ``audit``: ``audit verify | grants`` (the service's audit trail)

``common`` holds what every command shares (the stderr console, the exit codes); ``render``
prints an assessment for a person.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mgaki._version import __version__
from mgaki.cli import audit, bedside, cohort, evaluate, meds, pk, research, service, store

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mgaki: magnesium disorders and AKI — decision support and analytics.")
for _group in (bedside, cohort, store, pk, research, evaluate, meds, service, audit):
    _group.register(app)


def _version(value: bool) -> None:
    if value:
        from mgaki.knowledge import load

        typer.echo(f"mgaki {__version__} (knowledge {load().version})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version of mgaki and its knowledge, then exit")]
          = False) -> None:
    """mgaki: magnesium disorders and AKI — decision support and analytics."""


def main() -> None:
    app()
