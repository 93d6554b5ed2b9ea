"""The dashboard's JSON API: patient list, timeline, assessment, dose planner; auth, audit, bad input."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import vl_convert as vlc
from dashboard_patient import CREATININE, MAGNESIUM, MGSO4_DOSES, calm_bundle, dashboard_bundle, discharged_bundle
from fastapi.testclient import TestClient

import mgaki
from conftest import READER, WRITER, auth, make_config
from mgaki.knowledge import KnowledgeBase
from mgaki.pk import Covariates, loading_maintenance, population, simulate, time_grid
from mgaki.service import create_app
from mgaki.service.config import TokenConfig
from mgaki.units import convert

CALM_ONLY = "calm-ward-token-0123456789"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One service with the three patients for the whole module (ingest and surveillance take seconds)."""
    cfg = make_config(tmp_path_factory.mktemp("dash"))
    cfg.tokens.append(TokenConfig(name="calm-ward", token=CALM_ONLY, roles=["reader"], patients=["calm"]))
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        for b in (dashboard_bundle(), calm_bundle(), discharged_bundle()):
            r = c.post("/fhir", json=b, headers=auth(WRITER))
            assert r.status_code == 200, r.text
        yield c


def _get(c: TestClient, path: str) -> Any:
    r = c.get(path, headers=auth(READER))
    assert r.status_code == 200, r.text
    return r.json()


def _ids(res: dict[str, Any]) -> list[str]:
    return [p["patient_id"] for p in res["patients"]]


def _audit(c: TestClient) -> list[tuple[Any, ...]]:
    with c.app.state.engine.connect() as con:  # type: ignore[attr-defined]
        return [tuple(r) for r in con.execute(sa.text("SELECT actor, action, endpoint, patient_id FROM audit"))]


def test_patient_list_counts_ranks_filters_and_sorts(loaded: TestClient) -> None:
    held = _get(loaded, "/patients/dash1/alerts")["alerts"]
    res = _get(loaded, "/dashboard/patients?scope=active")
    assert res["total"] == 3 and _ids(res)[0] == "dash1"
    rows = {p["patient_id"]: p for p in res["patients"]}
    assert rows["dash1"]["alerts"] == len(held) and rows["dash1"]["highest_severity"] == "critical"
    assert rows["dash1"]["highest_severity"] == max((a["severity"] for a in held),
                                                    key=["info", "warning", "critical"].index)
    assert rows["dash1"]["latest_mg_mg_dl"] == MAGNESIUM[-1][1]
    assert rows["dash1"]["latest_creatinine_mg_dl"] == CREATININE[-1][1] and rows["dash1"]["admitted"]
    # the discharged patient's alert is not active, but it is counted in scope=all
    assert rows["gone"]["alerts"] == 0 and rows["gone"]["highest_severity"] is None
    assert rows["gone"]["alerts_total"] >= 1 and not rows["gone"]["admitted"]
    assert rows["calm"]["alerts_total"] == 0
    assert res["reference_ranges"]["magnesium"]["high"] > res["reference_ranges"]["magnesium"]["low"]
    every = {p["patient_id"]: p for p in _get(loaded, "/dashboard/patients?scope=all")["patients"]}
    assert every["gone"]["highest_severity"] == "warning" and every["gone"]["last_alert_kind"] == "mg_out_of_range"
    assert _ids(_get(loaded, "/dashboard/patients?scope=active&severity=critical")) == ["dash1"]
    assert _ids(_get(loaded, "/dashboard/patients?scope=all&severity=warning")) == ["dash1", "gone"]
    assert _ids(_get(loaded, "/dashboard/patients?scope=all&kind=mg_out_of_range")) == ["dash1", "gone"]
    assert _ids(_get(loaded, "/dashboard/patients?scope=active&with_alerts=true")) == ["dash1"]
    assert _ids(_get(loaded, "/dashboard/patients?q=ALM")) == ["calm"]
    assert _ids(_get(loaded, "/dashboard/patients?sort=patient_id&order=asc")) == ["calm", "dash1", "gone"]
    assert _ids(_get(loaded, "/dashboard/patients?sort=latest_mg")) == ["calm", "gone", "dash1"]
    page = _get(loaded, "/dashboard/patients?sort=patient_id&order=asc&limit=1&offset=1")
    assert _ids(page) == ["dash1"] and page["total"] == 3
    for bad in ("severity=urgent", "sort=height", "order=up", "limit=0", "scope=mine"):
        r = loaded.get(f"/dashboard/patients?{bad}", headers=auth(READER))
        assert r.status_code == 422, bad
        assert bad.split("=")[0] in r.text
    # the list records which patients it showed: one audit row per patient returned (issue 16 point 7)
    listed = [r for r in _audit(loaded) if r[:3] == ("nurse-station", "read", "GET /dashboard/patients")]
    assert {r[3] for r in listed} == {"calm", "dash1", "gone"}
    assert ("nurse-station", "read", "GET /dashboard/patients", None) not in listed  # every call here listed someone


