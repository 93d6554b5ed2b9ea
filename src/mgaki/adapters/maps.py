"""Source-code maps for the cohort adapters (MIMIC-IV item ids, OMOP concepts, ...), as data.

Each adapter keeps its map in ``adapters/maps/<name>.yaml``; this schema
validates it so that every mapped code carries its source, exactly as the
knowledge base does, and names an analyte (or drug, or context) the rules know.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from mgaki.knowledge import load, load_validated
from mgaki.knowledge.schema import Source

__all__ = ["CONTEXT_SYSTEM", "KIND_SYSTEM", "CodeMapEntry", "CodeMapFile", "load_map"]

# FHIR codings mgaki writes and reads on both FHIR paths (bedside fhir.py, cohort fhir_bulk.py)
KIND_SYSTEM = "urn:mgaki:encounter-kind"  # Encounter.type coding carrying mgaki's kind (icu, ...)
CONTEXT_SYSTEM = "urn:mgaki:context"  # Flag.code coding carrying a clinical context (its period.start: when)


class CodeMapEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str  # the source system's code, as text
    maps_to: Literal["analyte", "rrt", "context", "drug", "weight", "encounter_kind", "administration",
                     "death"]
    target: str  # analyte id / context id / drug ingredient / encounter kind
    unit: str | None = None  # unit to assume when the source row has none (documented, never guessed)
    # source unit strings that carry no unit for this code (MIMIC writes 'units' for pH): treated as none
    placeholder_units: tuple[str, ...] = ()
    display: str = ""
    note: str = ""
    source: Source


class CodeMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    system: str  # e.g. "MIMIC-IV d_labitems.itemid"
    entries: tuple[CodeMapEntry, ...]

    @model_validator(mode="after")
    def _targets_known(self) -> CodeMapFile:
        kb = load()
        analytes = {a.id for a in kb.units.analytes}
        seen: set[tuple[str, str]] = set()
        for e in self.entries:
            key = (e.code, e.maps_to)
            if key in seen:
                raise ValueError(f"{self.system}: code {e.code} mapped twice")
            seen.add(key)
            if e.maps_to == "analyte" and e.target not in analytes:
                raise ValueError(f"{self.system}: code {e.code} maps to unknown analyte {e.target!r}")
            if e.maps_to == "drug" and kb.drug(e.target) is None:
                raise ValueError(f"{self.system}: code {e.code} maps to unknown drug {e.target!r}")
            if e.placeholder_units and e.unit is None:
                raise ValueError(f"{self.system}: code {e.code} has placeholder_units but no unit")
            if e.maps_to == "death" and e.target != "death":
                raise ValueError(f"{self.system}: code {e.code}: a death maps to target death")
            if e.maps_to == "administration" and e.target not in {"given", "not_given"}:
                raise ValueError(f"{self.system}: code {e.code}: administration must be given or not_given")
        return self

    def by(self, kind: str) -> dict[str, CodeMapEntry]:
        return {e.code: e for e in self.entries if e.maps_to == kind}


@cache
def load_map(name: str) -> CodeMapFile:
    """Validated map ``adapters/maps/<name>.yaml``; KnowledgeError naming the file if invalid."""
    return load_validated(CodeMapFile, files("mgaki.adapters") / "maps" / f"{name}.yaml",
                          f"adapters/maps/{name}.yaml")
