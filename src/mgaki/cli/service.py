"""`mgaki serve`: the FastAPI service under uvicorn (registered on the main app)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mgaki.cli.common import err, require_extra
from mgaki.errors import MgakiError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["register", "serve"]

def serve(
    config: Annotated[Path | None, typer.Option(help="YAML config file (else $MGAKI_CONFIG)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (config: host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (config: port)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data folder: SQLite file and event store")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://...")] = None,
    mllp_port: Annotated[int | None, typer.Option(help="HL7 v2 MLLP listener port (config: mllp_port; off unless set)")]
    = None,
    workers: Annotated[int | None, typer.Option(help="worker processes, about one per core (config: workers, "
                                                     "$MGAKI_WORKERS; default 1)")] = None,
) -> None:
    """Run the CDS Hooks / FHIR ingest service (OpenAPI docs at /docs)."""
    require_extra("service", "serve")
    import uvicorn

    from mgaki.service import create_app, load_config
    from mgaki.service.app import CONFIG_ENV, prepare_database
    try:
        cfg = load_config(config, host=host, port=port, data_dir=data_dir, database_url=database_url,
                          mllp_port=mllp_port, workers=workers)
        if cfg.workers == 1:
            app = create_app(cfg)
        else:
            prepare_database(cfg)  # migrations once, before the workers start (they take the same file lock)
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # access_log off: uvicorn would log filled-in paths (patient ids); the app logs route templates
    if cfg.workers == 1:
        uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=False)
        return
    # N processes need an import string: each worker builds its app from the resolved config (environment)
    os.environ[CONFIG_ENV] = cfg.model_dump_json()
    _run_workers(uvicorn.Config("mgaki.service.app:app_from_env", factory=True, workers=cfg.workers, host=cfg.host,
                                port=cfg.port, access_log=False))


def _run_workers(config: uvicorn.Config) -> None:
    """``uvicorn.run`` with workers, except that the listening socket says it is TCP.

    uvicorn's ``Config.bind_socket`` leaves ``proto`` at 0, so asyncio never sets TCP_NODELAY on the workers'
    connections and every keep-alive response after the first waits ~40 ms for a delayed ACK (uvicorn issue
    3149, open; measured here: GET /health 1.2 ms with one process, 44 ms with two). The same socket,
    re-wrapped, reports IPPROTO_TCP (the socket passed to the workers keeps it).
    """
    import socket

    from uvicorn.supervisors import Multiprocess

    bound = config.bind_socket()
    sock = socket.socket(fileno=bound.detach())  # family, type and proto read from the descriptor
    sock.set_inheritable(True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