def test_dashboard_needs_a_reader_token(loaded: TestClient) -> None:
    paths = ["/dashboard/patients", "/dashboard/patients/dash1/timeline", "/dashboard/patients/dash1/assessment"]
    for p in paths:
        assert loaded.get(p).status_code == 401
        assert loaded.get(p, headers=auth("x" * 20)).status_code == 401
        r = loaded.get(p, headers=auth(WRITER))
        assert r.status_code == 403 and "reader" in r.json()["error"]
    r = loaded.post("/dashboard/patients/dash1/dose-plan", json={"loading_g": 2, "loading_over_min": 60})
    assert r.status_code == 401
    # the pages themselves carry no patient data: served without a token, with a strict CSP
    for p in ("/ui/", "/ui/patients/dash1"):
        page = loaded.get(p)
        assert page.status_code == 200 and "dash1" not in page.text and "<form id=\"login-form\"" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert loaded.get("/ui/static/vendor/vega-lite-6.4.1.min.js").status_code == 200


def test_timeline_series_doses_bands_ranges(loaded: TestClient, kb: KnowledgeBase) -> None:
    tl = _get(loaded, "/dashboard/patients/dash1/timeline")
    assert [p["value"] for p in tl["series"]["magnesium"]] == [v for _, v in MAGNESIUM]
    assert [p["value"] for p in tl["series"]["creatinine"]] == [v for _, v in CREATININE]
    assert tl["series"]["creatinine"][-1]["aki_stage"] == 2  # ratio 2.2 to the lowest of the prior 7 days
    assert len(tl["series"]["urine_output"]) == 8 and tl["urine_rate"]
    rr = kb.magnesium.reference_range
    assert (tl["reference_ranges"]["magnesium"]["low"], tl["reference_ranges"]["magnesium"]["high"]) == \
        pytest.approx((convert(rr.low, "magnesium", rr.unit, "mg/dL"), convert(rr.high, "magnesium", rr.unit, "mg/dL")))
    k = kb.electrolytes.ranges["potassium"]
    assert tl["reference_ranges"]["potassium"]["low"] == k.low and tl["reference_ranges"]["potassium"]["source"] == \
        k.source.citation
    assert "creatinine" not in tl["reference_ranges"]  # the knowledge base has none: none is invented
    assert [d["g_mgso4"] for d in tl["doses"]] == pytest.approx([g for _, _, g in MGSO4_DOSES])
    bands = tl["aki_bands"]
    assert bands and {b["stage"] for b in bands} <= {1, 2, 3} and max(b["stage"] for b in bands) == 2
    assert all(b["start"] < b["end"] for b in bands)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(bands))
    held = _get(loaded, "/patients/dash1/alerts")["alerts"]
    assert [{k: v for k, v in a.items() if k not in ("label", "state", "detail")} for a in tl["alerts"]] == \
        [{k: v for k, v in a.items() if k not in ("state", "detail")} for a in held]
    assert all(a["label"] and "_" not in a["label"] for a in tl["alerts"])  # words, not internal ids
    assert all(not re.search(r"\b[a-z]+_[a-z0-9_.]+\b", a["detail"]) for a in tl["alerts"]), \
        [a["detail"] for a in tl["alerts"]]
    # the timeline recorded who saw each alert: the next read shows it
    assert all([s["who"] for s in a["state"]["seen_by"]] == ["nurse-station"] for a in held)
    spec = tl["vega_lite"]
    assert len(spec["vconcat"]) == 7  # AKI stage strip, Mg, creatinine, K, Ca, urine, doses
    assert spec["vconcat"][0]["title"]["text"] == "AKI stage (KDIGO)"
    # criteria in words in the data the tooltips show, not surveillance's ids
    crit = [r["criterion_text"] for r in spec["datasets"]["aki_bands"]]
    assert crit and all("_" not in c for c in crit), crit
    # the creatinine axis is not zoomed into noise: it spans at least half the largest value
    cr_panel = next(v for v in spec["vconcat"] if "Creatinine" in json.dumps(v))
    lo, hi = next(la["encoding"]["y"]["scale"]["domain"] for la in cr_panel["layer"] if "y" in la["encoding"]
                  and "scale" in la["encoding"]["y"])
    assert hi - lo >= 0.5 * max(v for _, v in CREATININE)
    assert spec["params"][0]["bind"] == "scales"
    vega = vlc.vegalite_to_vega(spec)  # compiles: the browser will draw it
    assert any(s["name"] == "x" for s in vega.get("scales", []))
    # a patient without data is a 404 naming no one; every read is audited with the patient id
    r = loaded.get("/dashboard/patients/nobody/timeline", headers=auth(READER))
    assert r.status_code == 404 and r.json() == {"error": "no data for this patient"}
    assert ("nurse-station", "read", "GET /dashboard/patients/{patient_id}/timeline", "dash1") in _audit(loaded)


