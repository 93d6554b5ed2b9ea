"""`mgaki ingest`, `mgaki surveil`, `mgaki demo` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki.adapters import registry
from mgaki.cli import app
from mgaki.cli import cohort as cli_cohort
from mgaki.cli.cohort import truth_agreement
from mgaki.errors import MgakiError
from mgaki.events import EventStore, normalize
from mgaki.surveillance import surveil
from mgaki.synth import generate, to_raw

MIMIC = Path(__file__).parents[1] / "data" / "mimic-iv-demo-subset"
runner = CliRunner()


def _value(output: str, label: str) -> str:
    m = re.search(rf"{re.escape(label)}\s*│\s*(\S+)", output)
    assert m, f"{label!r} not in output:\n{output}"
    return m.group(1)


def test_ingest_and_surveil_the_mimic_subset_twice(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)])
    assert first.exit_code == 0, first.output
    assert "quarantined: 23 rows" in first.output and "ends before it starts" in first.output
    again = runner.invoke(app, ["ingest", str(MIMIC), "--store", str(store)])
    assert again.exit_code == 0 and "quarantined: 0 rows" in again.output
    assert "subjects with new data: 0" in again.output

    out = tmp_path / "out"
    s1 = runner.invoke(app, ["surveil", "--store", str(store), "--out", str(out), "--format", "json"])
    assert s1.exit_code == 0, s1.output
    emitted = int(_value(s1.output, "alerts emitted now"))
    alerts = json.loads((out / "alerts.json").read_text())
    assert emitted == len(alerts) > 0
    episodes = json.loads((out / "aki_episodes.json").read_text())
    assert int(_value(s1.output, "AKI episodes")) == len(episodes) > 0
    s2 = runner.invoke(app, ["surveil", "--store", str(store)])
    assert s2.exit_code == 0 and _value(s2.output, "alerts emitted now") == "0"
    assert _value(s2.output, "subjects recomputed") == "0"


def test_bad_cohort_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ingest", str(MIMIC), "--format", "hl7", "--store", str(tmp_path)])
    assert r.exit_code == 2 and "unknown format 'hl7'" in " ".join(r.output.split())
    r = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--store", str(tmp_path)])
    assert r.exit_code == 2 and "no such file" in " ".join(r.output.split())
    r = runner.invoke(app, ["surveil", "--store", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no event store" in " ".join(r.output.split())
    r = runner.invoke(app, ["surveil", "--store", str(tmp_path), "--as-of", "tomorrow"])
    assert r.exit_code == 2


def test_surveillance_finds_exactly_the_planted_aki(tmp_path: Path) -> None:
    """Synthetic cohort in raw form (mixed units, dirty rows) -> CSV layout -> ingest -> SQL == planted truth."""
    cohort = generate(400, seed=21)
    registry.write("csv", cohort.tables, tmp_path / "src")
    store = EventStore(tmp_path / "store")
    store.append(normalize(registry.read("csv", tmp_path / "src")))
    raw_store = EventStore(tmp_path / "raw")
    raw_store.append(normalize(to_raw(cohort)))
    for st in (store, raw_store):
        agree = truth_agreement(cohort.truth, surveil(st).tables)
        aki = agree["AKI (any stage)"]
        assert aki["tp"] > 40 and aki["fn"] == 0 and aki["fp"] == 0
        assert agree["AKI peak stage equal"]["fn"] == 0
        hypo = agree["hypomagnesemia"]
        assert hypo["tp"] > 20 and hypo["fn"] == 0 and hypo["fp"] == 0
        assert agree["Mg monitoring gap alert"]["fn"] == 0


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "-n", "150", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "planted truth vs what surveillance found" in r.output
    assert (out / "results" / "aki_episodes.csv").exists()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "cohort-mg-aki.png" in pngs and any(p.startswith("timeline-") for p in pngs)
    r2 = runner.invoke(app, ["demo", "-n", "60", "--format", "omop", "--out", str(out), "--no-plots"])
    assert r2.exit_code == 0, r2.output
    assert not (out / "plots").exists()  # the folder is rebuilt each run


def test_ingest_exit_status_separates_bad_input_from_other_failures(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input exits 2, any other mgaki failure 3 (one mapping for every command: cli_common)."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = runner.invoke(app, ["ingest", str(bad), "--format", "fhir", "--store", str(tmp_path / "s")])
    assert r.exit_code == 2 and "invalid input" in r.output

    def broken(*_a: object) -> None:
        raise MgakiError("event store is damaged")
    monkeypatch.setattr(cli_cohort, "ingest_path", broken)
    r = runner.invoke(app, ["ingest", str(MIMIC), "--store", str(tmp_path / "s")])
    assert r.exit_code == 3 and "event store is damaged" in r.output


def test_a_run_out_of_memory_names_the_stage_and_how_to_give_more(tmp_path: Path) -> None:
    """DuckDB out of memory inside a stage (1 M ICU patients under the default 3 GB cap did that: an
    OutOfMemoryException with no stage in it) is an error naming the stage, the limit in force and the settings
    that raise it; the CLI exits 3 with it, nothing half-written is taken for results."""
    from tests.surveillance.cohort import random_cohort

    from mgaki.errors import ResourceError
    from mgaki.surveillance import run

    store = EventStore(tmp_path / "s")
    store.append(random_cohort(60, seed=3))
    with pytest.raises(ResourceError, match=r"surveillance stage \w+ needs more memory than DuckDB's limit "
                                            r"\(1\.9 MiB\).*--memory 8GB.*MGAKI_DUCKDB_MEMORY"):
        run(store, duckdb_settings={"memory_limit": "2MB"})
    r = runner.invoke(app, ["surveil", "--store", str(store.root), "--memory", "2MB"])
    assert r.exit_code == 3, r.output
    said = " ".join(r.output.split())
    assert "error: surveillance step reading or writing needs more memory" in said and "--memory 8GB" in said
    assert surveil(store).subjects_recomputed == -1  # the failed run left nothing a later run takes for results


def test_ingest_help_states_the_chunk_default_the_stream_uses() -> None:
    from mgaki.events.stream import DEFAULT_CHUNK_ROWS

    shown = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.exit_code == 0, shown.output
    assert f"default: {DEFAULT_CHUNK_ROWS:,}" in " ".join(shown.output.replace("│", " ").split())


def test_surveil_says_how_many_alerts_came_from_timers_fallen_due(tmp_path: Path) -> None:
    """A monitoring gap falls due while its patient's data is unchanged (another patient's result moves the
    clock): `mgaki surveil` counts that alert among those emitted, as a timer's, with one patient recomputed."""
    import pyarrow.compute as pc
    from tests.surveillance.test_increment_differential import _timer_store

    store, tables, cut = _timer_store(tmp_path)
    ev = tables["events"]
    later = ev.filter(pc.greater(ev["time"], cut))
    store.append({"events": later.slice(later.num_rows - 1, 1)})
    r = runner.invoke(app, ["surveil", "--store", str(store.root)])
    assert r.exit_code == 0, r.output
    assert _value(r.output, "subjects recomputed") == "1"
    timers = int(_value(r.output, "of which timers fallen due (patients not recomputed)"))
    assert 1 <= timers <= int(_value(r.output, "alerts emitted now"))
