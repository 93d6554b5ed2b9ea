"""A background fold's time and peak memory, this checkout against another (issue 18 points 1 and 3).

    python benchmarks/fold.py --store /path/to/surveilled/store [--against /path/to/other/checkout]
    python benchmarks/fold.py --patients 2000                  # builds and surveils an ICU-shaped store first

Incremental runs write their results as generations; every ``DELTA_FOLD_GENS`` (64) of them a fold, in a
process of its own beside the runs, rewrites the result buckets of the patients they cover. Here:

1. the store (``--store``: an existing surveilled one, copied by hard links; else one built by
   ``benchmarks/icu_cohort.py``, seed 18, and surveilled) gets ``--singles`` incremental runs of one new
   creatinine for one random patient, then ``--batches`` runs of ``--batch`` patients each, with folding
   held back, so that their generations are pending (by this checkout's code);
2. the store is copied by hard links once per code, and each code folds its copy in a child process with
   no pacing (``FOLD_PACE = 0``); the child's peak RSS (``getrusage``) and seconds are printed;
3. the two folded copies' result tables are compared row for row (they must be equal).

JSON to ``benchmarks/results/fold-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import _env, _patients, creatinine_rows, save_json  # noqa: E402


def make_generations(root: Path, singles: int, batches: int, batch: int, seed: int) -> dict[str, Any]:
    """Pending generations on the store at `root` (folding held back); how many and the patients they cover."""
    import numpy as np

    from mgaki.events import EventStore
    from mgaki.surveillance import pipeline

    pipeline.DELTA_FOLD_GENS = 10**9  # no fold while they are made
    store = EventStore(root)
    n = _patients(root)
    rng = np.random.default_rng(seed)
    clock = datetime.fromisoformat(pipeline._read_state(root / "results")["data_max"])
    covered: set[str] = set()
    for i, m in enumerate([1] * singles + [min(batch, n)] * batches):
        clock = clock.replace(microsecond=0) + timedelta(minutes=1)
        pids = [f"P{int(x):08d}" for x in rng.choice(n, m, replace=False)]
        covered.update(pids)
        store.append({"events": creatinine_rows(pids, clock, rng.uniform(0.5, 4.0, m).tolist(),
                                                [f"fold/{i}/{j}" for j in range(m)])})
        pipeline.surveil(store)
    return {"generations": len(pipeline._gens(root / "results")), "patients": len(covered)}


def child_fold(results: Path) -> dict[str, Any]:
    from mgaki.surveillance import pipeline

    pipeline.FOLD_PACE = 0.0
    t0 = time.perf_counter()
    with pipeline._fold_lock(results):
        pipeline._fold(results)
    return {"seconds": time.perf_counter() - t0, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "left": len(pipeline._gens(results)), "code": pipeline.__file__}


def _run_child(args: list[str], src: Path | None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        subprocess.run([sys.executable, __file__, *args, "--child-out", str(out)], check=True, env=_env(src))
        return dict(json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)


def same_results(a: Path, b: Path) -> dict[str, int]:
    """Rows of each result table found in one folded copy and not the other (0 everywhere: equal)."""
    import duckdb

    from mgaki.surveillance.pipeline import RESULT_TABLES, result_files

    con = duckdb.connect()
    diff = {}
    for t in RESULT_TABLES:
        fa, fb = result_files(a, t), result_files(b, t)
        if fa is None or fb is None:  # a table neither wrote is equal; one only one wrote is not
            diff[t] = 0 if fa is fb else -1
            continue
        ra = "read_parquet([" + ", ".join(f"'{p.as_posix()}'" for p in fa) + "], union_by_name = true)"
        rb = "read_parquet([" + ", ".join(f"'{p.as_posix()}'" for p in fb) + "], union_by_name = true)"
        diff[t] = int(con.sql(f"SELECT (SELECT count(*) FROM (SELECT * FROM {ra} EXCEPT ALL SELECT * FROM {rb})) + "
                              f"(SELECT count(*) FROM (SELECT * FROM {rb} EXCEPT ALL SELECT * FROM {ra}))"
                              ).fetchall()[0][0])
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="an existing surveilled store (copied by hard links)")
    ap.add_argument("--patients", type=int, default=2000, help="without --store: the store built")
    ap.add_argument("--against", type=Path, default=None, help="a reference checkout (its src/ is imported)")
    ap.add_argument("--singles", type=int, default=58)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scratch", type=Path, default=None, help="folder for the copies (default: the system's temp)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", choices=["generations", "fold"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "generations":
        a.child_out.write_text(json.dumps(make_generations(a.root, a.singles, a.batches, a.batch, a.seed)))
        return 0
    if a.child == "fold":
        a.child_out.write_text(json.dumps(child_fold(a.root)))
        return 0
    if a.against is not None and not (a.against / "src" / "mgaki").is_dir():
        ap.error(f"--against {a.against}: no src/mgaki there")
    res: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "load_start": os.getloadavg(),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    with tempfile.TemporaryDirectory(dir=a.scratch) as d:
        base = Path(d) / "base"
        if a.store is not None:
            shutil.copytree(a.store, base, copy_function=os.link)
        else:
            subprocess.run([sys.executable, str(HERE / "floor.py"), "--child", "build", "--n", str(a.patients),
                            "--seed", "18", "--root", str(base), "--child-out", str(Path(d) / "b.json")], check=True)
            subprocess.run([sys.executable, str(HERE / "floor.py"), "--child", "mgaki", "--root", str(base),
                            "--child-out", str(Path(d) / "m.json")], check=True)
        res["patients"] = _patients(base)
        res["pending"] = _run_child(["--child", "generations", "--root", str(base), "--singles", str(a.singles),
                                     "--batches", str(a.batches), "--batch", str(a.batch), "--seed", str(a.seed)],
                                    None)
        codes = {"this": None} | ({"reference": (a.against / "src").resolve()} if a.against else {})
        res["folds"] = {}
        for name, src in codes.items():
            copy = Path(d) / name
            shutil.copytree(base, copy, copy_function=os.link)
            res["folds"][name] = _run_child(["--child", "fold", "--root", str(copy / "results")], src)
        if "reference" in codes:
            res["differences"] = same_results(Path(d) / "this" / "results", Path(d) / "reference" / "results")
    res["load_end"] = os.getloadavg()
    p = res["pending"]
    print(f"fold of {p['generations']} generations covering {p['patients']} patients, store of {res['patients']:,} "
          f"patients; load {tuple(round(x, 2) for x in res['load_start'])} -> "
          f"{tuple(round(x, 2) for x in res['load_end'])}")
    for name, f in res["folds"].items():
        print(f"{name:>10}: {f['seconds']:.1f} s, peak RSS {f['peak_rss'] / 2**30:.2f} GB, "
              f"generations left {f['left']}")
    if "reference" in res["folds"]:
        t, r = res["folds"]["this"], res["folds"]["reference"]
        print(f"ratio this / reference: seconds {t['seconds'] / r['seconds']:.2f}, "
              f"peak RSS {t['peak_rss'] / r['peak_rss']:.2f}")
        bad = {k: v for k, v in res["differences"].items() if v}
        print("results of the two folds: " + ("equal, row for row" if not bad else f"DIFFER: {bad}"))
        if bad:
            return 1
    save_json(res, a.out, "fold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
