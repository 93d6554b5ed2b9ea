"""`mgaki quarantine`: the rows of an event store that could not be used, with their reasons and raw rows."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mgaki.cli.common import console, require_store

__all__ = ["quarantine", "register"]


class QFmt(StrEnum):
    text = "text"
    json = "json"
    csv = "csv"


def quarantine(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (mgaki ingest)")] = Path(
        "mgaki-store"),
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Only rows whose reason contains this "
                                                                      "text (case-insensitive)")] = None,
    subject: Annotated[str | None, typer.Option(help="Only this subject's rows")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many rows (0: all)")] = 50,
    fmt: Annotated[QFmt, typer.Option("--format", "-f")] = QFmt.text,
) -> None:
    """List the quarantined rows of a store: table, subject, source, reason and the raw row as read."""
    from mgaki.events import EventStore

    require_store(store)
    st = EventStore(store)
    con = st.connect(("quarantine",))
    try:
        where, params = [], []
        if reason:
            where.append("reason ILIKE '%' || ? || '%'")
            params.append(reason)
        if subject:
            where.append("subject_id = ?")
            params.append(subject)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        total = con.execute(f"SELECT count(*) FROM quarantine {cond}", params).fetchone()[0]  # type: ignore[index]
        rows = con.execute(f"""SELECT "table", subject_id, source, reason, raw FROM quarantine {cond}
                               ORDER BY "table", subject_id, source {f'LIMIT {limit}' if limit else ''}""",
                           params).fetchall()
    finally:
        con.close()
    cols = ("table", "subject_id", "source", "reason", "raw")
    if fmt is QFmt.json:
        sys.stdout.write(json.dumps({"total": total, "rows": [dict(zip(cols, r, strict=True)) for r in rows]},
                                    indent=1) + "\n")
        return
    if fmt is QFmt.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
        return
    t = Table(title=f"quarantined rows in {store}: {len(rows)} of {total} shown"
              + ("" if len(rows) == total else " (--limit 0 shows all)"))
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in r))  # Text: '[pH]' in a reason is not markup
    console().print(t)


def register(app: typer.Typer) -> None:
    app.command("quarantine")(quarantine)
