"""`mgaki audit`: check the service's audit trail (its hash chain), and the PostgreSQL grants that keep it
append-only (issue 16 point 7; docs/service.md#audit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgaki.cli.common import err, require_extra, run_or_exit
from mgaki.errors import InputError

__all__ = ["grants", "register", "verify"]

audit_app = typer.Typer(no_args_is_help=True, help="The service's audit trail: verify its hash chain, print grants.")


def verify(
    config: Annotated[Path | None, typer.Option(help="the service's YAML config (else $MGAKI_CONFIG)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data folder (SQLite database)")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL of the service database")] = None,
    expect: Annotated[str | None, typer.Option(
        help="a head printed by an earlier run, SEQ:HASH: the chain must still pass through it (rows cut from the "
             "end leave a shorter chain that is valid on its own)")] = None,
) -> None:
    """Walk the audit table's hash chain; exit 0 if every link holds, 1 naming the first broken one."""
    require_extra("service", "audit verify")

    def run() -> bool:
        import sqlalchemy as sa

        from mgaki.service import load_config
        from mgaki.service.persistence.db import make_engine, verify_audit

        cfg = load_config(config, data_dir=data_dir, database_url=database_url)
        url = cfg.db_url()
        if cfg.database_url is None and not (cfg.data_dir / "mgaki.db").is_file():
            raise InputError(str(cfg.data_dir), "no service database (mgaki.db) in this data folder")
        head = None
        if expect is not None:
            seq, _, digest = expect.partition(":")
            if not seq.isdigit() or len(digest) != 64:
                raise InputError("--expect", "give SEQ:HASH as printed by mgaki audit verify")
            head = (int(seq), digest)
        engine = make_engine(url)
        try:
            with engine.connect() as con:
                cols = {c["name"] for c in sa.inspect(con).get_columns("audit")}
            if "row_hash" not in cols:
                raise InputError(url.split("@")[-1], "the audit table has no hash chain yet: start the service "
                                 "once on this database (its migrations add it)")
            res = verify_audit(engine, head)
        finally:
            engine.dispose()
        if res.ok:
            typer.echo(f"audit chain intact: {res.rows} rows; head {res.head_seq}:{res.head_hash}")
            typer.echo("record the head elsewhere; --expect HEAD checks later that no row was cut from the end")
            return True
        typer.echo(f"audit chain BROKEN after {res.rows} good rows: {res.problem}")
        return False

    if not run_or_exit(run):
        raise typer.Exit(1)


def grants(
    role: Annotated[str, typer.Option(help="the PostgreSQL login role the service connects as")],
    schema: Annotated[str, typer.Option(help="the schema holding the service's tables")] = "public",
) -> None:
    """Print the GRANT statements for the service's own PostgreSQL role (run them as the tables' owner)."""
    from mgaki.service.persistence.db import service_grants

    try:
        lines = service_grants(role, schema)
    except ValueError as exc:
        err.print(f"[red]invalid input:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo("\n".join(lines))


audit_app.command("verify")(verify)
audit_app.command("grants")(grants)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
