"""GET /alerts reads its page off an index (migration 0004), on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from mgaki.service.persistence.db import alerts, make_engine, upgrade
from mgaki.service.persistence.workflow import live_only


def _plan(engine: sa.Engine, q: sa.Select) -> str:
    sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as con:
        if engine.dialect.name == "sqlite":
            return "\n".join(str(r[-1]) for r in con.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}")))
        con.execute(sa.text("SET LOCAL enable_seqscan = off"))  # the planner's choice on a tiny table aside
        return "\n".join(r[0] for r in con.execute(sa.text(f"EXPLAIN {sql}")))


def test_the_alert_list_is_read_off_an_index_without_sorting(tmp_path: Path, database_url: str | None) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'mgaki.db'}")
    try:
        upgrade(engine)
        t0 = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)  # naive UTC, as stored
        with engine.begin() as con:
            con.execute(alerts.insert(), [{"subject_id": f"p{i % 50}", "kind": ("mg_out_of_range", "aki_onset")[i % 2],
                                           "time": t0 + timedelta(minutes=i), "severity": "warning",
                                           "emitted_at": t0, "mode": "live"} for i in range(400)])
        page = sa.select(alerts).where(live_only()).order_by(alerts.c.time.desc(), alerts.c.id).limit(100)
        for q, index in ((page, "ix_alerts_time"),
                         (page.where(alerts.c.kind == "mg_out_of_range"), "ix_alerts_kind_time")):
            plan = _plan(engine, q)
            assert index in plan, plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan  # no sort of the table
    finally:
        engine.dispose()
