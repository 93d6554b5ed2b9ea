"""Memory and time of one large ingest request (issue 16 point 3): what the body limits of the service cost.

    python benchmarks/ingest_body_size.py [--sizes 4 8 16 32] [--kind bundle|ndjson|both]

Each size runs in a fresh process (peak RSS is per process): one POST /fhir (a batch Bundle) or
POST /fhir/$import-ndjson of that many MiB through the service app in process (SQLite, surveillance on),
made of one patient's serum Mg Observations (about 330 bytes each, one per minute). Prints the machine's load,
the body size, the answer, the wall time and the peak RSS of the process above its RSS before the request.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOKEN = "bench-writer-token-0123456789"


def _resources(mib: float) -> list[dict[str, object]]:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    out: list[dict[str, object]] = [{"resourceType": "Patient", "id": "p1", "gender": "female",
                                     "birthDate": "1950-01-01"}]
    size, i = 0, 0
    while size < mib * (1 << 20):
        obs = {"resourceType": "Observation", "id": f"o{i}", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "19123-9"}]},
               "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": (t0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
               "valueQuantity": {"value": 1.8 + (i % 7) / 10, "unit": "mg/dL",
                                 "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
        out.append(obs)
        size += len(json.dumps(obs)) + 30
        i += 1
    return out


def one(kind: str, mib: float) -> dict[str, object]:
    from fastapi.testclient import TestClient

    from mgaki.service import ServiceConfig, create_app

    res = _resources(mib)
    if kind == "bundle":
        body = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": r} for r in res]})
        path, ctype = "/fhir", "application/fhir+json"
    else:
        body = "".join(json.dumps(r) + "\n" for r in res)
        path, ctype = "/fhir/$import-ndjson", "application/fhir+ndjson"
    data = body.encode()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServiceConfig.model_validate({"data_dir": tmp, "warm_up": False, "cds_require_jwt": False,
                                            "tokens": [{"name": "w", "token": TOKEN, "roles": ["writer"]}]})
        with TestClient(create_app(cfg)) as c:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            r = c.post(path, content=data, headers={"Authorization": f"Bearer {TOKEN}", "content-type": ctype})
            wall = time.perf_counter() - t
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "mib": round(len(data) / (1 << 20), 1), "resources": len(res), "status": r.status_code,
            "seconds": round(wall, 2), "peak_rss_above_start_mib": round((peak - base) / 1024),
            "bytes_of_memory_per_body_byte": round((peak - base) * 1024 / len(data), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--kind", choices=["bundle", "ndjson", "both"], default="both")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], float(args.one[1]))))
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{os.cpu_count()} cores")
    kinds = ["bundle", "ndjson"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        for mib in args.sizes:
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", kind, str(mib)],
                                 capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
