"""The HL7 journal: received messages written ahead of the event store, so an ACK costs one shared fsync.

A message is acknowledged once its raw text is in the journal and fsync'd; the event store is written
behind it, many messages per append (``feed.Hl7Feed``). The journal is what makes that ACK honest: a
process killed between the ACK and the store append leaves the message here, and the next process to
start replays it (``orphans``) before it serves.

Layout, under the data folder: ``journal/<process id>/`` per serving process (``mgaki serve --workers N``
runs N), held by an ``flock`` on ``journal/<process id>.lock`` for the process's life, so a live
process's journal is never replayed by another and a dead one's always is (the kernel drops the lock
with the process). In the folder: segments ``seg-<first seq>.log`` of records, and ``applied``, the
sequence number up to which every record is in the event store (written atomically after the append
that stored them; an append is idempotent, so a record replayed twice is stored once). A segment
whose records are all applied is deleted, and a clean stop removes the folder: the journal stays
bounded by what is not yet stored (``SEGMENT_BYTES`` per segment).

A record is ``<length><crc32>`` (big-endian, 4 bytes each) then its JSON: ``seq``, ``t`` (received,
epoch seconds), ``actor`` (who the connection proves) and ``msg`` (the HL7 text). A torn record at
the end of a segment (the process died inside a write) was never fsync'd, so never acknowledged:
reading stops there. The journal holds patient data, like the event store: owner-only files.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mgaki.events.locks import FileLock
from mgaki.events.store import _fsync as _fsync_dir

__all__ = ["JOURNAL", "SEGMENT_BYTES", "Entry", "Journal", "orphans", "read_segment"]

JOURNAL = "journal"
SEGMENT_BYTES = 8 << 20  # a new segment after this many bytes; applied segments are deleted
_HEAD = struct.Struct(">II")  # payload length, crc32 of the payload
_APPLIED = "applied"


@dataclass(frozen=True)
class Entry:
    """One journaled message."""

    seq: int
    received: float  # epoch seconds
    actor: str
    text: str

    def encode(self) -> bytes:
        payload = json.dumps({"seq": self.seq, "t": self.received, "actor": self.actor, "msg": self.text},
                             ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def read_segment(path: Path) -> Iterator[Entry]:
    """The records of one segment, in order; stops at a torn or corrupt record (never acknowledged)."""
    data = path.read_bytes()
    pos = 0
    while pos + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, pos)
        payload = data[pos + _HEAD.size:pos + _HEAD.size + size]
        if len(payload) < size or zlib.crc32(payload) != crc:
            return
        try:
            rec = json.loads(payload)
            yield Entry(int(rec["seq"]), float(rec["t"]), str(rec["actor"]), str(rec["msg"]))
        except (ValueError, KeyError, TypeError):
            return
        pos += _HEAD.size + size


class Journal:
    """One process's journal folder (see the module docstring); not thread-safe: one writer thread appends,
    and ``checkpoint`` may run in another (it touches closed segments and the ``applied`` file only)."""

    def __init__(self, folder: Path, lock: FileLock) -> None:
        self.folder = folder
        self._lock = lock
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._applied = self._read_applied()
        self._segments = sorted(self.folder.glob("seg-*.log"))
        self._seg_lock = threading.Lock()  # the segment list: appended by the writer, trimmed by checkpoint
        known = self.entries()
        self._next = max(known[-1].seq if known else 0, self._applied) + 1
        self._fd: int | None = None
        self._size = 0

    @classmethod
    def create(cls, root: Path) -> Journal:
        """A new journal for this process under ``root`` (the ``journal`` folder), locked for its life."""
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        lock = FileLock(root / f"{name}.lock")
        lock.acquire()
        j = cls(root / name, lock)
        _fsync_dir(root)
        return j

    # --- writing (the committer thread) ---------------------------------------------------------

    def append(self, items: list[tuple[float, str, str]]) -> list[Entry]:
        """Write ``(received, actor, text)`` records and fsync once: when this returns they are durable."""
        entries = []
        for received, actor, text in items:
            entries.append(Entry(self._next, received, actor, text))
            self._next += 1
        if not entries:
            return entries
        new_segment = self._fd is None or self._size >= SEGMENT_BYTES
        if new_segment:
            if self._fd is not None:
                os.close(self._fd)
            path = self.folder / f"seg-{entries[0].seq:012d}.log"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._size = 0
            with self._seg_lock:
                self._segments.append(path)
        fd = self._fd
        assert fd is not None
        data = b"".join(e.encode() for e in entries)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        if new_segment:
            _fsync_dir(self.folder)  # the new segment's name is durable too
        self._size += len(data)
        return entries

    # --- reading and checkpoints (the drainer thread) -------------------------------------------

    def _read_applied(self) -> int:
        try:
            return int((self.folder / _APPLIED).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    @property
    def applied(self) -> int:
        return self._applied

    def entries(self, after: int = 0) -> list[Entry]:
        """Every record with ``seq > after``, in order (replay)."""
        return [e for p in sorted(self.folder.glob("seg-*.log")) for e in read_segment(p) if e.seq > after]

    def checkpoint(self, seq: int) -> None:
        """Every record up to ``seq`` is in the event store: say so durably, delete the segments that are done."""
        if seq <= self._applied:
            return
        tmp = self.folder / f".{_APPLIED}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(seq).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.folder / _APPLIED)
        _fsync_dir(self.folder)
        self._applied = seq
        # a segment is done when the next one starts at or below applied + 1 (the open one is never removed)
        with self._seg_lock:
            segs = list(self._segments)
        for cur, nxt in itertools.pairwise(segs):
            if int(nxt.stem.split("-")[1]) <= seq + 1:
                cur.unlink(missing_ok=True)
                with self._seg_lock:
                    self._segments.remove(cur)

    def close(self, remove: bool) -> None:
        """Close the open segment; ``remove``: every record is applied, delete the folder; then release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._lock.path.unlink(missing_ok=True)
        self._lock.release()


def orphans(root: Path) -> Iterator[Journal]:
    """Journals of processes that ended (their lock is free), each locked while the caller replays it."""
    if not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        lock = FileLock(root / f"{folder.name}.lock")
        if not lock.acquire(blocking=False):
            continue  # a live process's journal
        if not folder.is_dir():  # replayed and removed by another process meanwhile
            lock.path.unlink(missing_ok=True)
            lock.release()
            continue
        yield Journal(folder, lock)
