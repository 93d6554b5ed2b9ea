"""End-to-end clinical vignettes: each FHIR bundle in bundles/ against expected.yaml.

Expectations are reasoned by hand from the knowledge files (see build.py comments).
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import mgaki
from mgaki.knowledge import load
from mgaki.result import FINDING_CODES, Assessment

HERE = Path(__file__).resolve().parent
BUNDLES = HERE / "bundles"
TOL = 0.01 + 1e-9

TABLE1_CONTEXTS = ("contrast", "icu", "cardiac-surgery", "cirrhosis", "covid19", "pediatric-icu",
                   "pancreatitis", "tbi", "malignancy", "aki-recovery")


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mgaki_vignettes_build", HERE / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXPECTED: list[dict[str, Any]] = yaml.safe_load((HERE / "expected.yaml").read_text(encoding="utf-8"))
BY_NAME = {v["name"]: v for v in EXPECTED}


def _params() -> list[Any]:
    out = []
    for v in EXPECTED:
        marks = [pytest.mark.xfail(strict=True, reason=v["xfail"])] if v.get("xfail") else []
        out.append(pytest.param(v, id=v["name"], marks=marks))
    return out


@cache
def _assess(name: str) -> Assessment:
    v = BY_NAME[name]
    bundle = json.loads((BUNDLES / f"{name}.json").read_text(encoding="utf-8"))
    kw: dict[str, Any] = {}
    if v.get("nomogram"):
        kw["nomogram"] = v["nomogram"]
    if v.get("jurisdiction"):
        kw["jurisdiction"] = v["jurisdiction"]
    return mgaki.assess(bundle, v["contexts"], **kw)


def _resolve(a: Assessment, path: str) -> Any:
    """Dotted path into the assessment; `findings.<code>.<key>` reads a finding's data
    (or its severity / message)."""
    parts = path.split(".")
    if parts[0] == "findings":
        f = next((f for f in a.findings if f.code == parts[1]), None)
        if f is None:
            raise LookupError(f"no {parts[1]} finding")
        return getattr(f, parts[2]) if parts[2] in ("severity", "message") else f.data[parts[2]]
    obj: Any = a
    for p in parts:
        obj = obj[int(p)] if isinstance(obj, list | tuple) else getattr(obj, p)
    return obj


def _resolved(a: Assessment, checks: dict[str, Any] | None, errors: list[str]) -> list[tuple[str, Any, Any]]:
    """(path, expected, actual) for each check whose path resolves; the others become errors."""
    out = []
    for path, want in (checks or {}).items():
        try:
            out.append((path, want, _resolve(a, path)))
        except (LookupError, AttributeError, IndexError) as exc:
            errors.append(f"{path}: {exc}")
    return out


def _check(v: dict[str, Any], a: Assessment) -> list[str]:
    errors: list[str] = []
    codes = [f.code for f in a.findings]
    for c in v["present"]:
        if c not in codes:
            errors.append(f"missing finding {c}")
    for c in v["absent"]:
        if c in codes:
            msg = next(f.message for f in a.findings if f.code == c)
            errors.append(f"unexpected finding {c}: {msg}")
    mg = v["magnesium"]
    if mg is None:
        if a.magnesium is not None:
            errors.append(f"expected no magnesium, got {a.magnesium.reported}")
    elif a.magnesium is None:
        errors.append("magnesium result missing")
    else:
        if a.magnesium.status != mg["status"]:
            errors.append(f"Mg status {a.magnesium.status} != {mg['status']}")
        if a.magnesium.grade != mg["grade"]:
            errors.append(f"Mg grade {a.magnesium.grade} != {mg['grade']}")
    if a.kidney.aki_stage != v["aki_stage"]:
        errors.append(f"aki_stage {a.kidney.aki_stage} ({a.kidney.criterion}) != {v['aki_stage']}")
    plan = v["plan"]
    if a.plan.action != plan["action"]:
        errors.append(f"plan action {a.plan.action} ({a.plan.regimen}) != {plan['action']}")
    if a.plan.regimen_id != plan["regimen_id"]:
        errors.append(f"plan regimen_id {a.plan.regimen_id} != {plan['regimen_id']}")
    if plan.get("tier") and plan["tier"] not in (a.plan.regimen or ""):
        errors.append(f"plan tier {a.plan.regimen!r} is not {plan['tier']!r}")
    for path, want, got in _resolved(a, v.get("numeric"), errors):
        if got is None or not math.isclose(float(got), float(want), abs_tol=TOL):
            errors.append(f"{path} = {got}, expected {want}")
    for path, want, got in _resolved(a, v.get("contains"), errors):
        text = " | ".join(map(str, got)) if isinstance(got, list | tuple) else str(got)
        if want not in text:
            errors.append(f"{path} = {text!r} does not contain {want!r}")
    for code, dois in (v.get("cites") or {}).items():
        cited = {e.doi for f in a.findings if f.code == code for e in f.evidence}
        for doi in dois:
            if doi not in cited:
                errors.append(f"no {code} finding cites {doi} (cited: {sorted(d for d in cited if d)})")
    for code, dois in (v.get("not_cites") or {}).items():
        cited = {e.doi for f in a.findings if f.code == code for e in f.evidence}
        for doi in dois:
            if doi in cited:
                errors.append(f"a {code} finding cites {doi}, which must not be applied here")
    for text in v.get("warnings_contain") or []:
        if not any(text in w for w in a.warnings):
            errors.append(f"no warning mentions {text!r}")
    if v.get("half_of"):
        ref = _assess(v["half_of"])
        for field in ("mmol", "g_mgso4", "meq"):
            got, full = getattr(a.plan.doses[0], field), getattr(ref.plan.doses[0], field)
            if not math.isclose(got, full / 2, abs_tol=TOL):
                errors.append(f"dose {field} {got} is not half of {v['half_of']}'s {full}")
    # Invariants every assessment must keep.
    for f in a.findings:
        if f.code not in FINDING_CODES:
            errors.append(f"unknown finding code {f.code}")
        if not f.evidence:
            errors.append(f"finding {f.code} cites no source")
    for d in a.plan.doses:
        if not math.isclose(d.meq, 2 * d.mmol, abs_tol=TOL):
            errors.append(f"dose {d.label}: {d.meq} mEq != 2 x {d.mmol} mmol")
        if d.g_mgso4 is not None and not math.isclose(d.g_mgso4, d.mmol * 246.47 / 1000, abs_tol=TOL):
            errors.append(f"dose {d.label}: {d.g_mgso4} g != {d.mmol} mmol x 0.24647")
    return errors


@pytest.mark.parametrize("v", _params())
def test_vignette(v: dict[str, Any]) -> None:
    a = _assess(v["name"])
    errors = _check(v, a)
    assert not errors, f"{v['name']}: {v['why']}\n  " + "\n  ".join(errors)


def test_committed_files_match_build() -> None:
    files = _load_build().render()
    on_disk = {f"bundles/{p.name}" for p in BUNDLES.glob("*.json")} | {"expected.yaml"}
    assert on_disk == set(files), "bundles/ differs from build.py's vignettes: rerun build.py"
    stale = [rel for rel, text in files.items() if (HERE / rel).read_text(encoding="utf-8") != text]
    assert not stale, f"stale generated files (rerun tests/vignettes/build.py): {stale}"


def test_at_least_32_vignettes() -> None:
    assert len(EXPECTED) >= 32


def test_every_finding_code_expected_somewhere() -> None:
    present = {c for v in EXPECTED if not v.get("xfail") for c in v["present"]}
    assert set(FINDING_CODES) <= present, sorted(set(FINDING_CODES) - present)


def test_every_regimen_and_nomogram_tier_covered() -> None:
    kb = load()
    live = EXPECTED
    regimen_ids = {v["plan"]["regimen_id"] for v in live}
    missing = [r.id for r in kb.regimens.regimens if r.id not in regimen_ids]
    assert not missing, missing
    for nom in kb.regimens.nomograms:
        used = {v["plan"].get("tier") for v in live if v["plan"]["regimen_id"] == nom.id}
        for tier in nom.tiers:
            assert any(u and u in tier.action for u in used), (nom.id, tier.action)
    # NHS Highland's no-action range (> 0.7 mmol/L)
    assert any(v.get("nomogram") == "nhs-highland" and v["plan"]["action"] == "none" for v in live)


def test_every_table1_context_covered() -> None:
    ctx = {c for v in EXPECTED for c in v["contexts"]}
    assert set(TABLE1_CONTEXTS) <= ctx, sorted(set(TABLE1_CONTEXTS) - ctx)
    assert any(not v["contexts"] for v in EXPECTED)


def test_unapplied_studies_are_checked_and_dois_match_knowledge() -> None:
    build = _load_build()
    studies = {s.id: s for s in load().evidence.studies}
    assert set(build.DOI) == set(studies)
    for sid, doi in build.DOI.items():
        assert studies[sid].source.doi == doi, sid
    for s in studies.values():
        if s.applied:
            continue
        hits = [v for v in EXPECTED if s.id in (v.get("warnings_contain") or [])
                and s.source.doi in (v.get("not_cites") or {}).get("mg_aki_risk", [])]
        assert hits, f"no vignette checks unapplied study {s.id}"
