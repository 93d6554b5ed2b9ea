"""Dashboard API latency: patient list over a synthetic cohort, one patient's timeline, assessment, dose plan.

    python benchmarks/dashboard.py                 # --patients 2000 --repeat 5
    python benchmarks/dashboard.py --patients 200  # quick

A synthetic cohort (mgaki.synth) goes into an event store, surveillance runs once and its alert
log is copied into the service database (what the ingest endpoint does), then the endpoints are
timed in-process through the ASGI app (TestClient: routing, auth, audit and JSON included).
Prints the median and max of each; a measurement, not a gate (exit status 0 either way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-reader-token-0123456789"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from mgaki.events import EventStore
    from mgaki.service import ServiceConfig, create_app
    from mgaki.service.ingest.ingestor import Ingestor
    from mgaki.surveillance import surveil
    from mgaki.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="mgaki-dash-bench-"))
    cfg = ServiceConfig.model_validate({"data_dir": tmp, "warm_up": False, "cds_require_jwt": False,
                                        "tokens": [{"name": "bench", "token": TOKEN, "roles": ["reader"]}]})
    t0 = time.perf_counter()
    cohort = generate(args.patients, seed=7)
    store = EventStore(tmp / "events")
    store.append(cohort.tables)
    app = create_app(cfg)
    res = surveil(store)
    n_alerts = Ingestor(tmp, app.state.engine).sync_alerts(res.tables["alerts"])
    setup_s = time.perf_counter() - t0
    hdr = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "patients": args.patients,
                           "alerts": n_alerts, "setup_s": round(setup_s, 2), "cores": os.cpu_count(),
                           "load_avg": os.getloadavg(), "timings_ms": {}}
    with TestClient(app) as c:
        listing = c.get("/dashboard/patients?scope=all&limit=1", headers=hdr).json()
        pid = listing["patients"][0]["patient_id"]  # the most severe patient
        calls = {
            "list (sort severity, scope all)": lambda: c.get("/dashboard/patients?scope=all", headers=hdr),
            "list (filter critical, sort latest_mg)": lambda: c.get(
                "/dashboard/patients?scope=all&severity=critical&sort=latest_mg", headers=hdr),
            "timeline + chart": lambda: c.get(f"/dashboard/patients/{pid}/timeline", headers=hdr),
            "assessment": lambda: c.get(f"/dashboard/patients/{pid}/assessment", headers=hdr),
            "dose plan (regimen)": lambda: c.post(f"/dashboard/patients/{pid}/dose-plan", headers=hdr,
                                                  json={"loading_g": 2, "loading_over_min": 60}),
            "dose plan (target)": lambda: c.post(f"/dashboard/patients/{pid}/dose-plan", headers=hdr,
                                                 json={"mode": "target", "target_low_mg_dl": 2.0,
                                                       "target_high_mg_dl": 2.5}),
        }
        for name, call in calls.items():
            assert call().status_code == 200, name  # warm-up, and a check
            ms = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                call()
                ms.append((time.perf_counter() - t) * 1e3)
            out["timings_ms"][name] = {"median": round(statistics.median(ms), 1), "max": round(max(ms), 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
