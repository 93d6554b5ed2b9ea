"""Does a lab feed's store append cost more as the feed goes on (issue 18: work per new result must not grow with
the store)? The appends of an HL7 feed, one after another, each timed with its parts.

    python benchmarks/append_growth.py --store-cache /work/bench/mllp-cache                 # 100 k, 300 appends of 40
    python benchmarks/append_growth.py --store-cache /work/bench/mllp-cache --feed-patients 2000   # repeats at once
    python benchmarks/append_growth.py --patients 200 --appends 12 --batch 10 --window 4    # smoke size

The store is ``mllp.py``'s (ICU-shaped cohort, seed 18; built once under ``--store-cache``), copied by hard links.
Then ``--appends`` times: ``--batch`` ORU^R01 messages of ``mllp.messages`` (a creatinine and a magnesium for random
patients; each message also names the patient (PID) and the visit (PV1) as versioned records) parsed and
normalized outside the timing, and stored by one ``EventStore.append(conflicts="refuse")``, as the feed's apply
thread stores a batch. A patient's second message brings PID and PV1 versions the ledger already holds: the share
of appends naming such records grows as the feed goes on, as it does in a hospital, where most results are of
patients already known; ``--feed-patients N`` draws the feed's patients from the first N only, so that nearly every
message is a repeat after the first N or so, and what grows after that is the ledger alone. Printed per window of
``--window`` appends: the append's median and its parts (the identity check ``_identity_conflicts``, the version
decision ``_versions``, compaction ``compact``; the rest is the comparison with the stored rows and the writes),
with the ledger's and the events table's rows and parts at the window's end. ``--out FILE``: JSON.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import add_seconds, save_json, timed  # noqa: E402
from mllp import linked_copy, messages  # noqa: E402

PARTS = ("_identity_conflicts", "_versions", "compact")


def measure(store_root: Path, appends: int, batch: int, window: int, patients: int) -> dict[str, Any]:
    """`patients`: those the feed's messages name (the first ones of the store)."""
    import duckdb
    import pyarrow as pa

    from mgaki.events import EventStore
    from mgaki.events.normalize import normalize
    from mgaki.service.ingest.hl7 import parse_oru

    acc: dict[str, float] = {}
    for name in PARTS:
        timed(EventStore, name, functools.partial(add_seconds, acc, name))
    store = EventStore(store_root)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    texts = [m[0] for m in messages(appends * batch, patients, 0.02, "growth", start, 200.0)]
    rows = []
    for k in range(appends):
        parsed = [parse_oru(t).tables for t in texts[k * batch:(k + 1) * batch]]
        raw = {n: pa.concat_tables([p[n] for p in parsed]) for n in parsed[0]}
        tables = normalize(raw, now=start + timedelta(seconds=(k + 1) * batch / 200.0 + 1))
        acc.clear()
        t0 = time.perf_counter()
        store.append(tables, conflicts="refuse")
        rows.append({"append_s": time.perf_counter() - t0, **{f"{n}_s": acc.get(n, 0.0) for n in PARTS}})
        if (k + 1) % window == 0:
            con = duckdb.connect()
            try:
                ledger = store.files("versions")
                n_ledger = con.sql(f"SELECT count(*) FROM read_parquet({[p.as_posix() for p in ledger]})"
                                   ).fetchall()[0][0] if ledger else 0
            finally:
                con.close()
            rows[-1].update({"ledger_rows": int(n_ledger), "ledger_parts": len(ledger),
                             "events_parts": len(store.files("events"))})
            w = rows[-window:]
            p50 = statistics.median(r["append_s"] for r in w) * 1e3
            print(f"appends {k + 2 - window}-{k + 1}: append p50 {p50:.1f} ms; ledger {n_ledger:,} rows in "
                  f"{len(ledger)} parts", flush=True)
    windows = []
    for i in range(0, appends - window + 1, window):
        w = rows[i:i + window]
        windows.append({"first": i + 1, "last": i + window,
                        **{k: statistics.median(r[k] for r in w) for k in ("append_s", *(f"{n}_s" for n in PARTS))},
                        **{k: w[-1][k] for k in ("ledger_rows", "ledger_parts", "events_parts")}})
    return {"appends": rows, "windows": windows}


def report(res: dict[str, Any]) -> None:
    print(f"\nstore: {res['store']['patients']:,} patients, {res['store']['rows']:,} event rows; "
          f"{res['args']['appends']} appends of {res['args']['batch']} messages; medians per window of "
          f"{res['args']['window']} appends, ms")
    print(f"{'appends':>11s} {'append':>8s} {'identity':>9s} {'versions':>9s} {'compact':>8s} {'other':>7s} "
          f"{'ledger rows':>12s} {'ledger parts':>13s} {'events parts':>13s}")
    for w in res["windows"]:
        other = w["append_s"] - w["_identity_conflicts_s"] - w["_versions_s"] - w["compact_s"]
        print(f"{w['first']:>5d}-{w['last']:<5d} {w['append_s'] * 1e3:8.1f} {w['_identity_conflicts_s'] * 1e3:9.1f} "
              f"{w['_versions_s'] * 1e3:9.1f} {w['compact_s'] * 1e3:8.1f} {other * 1e3:7.1f} {w['ledger_rows']:>12,} "
              f"{w['ledger_parts']:>13d} {w['events_parts']:>13d}")
    first, last = res["windows"][0]["append_s"], res["windows"][-1]["append_s"]
    print(f"last window / first window: {last / first:.2f}x (an append whose cost does not grow with the store: ~1x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--store-cache", type=Path, default=None, help="build the store here once, reuse it after")
    ap.add_argument("--appends", type=int, default=300)
    ap.add_argument("--feed-patients", type=int, default=None,
                    help="the feed names the first N patients only (default: all of --patients)")
    ap.add_argument("--batch", type=int, default=40, help="messages per append (the apply thread's batch)")
    ap.add_argument("--window", type=int, default=50, help="appends summarised together")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not 1 <= a.window <= a.appends:
        ap.error("--window must be between 1 and --appends")
    if a.feed_patients is not None and not 100 <= a.feed_patients <= a.patients:
        ap.error("--feed-patients must be between 100 and --patients")
    with tempfile.TemporaryDirectory(prefix="mgaki-growth-") as d:
        copy, info = linked_copy(a.store_cache or Path(d) / "cache", a.patients, Path(d))
        res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "started": datetime.now(UTC).isoformat(), "store": info,
               **measure(copy, a.appends, a.batch, a.window, a.feed_patients or a.patients)}
    report(res)
    save_json(res, a.out, "append-growth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
