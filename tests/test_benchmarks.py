"""The benchmarks' smallest paths run and report their structure, so the scripts cannot rot.

No timing assertions: only that every number the report promises is there and consistent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime (java not on PATH)")
def test_spark_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/spark.py end to end on 100 patients in 3 chunks: both engines, per-stage I/O, table, PNG."""
    out, png, work = tmp_path / "spark.json", tmp_path / "curve.png", tmp_path / "work"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spark.py"), "--sizes", "100", "--chunk", "40",
                        "--no-warmup", "--workdir", str(work), "--out", str(out), "--plot", str(png),
                        "--duckdb-memory", "1GB", "--driver-memory", "1g"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    [size] = res["sizes"]
    gen, duck, spark = size["generate"], size["duckdb"], size["spark"]
    # three chunks, ids prefixed per chunk: 100 distinct subjects, every table written
    assert gen["rows"]["subjects"] == 100 and gen["events"] == gen["rows"]["events"] > 100 * 50
    assert sorted(p.name for p in work.iterdir()) == []  # data and spill deleted after the size
    assert duck["settings"]["memory_limit"] == "1GB"
    assert duck["output_rows"] == spark["output_rows"] and size["same_row_counts"] is True
    assert duck["output_rows"]["mg_trajectory"] == 100  # one admission per patient: chunks did not collide
    assert size["ratio"] == spark["wall_s"] / duck["wall_s"]
    for eng in (duck, spark):
        assert {"kdigo_creatinine", "kdigo_urine", "alerts"} <= set(eng["stage_s"])
        assert 0 < sum(eng["stage_s"].values()) <= eng["wall_s"] and eng["peak_rss_gb"] > 0
        assert set(eng["stage_cpu_s"]) == set(eng["stage_s"]) and 0 < sum(eng["stage_cpu_s"].values()) <= eng["cpu_s"]
    # the Spark UI attributes jobs to mgaki stages: the events are read and shuffled by the creatinine stage
    assert set(spark["stage_io"]) <= set(spark["stage_s"])
    assert spark["stage_io"]["ev_named"]["input_bytes"] > 0
    assert spark["stage_io"]["kdigo_creatinine"]["shuffle_write_bytes"] > 0
    assert spark["jvm_peak_rss_gb"] > 0 and spark["shuffle_partitions"] == 8

    row = next(line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["100"])
    assert row[1] == f"{gen['events']:,}" and row[-1] == "True"
    assert float(row[-3]) == round(size["ratio"], 1) and float(row[-2]) == round(size["cpu_ratio"], 1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the cluster estimate from that JSON: per-stage CPU and shuffle per event, scaled; low < high
    import importlib.util

    spec = importlib.util.spec_from_file_location("spark_bench", ROOT / "benchmarks" / "spark.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    est = bench.estimate(res, 1e9, 100, (0.5, 0.8), (25.0, 100.0), (25.0, 100.0), (60.0, 300.0))
    io = spark["stage_io"]
    assert set(est["stages"]) == set(io)
    cpu = sum(v["executor_cpu_s"] for v in io.values()) / gen["events"] * 1e9
    assert abs(est["cpu_core_hours"] - cpu / 3600) < 1e-9 * cpu
    assert abs(est["shuffle_tb"] - sum(v["shuffle_write_bytes"] for v in io.values()) / gen["events"] * 1e9 / 1e12) \
        < 1e-12
    assert abs(est["low_parts_minutes"]["compute"] - cpu / (100 * 0.8) / 60) < 1e-9 * cpu
    assert 1 < est["low_minutes"] < est["high_minutes"]
    e = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spark.py"), "--estimate", str(out), "--events",
                        "1e9", "--cores", "100"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert e.returncode == 0, e.stderr
    assert f"wall time: {est['low_minutes']:.0f} (low) to {est['high_minutes']:.0f} (high) minutes" in e.stdout


def test_ingest_body_size_benchmark_smoke() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest_body_size.py"), "--sizes", "0.05"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("load average")
    rows = [json.loads(x) for x in lines[1:]]
    assert [(x["kind"], x["status"]) for x in rows] == [("bundle", 200), ("ndjson", 200)]
    assert all(x["resources"] > 100 and x["peak_rss_above_start_mib"] >= 0 for x in rows)


def test_floor_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/floor.py at 100 patients with 3 increments: every figure and verdict it promises."""
    out = tmp_path / "floor.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--patients", "100",
                        "--increments", "3", "--out", str(out), "--scratch", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    [size] = res["sizes"]
    assert size["build"]["rows"] == 100 * 250  # 50 creatinine + 194 urine output + 6 Mg per patient
    staged = size["floor"]["staged"]
    assert staged["cr_stage"][1] == 100 * 50 and staged["uo_stage"][1] == 100 * 194
    assert 0 < staged["cr_stage"][0] < staged["cr_stage"][1]  # planted rises are found by the floor too
    assert size["ratio"] == size["mgaki"]["seconds"] / size["floor"]["seconds"]
    assert {"kdigo_urine", "uo_cand", "write_results"} <= set(size["mgaki"]["stages"])
    inc = size["increments"]
    assert inc["k"] == 3 and inc["recomputed_max"] >= 1 and inc["p50"] <= inc["p99"] <= inc["max"]
    assert [b["subjects"] for b in inc["batches"]] == [size["patients"]] * 3  # fewer patients than a batch
    svc = size["service"]  # the same increments through POST /fhir
    assert svc["k"] == 3 and svc["p50"] <= svc["p99"] <= svc["max"]
    assert "through the service" in r.stdout and "patients' results in one run" in r.stdout
    for line in ("1.5x the floor query", "peak RSS < 4.0 GB", "p99 < 200.0 ms"):
        assert line in r.stdout and ("PASS" in r.stdout or "FAIL" in r.stdout)
    # --merge: a size measured by a run of its own is reported and plotted with the others, in patient order
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({**res, "sizes": [{**size, "patients": 50, "ratio": 9.5}]}))
    merge = [sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--merge", str(out), str(bigger)]
    m = subprocess.run([*merge, "--plot", str(tmp_path / "scale.png")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert m.returncode == 0, m.stdout + m.stderr
    rows = [ln.split() for ln in m.stdout.splitlines() if ln.split()[:1] in (["50"], ["100"])][:2]  # size table
    assert [x[0] for x in rows] == ["50", "100"] and rows[0][8] == "9.50" and "100 patients:" in m.stdout
    assert (tmp_path / "scale.png").stat().st_size > 0
    bigger.write_text(json.dumps({**res, "seed": res["seed"] + 1}))
    m = subprocess.run(merge, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert m.returncode != 0 and "different seeds" in m.stderr


def test_increments_ab_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/increments_ab.py against this checkout itself: both codes measured on their own copy, each
    round's latencies pooled, the ratios printed."""
    out = tmp_path / "ab.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "increments_ab.py"), "--against", str(ROOT), "--patients", "100",
           "--rounds", "2", "--n", "2", "--scratch", str(tmp_path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    for name in ("reference", "this"):
        s = res["summary"][name]
        assert s["runs"] == 4 and 0 < s["p50"] <= s["p99"] <= s["max"], s
        assert [len(x["lat"]) for x in res["rounds_detail"][name]] == [2, 2]
        assert res[f"full_{name}"] > 0
    assert "ratio this / reference: p50" in r.stdout and "runs of 200 patients' new results at once" in r.stdout
    assert all(s["batch_runs"] == 6 and s["batch_p50"] > 0 for s in res["summary"].values())
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the stores are removed
    # --build-each: each code builds the store it is measured on (its own Parquet layout)
    r = subprocess.run([*cmd[:6], "--rounds", "1", "--n", "1", "--build-each", "--scratch", str(tmp_path),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert all(res[f"build_{n}"]["rows"] == 100 * 250 and res[f"full_{n}"] > 0 for n in ("reference", "this"))
    assert "build" not in res and [len(x["lat"]) for x in res["rounds_detail"]["this"]] == [1]
    # --store: an existing surveilled store copied by hard links, not recomputed; its layout checked
    store = tmp_path / "store"
    for step in (["--child", "build", "--n", "100", "--seed", "18"], ["--child", "mgaki"]):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), *step, "--root", str(store),
                        "--child-out", str(tmp_path / "child.json")], check=True, capture_output=True, timeout=600)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    cmd = [*cmd[:4], "--store", str(store), "--rounds", "1", "--n", "2", "--scratch", str(tmp_path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["patients"] == 100 and res["full_this"] == 0.0 and res["summary"]["this"]["runs"] == 2
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # the original is left as it was
    state = store / "results" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "layout": 99}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "layout 99" in r.stderr


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/ingest.py at 100 patients: the CSV layout written once (then reused), `mgaki ingest` of it
    in a child, every figure and verdict it promises."""
    out = tmp_path / "ingest.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--patients", "100", "--chunk-rows", "5000",
           "--scratch", str(tmp_path), "--out", str(out)]
    for _ in range(2):  # the second run reads the cached CSV files
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["rows"]["events"] == 100 * 251 and res["rows"]["encounters"] == 200  # weights are events rows
    table = {line.split("│")[1].strip(): line.split("│")[2:4] for line in r.stdout.splitlines() if line.count("│") == 5}
    assert [x.strip() for x in table["events"]] == ["25000", "25000"]  # the ingest's own table: every row new
    assert [x.strip() for x in table["weights"]] == ["100", "100"]
    assert res["rows_per_s"] == sum(res["rows"].values()) / res["ingest_s"] and res["peak_rss"] > 0
    assert "--chunk-rows 5000" in res["command"] and "cached" in r.stdout
    for line in ("peak RSS < 2 GB", ">= 1,000,000 rows/s", "load average"):
        assert line in r.stdout
    assert not (tmp_path / "store-100").exists()  # the store is removed, the CSV files kept


def test_mllp_feed_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/mllp.py on 200 patients for 3 s: a real server, every message AA and stored, every alert
    listed, FHIR POSTs answered, and each figure and verdict the report promises."""
    out = tmp_path / "mllp.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mllp.py"), "--quick", "--patients", "200",
                        "--rate", "20", "--duration", "3", "--alert-share", "0.2", "--fhir-duration", "2",
                        "--settle-s", "60",
                        "--store-cache", str(tmp_path / "cache"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["store"]["patients"] == 200 and res["store"]["rows"] == 200 * 250 and not res["store"]["reused"]
    feed = res["feed"]
    assert feed["sent"] == feed["acked"] == feed["stored"] == 60 and feed["codes"] == {"AA": 60}
    assert 0 < feed["alerts_expected"] == feed["alerts_seen"] == feed["alert"]["n"]
    assert feed["ack"]["p50_ms"] <= feed["ack"]["p99_ms"] <= feed["ack"]["max_ms"]
    # each surveillance run of the server's log, with its breakdown (a log line the pattern missed went unseen)
    assert feed["runs"] and all(x["patients"] >= 0 and x["timer alerts"] >= 0 and x["read"] <= x["seconds"]
                                for x in feed["runs"]) and sum(x["patients"] for x in feed["runs"]) >= 1
    assert res["fhir"]["requests"] >= 1 and set(res["fhir"]["codes"]) == {"200"}  # JSON keys
    assert len(res["load_avg_start"]) == len(res["load_avg_end"]) == 3 and not res["server_log_errors"]
    for line in ("msg/s sustained for 300 s", "every message acknowledged AA and stored", "alert latency p99 < 2 s",
                 "load average at start"):
        assert line in r.stdout, r.stdout


def test_fold_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/fold.py on 200 patients against this checkout itself: generations made, each code's fold in
    a process of its own (seconds, peak RSS), the two folded copies equal row for row."""
    out = tmp_path / "fold.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fold.py"), "--patients", "200", "--singles", "2",
                        "--batches", "1", "--batch", "20", "--against", str(ROOT), "--scratch", str(tmp_path),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["pending"]["generations"] == 3 and res["pending"]["patients"] >= 20
    for f in res["folds"].values():
        assert f["left"] == 0 and f["seconds"] > 0 and f["peak_rss"] > 50 * 2**20
    assert res["differences"] and not any(res["differences"].values())
    assert "results of the two folds: equal, row for row" in r.stdout and "ratio this / reference" in r.stdout
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_the_mllp_benchmark_waits_for_a_fold_before_removing_the_server_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background fold outlives the server that started it (a process of its own at the lowest priority): the
    benchmark removed the server's temporary folder beneath it and failed (Directory not empty). It now waits
    until no fold holds the results folder."""
    import importlib.util
    import threading
    import time

    from mgaki.surveillance.pipeline import _fold_lock

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("mllp_bench", ROOT / "benchmarks" / "mllp.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "results"
    results.mkdir()
    held, released = threading.Event(), []

    def fold() -> None:
        with _fold_lock(results):
            held.set()
            time.sleep(1.0)
            released.append(time.monotonic())

    t = threading.Thread(target=fold)
    t.start()
    held.wait(10)
    bench.wait_for_fold(results)
    done = time.monotonic()
    t.join()
    assert released and done >= released[0]
    bench.wait_for_fold(tmp_path / "no_results")  # no store surveilled: nothing to wait for


def test_increments_ab_through_the_service_smoke(tmp_path: Path) -> None:
    """benchmarks/increments_ab.py --service: POST /fhir increments on both codes, each step timed."""
    out = tmp_path / "ab.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "increments_ab.py"), "--against", str(ROOT), "--patients", "100",
           "--rounds", "2", "--n", "2", "--service", "--scratch", str(tmp_path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["service"] is True
    for name in ("reference", "this"):  # two rounds on one store: each round's records are its own (no 409)
        assert [len(r["lat"]) for r in res["rounds_detail"][name]] == [2, 2] and res["summary"][name]["runs"] == 4
        for rnd in res["rounds_detail"][name]:
            parts = rnd["parts"]
            assert set(parts) == {"read", "normalize", "append", "surveil", "alerts_to_db"}, parts
            assert parts["read"] > 0 and 0 < parts["surveil"] < 1e3 * max(rnd["lat"])
    assert "through the service (POST /fhir)" in r.stdout and "steps, median of the rounds' medians" in r.stdout


def test_append_growth_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/append_growth.py on 200 patients: a feed's appends timed with their parts, by window, the ledger
    growing, the report and JSON."""
    out = tmp_path / "growth.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "append_growth.py"), "--patients", "200",
                        "--feed-patients", "100", "--appends", "12", "--batch", "10", "--window", "4",
                        "--store-cache", str(tmp_path / "cache"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert len(res["appends"]) == 12 and [(w["first"], w["last"]) for w in res["windows"]] == [(1, 4), (5, 8), (9, 12)]
    for a in res["appends"]:
        assert 0 < a["_identity_conflicts_s"] + a["_versions_s"] + a["compact_s"] < a["append_s"]
    rows = [w["ledger_rows"] for w in res["windows"]]
    assert rows == sorted(rows) and rows[0] > 0 and rows[-1] > rows[0]  # every append brings new versions
    first = sorted(a["append_s"] for a in res["appends"][:4])
    assert res["windows"][0]["append_s"] == pytest.approx((first[1] + first[2]) / 2)  # the window's median
    for line in ("identity", "versions", "ledger rows", "last window / first window"):
        assert line in r.stdout, r.stdout


def test_feed_runs_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/feed_runs.py on 200 patients: feed-shaped runs, each part timed, the report and JSON."""
    out = tmp_path / "feed_runs.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "feed_runs.py"), "--patients", "200", "--batch", "20",
                        "--runs", "3", "--last", "2", "--read-threads", "1", "--store-cache", str(tmp_path / "cache"),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 3 and res["read_threads"] == 1
    for run in res["runs"]:
        assert run["patients"] >= 15  # 20 messages for random patients of 200: a few may share one
        assert 0 < run["_materialise_s"] + run["_compute_s"] + run["_write_some_s"] <= run["run_s"]
        assert run["_write_delta_s"] <= run["_write_some_s"]
    m = res["mean_last"]
    assert m["run_s"] == pytest.approx(sum(x["run_s"] for x in res["runs"][-2:]) / 2)
    for line in ("incremental run", "read (_materialise)", "stages (_compute)", "ms per patient", "read threads 1"):
        assert line in r.stdout, r.stdout
