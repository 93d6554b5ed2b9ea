"""Run the PyPI KDIGO peers (pyaki 1.0.13, akiflagger 1.0.10) on one cohort; executed INSIDE the peer venv.

This script never runs in mgaki's own environment (it needs Python 3.12 and pandas 2); the tests and
benchmarks call it through ``benchmarks/peers_env.py::run_in_peer_env``. It prints one JSON line.

Input layout (pyaki's CLI layout, CSV or Parquet, so ``pyaki-cli DIR`` would read the same files):
  DIR/creatinine.{csv,parquet}    stay_id, charttime, creat        (mg/dL)          } at least
  DIR/urineoutput.{csv,parquet}   stay_id, charttime, urineoutput  (mL at charttime) } one of these
  DIR/demographics.{csv,parquet}  stay_id, weight                  (kg)
  DIR/rrt.{csv,parquet}           stay_id, charttime, rrt_status   (1 = on RRT)   [optional]

Commands:
  stages DIR OUT        both peers; writes OUT/akiflagger_rows.csv, OUT/pyaki_rows.csv, OUT/summary.csv
  time-akiflagger FILE  seconds for AKIFlagger.returnAKIpatients on a creatinine table (I/O excluded)
  time-pyaki DIR        seconds for pyaki Analyser(...).process_stays() on DIR (I/O excluded)

pyaki is called as its CLI calls it: datasets in the order urine output, creatinine, RRT, demographics
(only files that exist); the stays processed are those of the first table (its own behaviour).
akiflagger is called with its defaults (rolling-minimum mode, padding '4hours'), every row inpatient.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd

TABLES = ("urineoutput", "creatinine", "rrt", "demographics")  # pyaki CLI order


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "charttime" in df.columns:
        df["charttime"] = pd.to_datetime(df["charttime"])
    return df


def read_dir(d: Path) -> dict[str, pd.DataFrame]:
    """Tables present in ``d`` by pyaki dataset name, in pyaki's CLI order."""
    out: dict[str, pd.DataFrame] = {}
    for name in TABLES:
        for suffix in (".parquet", ".csv"):
            if (p := d / f"{name}{suffix}").is_file():
                out[name] = _read(p)
                break
    if not out.keys() & {"creatinine", "urineoutput"}:
        raise SystemExit(f"{d}: neither creatinine nor urineoutput (.csv or .parquet)")
    return out


def run_akiflagger(creat: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """akiflagger's per-row stage ``aki`` (0-3) and the seconds the flagger itself took."""
    from akiFlagger import AKIFlagger

    df = creat.loc[:, ["stay_id", "charttime", "creat"]].dropna().assign(inpatient=True)
    flagger = AKIFlagger(patient_id="stay_id", creatinine="creat", time="charttime", inpatient="inpatient")
    t0 = time.perf_counter()
    out = flagger.returnAKIpatients(df)
    seconds = time.perf_counter() - t0
    rows = out.reset_index().loc[:, ["stay_id", "charttime", "creat", "aki"]]
    return rows, seconds


def run_pyaki(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    """pyaki's per stay-hour stages and the seconds Analyser construction + process_stays took."""
    from pyaki.kdigo import Analyser
    from pyaki.utils import Dataset, DatasetType

    kinds = {"urineoutput": DatasetType.URINEOUTPUT, "creatinine": DatasetType.CREATININE,
             "rrt": DatasetType.RRT, "demographics": DatasetType.DEMOGRAPHICS}
    datasets = [Dataset(kinds[name], df.copy()) for name, df in tables.items()]
    t0 = time.perf_counter()
    res = Analyser(datasets).process_stays()
    seconds = time.perf_counter() - t0
    # pyaki's resample leaves a float copy of stay_id among the columns (NaN on rows it blanked); the
    # index holds the real key.
    res = res.drop(columns=[c for c in ("stay_id", "charttime") if c in res.columns]).reset_index()
    cols = ["stay_id", "charttime", "creat", "urineoutput", "abs_creatinine_stage", "rel_creatinine_stage",
            "urineoutput_stage", "rrt_stage", "stage"]
    for c in cols:
        if c not in res.columns:
            res[c] = float("nan")
    return res.loc[:, cols], seconds


def summarise(aki: pd.DataFrame | None, pyaki: pd.DataFrame | None, stays: pd.Index) -> pd.DataFrame:
    """Max stage per stay for each peer (empty where a peer returned nothing for the stay)."""
    out = pd.DataFrame(index=stays.rename("stay_id"))
    if aki is not None:
        out["akiflagger_creat_max"] = aki.groupby("stay_id")["aki"].max()
    if pyaki is not None:
        g = pyaki.groupby("stay_id")
        out["pyaki_creat_max"] = g[["abs_creatinine_stage", "rel_creatinine_stage"]].max().max(axis=1)
        out["pyaki_uo_max"] = g["urineoutput_stage"].max()
        out["pyaki_rrt_max"] = g["rrt_stage"].max()
        out["pyaki_max"] = g["stage"].max()
        out["pyaki_rows"] = g.size()
    return out.reset_index()


def versions() -> dict[str, str]:
    return {p: metadata.version(p) for p in ("pyaki", "akiFlagger", "pandas", "numpy")} | {
        "python": ".".join(map(str, sys.version_info[:3]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stages")
    st.add_argument("dir", type=Path)
    st.add_argument("out", type=Path)
    st.add_argument("--peers", default="akiflagger,pyaki")
    ta = sub.add_parser("time-akiflagger")
    ta.add_argument("file", type=Path)
    tp = sub.add_parser("time-pyaki")
    tp.add_argument("dir", type=Path)
    args = ap.parse_args(argv)

    # The peers emit pandas deprecation warnings and log "Skip ... missing" per stay; keep stdout clean.
    warnings.simplefilter("ignore")
    logging.getLogger("pyaki").setLevel(logging.ERROR)

    result: dict[str, object] = {"versions": versions()}
    if args.cmd == "time-akiflagger":
        creat = _read(args.file)
        _, secs = run_akiflagger(creat)
        result |= {"seconds": secs, "rows": len(creat), "stays": int(creat["stay_id"].nunique())}
    elif args.cmd == "time-pyaki":
        tables = read_dir(args.dir)
        _, secs = run_pyaki(tables)
        first = next(iter(tables.values()))
        result |= {"seconds": secs, "rows": int(sum(len(t) for t in tables.values())),
                   "stays": int(first["stay_id"].nunique())}
    else:
        tables = read_dir(args.dir)
        args.out.mkdir(parents=True, exist_ok=True)
        peers = set(args.peers.split(","))
        stays = pd.Index(sorted(set().union(*(set(t["stay_id"]) for t in tables.values()))))
        timing: dict[str, dict[str, float | int]] = {}
        aki = pya = None
        if "akiflagger" in peers and "creatinine" in tables:
            aki, secs = run_akiflagger(tables["creatinine"])
            aki.to_csv(args.out / "akiflagger_rows.csv", index=False)
            timing["akiflagger"] = {"seconds": secs, "rows": len(tables["creatinine"]),
                                    "stays": int(tables["creatinine"]["stay_id"].nunique())}
        if "pyaki" in peers:
            pya, secs = run_pyaki(tables)
            pya.to_csv(args.out / "pyaki_rows.csv", index=False)
            timing["pyaki"] = {"seconds": secs, "rows": int(sum(len(t) for t in tables.values())),
                               "stays": int(pya["stay_id"].nunique())}
        summarise(aki, pya, stays).to_csv(args.out / "summary.csv", index=False)
        result |= {"timing": timing, "summary": str(args.out / "summary.csv")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
