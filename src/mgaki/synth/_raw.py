"""The raw adapter form of a synthetic cohort: text values in each site's units, plus dirty rows.

``to_raw`` is a pure function of the cohort (tables + truth): each admission's
site (truth column ``site``) says which unit and how many decimals its lab
writes, and the canonical values were generated as exactly those rounded
numbers, so ``mgaki.events.normalize(to_raw(c))`` gives back ``c.tables``
bit for bit, and quarantines exactly the planted dirty rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from mgaki.events.normalize import NO_VALUE_ANALYTES
from mgaki.events.schema import RAW
from mgaki.knowledge import load
from mgaki.synth._generate import Cohort
from mgaki.units import factor, normalize_unit

__all__ = ["DIRTY_KINDS", "to_raw"]

# kind of planted dirty row -> the start of the quarantine reason normalize gives it
DIRTY_KINDS: dict[str, str] = {
    "unknown_unit": "unknown unit",
    "text_value": "non-numeric value",
    "bad_time": "unparseable time",
    "negative_volume": "urine_output -",
}
_BAD_UNIT = "U/L"
_BAD_TIME = "2024-02-30 25:61:00"


def _text_time(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.cast(col, pa.string())


def _fixed(k: NDArray[Any], decimals: int) -> pa.Array:
    """Integers k as decimal text k / 10**decimals ('123', 2 -> '1.23'), formatted in Arrow."""
    s = pc.cast(pa.array(np.abs(k).astype(np.int64)), pa.string())
    if decimals > 0:
        s = pc.utf8_lpad(s, width=decimals + 1, padding="0")
        s = pc.binary_join_element_wise(pc.utf8_slice_codeunits(s, 0, -decimals), ".",
                                        pc.utf8_slice_codeunits(s, -decimals), "")
    return pc.if_else(pa.array(k < 0), pc.binary_join_element_wise("-", s, ""), s)


def _site_of(cohort: Cohort, encounter_ids: pa.ChunkedArray | pa.Array) -> NDArray[Any]:
    """Site index of each row through its admission or ICU stay (truth maps both to the site)."""
    truth = cohort.truth
    site_ids = [s.id for s in cohort.params.sites]
    site = pc.index_in(truth.column("site"), pa.array(site_ids)).to_numpy(zero_copy_only=False)
    icu = truth.column("icu_encounter_id")
    has_icu = pc.is_valid(icu).to_numpy(zero_copy_only=False)
    ids = pa.concat_arrays([truth.column("encounter_id").combine_chunks(),
                            pc.drop_null(icu).combine_chunks()])
    sites = np.concatenate([site, site[has_icu]])
    pos = pc.index_in(encounter_ids, ids).to_numpy(zero_copy_only=False)
    if np.isnan(pos.astype(float)).any():
        raise ValueError("to_raw: a row names an encounter that is not in cohort.truth")
    return np.asarray(sites[pos.astype(np.int64)])


def _values(cohort: Cohort, analyte: pa.Array, value: pa.Array, site: NDArray[Any],
            unit_mix: bool) -> tuple[pa.Array, pa.Array]:
    """Value text and unit text per row: the site's unit and decimals, or the canonical unit."""
    kb = load()
    names: list[str] = pc.unique(analyte).to_pylist()
    a = pc.index_in(analyte, pa.array(names)).to_numpy()  # analyte as a small integer per row
    v = value.to_numpy(zero_copy_only=False)
    text = pc.cast(value, pa.string())  # shortest round-trip text of the canonical value
    if not unit_mix:
        canon = {x.id: x.canonical_unit for x in kb.units.analytes}
        return text, pa.array([canon.get(x) for x in names], pa.string()).take(pa.array(a))
    # one text piece per (site, analyte), assembled with a single take; units from a small table
    markers = [names.index(x) for x in NO_VALUE_ANALYTES if x in names]  # rrt, death: no value, no unit
    rows_of: list[NDArray[Any]] = [np.flatnonzero(np.isin(a, markers))]
    pieces: list[pa.Array] = [pa.nulls(len(rows_of[0]), pa.string())]
    units: list[str | None] = [None]
    unit_idx = np.zeros(len(a), np.int64)
    for i, s in enumerate(cohort.params.sites):  # a few sites x analytes, each vectorised
        for name, su in s.units.items():
            if name not in names:
                continue
            m = (site == i) & (a == names.index(name))
            if not m.any():
                continue
            canonical = kb.analyte(name).canonical_unit
            to_site = factor(name, canonical, normalize_unit(su.unit))
            rows_of.append(np.flatnonzero(m))
            pieces.append(_fixed(np.rint(v[m] * to_site * 10.0 ** su.decimals), su.decimals))
            units.append(su.unit)
            unit_idx[m] = len(units) - 1
    rows = np.concatenate(rows_of)
    if rows.size != len(a):
        raise ValueError("to_raw: an analyte has no unit at its site")
    inverse = np.empty(rows.size, np.int64)
    inverse[rows] = np.arange(rows.size)
    text = pa.concat_arrays([p.cast(pa.string()) for p in pieces]).take(pa.array(inverse))
    return text, pa.array(units, pa.string()).take(pa.array(unit_idx))


