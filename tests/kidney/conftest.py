"""Shared pieces of the issue-13 kidney tests: the real MIMIC-IV rows and a store built from them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mgaki.events import EventStore, normalize

DATA = Path(__file__).parents[1] / "data"
MIMIC = DATA / "mimic-iv-demo-subset"  # 12 patients
MIMIC_ESKD = DATA / "mimic-iv-demo-10010471"  # one patient on maintenance haemodialysis


def store_of(tmp: Path, *raws: dict[str, pa.Table]) -> EventStore:
    store = EventStore(tmp / "store")
    for raw in raws:
        store.append(normalize(raw))
    return store
