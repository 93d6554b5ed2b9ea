"""Latency of one HL7 ORU^R01 over MLLP, from send to AA, through the real listener (in-process service).

Run from the repository root with the project venv active::

    python benchmarks/mllp.py 100      # messages, sent one after the other on one connection

Each message carries a magnesium and a creatinine result for one of 20 patients. Measured twice,
with ``surveil_on_ingest`` off (parse, normalize, fsync'd append) and on (plus the incremental
surveillance run and the alert copy), each on a fresh data folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from hl7.client import MLLPClient

from mgaki.service import ServiceConfig, create_app
from mgaki.service.ingest.hl7 import Result, oru_r01, read_ack

T0 = datetime(2024, 3, 1, 8, tzinfo=UTC)


def main(n: int) -> None:
    msgs = [oru_r01(f"p{i % 20}", [Result("19123-9", 1.0 + (i % 10) / 10, "mg/dL", T0 + timedelta(hours=i)),
                                   Result("2160-0", 1.0, "mg/dL", T0 + timedelta(hours=i))],
                    visit=f"v{i % 20}", admitted=T0, order=f"o{i}") for i in range(n)]
    for surveil in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ServiceConfig.model_validate({"data_dir": Path(tmp), "warm_up": False, "cds_require_jwt": False,
                                                "mllp_port": 0, "surveil_on_ingest": surveil})
            lat = []
            app = create_app(cfg)
            with TestClient(app), MLLPClient("127.0.0.1", app.state.mllp.port) as m:
                for msg in msgs:
                    t = time.perf_counter()
                    assert read_ack(m.send_message(msg)).code == "AA"
                    lat.append(time.perf_counter() - t)
        lat.sort()
        print(f"surveil_on_ingest={surveil}: {n} messages, median {lat[n // 2] * 1e3:.0f} ms, "
              f"p95 {lat[int(n * 0.95)] * 1e3:.0f} ms, total {sum(lat):.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
