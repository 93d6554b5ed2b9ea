"""The dashboard in a real headless Chromium (Playwright) against a real uvicorn server.

Debian's chromium (/usr/bin/chromium) is used through ``executable_path``; Playwright's own browser
download is never used. When chromium is missing the session installs it with apt-get (as root);
if that is impossible the tests fail saying so, unless MGAKI_SKIP_BROWSER=1 (then they skip).
Screenshots go to test-artifacts/screenshots/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dashboard_patient import calm_bundle, dashboard_bundle, discharged_bundle
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from conftest import READER, WRITER, auth, free_port

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 768, "height": 1024}


def _chromium() -> str:
    """Path of Debian's chromium, installed with apt-get if missing (CI starts from a clean machine)."""
    if os.environ.get("MGAKI_SKIP_BROWSER") == "1":
        pytest.skip("MGAKI_SKIP_BROWSER=1: browser tests skipped")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    why = ""
    if found is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            lock = ["-o", "DPkg::Lock::Timeout=600"]
            for cmd in (["apt-get", *lock, "update", "-q"],
                        ["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", "chromium"]):
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
                if res.returncode != 0:
                    why = f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-400:]}"
                    break
            found = shutil.which("chromium")
        else:
            why = "not root or no apt-get, so it could not be installed"
    if found is None:
        pytest.fail("The dashboard browser tests need Debian's chromium (/usr/bin/chromium) and it is missing "
                    f"({why or 'apt-get install ran but no chromium appeared'}). Install it with "
                    "`apt-get install chromium`, or set MGAKI_SKIP_BROWSER=1 to skip these tests.")
    return found


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mgaki serve` in a subprocess on a free port, with a temp data dir and three ingested patients."""
    tmp = tmp_path_factory.mktemp("dashboard-server")
    port = free_port()
    cfg = {"data_dir": str(tmp / "data"), "warm_up": False, "cds_require_jwt": False, "host": "127.0.0.1",
           "port": port, "tokens": [{"name": "nurse-station", "token": READER, "roles": ["reader"]},
                                    {"name": "lab-feed", "token": WRITER, "roles": ["writer"]}]}
    (tmp / "service.yaml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mgaki", "serve", "--config", str(tmp / "service.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mgaki serve exited ({proc.returncode}): {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mgaki serve did not answer /health within 90 s")
            time.sleep(0.2)
        for b in (dashboard_bundle(), calm_bundle(), discharged_bundle()):
            r = httpx.post(base + "/fhir", json=b, headers=auth(WRITER), timeout=60)
            assert r.status_code == 200, r.text
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


expect.set_options(timeout=15_000)  # default 5 s failed once at load average 13 on 2 cores


@pytest.fixture(scope="module")  # sync Playwright runs an event loop on this thread until closed: not past here
def browser() -> Iterator[Browser]:
    path = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _page(browser: Browser, viewport: dict[str, int]) -> tuple[Any, Page, list[str]]:
    ctx = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = ctx.new_page()
    page.set_default_timeout(30_000)  # actions on a loaded CI machine; assertions: expect's timeout below
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    return ctx, page, errors


@pytest.fixture
def laptop(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    ctx, page, errors = _page(browser, LAPTOP)
    yield page, errors
    ctx.close()


@pytest.fixture
def tablet(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    ctx, page, errors = _page(browser, TABLET)
    yield page, errors
    ctx.close()


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _sign_in(page: Page, base: str, path: str = "/ui/") -> None:
    page.goto(base + path)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", READER)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#content")).to_be_visible()


def _open_dash1(page: Page, base: str) -> None:
    _sign_in(page, base)
    page.click('tr[data-patient="dash1"] a')
    page.wait_for_url("**/ui/patients/dash1")
    expect(page.locator("#timeline")).to_have_attribute("data-rendered", "true", timeout=15000)


def test_list_sign_in_severity_filters_and_sort(server: str, laptop: tuple[Page, list[str]]) -> None:
    page, errors = laptop
    page.goto(server + "/ui/")
    page.fill("#token", "not-a-valid-token-0000")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")
    assert [e for e in errors if "401" not in e] == [], errors
    errors.clear()  # the refused token's 401 is logged by the browser console: expected
    page.fill("#token", READER)
    page.click("#login-form button[type=submit]")
    rows = page.locator("#patients tbody tr")
    # default: what needs action, most severe first; the discharged patient's alert still needs action
    expect(rows).to_have_count(2)
    expect(page.locator("#f-scope")).to_have_value("action")
    expect(rows.nth(0)).to_have_attribute("data-patient", "dash1")
    expect(rows.nth(0).locator(".badge")).to_have_text("critical")
    expect(page.locator('tr[data-patient="gone"] .badge')).to_have_text("warning")
    expect(page.locator('tr[data-patient="dash1"] td.low')).to_contain_text("1.30")  # below the KB range
    expect(page.locator('tr[data-patient="dash1"] td.low')).to_contain_text("UTC")  # its time, site zone
    expect(page.locator('tr[data-patient="dash1"] td.aki')).to_have_text("2")  # KDIGO stage column
    expect(page.locator('tr[data-patient="gone"]')).to_contain_text("discharged")
    expect(page.locator('tr[data-patient="dash1"]')).to_contain_text("Mg")  # latest alert in words
    page.uncheck("#f-with-alerts")
    expect(rows).to_have_count(3)
    expect(page.locator('tr[data-patient="calm"] td.low')).to_have_count(0)
    page.select_option("#f-scope", "active")
    expect(page.locator('tr[data-patient="gone"] .badge')).to_have_text("none")  # its encounter has ended
    page.select_option("#f-scope", "all")
    expect(page.locator('tr[data-patient="gone"] .badge')).to_have_text("warning")
    page.select_option("#f-severity", "critical")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_have_attribute("data-patient", "dash1")
    page.select_option("#f-severity", "")
    page.click('th[data-sort="patient_id"]')
    expect(rows.nth(0)).to_have_attribute("data-patient", "calm")
    expect(rows.nth(2)).to_have_attribute("data-patient", "gone")
    page.fill("#f-q", "das")
    expect(rows).to_have_count(1)
    page.fill("#f-q", "")
    page.select_option("#f-scope", "active")
    page.click('th[data-sort="severity"]')
    expect(rows.nth(0)).to_have_attribute("data-patient", "dash1")
    _shot(page, "list-laptop.png")
    # the token lives in this tab's sessionStorage only
    assert page.evaluate("sessionStorage.getItem('mgaki.token')") == READER
    assert page.evaluate("localStorage.length") == 0
    assert errors == [], errors


def test_a_late_answer_to_an_older_filter_is_not_drawn(server: str, laptop: tuple[Page, list[str]]) -> None:
    """Each filter or sort change asks the API again; answers may come back in any order. The answer to an older
    request (held back here) must not overwrite the newer one's rows (it did: CI, on a loaded machine, saw the
    severity-sorted list after the click that sorts by patient)."""
    page, errors = laptop
    _sign_in(page, server)
    rows = page.locator("#patients tbody tr")
    expect(rows).to_have_count(2)
    older = lambda url: "/dashboard/patients" in url and "with_alerts" not in url and "sort=severity" in url  # noqa: E731
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(older, hold)
    page.uncheck("#f-with-alerts")  # asks for everyone, most severe first: held back
    page.click('th[data-sort="patient_id"]')  # then by patient: answered at once
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_attribute("data-patient", "calm")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(25)
    assert len(held) == 1
    with page.expect_response(lambda r: older(r.url)):
        held[0].continue_()
    page.evaluate("() => new Promise((done) => setTimeout(done, 200))")  # the late answer's handler has run
    expect(rows.nth(0)).to_have_attribute("data-patient", "calm")
    expect(page.locator('th[data-sort="patient_id"]')).to_have_attribute("aria-sort", "ascending")
    assert errors == [], errors


def test_patient_page_alerts_timeline_assessment(server: str, laptop: tuple[Page, list[str]]) -> None:
    page, errors = laptop
    _open_dash1(page, server)
    alerts = page.locator("#alerts li")
    expect(alerts.filter(has_text="Mg out of range").locator(".badge")).to_have_text("critical")
    expect(page.locator("#patient-meta .badge")).to_have_text("critical")
    svg = page.locator("#timeline svg.marks")
    expect(svg).to_have_count(1)
    # five series panels + doses: lines and points, AKI stage bands and reference ranges as rects
    assert page.locator("#timeline svg.marks g.mark-line path").count() >= 5
    assert page.locator("#timeline svg.marks g.mark-symbol path").count() >= 4 + 4 + 3 + 2 + 8
    assert page.locator("#timeline svg.marks g.mark-rect path").count() >= 2 + 4
    expect(page.locator("#timeline svg.marks")).to_contain_text("Mg, mg/dL")
    expect(page.locator("#timeline svg.marks")).to_contain_text("AKI stage (KDIGO)")
    # tooltip on a point
    page.locator("#timeline svg.marks g.mark-symbol path").first.hover(force=True)
    expect(page.locator("#vg-tooltip-element")).to_be_visible()
    expect(page.locator("#vg-tooltip-element")).to_contain_text("time")
    # zoom: the wheel over a panel changes the time axis
    first_tick = page.locator("#timeline svg.marks .role-axis-label text").first
    before = first_tick.text_content()
    box = page.locator("#timeline svg.marks").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 80)
    for _ in range(4):
        page.mouse.wheel(0, -300)
    expect(first_tick).not_to_have_text(before or "")
    # assessment with its findings and linked sources
    expect(page.locator("#assessment")).to_contain_text("hypomagnesemia")
    doi = page.locator('#sources a[href^="https://doi.org/"]')
    assert doi.count() >= 3
    assert page.locator('#assessment .finding a[href^="https://doi.org/10."]').count() >= 1
    _shot(page, "patient-laptop.png")
    assert errors == [], errors


def test_dose_planner_curve_band_and_overshoot(server: str, laptop: tuple[Page, list[str]]) -> None:
    page, errors = laptop
    _open_dash1(page, server)
    form = page.locator("#planner")
    form.locator('input[name="loading_g"]').fill("2")
    form.locator('input[name="loading_over_min"]').fill("60")
    form.locator('input[name="rate_g_per_h"]').fill("0")
    page.click("#plan-submit")
    chart = page.locator("#dose-chart")
    expect(chart).to_have_attribute("data-rendered", "true", timeout=15000)
    assert chart.locator("svg.marks g.mark-area path").count() >= 1  # the prediction band
    assert chart.locator("svg.marks g.mark-line path").count() >= 1  # the typical course
    expect(page.locator("#plan-summary")).to_contain_text("individualised (MAP)")
    expect(page.locator("#plan-warnings .warn-box")).to_have_count(0)
    expect(page.locator("#plan-limits tbody tr").first).to_contain_text("within")
    # an aggressive regimen: the overshoot warning and the exceeded limits
    form.locator('input[name="loading_g"]').fill("6")
    form.locator('input[name="loading_over_min"]').fill("180")
    form.locator('input[name="rate_g_per_h"]').fill("2")
    form.locator('input[name="maintenance_h"]').fill("24")
    page.click("#plan-submit")
    expect(page.locator("#plan-warnings .warn-box").first).to_contain_text("Overshoot risk")
    expect(page.locator("#plan-limits")).to_contain_text("EXCEEDED")
    _shot(page, "dose-planner-overshoot.png")
    # bad input is refused with the field named, the last result stays
    form.locator('input[name="loading_g"]').fill("0")
    form.locator('input[name="rate_g_per_h"]').fill("0")
    page.click("#plan-submit")
    expect(page.locator("#planner-error")).to_contain_text("loading_g")
    assert [e for e in errors if "422" not in e] == [], errors
    errors.clear()  # the refused form's 422 is logged by the browser console: expected
    # target mode: the finder proposes a regimen
    page.check('input[name="mode"][value="target"]')
    form.locator('input[name="target_low_mg_dl"]').fill("2.0")
    form.locator('input[name="target_high_mg_dl"]').fill("2.5")
    page.click("#plan-submit")
    expect(page.locator("#planner-error")).to_be_hidden()
    expect(page.locator("#plan-summary")).to_contain_text("MgSO4")
    assert errors == [], errors


def test_tablet_viewport(server: str, tablet: tuple[Page, list[str]]) -> None:
    page, errors = tablet
    _sign_in(page, server)
    expect(page.locator("#patients tbody tr")).to_have_count(2)  # needing action: dash1 and gone
    assert page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
    _shot(page, "list-tablet.png")
    page.click('tr[data-patient="dash1"] a')
    expect(page.locator("#timeline")).to_have_attribute("data-rendered", "true", timeout=15000)
    expect(page.locator("#assessment")).to_contain_text("hypomagnesemia")
    assert page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
    svg_box = page.locator("#timeline svg.marks").bounding_box()
    assert svg_box is not None and svg_box["x"] + svg_box["width"] <= TABLET["width"]
    page.click("#plan-submit")
    expect(page.locator("#dose-chart")).to_have_attribute("data-rendered", "true", timeout=15000)
    assert page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
    _shot(page, "patient-tablet.png")
    assert errors == [], errors


def test_alert_workflow_in_the_browser(server: str, laptop: tuple[Page, list[str]]) -> None:
    """Acknowledge, snooze with a reason, assign, resolve from the patient page; the list's default view follows.
    Last in this module: it changes the shared server's alert states."""
    page, errors = laptop
    _sign_in(page, server)
    expect(page.locator('tr[data-patient="gone"]')).to_have_count(1)
    page.click('tr[data-patient="gone"] a')
    page.wait_for_url("**/ui/patients/gone")
    item = page.locator("#alerts li[data-alert-id]").first
    expect(item).to_have_attribute("data-status", "open")
    expect(item.locator(".state")).to_contain_text("Needs action")
    expect(item.locator(".state")).to_contain_text("seen by nurse-station")  # opening the page recorded it
    item.locator('button[data-action="acknowledge"]').click()
    item = page.locator("#alerts li[data-alert-id]").first
    expect(item).to_have_attribute("data-status", "acknowledged")
    expect(item.locator(".state")).to_contain_text("Acknowledged by nurse-station")
    item.locator('button[data-action="assign"]').click()
    item.locator(".alert-form input[name=assignee]").fill("renal registrar")
    item.locator(".alert-form button[type=submit]").click()
    expect(page.locator("#alerts li[data-alert-id]").first.locator(".state")).to_contain_text(
        "assigned to renal registrar")
    page.locator("#alerts li[data-alert-id]").first.locator('button[data-action="reopen"]').click()
    item = page.locator("#alerts li[data-alert-id]").first
    expect(item).to_have_attribute("data-status", "open")
    # a snooze needs a reason: the browser's own check keeps the empty form from being sent
    item.locator('button[data-action="snooze"]').click()
    item.locator(".alert-form button[type=submit]").click()
    expect(item).to_have_attribute("data-status", "open")
    item.locator(".alert-form input[name=reason]").fill("repeat level due this afternoon")
    item.locator(".alert-form select[name=hours]").select_option("8")
    item.locator(".alert-form button[type=submit]").click()
    item = page.locator("#alerts li[data-alert-id]").first
    expect(item).to_have_attribute("data-status", "snoozed")
    expect(item.locator(".state")).to_contain_text("repeat level due this afternoon")
    _shot(page, "alert-workflow.png")
    for li in page.locator("#alerts li[data-alert-id]").all():  # resolve every alert of this patient
        if li.get_attribute("data-status") == "resolved":
            continue
        li.locator('button[data-action="resolve"]').click()
        li.locator(".alert-form input[name=reason]").fill("Mg replaced orally before discharge")
        li.locator(".alert-form button[type=submit]").click()
        expect(page.locator(f'#alerts li[data-alert-id="{li.get_attribute("data-alert-id")}"]')).to_have_attribute(
            "data-status", "resolved")
    expect(page.locator("#alerts-count")).to_have_text("none needs action")
    # the default list no longer shows the patient; 'all' still does
    page.click("a.back")
    expect(page.locator('tr[data-patient="dash1"]')).to_have_count(1)
    expect(page.locator('tr[data-patient="gone"]')).to_have_count(0)
    page.select_option("#f-scope", "all")
    expect(page.locator('tr[data-patient="gone"]')).to_have_count(1)
    assert errors == [], errors


def test_evaluation_report_page(server: str, laptop: tuple[Page, list[str]]) -> None:
    page, errors = laptop
    _sign_in(page, server, "/ui/evaluation")
    report = page.locator("#report")
    expect(report).to_have_attribute("data-rendered", "true", timeout=30000)
    for heading in ("Alert burden", "Positive predictive value", "Live against silent", "Outcome definitions"):
        expect(report.locator("h2", has_text=heading)).to_have_count(1)
    expect(report).to_contain_text("per 100 patient-days")
    expect(report).to_contain_text("No alert kind has both a live and a silent arm")  # every kind live here
    imgs = report.locator("img")
    assert imgs.count() >= 2
    assert all(page.evaluate("(i) => i.complete && i.naturalWidth > 100", i.element_handle()) for i in imgs.all())
    _shot(page, "evaluation.png")
    assert errors == [], errors
