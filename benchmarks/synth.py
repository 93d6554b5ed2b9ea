"""Generation time of mgaki.synth cohorts: 1k, 10k and 100k patients.

Run from the repository root with the project venv active::

    python benchmarks/synth.py                 # 1k, 10k, 100k
    python benchmarks/synth.py --sizes 1000    # quick
    python benchmarks/synth.py --raw           # also time to_raw (unit mix, dirty rows)

Prints, per size: wall time of ``generate`` (parameter file already loaded),
events rows, events per patient, total rows of all tables and rows per second,
and the process's peak RSS so far. Target: 100k patients x ~100 events well
under 30 s. Numbers are only comparable on one machine; a loaded machine is slower.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

from mgaki.synth import generate, load_params, to_raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="also time to_raw on each cohort")
    args = ap.parse_args()
    load_params()
    generate(10, seed=args.seed)  # warm caches (knowledge base, pint factors)
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or '?'}")
    print(f"{'patients':>9} {'seconds':>8} {'events':>11} {'ev/pt':>6} {'all rows':>11} {'rows/s':>11} {'peak MB':>8}")
    for n in args.sizes:
        t0 = time.perf_counter()
        c = generate(n, seed=args.seed)
        dt = time.perf_counter() - t0
        rows = sum(t.num_rows for t in c.tables.values())
        events = c.tables["events"].num_rows
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:>9} {dt:>8.2f} {events:>11} {events / n:>6.1f} {rows:>11} {rows / dt:>11.0f} {peak:>8.0f}")
        if args.raw:
            t0 = time.perf_counter()
            raw = to_raw(c)
            print(f"{'':>9} to_raw {time.perf_counter() - t0:.2f} s, {raw['events'].num_rows} raw events rows")
        del c


if __name__ == "__main__":
    main()
