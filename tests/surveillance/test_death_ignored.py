"""Death rows (MEDS_DEATH) reach the study, never the surveillance stages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mgaki.events import EventStore
from mgaki.surveillance import run
from mgaki.synth import generate


def _surveil(tables: dict[str, pa.Table], root: Path) -> dict[str, pa.Table]:
    store = EventStore(root)
    store.append(tables)
    return run(store).tables


def test_surveillance_outputs_are_the_same_with_and_without_deaths(tmp_path: Path) -> None:
    c = generate(600, seed=4)
    ev = c.tables["events"]
    is_death = pc.equal(ev["analyte"], "death")
    assert pc.sum(is_death).as_py() > 5
    alive = dict(c.tables) | {"events": ev.filter(pc.invert(is_death))}
    with_deaths = _surveil(dict(c.tables), tmp_path / "a")
    without = _surveil(alive, tmp_path / "b")
    assert set(with_deaths) == set(without)
    for name, t in with_deaths.items():
        keys = [c for c in t.column_names if pa.types.is_string(t.schema.field(c).type)
                or pa.types.is_timestamp(t.schema.field(c).type) or pa.types.is_integer(t.schema.field(c).type)]
        a, b = (x.to_pandas().sort_values(keys).reset_index(drop=True) for x in (t, without[name]))
        assert len(a) == len(b), name
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, obj=name)