def test_assessment_from_the_store_matches_the_bundle_path(loaded: TestClient) -> None:
    res = _get(loaded, "/dashboard/patients/dash1/assessment")
    a = res["assessment"]
    direct = mgaki.assess(dashboard_bundle())
    assert [(f["code"], f["severity"]) for f in a["findings"]] == [(f.code, f.severity) for f in direct.findings]
    assert a["magnesium"]["value_mg_dl"] == direct.magnesium.value_mg_dl  # type: ignore[union-attr]
    assert a["kidney"]["aki_stage"] == direct.kidney.aki_stage == 2
    assert a["plan"]["regimen"] == direct.plan.regimen
    dois = {e["doi"] for f in a["findings"] for e in f["evidence"] if e["doi"]}
    listed = {s["doi"]: s for s in res["sources"] if s["doi"]}
    assert dois and dois <= set(listed)
    assert all(s["url"] == f"https://doi.org/{d}" for d, s in listed.items())
    assert ("nurse-station", "read", "GET /dashboard/patients/{patient_id}/assessment", "dash1") in _audit(loaded)


def _plan(c: TestClient, pid: str, body: dict[str, Any]) -> Any:
    r = c.post(f"/dashboard/patients/{pid}/dose-plan", json=body, headers=auth(READER))
    assert r.status_code == 200, r.text
    return r.json()


def test_dose_plan_is_mgaki_pk(loaded: TestClient, kb: KnowledgeBase) -> None:
    """No dose given yet: the curve is mgaki.pk.simulate of the regimen, from the latest Mg."""
    p = _plan(loaded, "calm", {"loading_g": 2, "loading_over_min": 60, "horizon_h": 12, "weight_kg": 70,
                               "crcl_ml_min": 80})
    assert p["inputs"]["creatinine_mg_dl"] == 0.9 and p["inputs"]["age_years"] > 18  # from the chart
    pop = population(None, Covariates(weight_kg=70, crcl_ml_min=80, creatinine_mg_dl=0.9,
                                      age_years=p["inputs"]["age_years"]), baseline_mg_dl=2.1, kb=kb)
    reg = loading_maintenance(2, 1.0, 0, 0)
    pred = simulate(pop, reg, time_grid(reg, 12, kb=kb), seed=0, baseline_known=True, kb=kb)
    assert [q["time_h"] for q in p["curve"]] == pytest.approx(pred.times_h.tolist(), abs=1e-3)
    assert [q["typical_mg_dl"] for q in p["curve"]] == pytest.approx(pred.typical_mg_dl.tolist(), abs=1e-3)
    assert [q["upper_mg_dl"] for q in p["curve"]] == pytest.approx(pred.upper_mg_dl.tolist(), abs=1e-3)  # type: ignore[union-attr]
    assert all(q["lower_mg_dl"] <= q["typical_mg_dl"] <= q["upper_mg_dl"] for q in p["curve"])
    assert p["peak_mg_dl"] == pytest.approx(pred.peak_mg_dl, abs=1e-3) and not p["individualised"]
    assert p["level"] == kb.value("pk_interval_level") and p["past_curve"] == [] and p["measured"] == []
    assert p["regimen"].startswith("2 g over 60 min")
    assert [c["id"] for c in p["limits"]] == ["iv_rate_max_repletion", "daily_max_label"]
    assert all(c["ok"] for c in p["limits"])
    # the overshoot flag is mgaki.pk's harm probability against the repletion harm level (4 mEq/L)
    harm = pred.p_peak_above(convert(4.0, "magnesium", "meq/L", "mg/dL"))
    assert p["p_peak_above_toxicity"] == pytest.approx(harm, abs=1e-4)
    assert p["overshoot"] == (harm is not None and harm > kb.value("pk_overshoot_probability_max"))
    assert len(p["warnings"]) == int(p["overshoot"])
    # every output names the population the model was built in; target and harm come from the context
    assert "pre-eclampsia" in p["population"] and "pre-eclampsia" in p["disclaimer"]
    assert p["context"] == "repletion" and p["risk"]["p_target"] is not None and p["risk"]["p_harm_upper_95"] > 0
    spec = p["vega_lite"]
    vlc.vegalite_to_vega(spec)
    assert spec["width"] == "container"


