"""HL7 v2.5.1 ORU^R01 in and out: message -> raw event rows, acknowledgements, and a message builder.

Parsing uses python-hl7 (``hl7.parse``). An ORU^R01 becomes the same raw rows the
cohort adapters hand to ``events.normalize``: PID-3 the subject, PV1-19 the encounter
(PV1-2/44/45 its kind, start and end), each OBX one measurement (OBX-3 LOINC code
mapped through ``knowledge/data/codes.yaml``, OBX-5 value, OBX-6 unit, OBX-14 or
else OBR-7 time). Every row's ``source`` is a versioned record reference
(``HL7/<filler order>/<coding system>/<code>/_history/<content hash>``), so the event
store keeps one version per result: a correction (OBX-11 ``C``) replaces the value,
a deletion (``D``) or wrong-patient/in-error (``W``) result removes it, and a resent
message adds nothing. Only final (``F``) and corrected (``C``) results are used;
every other status is quarantined with the reason (HL7 table 0085).

A message may carry several patients (PATIENT_RESULT groups: PID, PV1, then OBR/OBX);
each result belongs to the group it is in.

Times without a UTC offset take the offset of MSH-7, else they are read as UTC
(the event model's convention). One message is a handful of rows: plain Python here,
the columnar work happens in ``normalize``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7
import pyarrow as pa

from mgaki.adapters._cohort import VOCABULARY, code_table, conform_rows
from mgaki.adapters.maps import load_map
from mgaki.events.store import HISTORY, versioned_source
from mgaki.service.persistence.ids import id_problem

__all__ = [
    "CODING_SYSTEMS",
    "AckError",
    "AckReply",
    "Hl7Error",
    "Parsed",
    "Result",
    "ack",
    "control_ids",
    "events_to_oru",
    "msh_fields",
    "oru_r01",
    "parse_oru",
    "read_ack",
]

# HL7 table 0396 (coding system) -> FHIR system URI, then VOCABULARY's prefix: a naming convention
# of the standards, not clinical knowledge.
CODING_SYSTEMS: dict[str, str] = {"LN": "http://loinc.org", "SCT": "http://snomed.info/sct",
                                  "C4": "http://www.ama-assn.org/go/cpt"}

# HL7 table 0085 (observation result status): what each status means for the store.
_USED = {"F": "final", "C": "corrected"}
_REMOVES = {"D": "deleted", "W": "posted in error (wrong)"}
_NOT_USED = {"P": "preliminary", "R": "not verified", "S": "partial", "I": "pending", "X": "cannot be obtained",
             "N": "not asked", "U": "final without retransmission", "O": "order detail only", "A": "amended"}

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2}(?:\.\d{1,4})?)?([+-]\d{4})?$")
_VERSIONS_ACCEPTED = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")


class Hl7Error(Exception):
    """A message the listener refuses: the ACK code, the HL7 error code (table 0357), where, what."""

    def __init__(self, ack_code: str, error_code: str, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.ack_code, self.error_code, self.where, self.problem = ack_code, error_code, where, problem


_ERROR_TEXT = {"0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
               "102": "Data type error", "200": "Unsupported message type", "201": "Unsupported event code",
               "203": "Unsupported version id", "205": "Duplicate key identifier", "207": "Application internal error"}


@dataclass(frozen=True)
class Parsed:
    """A parsed ORU^R01: raw tables for ``normalize`` and what its ACK needs from MSH."""

    tables: dict[str, pa.Table]
    msh: dict[str, str]
    observations: int


def _text(seg: Any, fld: int, rep: int = 1, comp: int = 1) -> str:
    """One component of a field as text ('' when absent); python-hl7 indexes from 1."""
    try:
        val = seg.extract_field(1, fld, rep, comp, 1) if len(seg) > fld else ""
    except (IndexError, KeyError):
        return ""
    return "" if val is None else str(val).strip()


def _hl7_time(value: str, default_offset: str | None) -> str | None:
    """HL7 DTM -> ISO 8601 text for normalize; unparseable text is passed on (normalize names it)."""
    if not value:
        return None
    m = _TS.match(value)
    if not m:
        return value
    y, mo, d, h, mi, s, off = m.groups()
    if d is None:
        return value  # month precision cannot place a laboratory value in time
    out = f"{y}-{mo}-{d}"
    if h is not None:
        out += f"T{h}:{mi or '00'}:{s or '00'}"
        off = off or default_offset
        if off:
            out += f"{off[:3]}:{off[3:]}"
    return out


def _order_id(seg: Any, fld: int) -> str:
    """An EI order number: entity id, with the issuing namespace (``12345@LAB``) when given."""
    eid, ns = _text(seg, fld, 1, 1), _text(seg, fld, 1, 2)
    return f"{eid}@{ns}" if eid and ns else eid


def _digest(*parts: str | None) -> str:
    return "h" + hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:16]


def _segments(msg: Any, sid: str) -> list[Any]:
    return [s for s in msg if str(s[0]) == sid]


def _parse_message(text: str) -> Any:
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")
    if not text.startswith("MSH"):
        raise Hl7Error("AE", "100", "MSH", "the message does not start with an MSH segment")
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises several types for broken text
        raise Hl7Error("AE", "102", "MSH", f"not a parseable HL7 v2 message ({type(exc).__name__})") from exc
    return msg


def msh_fields(text: str) -> dict[str, str]:
    """What an ACK echoes from MSH, best effort (empty for text that is not HL7)."""
    try:
        return _msh_of(_parse_message(text))
    except (Hl7Error, IndexError):
        return {}


def _msh_of(msg: Any) -> dict[str, str]:
    """``msh_fields`` of a parsed message (IndexError: no MSH segment)."""
    msh = _segments(msg, "MSH")[0]
    return {"sending_app": _text(msh, 3), "sending_facility": _text(msh, 4), "receiving_app": _text(msh, 5),
            "receiving_facility": _text(msh, 6), "time": _text(msh, 7), "type": _text(msh, 9, 1, 1),
            "event": _text(msh, 9, 1, 2), "control_id": _text(msh, 10), "processing_id": _text(msh, 11),
            "version": _text(msh, 12)}


def parse_oru(text: str, per_source: bool = False) -> Parsed:
    """Raw event tables from one ORU^R01; Hl7Error (AE/AR) naming the problem if it cannot be used.

    A result's identity is its order number (OBR-3 filler, else OBR-2 placer, with their namespace)
    and code; a visit's its number (PV1-19). ``per_source`` prefixes the sending application and
    facility (MSH-3, MSH-4), so equal numbers from two systems are two records (docs/service.md#identity).
    """
    msg = _parse_message(text)
    try:
        msh_f = _msh_of(msg)
    except IndexError:
        msh_f = {}
    if "\x00" in text:  # no HL7 data type holds NUL, and no database column does
        raise Hl7Error("AE", "102", "MSH", "the message contains a NUL character (0x00)")
    if msh_f.get("type") != "ORU" or msh_f.get("event") != "R01":
        got = "^".join(x for x in (msh_f.get("type"), msh_f.get("event")) if x) or "(none)"
        raise Hl7Error("AR", "200" if msh_f.get("type") != "ORU" else "201", "MSH-9",
                       f"message type {got} is not accepted; this listener takes ORU^R01")
    if msh_f["version"] and msh_f["version"] not in _VERSIONS_ACCEPTED:
        raise Hl7Error("AR", "203", "MSH-12", f"version {msh_f['version']!r} is not supported (2.5.1 expected)")
    if not msh_f["control_id"]:
        raise Hl7Error("AE", "101", "MSH-10", "message control id is missing")
    m7 = _TS.match(msh_f["time"])
    offset = m7.group(7) if m7 else None
    if not _segments(msg, "PID"):
        raise Hl7Error("AE", "100", "PID", "the message has no PID segment")
    rows: dict[str, list[dict[str, Any]]] = {"events": [], "encounters": [], "subjects": [], "quarantine": []}
    codes = _codes()
    # ORU^R01 repeats PATIENT_RESULT groups (PID [PV1] then OBR/OBX): each result belongs to the
    # patient and visit of the group it is in, never to the message's first patient
    system = f"{msh_f['sending_app']}^{msh_f['sending_facility']}/" if per_source else ""
    subject, visit, n_pid = "", "", 0
    order, obr_time, n_obx = msh_f["control_id"], None, 0
    for seg in msg:
        sid = str(seg[0])
        if sid == "PID":
            n_pid += 1
            subject, visit, order, obr_time = _pid(seg, n_pid, rows), "", msh_f["control_id"], None
        elif sid == "PV1" and subject:
            visit = _pv1(seg, subject, offset, rows, system)
        elif sid == "OBR":
            order = _order_id(seg, 3) or _order_id(seg, 2) or msh_f["control_id"]
            obr_time = _text(seg, 7)
        elif sid == "OBX":
            n_obx += 1
            if not subject:
                raise Hl7Error("AE", "100", "OBX", f"OBX {n_obx} comes before any PID: whose result it is is unknown")
            rows_for = _obx_rows(seg, n_obx, subject, visit, system + order, obr_time, offset, codes)
            rows[rows_for[0]].append(rows_for[1])
    if n_obx == 0:
        raise Hl7Error("AE", "100", "OBX", "the message has no OBX segment (no results to store)")
    tables = {name: conform_rows(r, name) for name, r in rows.items()}
    return Parsed(tables, msh_f, n_obx)


@functools.cache
def _codes() -> dict[tuple[str, str], tuple[str, str]]:
    """(system URI, code) -> (event code key, analyte), from the code table (built once per process)."""
    return {(r["system"], r["code"]): (r["key"], r["analyte"]) for r in code_table().to_pylist()}


def _pid(seg: Any, n: int, rows: dict[str, list[dict[str, Any]]]) -> str:
    """The subject of a PID segment (PID-3), its subjects row added; AE if PID-3 is empty."""
    subject = _text(seg, 3)
    if not subject:
        raise Hl7Error("AE", "101", "PID-3", "patient identifier missing" + (f" (PID {n})" if n > 1 else ""))
    if (problem := id_problem(subject, "patient identifier")) is not None:
        raise Hl7Error("AE", "102", "PID-3", problem + (f" (PID {n})" if n > 1 else ""))
    sex, birth = _text(seg, 8), _text(seg, 7)
    rows["subjects"].append({
        "subject_id": subject, "sex": {"F": "female", "M": "male"}.get(sex.upper()),
        "birth_date": _hl7_date(birth),  # normalize checks it is a date, and a plausible one
        "source": versioned_source(f"HL7/PID/{subject}", _digest(sex, birth))})
    return subject


def _hl7_date(value: str) -> str | None:
    """PID-7 (DTM) -> a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); text that is not a DTM is passed on as is."""
    m = _TS.match(value)
    if not value or not m:
        return value or None
    y, mo, d = m.group(1), m.group(2), m.group(3)
    return f"{y}-{mo}-{d}" if d else f"{y}-{mo}" if mo else y


def _pv1(seg: Any, subject: str, offset: str | None, rows: dict[str, list[dict[str, Any]]], system: str = "") -> str:
    """The visit of a PV1 segment (PV1-19); an encounters row when PV1-44 gives its start."""
    visit = _text(seg, 19)
    if not visit:
        return ""
    if (problem := id_problem(visit, "visit number")) is not None:
        raise Hl7Error("AE", "102", "PV1-19", problem)
    start, end = _hl7_time(_text(seg, 44), offset), _hl7_time(_text(seg, 45), offset)
    if start:
        kinds = load_map("hl7v2").by("encounter_kind")
        cls = _text(seg, 2).upper()
        kind = kinds[cls].target if cls in kinds else None
        rows["encounters"].append({
            "subject_id": subject, "encounter_id": visit, "kind": kind, "start": start, "end": end,
            "source": versioned_source(f"HL7/PV1/{system}{visit}".replace(HISTORY, "/_"),
                                       _digest(subject, kind, start, end))})
    return visit


def _obx_rows(seg: Any, n: int, subject: str, visit: str, order: str, obr_time: str | None,
              offset: str | None, codes: dict[tuple[str, str], tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """('events' | 'quarantine', the raw row) for one OBX."""
    code, csys, sub = _text(seg, 3, 1, 1), _text(seg, 3, 1, 3), _text(seg, 4)
    vtype, status = _text(seg, 2).upper(), _text(seg, 11).upper()
    # SN (structured numeric) comparator^number -> '<0.5', which normalize quarantines as non-numeric
    value = _text(seg, 5, 1, 1) + _text(seg, 5, 1, 2) if vtype == "SN" else _text(seg, 5)
    unit = _text(seg, 6) or None
    time = _hl7_time(_text(seg, 14) or (obr_time or ""), offset)
    system = CODING_SYSTEMS.get(csys)
    key, analyte = codes.get((system or "", code), (None, None))
    if key is None:
        key = f"{VOCABULARY.get(system or '', csys or 'HL7')}/{code or '(none)'}"
    identity = f"HL7/{order}/{csys or '-'}/{code or n}" + (f"/{sub}" if sub else "")
    source = versioned_source(identity.replace("/_history/", "/_"), _digest(subject, visit, status, value, unit, time))
    raw = {"subject_id": subject, "encounter_id": visit or None, "time": time, "code": key, "analyte": analyte,
           "value": value, "unit": unit, "source": source}
    reason = None
    if status in _REMOVES:
        reason = f"OBX-11 result status '{status}' ({_REMOVES[status]}): replaces any earlier result"
    elif status in _NOT_USED:
        reason = f"OBX-11 result status '{status}' ({_NOT_USED[status]}) is not used; only F and C are"
    elif status not in _USED:
        reason = f"OBX-11 result status {status or '(missing)'!r} is not an HL7 table 0085 status"
    if reason is None:
        return "events", raw
    return "quarantine", {"table": "events", "subject_id": subject, "source": source,
                          "raw": json.dumps({k: raw[k] for k in ("time", "code", "value", "unit")}),
                          "reason": reason}


# --- acknowledgements ----------------------------------------------------------------------------


def _esc(text: str) -> str:
    """HL7 escape sequences for the delimiters, so a problem text cannot break the ACK's structure."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    return out.replace("~", "\\R\\").replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True)
