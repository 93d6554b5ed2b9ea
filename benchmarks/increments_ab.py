"""Single-result increments of this checkout against another, interleaved on the same machine (issue 18 point 1).

    python benchmarks/increments_ab.py --against /path/to/other/checkout --patients 100000 --rounds 5 --n 20
    python benchmarks/increments_ab.py --against /path/to/other/checkout --store /big/surveilled/store  # reuse one

A latency measured alone moves with the machine (the same code gave p50 158 and 185 ms at 100 k on one
morning, an hour apart); a change is judged by a ratio against a reference measured in the same run. So:

1. one ICU-shaped store is built (``benchmarks/icu_cohort.py``, seed 18, as ``floor.py``) and copied twice;
2. each copy gets its full surveillance run from its own code: the reference by ``PYTHONPATH=<against>/src``
   (the results layout is each code's own), this checkout's by the installed package;
3. ``--rounds`` times, alternately: ``--n`` single-result increments on the reference's copy, then the same
   ``--n`` on this checkout's (``floor.py --child increments``: the same patients, values and clock in both,
   three untimed warm-up increments per process, then its 200-patient runs);
4. the latencies of all rounds pooled per code: p50, p90, p99, max, the most subjects one run recomputed,
   the timer alerts logged without recomputing, and the ratios this / reference.

``--service``: the increments go through the service instead (``floor.py --child service``: ``POST /fhir`` of one
Observation, in-process ASGI, SQLite), and each step's median is printed per code (the Bundle read, normalize,
the store's append, surveil, the alerts copied into the database); no 200-patient runs.

``--build-each``: each code builds its own store (a change to how parts are written, e.g. their row groups, is
then measured with the store it writes), each copy surveilled by its code as in 2.

``--store ROOT`` instead of 1-2: an existing store with its results (a 1 M-patient store takes about 20 min to
surveil) is copied twice by hard links (parts and results are never rewritten in place: a change is a new
file), and neither copy is recomputed; both codes must then use the store's results layout (checked).

Each child is a process of its own (its peak RSS its own). JSON to ``benchmarks/results/increments-ab-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import BATCH_SUBJECTS, _child, _env, _patients, save_json  # noqa: E402  (the same steps as floor.py, in processes of their own)


def _layout(src: Path | None) -> int:
    """The results layout a code reads (its ``pipeline.LAYOUT``), asked in a process importing that code."""
    out = subprocess.run([sys.executable, "-c", "from mgaki.surveillance.pipeline import LAYOUT; print(LAYOUT)"],
                         check=True, env=_env(src), capture_output=True, text=True).stdout
    return int(out.strip())


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p))


def summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    lat = [x * 1e3 for r in rounds for x in r["lat"]]
    batch = [b["seconds"] * 1e3 for r in rounds for b in r.get("batches", [])]  # the 200-patient runs
    return {"runs": len(lat), "p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99), "max": max(lat),
            "recomputed_max": max(r.get("recomputed_max", 0) for r in rounds),
            "timer_alerts": sum(r.get("timer_alerts", 0) for r in rounds),
            "batch_runs": len(batch), "batch_p50": _pct(batch, 50) if batch else float("nan"),
            "batch_max": max(batch, default=float("nan"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", type=Path, required=True, help="the reference checkout (its src/ is imported)")
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20, help="timed increments per round and code")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--scratch", type=Path, default=None, help="folder for the stores (default: the system's temp)")
    ap.add_argument("--store", type=Path, default=None,
                    help="an existing surveilled store to copy (hard links) instead of building and surveilling one")
    ap.add_argument("--build-each", action="store_true",
                    help="each code builds its own store (its own Parquet layout), instead of copies of one")
    ap.add_argument("--service", action="store_true",
                    help="through the service (POST /fhir of one Observation, floor.py --child service), each "
                         "step's median printed, instead of the Python API")
    ap.add_argument("--out", type=Path, default=None, help="the JSON written (default: results/increments-ab-<date>)")
    a = ap.parse_args()
    ref_src = (a.against / "src").resolve()
    if not (ref_src / "mgaki").is_dir():
        ap.error(f"--against {a.against}: no src/mgaki there")
    res: dict[str, Any] = {"patients": a.patients, "against": str(a.against), "rounds": a.rounds, "n": a.n,
                           "started": datetime.now(UTC).isoformat(), "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=a.scratch) as d:
        base, stores = Path(d) / "built", {"reference": Path(d) / "reference", "this": Path(d) / "this"}
        srcs = {"reference": ref_src, "this": None}
        if a.store is not None:
            state = json.loads((a.store / "results" / "state.json").read_text())
            for name, src in srcs.items():
                layout = _layout(src)
                if state.get("layout") != layout:
                    ap.error(f"--store {a.store}: its results have layout {state.get('layout')}, the {name} code "
                             f"reads layout {layout}; build one with --patients instead")
            for name, root in stores.items():
                shutil.copytree(a.store, root, copy_function=os.link)
                res[f"full_{name}"] = 0.0
            res["patients"] = _patients(a.store)
        elif a.build_each:
            for name, root in stores.items():
                res[f"build_{name}"] = _child(["--child", "build", "--n", str(a.patients), "--seed", str(a.seed),
                                               "--root", str(root)], srcs[name])
                res[f"full_{name}"] = _child(["--child", "mgaki", "--root", str(root)], srcs[name])["seconds"]
        else:
            res["build"] = _child(["--child", "build", "--n", str(a.patients), "--seed", str(a.seed),
                                   "--root", str(base)], None)
            for name, root in stores.items():
                shutil.copytree(base, root)
                res[f"full_{name}"] = _child(["--child", "mgaki", "--root", str(root)], srcs[name])["seconds"]
            shutil.rmtree(base)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in stores}
        for r in range(a.rounds):
            for name, root in stores.items():
                runs[name].append(_child(["--child", "service" if a.service else "increments", "--root", str(root),
                                          "--n", str(a.n), "--seed", str(a.seed + r)], srcs[name]))
                print(f"round {r + 1}/{a.rounds} {name}: p50 {runs[name][-1]['p50'] * 1e3:.0f} ms", flush=True)
    res["summary"] = {name: summary(rs) for name, rs in runs.items()}
    res["rounds_detail"] = runs
    res["load_end"] = os.getloadavg()
    ref, this = res["summary"]["reference"], res["summary"]["this"]
    res["service"] = a.service
    print(f"\nsingle-result increments {'through the service (POST /fhir)' if a.service else 'by the Python API'}, "
          f"{res['patients']} patients, {a.rounds} rounds x {a.n} per code, interleaved; "
          f"load {tuple(round(x, 2) for x in res['load_start'])} -> {tuple(round(x, 2) for x in res['load_end'])}")
    print(f"{'code':>10} {'runs':>5} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'recomputed':>10} "
          f"{'timer alerts':>12} {'full run s':>10}")
    for name, s in res["summary"].items():
        print(f"{name:>10} {s['runs']:>5} {s['p50']:>7.0f} {s['p90']:>7.0f} {s['p99']:>7.0f} {s['max']:>7.0f} "
              f"{s['recomputed_max']:>10} {s['timer_alerts']:>12} {res[f'full_{name}']:>10.1f}")
    print("ratio this / reference: " + ", ".join(f"{k} {this[k] / ref[k]:.2f}" for k in ("p50", "p90", "p99", "max")))
    if a.service:  # each step's median over the rounds' medians
        steps = sorted({k for rs in runs.values() for r in rs for k in r.get("parts", {})})
        print("steps, median of the rounds' medians (ms): " + "; ".join(
            f"{name} " + ", ".join(f"{k} {float(np.median([r['parts'][k] for r in rs if k in r.get('parts', {})])):.1f}"
                                   for k in steps) for name, rs in runs.items()))
        save_json(res, a.out, "increments-ab-service")
        return 0
    print(f"runs of {BATCH_SUBJECTS} patients' new results at once: " + "; ".join(
        f"{name} {s['batch_runs']} runs, p50 {s['batch_p50']:.0f} ms, max {s['batch_max']:.0f} ms"
        for name, s in res["summary"].items()) + f"; ratio p50 {this['batch_p50'] / ref['batch_p50']:.2f}")
    save_json(res, a.out, "increments-ab")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
