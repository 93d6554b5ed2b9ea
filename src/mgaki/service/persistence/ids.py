"""What an identifier or a text must look like before it reaches the database (issue 16 point 4).

PostgreSQL enforces VARCHAR lengths and refuses NUL in text; SQLite accepts both. An id that one
database stores and the other refuses is a failure waiting to happen (an over-long patient id stored
in the event store made every later alert copy fail). So ids are checked at the edge, the same way on
both databases:

- FHIR ids (``Patient.id``, the id part of ``Patient/x`` references): the R4 ``id`` datatype,
  ``[A-Za-z0-9\\-\\.]{1,64}`` (http://hl7.org/fhir/R4/datatypes.html#id).
- Other ids (HL7 v2 PID-3 and PV1-19 ID numbers, path parameters): 1 to ``ID_MAX`` characters, no
  control characters. HL7 v2.5.1 gives CX.1 a length of 15 and the whole field 250; ``ID_MAX`` (64,
  the FHIR limit) is an mgaki choice between the two, under every database column that holds an id.
- NUL (U+0000) anywhere in a request is refused (``find_nul``): no database column can hold it.

Standards grammar, not clinical knowledge: it lives in code, like the HL7 coding-system names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FHIR_ID_RE2", "ID_MAX", "find_nul", "id_problem", "safe_text"]

ID_MAX = 64
FHIR_ID_RE2 = r"^[A-Za-z0-9\-.]{1,64}$"  # the FHIR id grammar, anchored, for pyarrow's RE2 (vectorised checks)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def id_problem(value: str, what: str = "id") -> str | None:
    """Why ``value`` cannot be an id (length, control characters), or None. No value in the text."""
    if not value:
        return f"{what} is empty"
    if len(value) > ID_MAX:
        return f"{what} is longer than {ID_MAX} characters"
    if _CONTROL.search(value):
        return f"{what} contains a control character" + (" (NUL)" if "\x00" in value else "")
    return None


def find_nul(obj: Any, where: str = "") -> str | None:
    """The JSON path of the first string (value or key) holding NUL in a decoded JSON value, or None."""
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        path, val = stack.pop()
        if isinstance(val, str):
            if "\x00" in val:
                return path or "(body)"
        elif isinstance(val, Mapping):
            for k, v in val.items():
                sub = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and "\x00" in k:
                    return (path or "(body)") + " (a key)"
                stack.append((sub, v))
        elif isinstance(val, Sequence) and not isinstance(val, (bytes, bytearray)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(val))
    return None


def safe_text(value: str | None, width: int) -> str | None:
    """``value`` fit for a text column of ``width`` on any database: NUL made visible (``\\0``), then cut."""
    if value is None:
        return None
    return value.replace("\x00", "\\0")[:width]
