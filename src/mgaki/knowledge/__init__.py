"""The knowledge base: versioned YAML files, validated on load, each entry cited.

``load()`` is cached: the files are read once per process. Lookups by id raise
``KnowledgeError`` naming the missing id, so a renamed threshold cannot turn
into a silent default.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mgaki.errors import InputError, KnowledgeError
from mgaki.knowledge.schema import (
    FILES,
    AlertRule,
    Analyte,
    BaselineRule,
    CodesFile,
    Drug,
    DrugClass,
    DrugsFile,
    ElectrolytesFile,
    EvaluationFile,
    EvidenceFile,
    KidneyFile,
    Limit,
    MagnesiumFile,
    Nomogram,
    PkContext,
    PkFile,
    PkModel,
    Regimen,
    RegimensFile,
    RenalRule,
    Salt,
    SeverityLevelName,
    SeverityRule,
    Source,
    Strict,
    SurveillanceFile,
    Threshold,
    UnitsFile,
    UrineFile,
)

__all__ = ["KnowledgeBase", "iter_cited", "load", "load_file", "load_validated"]


# libyaml's safe loader parses the knowledge files ~15x faster than the pure-Python one
# (~0.03 s vs ~0.4 s of every CLI start); same result (tests/unit/test_knowledge.py).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


M = TypeVar("M", bound=BaseModel)


def load_validated(model: type[M], resource: Traversable, label: str) -> M:
    """A packaged YAML data file validated by its pydantic model; KnowledgeError naming `label` if not.

    The one loader of every cited data file (knowledge, adapter maps, synthetic and study parameters).
    """
    try:
        raw: Any = yaml.load(resource.read_text("utf-8"), Loader=_LOADER)  # a safe loader (C or Python)
        return model.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise KnowledgeError(f"{label} is invalid: {exc}") from exc


def load_file(name: str) -> Strict:
    return load_validated(FILES[name], resources.files("mgaki.knowledge").joinpath("data", name),
                          f"knowledge file {name}")


def _index(items: tuple[Any, ...], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if item.id in out:
            raise KnowledgeError(f"duplicate {what} id {item.id!r}")
        out[item.id] = item
    return out


def _lookup(table: dict[str, Any], key: str, what: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise KnowledgeError(f"unknown {what} {key!r}") from None


@dataclass(frozen=True, eq=False)  # hashed by identity: one instance per process
class KnowledgeBase:
    units: UnitsFile
    codes: CodesFile
    magnesium: MagnesiumFile
    electrolytes: ElectrolytesFile
    urine: UrineFile
    drugs: DrugsFile
    evidence: EvidenceFile
    regimens: RegimensFile
    kidney: KidneyFile
    surveillance: SurveillanceFile
    pk: PkFile
    evaluation: EvaluationFile
    _by_id: dict[str, dict[str, Any]] = field(repr=False, compare=False)

    def files(self) -> dict[str, Strict]:
        return {
            "units.yaml": self.units,
            "codes.yaml": self.codes,
            "magnesium.yaml": self.magnesium,
            "electrolytes.yaml": self.electrolytes,
            "urine.yaml": self.urine,
            "drugs.yaml": self.drugs,
            "evidence.yaml": self.evidence,
            "regimens.yaml": self.regimens,
            "kidney.yaml": self.kidney,
            "surveillance.yaml": self.surveillance,
            "pk.yaml": self.pk,
            "evaluation.yaml": self.evaluation,
        }

    @property
    def version(self) -> str:
        return "+".join(f"{n.split('.')[0]}:{getattr(f, 'version', '?')}"
                        for n, f in self.files().items())

    # Lookups: one place that knows where each kind of fact lives.
    def _get(self, kind: str, key: str) -> Any:
        return _lookup(self._by_id[kind], key, kind)

    def analyte(self, analyte_id: str) -> Analyte:
        return self._get("analyte", analyte_id)  # type: ignore[no-any-return]

    def threshold(self, threshold_id: str) -> Threshold:
        return self._get("threshold", threshold_id)  # type: ignore[no-any-return]

    def value(self, threshold_id: str) -> float:
        """The number of a threshold, for logic that needs only the number."""
        return self.threshold(threshold_id).value

    def coefficient(self, coefficient_id: str) -> float:
        return self._get("coefficient", coefficient_id).value  # type: ignore[no-any-return]

    def limit(self, limit_id: str) -> Limit:
        return self._get("limit", limit_id)  # type: ignore[no-any-return]

    def salt(self, salt_id: str) -> Salt:
        return self._get("salt", salt_id)  # type: ignore[no-any-return]

    def nomogram(self, nomogram_id: str) -> Nomogram:
        return self._get("nomogram", nomogram_id)  # type: ignore[no-any-return]

    def regimen(self, regimen_id: str) -> Regimen:
        return self._get("regimen", regimen_id)  # type: ignore[no-any-return]

    def alert(self, alert_id: str) -> AlertRule:
        return self._get("alert", alert_id)  # type: ignore[no-any-return]

    def severity(self, kind: str, measure: float | None = None) -> SeverityLevelName:
        """Severity of an alert kind or finding code at a measure (AKI stage, CTCAE grade), from the
        cited mapping of surveillance.yaml ``severity``; KnowledgeError for a kind it does not rate."""
        return self.severity_rule(kind).of(measure)

    def severity_rule(self, kind: str) -> SeverityRule:
        return self._get("severity", kind)  # type: ignore[no-any-return]

    def renal_rule(self, rule_id: str) -> RenalRule:
        return self._get("renal_rule", rule_id)  # type: ignore[no-any-return]

    def pk_model(self, model_id: str | None = None) -> PkModel:
        """A population PK model by id (pk.yaml); the default model if none is named."""
        return self._get("pk_model", model_id or self.pk.default_model)  # type: ignore[no-any-return]

    @property
    def contexts(self) -> tuple[str, ...]:
        """Every clinical context the knowledge files name (evidence populations, regimens, high-risk
        settings, drugs that open a regimen), sorted: what ``--context`` accepts."""
        return tuple(self._by_id["context"])

    def context(self, name: str) -> str:
        """A context as given (any case: ``ICU``) -> its knowledge id (``icu``); InputError naming it if unknown."""
        key = name.strip().lower()
        if key not in self._by_id["context"]:
            raise InputError(f"context {name!r}", f"unknown; valid contexts: {', '.join(self.contexts)}")
        return key

    def current_within_hours(self, analyte: str) -> float | None:
        """How old (h) a result of ``analyte`` may be to stand for the patient now; None: no window."""
        w = self._by_id["current_window"].get(analyte)
        return w.hours if w is not None else None

    def baseline_rule(self, rule_id: str | None = None) -> BaselineRule:
        """A baseline rule by id (kidney.yaml; ``kdigo-7day`` = ``kdigo_7day``); the default if none is named.

        InputError naming the rule and the valid ones when it is unknown (a user's ``--baseline``)."""
        key = (rule_id or self.kidney.default_baseline_rule).strip().lower().replace("-", "_")
        for r in self.kidney.baseline_rules:
            if r.id == key:
                return r
        valid = ", ".join(r.id for r in self.kidney.baseline_rules)
        raise InputError(f"baseline rule {rule_id!r}", f"unknown; valid rules: {valid}")

    def pk_context(self, context_id: str | None = None) -> PkContext:
        """A PK target/harm context by id (pk.yaml); the default context if none is named."""
        return self._get("pk_context", context_id or self.pk.default_context)  # type: ignore[no-any-return]

    def drug(self, name_or_rxcui: str) -> Drug | None:
        """Drug by ingredient, synonym (case-insensitive) or ``rxcui:NNN``."""
        return self._by_id["drug_name"].get(name_or_rxcui.lower())

    def drug_class(self, drug_class: str) -> DrugClass | None:
        """The order-check class (drugs.yaml ``classes``) a drug's ``drug_class`` belongs to, if any."""
        return self._by_id["drug_class"].get(drug_class)


def _drug_names(drugs: tuple[Drug, ...]) -> dict[str, Drug]:
    out: dict[str, Drug] = {}
    for drug in drugs:
        for name in (drug.ingredient, *drug.synonyms):
            if name.lower() in out:
                raise KnowledgeError(f"drug name {name!r} listed twice")
            out[name.lower()] = drug
        if drug.rxcui:
            out[f"rxcui:{drug.rxcui}"] = drug
    return out


def _current_windows(el: ElectrolytesFile, units: UnitsFile) -> dict[str, Any]:
    known = {a.id for a in units.analytes}
    out: dict[str, Any] = {}
    for w in el.current_within:
        if w.analyte not in known:
            raise KnowledgeError(f"electrolytes.yaml current_within: unknown analyte {w.analyte!r}")
        if w.analyte in out:
            raise KnowledgeError(f"electrolytes.yaml current_within: {w.analyte!r} listed twice")
        out[w.analyte] = w
    return out


def _check_evaluation(evf: EvaluationFile, sv: SurveillanceFile) -> None:
    """Each evaluation entry names a surveillance alert kind, once, and a defined outcome. A kind without an entry
    loads (evaluated without a PPV target, named by its id); tests/research/test_alert_eval.py asks for one."""
    kinds = [a.kind for a in evf.alerts]
    known = {a.id for a in sv.alerts}
    outcomes = {o.id for o in evf.outcomes}
    for k in kinds:
        if k not in known:
            raise KnowledgeError(f"evaluation.yaml alerts: {k!r} is not a surveillance.yaml alert")
        if kinds.count(k) > 1:
            raise KnowledgeError(f"evaluation.yaml alerts: {k!r} listed twice")
    for a in evf.alerts:
        if a.target is None and a.action not in ("none", "repeat"):  # a repeat prevents acting on a wrong value
            raise KnowledgeError(f"evaluation.yaml alerts: {a.kind!r} asks for {a.action!r} "
                                 "but names no target outcome")
        if a.target is not None and a.target not in outcomes:
            raise KnowledgeError(f"evaluation.yaml alerts: {a.kind!r} targets undefined outcome {a.target!r}")
    if "lab_to_action" not in outcomes:
        raise KnowledgeError("evaluation.yaml outcomes: lab_to_action is required")


@cache
def load() -> KnowledgeBase:
    """Load and validate every knowledge file (once per process)."""
    p = {name: load_file(name) for name in FILES}
    units: UnitsFile = p["units.yaml"]  # type: ignore[assignment]
    mg: MagnesiumFile = p["magnesium.yaml"]  # type: ignore[assignment]
    el: ElectrolytesFile = p["electrolytes.yaml"]  # type: ignore[assignment]
    ur: UrineFile = p["urine.yaml"]  # type: ignore[assignment]
    kid: KidneyFile = p["kidney.yaml"]  # type: ignore[assignment]
    reg: RegimensFile = p["regimens.yaml"]  # type: ignore[assignment]
    drugs: DrugsFile = p["drugs.yaml"]  # type: ignore[assignment]
    ev: EvidenceFile = p["evidence.yaml"]  # type: ignore[assignment]
    sv: SurveillanceFile = p["surveillance.yaml"]  # type: ignore[assignment]
    pk: PkFile = p["pk.yaml"]  # type: ignore[assignment]
    evf: EvaluationFile = p["evaluation.yaml"]  # type: ignore[assignment]
    _check_evaluation(evf, sv)
    by_id = {
        "analyte": _index(units.analytes, "analyte"),
        "threshold": _index((*mg.thresholds, *el.thresholds, *ur.thresholds, *kid.kdigo,
                             *sv.parameters, *pk.settings, *units.plausibility),
                            "threshold"),
        "coefficient": _index((*kid.ckd_epi_2021, *kid.cockcroft_gault, *kid.kinetic_gfr,
                                *kid.schwartz_bedside),
                              "coefficient"),
        "limit": _index(reg.limits, "limit"),
        "salt": _index(reg.salts, "salt"),
        "nomogram": _index(reg.nomograms, "nomogram"),
        "regimen": _index(reg.regimens, "regimen"),
        "renal_rule": _index(reg.renal_rules, "renal_rule"),
        "study": _index(ev.studies, "study"),
        "drug_name": _drug_names(drugs.drugs),
        "drug_class": {name: c for c in drugs.classes for name in c.drug_classes},
        "alert": _index(sv.alerts, "alert"),
        "severity": {k: r for r in sv.severity for k in r.kinds},
        "current_window": _current_windows(el, units),
        "context": dict.fromkeys(sorted(
            {c for st in ev.studies for c in (*st.contexts, *st.not_in_contexts)}
            | {c for r in reg.regimens for c in r.contexts} | set(mg.high_risk_contexts)
            | {d.context for d in drugs.drugs if d.context} | {kid.maintenance_dialysis.context})),
        "pk_model": _index(pk.models, "pk_model"),
        "pk_context": _index(pk.contexts, "pk_context"),
    }
    spec = sv.specimen  # every analyte and ingredient a specimen rule names must exist
    for a in spec.analytes:
        _lookup(by_id["analyte"], a, "analyte (surveillance.yaml specimen)")
    for ing in (i for r in spec.infusion for i in r.ingredients):
        _lookup(by_id["drug_name"], ing, "drug ingredient (surveillance.yaml specimen)")
    return KnowledgeBase(
        units=units, codes=p["codes.yaml"],  # type: ignore[arg-type]
        magnesium=mg, electrolytes=el, urine=ur, drugs=drugs, evidence=ev,
        regimens=reg, kidney=kid, surveillance=sv, pk=pk, evaluation=evf, _by_id=by_id,
    )


def iter_cited(node: object, path: str = "") -> Iterator[tuple[str, BaseModel, Source | None]]:
    """Walk a loaded file; yield (path, entry, source) for every entry that must be cited."""
    if isinstance(node, BaseModel):
        fields = type(node).model_fields
        if "source" in fields:
            yield path, node, getattr(node, "source", None)
        for name in fields:
            if name in ("source", "plausibility_source"):
                continue
            yield from iter_cited(getattr(node, name), f"{path}.{name}" if path else name)
    elif isinstance(node, tuple | list):
        for i, item in enumerate(node):
            yield from iter_cited(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from iter_cited(item, f"{path}[{key}]")
