"""Workers end with their supervisor (issue 16 point 9).

``mgaki serve --workers N`` runs a supervisor (uvicorn's ``Multiprocess``) and N worker processes sharing
its listening socket. If the supervisor is killed (``SIGKILL``, the OOM killer), the workers used to keep
serving, orphaned: no one restarts them, and a new ``mgaki serve`` failed with "Address already in use".
Now each worker asks the kernel for ``SIGTERM`` when its parent dies (Linux ``PR_SET_PDEATHSIG``) and also
watches its parent id (every second, for systems without it): it then shuts down as on a normal stop (the
listening sockets first, then the requests in progress, then the lifespan), and is killed outright if that
takes longer than ``GRACE_S``. What was acknowledged is on disk already (crash-safe store); a request cut
short was never acknowledged, and its sender retries.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import threading
import time

__all__ = ["GRACE_S", "SUPERVISOR_ENV", "die_with_parent"]

log = logging.getLogger("mgaki.service.supervision")
SUPERVISOR_ENV = "MGAKI_SUPERVISOR_PID"  # set by `mgaki serve` for its workers
GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where there is no prctl."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    return False


def die_with_parent(parent: int, grace_s: float = GRACE_S, poll_s: float = 1.0) -> None:
    """End this process (SIGTERM, then SIGKILL after ``grace_s``) when ``parent`` is no longer its parent."""
    _pdeathsig(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the supervisor (pid %d) has gone: this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    # also covers a parent that died before prctl above took effect (then getppid already differs)
    threading.Thread(target=watch, name="mgaki-parent-watch", daemon=True).start()
