"""Timing of the PyPI KDIGO peers (pyaki 1.0.13, akiflagger 1.0.10), for the surveillance benchmark.

The peers run in their own Python 3.12 environment (``peers_env.ensure_peer_env``; built once, ~35 s).
Only the peer's own computation is timed (inside the peer process, file reading excluded):
``AKIFlagger.returnAKIpatients`` and pyaki ``Analyser(...)`` + ``process_stays()``.

Input layout (pyaki's CLI layout, CSV or Parquet): ``creatinine`` (stay_id, charttime, creat mg/dL),
``urineoutput`` (stay_id, charttime, urineoutput mL), ``demographics`` (stay_id, weight kg),
optional ``rrt`` (stay_id, charttime, rrt_status). ``write_peer_dir`` writes it from DataFrames.

    python benchmarks/peers.py             # 1,000 synthetic patients
    python benchmarks/peers.py --n 200     # quicker
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peers_env import ensure_peer_env, run_in_peer_env

__all__ = ["time_akiflagger", "time_pyaki"]


def time_akiflagger(creat_df_path: str | Path, timeout: float = 1800) -> float:
    """Seconds akiflagger takes to flag every row of a creatinine table (stay_id, charttime, creat)."""
    return float(run_in_peer_env(["time-akiflagger", str(creat_df_path)], timeout=timeout)["seconds"])


def time_pyaki(dir: str | Path, timeout: float = 1800) -> float:
    """Seconds pyaki takes on a directory in its CLI layout (creatinine/urineoutput/demographics[/rrt])."""
    return float(run_in_peer_env(["time-pyaki", str(dir)], timeout=timeout)["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="synthetic patients (default 1000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from peers.cohorts import random_cohort, write_peer_dir

    t0 = time.perf_counter()
    env = ensure_peer_env()
    print(f"peer environment: {env} (ready in {time.perf_counter() - t0:.1f} s)")
    cohort = random_cohort(args.n, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = write_peer_dir(cohort, Path(tmp))
        n_cr, n_uo = len(cohort.creatinine), len(cohort.urineoutput)
        n_stays_uo = cohort.urineoutput["stay_id"].nunique()
        a = time_akiflagger(d / "creatinine.csv")
        p = time_pyaki(d)
    print(f"cohort: {args.n} patients, {n_cr} creatinine rows, {n_uo} hourly urine rows "
          f"({n_stays_uo} stays with urine; pyaki processes only those)")
    print(f"akiflagger 1.0.10: {a:8.3f} s  {n_cr / a:12,.0f} creatinine rows/s  {args.n / a:10,.0f} patients/s")
    print(f"pyaki 1.0.13:      {p:8.3f} s  {(n_cr + n_uo) / p:12,.0f} rows/s (creat+urine)  "
          f"{n_stays_uo / p:10,.1f} patients/s")


if __name__ == "__main__":
    main()
