"""The surveillance benchmark's smallest path runs and reports its structure, so the script cannot rot.

No timing assertions: only that every number the report promises is there and consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "surveillance.py"


def test_surveillance_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "200", "--no-peers", "--repeat", "2",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())

    assert res["peers"] == {"available": False, "reason": "--no-peers"}
    assert res["machine"]["cores"] >= 1 and len(res["machine"]["load_avg_end"]) == 3
    [size] = res["sizes"]
    assert size["patients"] == 200
    gen, mg = size["generate"], size["mgaki"]
    assert "error" not in gen and "error" not in mg
    assert gen["rows"]["subjects"] == 200 and gen["events"] == gen["rows"]["events"] > 200 * 50
    assert mg["added"]["events"] == gen["events"]  # a fresh store takes every row
    # The stage sums are nested: creatinine work <= creatinine + urine <= all stages <= wall time.
    assert 0 < mg["creatinine_staging_s"] <= mg["creat_uo_s"] <= mg["stages_total_s"] <= mg["surveil_s"]
    assert {"kdigo_creatinine", "kdigo_urine", "alerts"} <= set(mg["stage_seconds"])
    assert mg["events_per_s"] == gen["events"] / mg["surveil_s"]
    assert mg["peak_rss_gb"] >= mg["peak_rss_gb_through_ingest"] > 0
    # --repeat 2: both runs kept, the fastest reported, the larger peak memory kept.
    assert len(mg["runs"]) == 2 and mg["surveil_s"] == min(run["surveil_s"] for run in mg["runs"])
    assert mg["peak_rss_gb"] == max(run["peak_rss_gb"] for run in mg["runs"])
    assert mg["output_rows"]["kdigo_creatinine"] == gen["creatinine_rows"]
    assert size["ratios"] == {"akiflagger": None, "pyaki": None}
    # Without 100k patients the absolute targets are not judged; the ratio targets have no peer value.
    assert [v["pass"] for v in res["verdicts"]] == [None, None, None, None]
    assert res["verdicts"][0]["note"] == "100k not run or failed"

    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["patients", "events", "gen"])
    row = lines[header + 1].split()
    assert row[0] == "200" and row[1] == f"{gen['events']:,}"
    assert "targets (issue 3):" in r.stdout and "10 slowest stages at 200 patients" in r.stdout


def test_dashboard_benchmark_smoke() -> None:
    """benchmarks/dashboard.py runs on a small cohort and reports every endpoint it promises."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dashboard.py"), "--patients", "40", "--repeat", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["patients"] == 40 and res["alerts"] > 0
    assert set(res["timings_ms"]) == {"list (sort severity, scope all)", "list (filter critical, sort latest_mg)",
                                      "timeline + chart", "assessment", "dose plan (regimen)", "dose plan (target)"}
    assert all(0 < t["median"] <= t["max"] for t in res["timings_ms"].values())
