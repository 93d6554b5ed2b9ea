"""The alert workflow (issue 17 point 1): acknowledge, snooze, assign, resolve, reopen, seen.

Actions are appended to ``alert_actions`` (never changed) with an audit row in the same transaction; an alert's
state is read from its actions in order. Only live alerts take actions and are shown: a silent (shadow) or
suppressed alert is answered as not found, so the workflow cannot reveal it.

States: ``open`` (needs action), ``acknowledged`` (someone owns it), ``snoozed`` (until its expiry; then open
again), ``resolved``. ``assign`` sets who owns it and keeps the state; ``seen`` records who looked at it.
An alert re-fires only on new information: surveillance stores one alert per triggering result
(subject, encounter, kind, time), so data sent again adds nothing and a resolved alert stays resolved,
while a new result that meets the rule is a new, open alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import pyarrow as pa
import sqlalchemy as sa

from mgaki.research.alert_trial import Allocation
from mgaki.service.persistence.db import (
    alert_actions,
    alerts,
    allocations,
    append_audit,
    audit_row,
    cds_feedback,
    utcnow,
    writer,
)
from mgaki.service.persistence.ids import safe_text

__all__ = ["ACTIONS", "MAX_SNOOZE", "Action", "AlertState", "DbLedger", "WorkflowError", "alert_states",
           "evaluation_alerts", "feedback_counts", "live_only", "record_action", "record_seen"]

Action = Literal["acknowledge", "snooze", "assign", "resolve", "reopen"]
ACTIONS: tuple[str, ...] = ("acknowledge", "snooze", "assign", "resolve", "reopen")
MAX_SNOOZE = timedelta(days=7)  # a snooze longer than a week is refused: an alert is not a to-do list


class WorkflowError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def live_only() -> sa.ColumnElement[bool]:
    """Alerts shown to people: stored live (NULL: stored before modes existed, which were all live)."""
    return sa.or_(alerts.c.mode.is_(None), alerts.c.mode == "live")


@dataclass
class AlertState:
    status: str = "open"
    assignee: str | None = None
    snoozed_until: datetime | None = None
    reason: str | None = None  # of the latest snooze or resolve
    updated_at: datetime | None = None
    updated_by: str | None = None
    seen_by: dict[str, datetime] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def needs_action(self) -> bool:
        return self.status == "open"

    def as_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {"status": self.status, "needs_action": self.needs_action, "assignee": self.assignee,
                "snoozed_until": iso(self.snoozed_until), "reason": self.reason,
                "updated_at": iso(self.updated_at), "updated_by": self.updated_by,
                "seen_by": [{"who": w, "at": iso(t)} for w, t in sorted(self.seen_by.items(), key=lambda x: x[1])],
                "history": self.history}


def _fold(rows: Iterable[Any], now: datetime) -> dict[int, AlertState]:
    out: dict[int, AlertState] = {}
    for r in rows:
        st = out.setdefault(r.alert_id, AlertState())
        if r.action == "seen":
            st.seen_by.setdefault(r.actor, r.at)
            continue
        st.history.append({"action": r.action, "at": r.at.isoformat(), "by": r.actor, "reason": r.reason,
                           "until": r.until.isoformat() if r.until else None, "assignee": r.assignee})
        st.updated_at, st.updated_by = r.at, r.actor
        if r.action == "assign":
            st.assignee = r.assignee
            continue
        st.status = {"acknowledge": "acknowledged", "snooze": "snoozed", "resolve": "resolved",
                     "reopen": "open"}[r.action]
        st.snoozed_until = r.until if r.action == "snooze" else None
        st.reason = r.reason if r.action in ("snooze", "resolve") else None
    for st in out.values():
        if st.status == "snoozed" and st.snoozed_until is not None and st.snoozed_until <= now:
            st.status = "open"  # the snooze has expired
    return out


def alert_states(con: sa.Connection, alert_ids: Sequence[int] | None = None,
                 now: datetime | None = None) -> dict[int, AlertState]:
    """The state of each alert with actions (alerts without any are open), from the action log."""
    q = sa.select(alert_actions).order_by(alert_actions.c.at, alert_actions.c.id)
    if alert_ids is not None:
        if not alert_ids:
            return {}
        q = q.where(alert_actions.c.alert_id.in_(list(alert_ids)))
    return _fold(con.execute(q), now or utcnow())


def _live_alert(con: sa.Connection, alert_id: int) -> Any:
    row = con.execute(sa.select(alerts.c.id, alerts.c.subject_id, alerts.c.kind)
                      .where(alerts.c.id == alert_id, live_only())).first()
    if row is None:
        raise WorkflowError(404, f"no alert {alert_id}")
    return row


def record_action(engine: sa.Engine, alert_id: int, actor: str, action: str, *, reason: str | None = None,
                  until: datetime | None = None, assignee: str | None = None,
                  allowed: frozenset[str] | None = None, now: datetime | None = None) -> AlertState:
    """Append one action (and its audit row) in one transaction; the alert's new state.

    ``allowed``: the patients the caller may see (None: all); an alert of another patient is not found.
    Refused (422): a snooze without a reason or an expiry in the future within ``MAX_SNOOZE``, an assign
    without an assignee, an action that changes nothing (acknowledging an acknowledged alert).
    """
    now = now or utcnow()
    if action not in ACTIONS:
        raise WorkflowError(422, f"action must be one of {', '.join(ACTIONS)}")
    reason = safe_text(reason.strip(), 500) if reason and reason.strip() else None
    if action == "snooze":
        if reason is None:
            raise WorkflowError(422, "a snooze needs a reason")
        if until is None:
            raise WorkflowError(422, "a snooze needs an expiry (until)")
        if until.tzinfo is not None:
            until = (until - until.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
        if until <= now:
            raise WorkflowError(422, "the snooze expiry must be in the future")
        if until - now > MAX_SNOOZE:
            raise WorkflowError(422, f"a snooze may last at most {MAX_SNOOZE.days} days")
    elif until is not None:
        raise WorkflowError(422, "until is for a snooze only")
    if action == "assign":
        if not assignee or not assignee.strip():
            raise WorkflowError(422, "assign needs an assignee")
        assignee = safe_text(assignee.strip(), 200)
    elif assignee is not None:
        raise WorkflowError(422, "assignee is for assign only")
    with writer(engine).begin() as con:  # reads, then writes: BEGIN IMMEDIATE on SQLite (db.make_engine)
        row = _live_alert(con, alert_id)
        if allowed is not None and row.subject_id not in allowed:
            raise WorkflowError(404, f"no alert {alert_id}")
        st = alert_states(con, [alert_id], now).get(alert_id, AlertState())
        same = {"acknowledge": "acknowledged", "resolve": "resolved", "reopen": "open"}
        if action in same and st.status == same[action]:
            raise WorkflowError(409, f"alert {alert_id} is {st.status} already")
        con.execute(sa.insert(alert_actions).values(alert_id=alert_id, at=now, actor=safe_text(actor, 200),
                                                    action=action, reason=reason, until=until, assignee=assignee))
        detail = f"alert {alert_id} ({row.kind}): {action}" + (f" until {until.isoformat()}" if until else "") + \
            (f" to {assignee}" if assignee else "") + (f"; reason: {reason}" if reason else "")
        append_audit(con, [audit_row(actor, "write", f"POST /alerts/{{alert_id}}/{action}", row.subject_id,
                                     detail)])
        return alert_states(con, [alert_id], now).get(alert_id, AlertState())


def record_seen(engine: sa.Engine, actor: str, shown: Sequence[tuple[int, str]]) -> int:
    """Record that ``actor`` saw these live alerts ((alert id, patient id)), once per person and alert, with an
    audit row per patient. Returns the number of first sightings recorded."""
    if not shown:
        return 0
    who = safe_text(actor, 200)
    ids = [a for a, _ in shown]
    now = utcnow()
    with writer(engine).begin() as con:  # reads, then writes: BEGIN IMMEDIATE on SQLite (db.make_engine)
        seen = set(con.execute(sa.select(alert_actions.c.alert_id).where(
            alert_actions.c.alert_id.in_(ids), alert_actions.c.action == "seen",
            alert_actions.c.actor == who)).scalars())
        fresh = [(a, p) for a, p in shown if a not in seen]
        if not fresh:
            return 0
        con.execute(sa.insert(alert_actions), [{"alert_id": a, "at": now, "actor": who, "action": "seen",
                                                "reason": None, "until": None, "assignee": None} for a, _ in fresh])
        per_patient: dict[str, list[int]] = {}
        for a, p in fresh:
            per_patient.setdefault(p, []).append(a)
        append_audit(con, [audit_row(actor, "seen", "alerts shown", p,
                                     f"first seen: alert(s) {', '.join(map(str, sorted(v)))}"[:500])
                           for p, v in sorted(per_patient.items())])
    return len(fresh)


def evaluation_alerts(engine: sa.Engine) -> pa.Table:
    """Every stored alert with its mode (NULL: live), in the columns ``research.alert_eval.outcomes`` reads."""
    q = sa.select(alerts.c.id.label("alert_id"), alerts.c.subject_id, alerts.c.encounter_id, alerts.c.kind,
                  alerts.c.time, alerts.c.severity, alerts.c.value,
                  sa.func.coalesce(alerts.c.mode, "live").label("mode")).order_by(alerts.c.time, alerts.c.id)
    with engine.connect() as con:
        rows = con.execute(q).all()
    types = (pa.int64(), pa.string(), pa.string(), pa.string(), pa.timestamp("us"), pa.string(), pa.float64(),
             pa.string())
    names = ("alert_id", "subject_id", "encounter_id", "kind", "time", "severity", "value", "mode")
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in types]
    return pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})


def feedback_counts(engine: sa.Engine) -> list[dict[str, Any]]:
    """CDS Hooks feedback counted by service, outcome (accepted | overridden) and override reason code."""
    q = sa.select(cds_feedback.c.service, cds_feedback.c.outcome, cds_feedback.c.override_code,
                  sa.func.count().label("n")).group_by(cds_feedback.c.service, cds_feedback.c.outcome,
                                                       cds_feedback.c.override_code)
    with engine.connect() as con:
        return [dict(r._mapping) for r in con.execute(q)]


class DbLedger:
    """The allocation ledger in the service database (``research.alert_trial.Ledger``), in the caller's
    transaction; each new allocation is audited."""

    def __init__(self, con: sa.Connection, policy: str) -> None:
        self.con, self.policy = con, policy
        self.first: tuple[str, datetime] | None = None  # (kind, time) of the alert being allocated

    def find(self, unit: str, unit_id: str) -> Any:
        r = self.con.execute(sa.select(allocations).where(
            allocations.c.policy == self.policy, allocations.c.unit == unit,
            allocations.c.unit_id == unit_id)).first()
        return None if r is None else Allocation(r.unit, r.unit_id, r.stratum, r.seq, r.arm)

    def count(self, stratum: str) -> int:
        return int(self.con.execute(sa.select(sa.func.count()).select_from(allocations).where(
            allocations.c.policy == self.policy, allocations.c.stratum == stratum)).scalar_one())

    def add(self, allocation: Any) -> None:
        assert self.first is not None
        kind, t = self.first
        self.con.execute(sa.insert(allocations).values(
            policy=self.policy, unit=allocation.unit, unit_id=allocation.unit_id, stratum=allocation.stratum,
            seq=allocation.seq, arm=allocation.arm, at=utcnow(), first_kind=kind, first_time=t))
        append_audit(self.con, [audit_row(
            "surveillance", "allocate", "alert rollout",
            allocation.unit_id if allocation.unit == "patient" else None,
            f"policy {self.policy}: {allocation.unit} {allocation.unit_id if allocation.unit == 'ward' else ''}"
            f" stratum {allocation.stratum} #{allocation.seq} -> {allocation.arm} (first eligible: {kind})")])

    def allocation_id(self, unit: str, unit_id: str) -> int | None:
        return self.con.execute(sa.select(allocations.c.id).where(
            allocations.c.policy == self.policy, allocations.c.unit == unit,
            allocations.c.unit_id == unit_id)).scalar()
