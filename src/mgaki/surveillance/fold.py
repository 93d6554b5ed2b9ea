"""The background fold of surveillance result generations, as a process of its own: ``main`` is what
``pipeline._start_fold`` runs, through ``python -c pipeline._FOLD_BOOT`` (its priority lowered before mgaki is
imported); ``python -m mgaki.surveillance.fold <results folder>`` runs it by hand (docs/surveillance.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mgaki.surveillance.pipeline import fold_in_background


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m mgaki.surveillance.fold <results folder>", file=sys.stderr)
        return 2
    fold_in_background(Path(argv[0]), own_session=True)  # started in a session of its own
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
