"""The service's edges: request bodies (size, time, media type, encoding) and slow or greedy connections.

Two layers, so that no caller without credentials can hold what signed callers need:

- ``BodyLimit``, a pure ASGI middleware: a body over its endpoint's limit (``body_limits``) is answered 413
  before it is buffered (a ``Content-Length`` over the limit before anything is read; a body without one
  is counted as it streams and cut at the limit), and the whole body must arrive within ``body_timeout_s``
  (else 408). Both answers close the connection, so the rest of the body is not read.
- ``GuardedH11Protocol``, uvicorn's h11 protocol with two guards (``mgaki serve`` runs it): the request line
  and headers must arrive within ``header_timeout_s`` of the connection opening or of the previous response
  (else 408 and closed: slowloris), and one client address holds at most ``max_connections_per_client``
  open connections (one more is answered 429 and closed).

The endpoints check credentials from the headers before they read a body or take a CDS in-flight slot
(``app.py``); ``check_media_type`` and ``decode_body`` check an ingest body's media type and encoding.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h11
from fastapi import HTTPException, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mgaki.service.config import BodyLimits

__all__ = ["GUARD_STATE", "BodyLimit", "ConnectionGuard", "EdgeError", "GuardedH11Protocol", "body_group",
           "check_media_type", "decode_body", "edge_response"]

GUARD_STATE = "mgaki_connection_guard"  # the lifespan state key GuardedH11Protocol reads its settings from
_FHIR_PATHS = ("/fhir", "/fhir/$import-ndjson")


class EdgeError(HTTPException):
    """A request refused at the edge (408, 413, 415, 400 bad encoding); the connection is closed after it.

    An ``HTTPException`` so that FastAPI's own body reading (a model parameter) passes it on unchanged.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, headers={"Connection": "close"})
        self.message = message


def body_group(path: str) -> str:
    """The ``body_limits`` entry of an endpoint, by its path."""
    if path == "/fhir":
        return "fhir"
    if path == "/fhir/$import-ndjson":
        return "ndjson"
    if path.startswith("/cds-services/") and not path.endswith("/feedback"):
        return "cds"
    return "other"


def edge_response(path: str, status: int, message: str) -> JSONResponse:
    """The answer to an ``EdgeError``: an OperationOutcome on the FHIR endpoints, ``{"error": ...}`` elsewhere."""
    body: dict[str, Any] = {"error": message}
    if path in _FHIR_PATHS:
        code = {413: "too-long", 408: "timeout"}.get(status, "not-supported" if status == 415 else "invalid")
        body = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": code, "diagnostics": f"body: {message}", "expression": ["body"]}]}
    return JSONResponse(body, status_code=status, headers={"Connection": "close"})


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB ({n} bytes)" if n >= 1 << 20 else f"{n} bytes"