def test_dose_plan_individualised_with_doses_and_levels(loaded: TestClient) -> None:
    p = _plan(loaded, "dash1", {"loading_g": 2, "loading_over_min": 60})
    assert p["individualised"] and set(p["estimates"]) >= {"cl", "v1", "baseline"}
    first_dose = min(d["start_h"] for d in p["past_doses"])
    assert len(p["past_doses"]) == 2 and first_dose < 0
    # levels after the first dose, in hours from now; the pre-dose level is the baseline
    assert [m["mg_dl"] for m in p["measured"]] == [v for h, v in MAGNESIUM if h >= MGSO4_DOSES[0][0]]
    assert p["inputs"]["baseline_mg_dl"] == MAGNESIUM[0][1]
    assert p["measured"][0]["time_h"] - first_dose == pytest.approx(MAGNESIUM[1][0] - MGSO4_DOSES[0][0])
    assert p["past_curve"] and max(q["time_h"] for q in p["past_curve"]) < 0 <= p["curve"][0]["time_h"]
    # the assessment staged AKI 2: the renal cap is checked, and CrCl came from the assessment
    assert p["inputs"]["severe_renal"] and "severe_renal_max_48h" in [c["id"] for c in p["limits"]]
    # in AKI clearance follows the kinetic eGFR of each creatinine interval since the first dose (Chen 2013)
    course = p["inputs"]["kidney_course"]
    assert course and p["inputs"]["creatinine_mg_dl"] is None and len(course) >= 2
    assert all(np.isfinite(c["creatinine_mg_dl"]) for c in course)
    assert any("creatinine course" in n for n in p["notes"])
    assert p["inputs"]["crcl_ml_min"] is not None and p["inputs"]["weight_kg"] == 70.0
    # not fitted when asked: same doses, population prior
    q = _plan(loaded, "dash1", {"loading_g": 2, "loading_over_min": 60, "individualise": False})
    assert not q["individualised"] and q["estimates"] is None and q["peak_mg_dl"] != p["peak_mg_dl"]


def test_dose_plan_overshoot_push_and_target(loaded: TestClient, kb: KnowledgeBase) -> None:
    big = _plan(loaded, "dash1", {"loading_g": 6, "loading_over_min": 180, "rate_g_per_h": 2, "maintenance_h": 24})
    assert big["overshoot"] and big["p_peak_above_toxicity"] > kb.value("pk_overshoot_probability_max")
    assert big["warnings"][0].startswith("Overshoot risk")
    assert {c["id"]: c["ok"] for c in big["limits"]}["daily_max_label"] is False
    push = _plan(loaded, "calm", {"loading_g": 4})
    rate = push["limits"][0]
    assert rate["id"] == "iv_rate_max_repletion" and rate["value"] is None and not rate["ok"]
    assert any("a push" in w for w in push["warnings"])
    found = _plan(loaded, "calm", {"mode": "target", "target_low_mg_dl": 2.0, "target_high_mg_dl": 2.5,
                                   "horizon_h": 24})
    assert found["finder"]["regimen"] == found["regimen"] and found["target_mg_dl"] == [2.0, 2.5]
    assert found["finder"]["candidates"] > 1 and found["curve"]
    assert ("nurse-station", "read", "POST /dashboard/patients/{patient_id}/dose-plan", "calm") in _audit(loaded)


