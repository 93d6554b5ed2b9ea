"""`mgaki serve`: the FastAPI service under uvicorn (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mgaki.errors import MgakiError

__all__ = ["register", "serve"]

err = Console(stderr=True)


def serve(
    config: Annotated[Path | None, typer.Option(help="YAML config file (else $MGAKI_CONFIG)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (config: host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (config: port)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data folder: SQLite file and event store")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://...")] = None,
    mllp_port: Annotated[int | None, typer.Option(help="HL7 v2 MLLP listener port (config: mllp_port; off unless set)")]
    = None,
) -> None:
    """Run the CDS Hooks / FHIR ingest service (OpenAPI docs at /docs)."""
    try:
        import uvicorn

        from mgaki.service import create_app, load_config
    except ImportError as exc:
        err.print(f"[red]error:[/red] the service needs its extra: pip install 'mgaki[service]' ({exc.name})")
        raise typer.Exit(2) from exc
    try:
        cfg = load_config(config, host=host, port=port, data_dir=data_dir, database_url=database_url,
                          mllp_port=mllp_port)
        app = create_app(cfg)
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # access_log off: uvicorn would log filled-in paths (patient ids); the app logs route templates
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