class BodyLimit:
    """Pure ASGI: the request body bounded in size (per endpoint group) and in time, before it is buffered."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, timeout_s: float) -> None:
        self.app = app
        self.limits = limits
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        group = body_group(scope["path"])
        limit: int = getattr(self.limits, group)
        what = f"the {_mib(limit)} limit of this endpoint (config body_limits.{group})"
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await edge_response(scope["path"], 413, f"request body of {_mib(int(declared))} exceeds {what}")(
                scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received, complete = 0, False

        async def bounded() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: later receives wait for a disconnect, unbounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise EdgeError(408, f"request body not received within {self.timeout_s:g} s "
                                     "(config body_timeout_s)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise EdgeError(413, f"request body exceeds {what}")
                complete = not message.get("more_body", False)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, watch)
        except EdgeError as exc:  # raised where no handler answered it (e.g. a middleware reading the body)
            if started:
                raise
            await edge_response(scope["path"], exc.status_code, exc.message)(scope, receive, send)


# --- media type and content encoding of the ingest endpoints ----------------------------------------------------


def check_media_type(request: Request, accepted: tuple[str, ...]) -> None:
    """415 unless the body's media type is one of ``accepted`` and its encoding identity or gzip (before reading)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in accepted:
        raise EdgeError(415, f"Content-Type {media or '(none)'!r} is not accepted here; send {' or '.join(accepted)}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise EdgeError(415, f"Content-Encoding {encoding!r} is not accepted; send identity or gzip")


def decode_body(content_encoding: str | None, payload: bytes, limit: int) -> bytes:
    """The body as sent, inflated when gzip: a gzip body must be one whole gzip stream (else 400) no larger
    than ``limit`` once inflated (else 413, counted as it inflates: no bomb is inflated past the limit)."""
    if (content_encoding or "identity").strip().lower() in ("", "identity"):
        return payload
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise EdgeError(400, "Content-Encoding gzip, but the body is not a gzip stream") from exc
    if len(out) > limit or inflate.unconsumed_tail:
        raise EdgeError(413, f"request body exceeds the {_mib(limit)} limit of this endpoint once inflated")
    if not inflate.eof:
        raise EdgeError(400, "Content-Encoding gzip: the gzip stream is truncated")
    if inflate.unused_data:
        raise EdgeError(400, "Content-Encoding gzip: data after the end of the gzip stream")
    return out


# --- connections -----------------------------------------------------------------------------------------------


@dataclass
class ConnectionGuard:
    """Settings and per-address counts for ``GuardedH11Protocol`` (one per server, in the lifespan state)."""

    header_timeout_s: float
    max_per_client: int  # 0: no limit
    open: Counter[str] = field(default_factory=Counter)


_LINGER_S = 1.0  # a refused connection is closed this long after its answer


def _raw_reply(status: int, reason: str, message: str, extra: str = "") -> bytes:

    body = message.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a header timeout and a cap on connections per client address.

    Its settings come from the app's lifespan state (``GUARD_STATE``, set by ``create_app``'s lifespan), so
    every worker process of ``mgaki serve --workers N`` reads its own (uvicorn passes the class by reference).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = self.app_state.get(GUARD_STATE)
        self._guard: ConnectionGuard | None = guard if isinstance(guard, ConnectionGuard) else None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._armed_scope: Any = None
        self._counted: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        g = self._guard
        if g is None:
            return
        host = self.client[0] if self.client else None
        if g.max_per_client and host is not None:
            if g.open[host] >= g.max_per_client:
                # answered, then half-closed; what the client sends meanwhile is read and dropped for a second
                # before the close (closing on unread data would reset the connection and lose the answer)
                self._refused = True
                transport.write(_raw_reply(429, "Too Many Requests",
                                           f"more than {g.max_per_client} open connections from this address "
                                           "(config max_connections_per_client)", "retry-after: 1\r\n"))
                if transport.can_write_eof():
                    transport.write_eof()
                self.loop.call_later(_LINGER_S, transport.close)
                return
            g.open[host] += 1
            self._counted = host
        self._arm()

    def _arm(self) -> None:
        """Give the next request line and headers ``header_timeout_s`` to arrive."""
        if self._timer is not None:
            self._timer.cancel()
        assert self._guard is not None
        self._armed_scope = self.scope
        self._timer = self.loop.call_later(self._guard.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self.scope is self._armed_scope and not busy and not self.transport.is_closing():
            self.transport.write(_raw_reply(408, "Request Timeout", "request headers not received within "
                                            f"{self._guard.header_timeout_s:g} s (config header_timeout_s)"
                                            if self._guard else "request headers not received in time"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._timer is not None and self.scope is not self._armed_scope:  # a complete request came in
            self._timer.cancel()
            self._timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._guard is not None and not self.transport.is_closing() and self.conn.our_state is not h11.ERROR:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted is not None and self._guard is not None:
            self._guard.open[self._counted] -= 1
            if self._guard.open[self._counted] <= 0:
                del self._guard.open[self._counted]
            self._counted = None
        super().connection_lost(exc)
