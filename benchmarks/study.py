"""Research-study benchmark (issue 5, point 6): the whole `mgaki study` on a synthetic cohort, per stage.

Run from the repository root with the project venv active::

    python benchmarks/study.py                  # 100k admissions, with and without the time-varying Cox
    python benchmarks/study.py --n 20000        # chosen size
    python benchmarks/study.py --n 300 --no-cox-variant --reps 20   # smoke run (what the test does)

Each variant (Cox on / Cox off) runs in its own child process, so its memory is its own. In the child:
generate (``mgaki.synth.generate(n, seed, plant_mg_predictive=True)``, not part of the study), append to a
fresh EventStore (ingest), then ``mgaki.research.pipeline.study_store`` with a progress callback that
records, per stage, the wall time and the peak RSS of the stage (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before each stage; if the reset is unavailable the column is the running
process peak), then the report (``write_outputs``). Prints a table and writes JSON to
``benchmarks/results/study-<date>.json`` (gitignored). The machine may be shared: the load average is
recorded at start and end, and numbers compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(n: int, seed: int, cox: bool, reps: int) -> dict[str, Any]:
    """One variant in this process: per-stage seconds and peak RSS."""
    from mgaki.events import EventStore
    from mgaki.research import StudyConfig
    from mgaki.research.pipeline import study_store, write_outputs
    from mgaki.synth import generate

    stages: list[dict[str, Any]] = []
    resettable = _reset_peak()
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        stages.append({"stage": name, "seconds": now - last[0], "peak_rss_gb": _hwm_bytes() / 1e9})
        _reset_peak()
        last[0] = time.perf_counter()

    c = generate(n, seed=seed, plant_mg_predictive=True)
    mark("generate (not study)")
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d) / "store")
        store.append(c.tables)
        del c
        mark("ingest (store append)")
        cfg = StudyConfig(time_varying_cox=cox, bootstrap_reps=reps, seed=seed)
        t_study = time.perf_counter()
        res = study_store(store, cfg, progress=lambda st, i, k: mark(st))
        study_s = time.perf_counter() - t_study
        write_outputs(res, Path(d) / "out")
        mark("report + models")
    pred = res.prediction.summary() if res.prediction else None
    return {"n": n, "cox": cox, "stages": stages, "study_seconds": study_s, "peak_reset": resettable,
            "cohort_n": len(res.cohort.frame), "prediction": pred, "seconds_internal": res.seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="synthetic admissions (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=500, help="bootstrap resamples (ROC and prediction)")
    ap.add_argument("--no-cox-variant", action="store_true", help="only the run with the Cox model")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/study-<date>.json)")
    ap.add_argument("--child", choices=["cox", "nocox"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        sys.stdout.write(json.dumps(child(a.n, a.seed, a.child == "cox", a.reps)) + "\n")
        return 0
    load0 = os.getloadavg()
    runs = []
    for variant in (["cox"] if a.no_cox_variant else ["cox", "nocox"]):
        cmd = [sys.executable, __file__, "--child", variant, "--n", str(a.n), "--seed", str(a.seed),
               "--reps", str(a.reps)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            return 1
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    out = {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpus": os.cpu_count(), "python": platform.python_version(), "load_start": load0,
           "load_end": os.getloadavg(), "runs": runs}
    for r in runs:
        print(f"\nmgaki study, n = {r['n']} admissions (cohort {r['cohort_n']}), Cox {'on' if r['cox'] else 'off'}: "
              f"study {r['study_seconds']:.1f} s")
        print(f"{'stage':<24}{'seconds':>10}{'peak RSS GB':>14}")
        for s in r["stages"]:
            print(f"{s['stage']:<24}{s['seconds']:>10.2f}{s['peak_rss_gb']:>14.2f}")
        if r["prediction"]:
            for m in r["prediction"]["models"]:
                d = "" if m["delta_auroc"] is None else f"  dAUROC {m['delta_auroc']:+.3f}"
                print(f"  {m['model_set']:<14}{m['learner']:<9} AUROC {m['auroc']:.3f}{d}")
    print(f"\nload average start {load0[0]:.1f}, end {out['load_end'][0]:.1f} on {out['cpus']} CPUs")
    RESULTS.mkdir(exist_ok=True)
    path = a.out or RESULTS / f"study-{datetime.now().astimezone():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
