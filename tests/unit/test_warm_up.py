"""mgaki.warm_up(): runs the example once and freezes the long-lived heap for low-latency hosts."""

from __future__ import annotations

import subprocess
import sys


def test_warm_up_freezes_the_heap_in_a_fresh_process() -> None:
    code = ("import gc, mgaki; before = gc.get_freeze_count(); mgaki.warm_up(); "
            "print(before, gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before == 0 and after > 20_000  # fhir.resources, pydantic and the knowledge base
