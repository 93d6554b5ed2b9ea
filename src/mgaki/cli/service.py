"""`mgaki serve`: the FastAPI service under uvicorn, and `mgaki token create` (registered on the main app)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mgaki.cli.common import err, require_extra
from mgaki.errors import MgakiError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["register", "serve", "startup_notices", "token_create"]

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
    from mgaki.service.ingest.feed import replay_journals
    from mgaki.service.ingest.ingestor import clear_incoming
    from mgaki.service.supervision import SUPERVISOR_ENV
    try:
        cfg = load_config(config, host=host, port=port, data_dir=data_dir, database_url=database_url,
                          mllp_port=mllp_port, workers=workers)
        os.umask(0o077)  # everything the service creates (database, event store, locks) is owner-only
        prepare_database(cfg)  # the data folder (0700) and the migrations, once, before anything serves
        # request bodies a killed earlier run left half-read (patient data, never acknowledged): removed, once
        # that run's processes have ended (workers end with their supervisor)
        clear_incoming(cfg.data_dir)
        if cfg.workers > 1:  # HL7 messages an ended run acknowledged and did not store: stored before any worker
            # serves (one worker alone does it in its start-up, before it serves)
            replay_journals(cfg)
        if cfg.workers == 1:
            app = create_app(cfg)
    except MgakiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for notice in startup_notices(cfg, config or os.environ.get("MGAKI_CONFIG")):
        err.print(f"[yellow]note:[/yellow] {notice}", highlight=False, markup=True, soft_wrap=True)
    # access_log off: uvicorn would log filled-in paths (patient ids); the app logs route templates
    if cfg.workers == 1:
        uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=False, http=HTTP_PROTOCOL)
        return
    # N processes need an import string: each worker builds its app from the resolved config (environment)
    os.environ[CONFIG_ENV] = cfg.model_dump_json()
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the workers end when this process does
    _run_workers(uvicorn.Config("mgaki.service.app:app_from_env", factory=True, workers=cfg.workers, host=cfg.host,
                                port=cfg.port, access_log=False, http=HTTP_PROTOCOL))


# The HTTP protocol with the header timeout and the per-client connection cap (service/limits.py), named by an
# import string: a worker unpickles its config before it answers the supervisor's health pings, and a class
# would import the whole service right then (more than uvicorn's 5 s on a loaded machine: killed, restarted).
HTTP_PROTOCOL = "mgaki.service.limits:GuardedH11Protocol"



def startup_notices(cfg: Any, config_file: str | Path | None) -> list[str]:
    """What a new operator must do before the service answers anyone (printed by `mgaki serve`)."""
    out = []
    target = f" --config {config_file}" if config_file else " --config service.yaml"
    if not cfg.tokens:
        out.append("no bearer tokens are configured, so every call to /alerts, /patients, /fhir and /dashboard "
                   "is refused (401). Create one with: mgaki token create --role reader" + target +
                   " (roles reader, writer, admin; --patients to limit it), then restart. docs/service.md#deployment")
    if cfg.cds_require_jwt and not cfg.cds_issuers:
        out.append("no CDS clients are configured (cds_issuers), so every CDS Hooks call is refused (401): add the "
                   "EHR's issuer and keys and public_base_url. docs/service.md#deployment")
    return out


_ROLES_HELP = "reader (alerts, dashboard), writer (FHIR ingest), admin (everything, every patient)"


def token_create(
    role: Annotated[str, typer.Option(help=_ROLES_HELP)],
    name: Annotated[str | None, typer.Option(help="the token's name in audit rows (default: <role>-<random>)")]
    = None,
    patients: Annotated[str | None, typer.Option(help="comma-separated patient ids the token is limited to "
                                                      "(read and write); default: every patient")] = None,
    config: Annotated[Path | None, typer.Option(help="add the token to this YAML config file (created if "
                                                     "missing; its SHA-256 is stored, not the token)")] = None,
) -> None:
    """Create a bearer token: print it once, and its config entry (or write the entry into --config)."""
    from mgaki.service.config import ROLES, TokenConfig

    if role not in ROLES:
        err.print(f"[red]error:[/red] --role {role!r}: use one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    secret = secrets.token_urlsafe(32)  # 256 random bits
    entry: dict[str, Any] = {"name": name or f"{role}-{secrets.token_hex(3)}",
                             "token_sha256": hashlib.sha256(secret.encode()).hexdigest(), "roles": [role]}
    if patients is not None:
        ids = [p.strip() for p in patients.split(",") if p.strip()]
        if not ids:
            err.print("[red]error:[/red] --patients names no patient")
            raise typer.Exit(2)
        entry["patients"] = ids
    TokenConfig.model_validate(entry)
    if config is not None:
        try:
            _add_token(config, entry)
        except MgakiError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    limit = f", limited to {len(entry['patients'])} patient(s)" if "patients" in entry else ""
    typer.echo(f"token {entry['name']!r} ({role}{limit}):")
    typer.echo(f"  {secret}")
    typer.echo("Shown only now: give it to its holder (Authorization: Bearer <token>); the config keeps its SHA-256.")
    if config is not None:
        typer.echo(f"Added to {config}; restart the service to use it.")
    else:
        import json

        import yaml

        typer.echo("Add this entry under tokens: in the service config file (or pass it in MGAKI_TOKENS):")
        typer.echo(yaml.safe_dump({"tokens": [entry]}, sort_keys=False).rstrip())
        typer.echo(f"MGAKI_TOKENS='{json.dumps([entry])}'")


def _add_token(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the tokens of the YAML file at ``path`` (re-written whole, owner-only; comments are
    not kept, the previous file is kept as ``<file>.bak``)."""
    import yaml

    from mgaki.errors import InputError
    from mgaki.service.config import ServiceConfig

    data: Any = {}
    text = None
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(str(path), f"cannot read service config: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(str(path), "service config must be a mapping")
    tokens = data.setdefault("tokens", [])
    if not isinstance(tokens, list):
        raise InputError(f"{path}: tokens", "not a list")
    if any(isinstance(t, dict) and t.get("name") == entry["name"] for t in tokens):
        raise InputError(f"{path}: tokens", f"a token named {entry['name']!r} exists already; choose another --name")
    tokens.append(entry)
    try:  # the tokens only: the rest of the file is checked by `mgaki serve` as ever
        ServiceConfig.model_validate({"tokens": tokens})
    except ValueError as exc:
        raise InputError(f"{path}: tokens", f"invalid: {exc}") from exc
    if text is not None:
        backup = path.with_name(path.name + ".bak")
        backup.write_text(text, encoding="utf-8")
        backup.chmod(0o600)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    tokens = typer.Typer(help="Bearer tokens for the service (reader, writer, admin).", no_args_is_help=True)
    tokens.command("create")(token_create)
    app.add_typer(tokens, name="token")