@pytest.mark.parametrize(("body", "names"), [
    ({"loading_g": -1}, "loading_g"),
    ({"loading_g": 0, "rate_g_per_h": 0}, "loading_g"),
    ({"rate_g_per_h": 1}, "maintenance_h"),
    ({"mode": "target", "target_low_mg_dl": 2.0}, "target_high_mg_dl"),
    ({"mode": "target", "target_low_mg_dl": 2.5, "target_high_mg_dl": 2.0}, "low < high"),
    ({"loading_g": 2, "horizon_h": 10000}, "horizon_h"),
    ({"loading_g": 2, "dose": 3}, "dose"),
    ({"loading_g": "lots"}, "loading_g"),
    ({"loading_g": 2, "jurisdiction": "fr"}, "jurisdiction"),
])
def test_dose_plan_bad_input_is_422_naming_the_field(loaded: TestClient, body: dict[str, Any], names: str) -> None:
    r = loaded.post("/dashboard/patients/calm/dose-plan", json=body, headers=auth(READER))
    assert r.status_code == 422
    assert names in r.text


def test_dose_plan_other_errors_are_4xx(loaded: TestClient) -> None:
    r = loaded.post("/dashboard/patients/calm/dose-plan", content=b"{oops", headers={
        **auth(READER), "content-type": "application/json"})
    assert r.status_code == 422
    r = loaded.post("/dashboard/patients/calm/dose-plan", json={"loading_g": 2, "model": "no_such_model"},
                    headers=auth(READER))
    assert r.status_code == 400 and "no_such_model" in r.text
    r = loaded.post("/dashboard/patients/nobody/dose-plan", json={"loading_g": 2}, headers=auth(READER))
    assert r.status_code == 404


def test_a_token_limited_to_one_patient_sees_only_that_patient(loaded: TestClient) -> None:
    """The token's patient limit (security.check_patient) holds on every dashboard endpoint and the list;
    a refusal is a 403 audited as denied, given before the patient is looked up (ids cannot be probed)."""
    calm = {"Authorization": f"Bearer {CALM_ONLY}"}
    listed = loaded.get("/dashboard/patients?scope=all", headers=calm).json()
    assert _ids(listed) == ["calm"] and listed["total"] == 1
    for path in ("timeline", "assessment"):
        for pid in ("dash1", "no-such-patient"):
            r = loaded.get(f"/dashboard/patients/{pid}/{path}", headers=calm)
            assert r.status_code == 403 and "not allowed this patient" in r.json()["error"]
        assert loaded.get(f"/dashboard/patients/calm/{path}", headers=calm).status_code == 200
    r = loaded.post("/dashboard/patients/dash1/dose-plan", json={"loading_g": 2}, headers=calm)
    assert r.status_code == 403
    assert ("calm-ward", "denied", "POST /dashboard/patients/{patient_id}/dose-plan", "dash1") in _audit(loaded)
    r = loaded.post("/dashboard/patients/calm/dose-plan", json={"loading_g": 2, "loading_over_min": 60}, headers=calm)
    assert r.status_code == 200 and np.isfinite(r.json()["peak_mg_dl"])
    assert _ids(_get(loaded, "/dashboard/patients?scope=all")) != ["calm"]  # an unlimited reader sees everyone


