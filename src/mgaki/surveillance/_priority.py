"""CPU priority of the background fold, in a module that imports nothing but the standard library.

The fold process runs this before it imports mgaki (``pipeline._FOLD_BOOT`` loads it by its path): importing
mgaki, DuckDB and Arrow costs about half a second of CPU, and a fold process still at its starting priority in
a session of its own (an autogroup of its own, see ``lowest_priority``) took that half second as a peer of the
whole server, one core away from the runs of those moments. (Single results beside a fold take 150-210 ms of
stages instead of 85-90; how much of that the imports caused could not be told from the noise: benchmarks/README.md.)
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["lowest_priority", "normal_priority"]

_AUTOGROUP = Path("/proc/self/autogroup")


def _session_leader() -> bool:
    try:
        return os.getsid(0) == os.getpid()
    except (AttributeError, OSError):
        return False


def lowest_priority(own_session: bool = False) -> None:
    """Give the CPU to everything else: this thread at nice 19 (Linux: the thread only; threads it starts
    inherit it) and, with `own_session` (the fold process, started in a session of its own), its session's
    autogroup too. Linux schedules each session's autogroup as one task first and applies nice only within
    it: a nice-19 fold in a session of its own took as much CPU as the whole server beside it (a 300 s
    HL7 feed's runs went from 2-3 s to 7-17 s while it folded). Never `own_session` in a thread of the server:
    it would lower the server's whole session."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    # only as the leader of a session of its own (started so): run by hand from a shell, the fold would lower
    # the shell's whole session
    if own_session and _session_leader():
        with contextlib.suppress(OSError):  # no autogroups (kernel, platform): nothing to lower
            _AUTOGROUP.write_text("19")


def normal_priority(own_session: bool = False) -> None:
    """Undo ``lowest_priority`` as far as this process may: its autogroup back to 0 (raising an autogroup's nice
    value to 0 needs no privilege) and, where permitted, the thread's nice value (lowering it needs privilege;
    where autogroups schedule, the autogroup is what competes with the server)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)
    if own_session and _session_leader():
        with contextlib.suppress(OSError):
            _AUTOGROUP.write_text("0")
