"""The MLLP listener: HL7 v2 ORU^R01 over TCP, stored through the same Ingestor as FHIR, then an ACK.

Surveillance of the stored results runs in the background after the ACK (``Ingestor.surveil_soon``):
a lab feed sends one message after another, and one run covers all that arrived meanwhile.

Runs on the service's event loop (started and stopped by the FastAPI lifespan), one
task per connection, messages of a connection answered in order. The store work runs
in a thread under the Ingestor's lock; the ACK is written only after the append has
returned, i.e. after its files are fsync'd and renamed into place, so an AA is never
sent for a message a crash could lose. Logs carry ACK codes and error codes, never
message content or identifiers (no PHI in logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import hl7.mllp
import sqlalchemy as sa

from mgaki.events.store import IdentityConflictError
from mgaki.service.ingest.feed import Hl7Feed, conflict_ack, outside_sender, warnings_of
from mgaki.service.ingest.hl7 import AckError, Hl7Error, ack, msh_fields, parse_oru
from mgaki.service.ingest.ingestor import Ingestor
from mgaki.service.persistence.db import write_audit

__all__ = ["MAX_MESSAGE_BYTES", "MllpListener", "handle_message", "mllp_exchange", "peer_actor", "tls_context"]

log = logging.getLogger("mgaki.service.ingest.mllp")
MAX_MESSAGE_BYTES = 1 << 20  # a lab result message is a few kB; bigger blocks are refused
_READ_AHEAD = 64  # messages of one connection read before their ACKs are written (the feed's path)
# an ACK to write: ready, or (the feed's path) the feed's answer to come: an ACK, or the group commit's future one
# (None: none, the connection is being closed)
_Reply: TypeAlias = "str | asyncio.Future[str | Future[str] | None]"


def handle_message(ingestor: Ingestor, text: str, actor: str = "mllp:unknown", *,
                   patients: frozenset[str] | None = None) -> str:
    """Store one message and return its ACK (AA stored; AE bad content; AR refused type or store failure).

    ``actor`` is who the connection is (``peer_actor``: the TLS client certificate, else the peer address);
    the audit names it, and MSH-3, which the sender writes itself, only as the sender's claim.
    ``patients``: the sender's patient list (its token's, ``mllp_client_cn``); a message naming any other patient
    is refused whole (AR), naming the patient, and audited as denied.
    """
    msh = msh_fields(text)
    try:
        parsed = parse_oru(text, ingestor.per_source)
    except Hl7Error as exc:
        log.info("MLLP message refused: %s %s", exc.ack_code, exc.error_code)
        return ack(msh, exc.ack_code, [AckError(exc.error_code, exc.where, exc.problem)])
    refused = outside_sender(ingestor.engine, msh, parsed.tables, actor, patients)
    if refused is not None:
        return refused
    try:
        res = ingestor.ingest_raw(parsed.tables, surveil=False)  # durable when it returns
    except IdentityConflictError as exc:  # an order/visit number of another patient: nothing stored
        return conflict_ack(msh, exc.conflicts)
    except Exception as exc:  # the sender keeps the message and retries; the append is idempotent
        log.error("MLLP store failure %s", type(exc).__name__)
        return ack(msh, "AR", [AckError("207", "MSH-10", "the message could not be stored; send it again")])
    if res.subjects:
        ingestor.surveil_soon()  # after the ACK, with whatever else arrives meanwhile
    try:
        write_audit(ingestor.engine, actor, "write", "MLLP ORU^R01", res.subjects,
                    f"MSH-3 {msh.get('sending_app') or '(empty)'} (the sender's own claim)")
    except sa.exc.SQLAlchemyError as exc:  # stored already: the ACK must say so
        log.error("MLLP audit write failed %s", type(exc).__name__)
    warnings = warnings_of(res.quarantine_reasons)
    log.info("MLLP message stored: AA (%d observations, %d quarantined)", parsed.observations, res.quarantined)
    return ack(msh, "AA", warnings)


def peer_actor(writer: asyncio.StreamWriter) -> str:
    """Who is at the other end of an MLLP connection, from what the connection proves.

    A verified TLS client certificate (``mllp_tls_client_ca``): its subject's common name and serial number.
    Otherwise only the peer's address is known (``mllp:<address>``); MSH-3 is never the actor: any sender
    writes what it likes there.
    """
    cert = writer.get_extra_info("peercert")
    if cert:
        subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        issuer = {k: v for rdn in cert.get("issuer", ()) for k, v in rdn}
        return (f"mllp-cert:CN={subject.get('commonName', '?')};serial={cert.get('serialNumber', '?')};"
                f"issuer={issuer.get('commonName', '?')}")
    peer = writer.get_extra_info("peername")
    host = peer[0] if isinstance(peer, tuple) and peer else "unknown"
    return f"mllp:{host}" + (" (TLS, no client certificate)" if writer.get_extra_info("sslcontext") else "")


def mllp_exchange(sock: socket.socket, message: bytes) -> bytes:
    """Client side (benchmarks, tests): send one MLLP block on ``sock`` (plain or TLS) and return the reply's."""
    sock.sendall(b"\x0b" + message + b"\x1c\r")
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("MLLP peer closed the connection before an ACK")
        buf += chunk
    return buf.strip(b"\x0b\x1c\r")


def tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """Server TLS for MLLP: TLS 1.2 or later; with ``client_ca``, a client certificate it signed is required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


@dataclass
class MllpListener:
    """An asyncio MLLP server bound to ``host:port`` (port 0: any free port, see ``port`` after start)."""

    ingestor: Ingestor
    host: str
    port: int
    encoding: str = "utf-8"
    reuse_port: bool = False  # several worker processes share the port (SO_REUSEPORT: the kernel spreads connections)
    tls: ssl.SSLContext | None = None  # MLLP over TLS (tls_context)
    idle_timeout_s: float | None = None  # a connection with no complete message for this long is closed
    # verified client certificate common name -> the patients its messages may name (ServiceConfig.mllp_senders)
    senders: dict[str, frozenset[str] | None] = field(default_factory=dict)
    # the journaled path (feed.Hl7Feed): AA once journaled, stored in batches behind it; None: AA after each
    # message's own append (handle_message)
    feed: Hl7Feed | None = None
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await hl7.mllp.start_hl7_server(self._client, self.host, self.port,
                                                       limit=MAX_MESSAGE_BYTES, encoding=self.encoding,
                                                       reuse_port=self.reuse_port or None, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listener on port %d%s", self.port, " (TLS)" if self.tls else "")

    async def stop(self) -> None:
        """Stop accepting, end open connections; a message being stored finishes its append first."""
        if self._server is None:
            return
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self._server.wait_closed()
        self._server = None
        log.info("MLLP listener stopped")

    async def _reply(self, writer: hl7.mllp.HL7StreamWriter, replies: asyncio.Queue[_Reply | None]) -> None:
        """Write each ACK when it is ready, in the order of the messages; ends at None."""
        broken = False
        while (item := await replies.get()) is not None:
            reply = item if isinstance(item, str) else await asyncio.shield(item)
            if isinstance(reply, Future):  # the feed's: AA once its group is journaled
                reply = await asyncio.wrap_future(reply)
            if broken or reply is None:  # the peer has gone, or the connection is being closed
                broken = True
                continue  # the rest are read off the queue, never written
            try:
                writer.writeblock(reply.encode(self.encoding))
                await writer.drain()
            except ConnectionError:
                broken = True

    async def _submit(self, texts: asyncio.Queue[tuple[str, asyncio.Future[str | Future[str] | None]] | None],
                      actor: str, patients: frozenset[str] | None, writer: hl7.mllp.HL7StreamWriter) -> None:
        """Hand the messages read on one connection to the feed in order, all that wait in one thread hop; ends
        at None. (With a hop per message each waited for the hops of those before it: about 11 ms each while
        surveillance held the GIL, and on one connection at 200 msg/s ACK p50 190 ms, p99 677 ms against 52 and
        144 ms batched: benchmarks/README.md, HL7 over MLLP.)"""
        assert self.feed is not None
        done = failed = False
        while not done:
            batch = []
            for item in [await texts.get()] + [texts.get_nowait() for _ in range(texts.qsize())]:
                if item is None:  # put last, after every message of the connection
                    done = True
                else:
                    batch.append(item)
            if not batch:
                continue
            outs: list[str | Future[str] | None] = [None] * len(batch)  # None: no ACK, the connection is closed
            if not failed:
                try:
                    outs = list(await asyncio.to_thread(self.feed.submit_many, [t for t, _ in batch], actor,
                                                        patients))
                except Exception as exc:  # nothing acknowledged from here on: the sender sends them again
                    log.error("MLLP messages could not be handed to the feed (%s): connection closed",
                              type(exc).__name__)
                    failed = True
                    writer.close()  # the reading loop sees the end of the stream
            for (_, slot), out in zip(batch, outs, strict=True):
                slot.set_result(out)

    def _patients(self, writer: hl7.mllp.HL7StreamWriter) -> frozenset[str] | None:
        """The patient list of the sender, from its verified client certificate's common name (None: any)."""
        cert = writer.get_extra_info("peercert")
        if not cert or not self.senders:
            return None
        subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        return self.senders.get(subject.get("commonName", ""))

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        actor = peer_actor(writer)
        patients = self._patients(writer)
        # replies in the order of the messages; with the feed, the next message is read while earlier ones
        # wait for their group commit (a sender that does not wait for each ACK is served at the group's pace)
        replies: asyncio.Queue[_Reply | None] = asyncio.Queue(maxsize=_READ_AHEAD)
        sender = asyncio.create_task(self._reply(writer, replies))
        texts: asyncio.Queue[tuple[str, asyncio.Future[str | Future[str] | None]] | None] = asyncio.Queue()
        submitter = asyncio.create_task(self._submit(texts, actor, patients, writer)) if self.feed is not None \
            else None
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.idle_timeout_s)
                except asyncio.IncompleteReadError:
                    break  # the sender closed the connection
                except TimeoutError:
                    log.info("MLLP connection closed: no complete message for %g s", self.idle_timeout_s)
                    break
                except hl7.mllp.InvalidBlockError:
                    await replies.put(ack({}, "AE", [AckError("100", "MLLP", "the block does not start with <VT> "
                                                                           "(0x0B)")]))
                    continue
                try:
                    text = block.decode(self.encoding)
                except UnicodeDecodeError:
                    await replies.put(ack({}, "AE", [AckError("102", "MSH-18", f"the message is not "
                                                                               f"{self.encoding} text")]))
                    continue
                if submitter is not None:
                    slot: asyncio.Future[str | Future[str] | None] = asyncio.get_running_loop().create_future()
                    await replies.put(slot)  # its place in the order of the ACKs
                    texts.put_nowait((text, slot))
                else:
                    # shielded: a stop() while storing still lets the append (and its ACK) complete
                    await replies.put(await asyncio.shield(asyncio.to_thread(handle_message, self.ingestor, text,
                                                                             actor, patients=patients)))
            texts.put_nowait(None)
            await replies.put(None)
            await sender
        except ValueError:  # a block over MAX_MESSAGE_BYTES: the stream cannot be resynchronised
            texts.put_nowait(None)
            await replies.put(ack({}, "AR", [AckError("100", "MLLP", f"message larger than {MAX_MESSAGE_BYTES} "
                                                                     "bytes")]))
            await replies.put(None)
            await sender
        except ConnectionError:
            pass
        finally:
            if submitter is not None and not submitter.done():
                submitter.cancel()  # a batch already handed over is journaled; its ACKs are not written
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await submitter
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)