def to_raw(cohort: Cohort, unit_mix: bool = True, *, dirty_fraction: float | None = None,
           seed: int = 0) -> dict[str, pa.Table]:
    """Raw tables (``schema.RAW``) of the cohort, with planted dirty events rows.

    ``unit_mix`` writes each value in its site's unit (else the canonical unit);
    ``dirty_fraction`` (default from synth_params.yaml) adds that many dirty rows per
    events row, each a corrupted copy of a clean row whose source is
    ``synth:dirty:<kind>:<i>`` (kinds: ``DIRTY_KINDS``).
    """
    frac = cohort.params.value("dirty_fraction") if dirty_fraction is None else dirty_fraction
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"dirty_fraction must be within 0-1, got {frac!r}")
    t = cohort.tables
    ev = t["events"]
    site = _site_of(cohort, ev.column("encounter_id"))
    analyte = ev.column("analyte").combine_chunks()
    text, unit = _values(cohort, analyte, ev.column("numeric_value").combine_chunks(), site, unit_mix)
    events = pa.table({
        "subject_id": ev.column("subject_id"), "encounter_id": ev.column("encounter_id"),
        "time": _text_time(ev.column("time")), "code": ev.column("code"), "analyte": analyte,
        "value": text, "unit": unit, "source": ev.column("source"),
    }, schema=RAW["events"])
    weights = _weights(cohort, unit_mix)
    clean = pa.concat_tables([events, weights])
    dirty = _dirty(clean, frac, seed)
    return {
        "events": pa.concat_tables([clean, dirty]),
        "medications": _medications(t["medications"]),
        "encounters": pa.table({
            "subject_id": t["encounters"].column("subject_id"), "encounter_id": t["encounters"].column("encounter_id"),
            "kind": t["encounters"].column("kind"), "start": _text_time(t["encounters"].column("start")),
            "end": _text_time(t["encounters"].column("end")), "parent_id": t["encounters"].column("parent_id"),
            "source": t["encounters"].column("source")}, schema=RAW["encounters"]),
        "subjects": t["subjects"].append_column("birth_date", pa.nulls(t["subjects"].num_rows, pa.string())),

        "contexts": pa.table({
            "subject_id": t["contexts"].column("subject_id"), "encounter_id": t["contexts"].column("encounter_id"),
            "time": _text_time(t["contexts"].column("time")), "context": t["contexts"].column("context"),
            "source": t["contexts"].column("source")}, schema=RAW["contexts"]),
    }


def _weights(cohort: Cohort, unit_mix: bool) -> pa.Table:
    """Weights as raw events of analyte 'weight' (the raw form has no weights table)."""
    w = cohort.tables["weights"]
    truth = cohort.truth
    pos = pc.index_in(w.column("subject_id"), truth.column("subject_id"))
    enc = pc.take(truth.column("encounter_id"), pos)
    site = _site_of(cohort, enc)
    n = w.num_rows
    code = cohort.params.sites[0].units["weight"].code
    analyte = pa.array(["weight"] * n, pa.string())
    text, unit = _values(cohort, analyte, w.column("weight_kg").combine_chunks(), site, unit_mix)
    return pa.table({"subject_id": w.column("subject_id"), "encounter_id": enc, "time": _text_time(w.column("time")),
                     "code": pa.array([code] * n, pa.string()), "analyte": analyte, "value": text, "unit": unit,
                     "source": w.column("source")}, schema=RAW["events"])


def _medications(m: pa.Table) -> pa.Table:
    return pa.table({
        "subject_id": m.column("subject_id"), "encounter_id": m.column("encounter_id"),
        "start": _text_time(m.column("start")), "end": _text_time(m.column("end")), "name": m.column("name"),
        "rxcui": m.column("rxcui"), "route": m.column("route"),
        "dose_value": pc.cast(m.column("dose_value"), pa.string()), "dose_unit": m.column("dose_unit"),
        "source": m.column("source"),
    }, schema=RAW["medications"])


def _dirty(clean: pa.Table, frac: float, seed: int) -> pa.Table:
    """Corrupted copies of random clean rows, one planted defect each, named in their source."""
    n = round(frac * clean.num_rows)
    if n == 0:
        return RAW["events"].empty_table()
    rng = np.random.default_rng(seed)
    analyte = clean.column("analyte")
    markers = pa.array(sorted(NO_VALUE_ANALYTES), pa.string())
    valued = np.flatnonzero(pc.invert(pc.is_in(analyte, markers)).to_numpy(zero_copy_only=False))
    urine = np.flatnonzero(pc.equal(analyte, "urine_output").to_numpy(zero_copy_only=False))
    kinds = list(DIRTY_KINDS)
    kind = rng.integers(0, len(kinds) if urine.size else len(kinds) - 1, n)
    pick = np.where(kind == kinds.index("negative_volume"),
                    urine[rng.integers(0, max(urine.size, 1), n)] if urine.size else 0,
                    valued[rng.integers(0, valued.size, n)])
    rows = clean.take(pa.array(pick))
    value, unit, time = rows.column("value"), rows.column("unit"), rows.column("time")
    k = pa.array(kind)

    def is_(name: str) -> pa.Array:
        return pc.equal(k, kinds.index(name))

    value = pc.if_else(is_("text_value"), pc.binary_join_element_wise("<", value, ""), value)
    neg = pc.if_else(pc.equal(value, "0"), "-1", pc.binary_join_element_wise("-", value, ""))
    value = pc.if_else(is_("negative_volume"), neg, value)
    unit = pc.if_else(is_("unknown_unit"), _BAD_UNIT, unit)
    time = pc.if_else(is_("bad_time"), _BAD_TIME, time)
    labels = pa.array(kinds).take(k)
    source = pc.binary_join_element_wise(
        "synth:dirty:", labels, ":", pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "")
    return rows.set_column(rows.schema.get_field_index("value"), "value", value) \
        .set_column(rows.schema.get_field_index("unit"), "unit", unit) \
        .set_column(rows.schema.get_field_index("time"), "time", time) \
        .set_column(rows.schema.get_field_index("source"), "source", source)
