"""The `mgaki` command line: one module per command group, each with a ``register(app)``.

- ``bedside``: ``assess``, ``knowledge``
- ``cohort``: ``ingest``, ``surveil``, ``demo``
- ``pk``: ``pk simulate | fit | find``
- ``research``: ``study``
- ``service``: ``serve``

``common`` holds what every command shares (the stderr console, the exit codes); ``render``
prints an assessment for a person.
"""

from __future__ import annotations

import typer

from mgaki.cli import bedside, cohort, pk, research, service

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mgaki: magnesium disorders and AKI — decision support and analytics.")
for _group in (bedside, cohort, pk, research, service):
    _group.register(app)


def main() -> None:
    app()