class AckError:
    code: str  # HL7 table 0357
    where: str  # segment-field, e.g. 'PID-3'
    problem: str
    severity: str = "E"  # E error, W warning, I information


def ack(msh: dict[str, str], code: str, errors: Sequence[AckError] = (), now: datetime | None = None) -> str:
    """An HL7 v2.5.1 ACK (MSH, MSA, one ERR per problem) answering the message whose MSH is ``msh``."""
    now = now or datetime.now(UTC)
    ctrl = msh.get("control_id", "")
    head = ["MSH", "^~\\&", "MGAKI", _esc(msh.get("receiving_facility", "")), _esc(msh.get("sending_app", "")),
            _esc(msh.get("sending_facility", "")), now.strftime("%Y%m%d%H%M%S+0000"), "",
            f"ACK^{_esc(msh.get('event', ''))}^ACK", "A" + _digest(ctrl, now.isoformat())[1:15],
            _esc(msh.get("processing_id", "") or "P"), "2.5.1"]
    segs = ["|".join(head), "|".join(["MSA", code, _esc(ctrl), _esc(errors[0].problem) if errors else ""])]
    for e in errors:
        loc = e.where.split("-")
        erl = loc[0] + ("^1^" + loc[1] if len(loc) > 1 else "")
        segs.append("|".join(["ERR", "", _esc(erl).replace("\\S\\", "^"),
                              f"{e.code}^{_ERROR_TEXT.get(e.code, 'Application error')}^HL70357",
                              e.severity, "", "", "", _esc(e.problem)]))
    return "\r".join(segs) + "\r"