def test_static_files_are_package_data() -> None:
    """The installed package must carry every page, script and vendored file (and their licences)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    from mgaki.service.dashboard.routes import STATIC, VENDOR

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mgaki"]
    pkg = root / "src" / "mgaki"
    files = [p.relative_to(pkg).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert {f"service/dashboard/static/{v}" for v in VENDOR} <= set(files)
    assert len([f for f in files if f.endswith(".LICENSE")]) >= 3
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                           for pat in patterns)]
    assert missing == []
    for page in ("list.html", "patient.html"):  # every script a page loads is shipped
        html = (STATIC / page).read_text()
        for src in [s.split('"')[0] for s in html.split('src="/ui/static/')[1:]]:
            assert (STATIC / src).is_file(), src


def test_empty_service(client: TestClient) -> None:
    """Nothing ingested yet: an empty list, and 404 for any patient (no surveillance results either)."""
    assert _get(client, "/dashboard/patients") | {"reference_ranges": None, "alert_labels": None} == {
        "total": 0, "scope": "action", "patients": [], "severities": ["info", "warning", "critical"],
        "reference_ranges": None, "alert_labels": None, "timezone": "UTC"}
    assert client.get("/dashboard/patients/p1/timeline", headers=auth(READER)).status_code == 404


def test_chart_words_time_zone_and_flat_series(loaded: TestClient) -> None:
    """Issue 17 point 6: criteria in words, the site's time zone on the time axis, a flat creatinine drawn flat."""
    from mgaki.service.dashboard.charts import criterion_text, local_times

    assert criterion_text("uo_lt_0.5_6h") == "urine output < 0.5 mL/kg/h for 6 h"
    assert criterion_text("ratio_lowest_prior_7d") == "creatinine ratio to the lowest value of the prior 7 days"
    assert criterion_text("rise_0.3_48h") == "creatinine rise of at least 0.3 mg/dL within 48 h"
    assert local_times([{"time": "2024-07-01T12:00:00"}], "Europe/London") == [{"time": "2024-07-01T13:00:00"}]
    assert local_times([{"time": "2024-01-01T12:00:00"}], "America/New_York") == [{"time": "2024-01-01T07:00:00"}]
    spec = _get(loaded, "/dashboard/patients/calm/timeline")["vega_lite"]
    cr_panel = next(v for v in spec["vconcat"] if "Creatinine" in json.dumps(v))
    lo, hi = next(la["encoding"]["y"]["scale"]["domain"] for la in cr_panel["layer"] if "y" in la["encoding"]
                  and "scale" in la["encoding"]["y"])
    assert lo <= 0.9 - 0.2 and hi >= 0.9 + 0.2  # 0.90 -> 0.90 is not stretched over the whole panel
    assert "time (UTC)" in json.dumps(spec)


def test_sources_link_and_carry_no_internal_notes(loaded: TestClient) -> None:
    """Issue 17 point 6: every source link is a URL (a DailyMed 'document' is an address and a note), and the
    project's internal notes ("knowledge-brief section 4, U", "SPEC C7") are not shown to clinicians."""
    res = _get(loaded, "/dashboard/patients/dash1/assessment")
    text = json.dumps(res)
    assert "knowledge-brief" not in text and "SPEC C" not in text and "SPEC.md" not in text
    urls = [s["url"] for s in res["sources"] if s["url"]] + [
        e["document"] for f in res["assessment"]["findings"] for e in f["evidence"]
        if e["document"] and e["document"].startswith("http")]
    assert urls and all(re.fullmatch(r"https?://[^\s()]+", u) for u in urls), urls
    # the bedside JSON keeps the full provenance: only the dashboard's view is cleaned
    raw = mgaki.assess(dashboard_bundle()).model_dump_json()
    assert "knowledge-brief" in raw or "dailymed.nlm.nih.gov (" in raw


def test_values_shown_at_lab_precision(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 17 point 6: a Mg reported in mmol/L is stored in mg/dL (1.0937...); the dashboard shows 1.09, not
    'SERUM MG 1.09373 mg/dL'."""
    from mgaki.synth.fhir import BundleBuilder

    b = BundleBuilder(pid="si1", id_prefix="si1-").series("magnesium", "mmol/L", [(0.0, 0.45)]) \
        .series("creatinine", "mg/dL", [(0.0, 0.9)]).build()
    b["type"] = "batch"
    with TestClient(create_app(make_config(tmp_path_factory.mktemp("si"))), raise_server_exceptions=False) as c:
        assert c.post("/fhir", json=b, headers=auth(WRITER)).status_code == 200
        mg = _get(c, "/dashboard/patients/si1/assessment")["assessment"]["magnesium"]
    assert mg["value_mg_dl"] == pytest.approx(convert(0.45, "magnesium", "mmol/L", "mg/dL"), abs=1e-3)
    assert mg["reported"] == "1.09 mg/dL"
