"""Screenshots of the dashboard and the evaluation report for the docs (issue 17): docs/img/*.png.

    .venv/bin/python docs/img/screenshots.py

Starts `mgaki serve` on a temporary data folder holding a synthetic pragmatic trial (300 patients, Mg alerts
randomised by patient, live-arm clinicians dosing sooner: mgaki.synth.alert_trial) and the dashboard test
patients (tests/service/dashboard_patient.py), then drives Debian's chromium with Playwright. Needs the test
extra (playwright) and /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from playwright.sync_api import expect, sync_playwright

from mgaki.events import EventStore, normalize
from mgaki.research.alert_trial import AlertPolicy, AllocationSettings, MemoryLedger, assign_mode
from mgaki.synth.alert_trial import alert_trial_cohort

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img"
sys.path.insert(0, str(ROOT / "tests" / "service"))
from dashboard_patient import calm_bundle, dashboard_bundle, discharged_bundle  # noqa: E402

READER, WRITER = "reader-token-0123456789", "writer-token-0123456789"
ALERTS = {"modes": {"mg_out_of_range": "randomised", "mg_falling": "randomised", "mg_grade_worsened": "randomised"},
          "allocation": {"unit": "patient", "seed": 17, "block_size": 4, "label": "docs-trial"}}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mgaki-shots-"))
    data = tmp / "data"
    policy = AlertPolicy.model_validate(ALERTS)
    ledger = MemoryLedger()
    cohort = alert_trial_cohort(300, 17, lambda s, cu, t: assign_mode(policy, ledger, s, "mg_out_of_range", cu)[0],
                                live_mean_h=1.0, silent_mean_h=3.0)
    EventStore(data / "events").append(normalize(cohort.raw))  # surveilled (and allocated) by the service at start
    port = 8765
    cfg = {"data_dir": str(data), "warm_up": False, "cds_require_jwt": False, "host": "127.0.0.1", "port": port,
           "timezone": "Europe/London", "alerts": ALERTS,
           "tokens": [{"name": "dr-renal", "token": READER, "roles": ["reader"]},
                      {"name": "lab-feed", "token": WRITER, "roles": ["writer"]}]}
    (tmp / "service.yaml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mgaki", "serve", "--config", str(tmp / "service.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"mgaki serve did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        # the start-up surveillance of the stored trial allocates its patients in order of first eligibility
        # (as the generator did): wait for it before other patients arrive
        while not httpx.get(base + "/alerts?limit=1", headers={"Authorization": f"Bearer {READER}"},
                            timeout=30).json()["alerts"]:
            if time.monotonic() > deadline + 120:
                raise SystemExit("the start-up surveillance did not finish")
            time.sleep(0.5)
        for b in (dashboard_bundle(), calm_bundle(), discharged_bundle()):
            httpx.post(base + "/fhir", json=b, headers={"Authorization": f"Bearer {WRITER}"}, timeout=120)
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(base + "/ui/")
            page.fill("#token", READER)
            page.click("#login-form button[type=submit]")
            expect(page.locator('tr[data-patient="dash1"]')).to_have_count(1, timeout=30000)
            page.screenshot(path=str(OUT / "dashboard-list.png"))
            page.click('tr[data-patient="dash1"] a')
            expect(page.locator("#timeline")).to_have_attribute("data-rendered", "true", timeout=30000)
            first = page.locator("#alerts li[data-alert-id]").first
            first.locator('button[data-action="snooze"]').click()
            first.locator(".alert-form input[name=reason]").fill("repeat Mg due at 14:00")
            first.locator(".alert-form button[type=submit]").click()
            expect(page.locator("#alerts li[data-status=snoozed]")).to_have_count(1)
            page.locator("#alerts li[data-alert-id]").nth(1).locator('button[data-action="acknowledge"]').click()
            expect(page.locator("#alerts li[data-status=acknowledged]")).to_have_count(1)
            page.screenshot(path=str(OUT / "dashboard-patient.png"), full_page=True)
            page.locator("#alerts li[data-status=snoozed]").scroll_into_view_if_needed()
            page.locator("#alerts-card").screenshot(path=str(OUT / "dashboard-alert-workflow.png"))
            page.goto(base + "/ui/evaluation")
            expect(page.locator("#report")).to_have_attribute("data-rendered", "true", timeout=120000)
            page.screenshot(path=str(OUT / "dashboard-evaluation.png"), full_page=True)
            browser.close()
        for name in ("dashboard-list.png", "dashboard-patient.png", "dashboard-alert-workflow.png",
                     "dashboard-evaluation.png"):
            print(OUT / name)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