# --- writing ORU^R01 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One OBX: a LOINC-coded numeric result."""

    loinc: str
    value: float | str
    unit: str
    time: datetime
    status: str = "F"
    display: str = ""


def _dtm(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("HL7 times are written with their UTC offset: pass an aware datetime")
    return t.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def oru_r01(patient_id: str, results: Sequence[Result], *, visit: str | None = None,
            admitted: datetime | None = None, patient_class: str = "I", order: str | None = None,
            control_id: str | None = None, sex: str | None = None, birth_date: str | None = None,
            sending_app: str = "LAB", sending_facility: str = "HOSP") -> str:
    """An HL7 v2.5.1 ORU^R01 (segments separated by CR) carrying ``results`` for one patient.

    For tests and benchmarks: ``hl7.client.MLLPClient(host, port).send_message(oru_r01(...))``.
    """
    if not results:
        raise ValueError("an ORU^R01 needs at least one result")
    first = min(r.time for r in results)
    control_id = control_id or _digest(patient_id, order, *(repr(r) for r in results))[1:17]
    order = order or control_id
    segs = [
        f"MSH|^~\\&|{_esc(sending_app)}|{_esc(sending_facility)}|MGAKI|MGAKI|{_dtm(first)}||ORU^R01^ORU_R01|"
        f"{_esc(control_id)}|P|2.5.1",
        f"PID|1||{_esc(patient_id)}^^^{_esc(sending_facility)}^MR||||{_esc(birth_date or '')}|{_esc(sex or '')}",
    ]
    if visit:
        pv1 = ["PV1", "1", patient_class] + [""] * 16 + [_esc(visit)] + [""] * 24 + \
            [_dtm(admitted) if admitted else ""]
        segs.append("|".join(pv1))
    segs.append(f"OBR|1||{_esc(order)}|^Laboratory results|||{_dtm(first)}")
    for i, r in enumerate(results, 1):
        segs.append("|".join(["OBX", str(i), "NM" if not isinstance(r.value, str) else "ST",
                              f"{_esc(r.loinc)}^{_esc(r.display)}^LN", "", _esc(str(r.value)),
                              f"{_esc(r.unit)}^^UCUM", "", "", "", "", r.status, "", "", _dtm(r.time)]))
    return "\r".join(segs) + "\r"


def events_to_oru(events: pa.Table, encounters: pa.Table | None = None, per_message: int = 1) -> Iterator[str]:
    """Canonical events (schema.TABLES) -> ORU^R01 messages, each result coded with the analyte's
    preferred LOINC code and canonical unit; ``per_message`` results per message, per patient and visit.
    """
    preferred = {r["analyte"]: (r["code"], r["display"]) for r in code_table().to_pylist()
                 if r["preferred"] and r["vocabulary"] == "LOINC"}
    starts: dict[tuple[str, str], datetime] = {}
    if encounters is not None:
        for e in encounters.select(["subject_id", "encounter_id", "start"]).to_pylist():
            if e["start"] is not None:
                starts[(e["subject_id"], e["encounter_id"])] = e["start"].replace(tzinfo=UTC)
    rows = sorted((r for r in events.select(["subject_id", "encounter_id", "time", "analyte", "numeric_value",
                                                "unit"]).to_pylist() if r["analyte"] in preferred),
                  key=lambda r: (r["subject_id"], r["encounter_id"] or "", r["time"], r["analyte"]))
    batch: list[dict[str, Any]] = []
    for r in [*rows, None]:
        if batch and (r is None or len(batch) == per_message
                      or (r["subject_id"], r["encounter_id"]) != (batch[0]["subject_id"], batch[0]["encounter_id"])):
            b0 = batch[0]
            yield oru_r01(b0["subject_id"], [
                Result(preferred[x["analyte"]][0], x["numeric_value"], x["unit"], x["time"].replace(tzinfo=UTC),
                       display=preferred[x["analyte"]][1]) for x in batch],
                visit=b0["encounter_id"], admitted=starts.get((b0["subject_id"], b0["encounter_id"])))
            batch = []
        if r is not None:
            batch.append(r)


def control_ids(messages: Iterable[str]) -> list[str]:
    """MSH-10 of each message (to match acknowledgements to what was sent)."""
    return [msh_fields(m).get("control_id", "") for m in messages]


@dataclass
class AckReply:
    """An acknowledgement as received by a sender: MSA-1 code, MSA-2 control id, ERR texts."""

    code: str
    control_id: str
    errors: list[str] = field(default_factory=list)


def read_ack(text: str | bytes) -> AckReply:
    """Parse an ACK (e.g. what ``MLLPClient.send_message`` returns, MLLP framing included)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    msg = _parse_message(text)
    msa = _segments(msg, "MSA")
    if not msa:
        raise Hl7Error("AE", "100", "MSA", "the acknowledgement has no MSA segment")
    errs = [str(msg.unescape(_text(e, 8))) for e in _segments(msg, "ERR")]
    return AckReply(_text(msa[0], 1), _text(msa[0], 2), errs)
