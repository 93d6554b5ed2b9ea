"""The CLI as a new user meets it (issue 19, point 6): every failure is a sentence, never a traceback.

Each test failed on the layout before issue 19: a missing extra was a ModuleNotFoundError, a folder given
to `assess` an IsADirectoryError, an unknown knowledge file an empty table with exit 0, quarantine reasons
printed '#' for every number, one broken NDJSON line aborted a folder, a zone-less FHIR time was read as
UTC by `ingest` but refused by `assess`, and piped output was cut at 80 columns.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgaki._version import __version__
from mgaki.cli import app
from mgaki.cli.common import missing_extra
from mgaki.events import EventStore
from mgaki.synth.fhir import BundleBuilder

runner = CliRunner()


def _without(monkeypatch: pytest.MonkeyPatch, *dists: str) -> None:
    """Pretend the distributions ``dists`` are not installed."""
    real = metadata.version

    def version(name: str) -> str:
        if name.lower() in dists:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)


@pytest.mark.parametrize(("argv", "extra", "dist"), [
    (["study", "--store", "nowhere"], "research", "statsmodels"),
    (["serve"], "service", "fastapi"),
    (["surveil", "--store", "nowhere", "--engine", "spark"], "spark", "pyspark"),
])
def test_a_command_without_its_extra_says_which_to_install(monkeypatch, tmp_path, argv, extra, dist) -> None:
    _without(monkeypatch, dist)
    if argv[0] == "surveil":  # the spark check comes after the store check
        (tmp_path / "s" / "events").mkdir(parents=True)  # what the CLI takes for a store
        argv = ["surveil", "--store", str(tmp_path / "s"), "--engine", "spark"]
    r = runner.invoke(app, argv)
    assert r.exit_code == 2
    assert f"pip install 'mgaki[{extra}]'" in r.output and dist in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)


def test_missing_extra_reads_the_extras_pyproject_declares(monkeypatch) -> None:
    assert missing_extra("research") == [] and missing_extra("service") == []
    _without(monkeypatch, "statsmodels", "tableone", "fastapi")
    assert missing_extra("research") == ["statsmodels", "tableone"]
    assert missing_extra("service") == ["fastapi"]


def test_assess_on_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["assess", str(tmp_path)])
    assert r.exit_code == 2
    assert "is a folder, not a file" in r.output and "FHIR R4 Bundle" in r.output


def test_unknown_knowledge_file_is_an_error_listing_the_files() -> None:
    r = runner.invoke(app, ["knowledge", "nosuch"])
    assert r.exit_code == 2
    assert "no knowledge file 'nosuch'" in r.output and "evidence.yaml" in r.output and "pk.yaml" in r.output


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith(f"mgaki {__version__} (knowledge ")


def test_piped_output_is_not_cut_at_80_columns() -> None:
    """CliRunner's output is not a terminal, like `| less` or `> file`."""
    r = runner.invoke(app, ["knowledge", "evidence"])
    assert r.exit_code == 0
    assert max(len(line) for line in r.output.splitlines()) > 120
    assert "10.3109/0886022X.2015.1057471" in r.output  # a DOI whole, on one line


def _ndjson(path: Path, resources: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))


def test_one_broken_ndjson_line_does_not_stop_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    a = BundleBuilder("male", pid="a", id_prefix="a-").obs("magnesium", 1.4, "mg/dL", 0.0).resources
    b = BundleBuilder("female", pid="b", id_prefix="b-").obs("magnesium", 2.9, "mg/dL", 0.0).resources
    _ndjson(src / "good.ndjson", b)
    _ndjson(src / "bad.ndjson", a)
    with (src / "bad.ndjson").open("a") as f:
        f.write('{"resourceType": "Observation", broken\n')
    r = runner.invoke(app, ["ingest", str(src), "--store", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    assert "bad.ndjson line 3: not valid JSON" in r.output
    mg = EventStore(tmp_path / "store").read("events")
    assert sorted(mg.column("subject_id").to_pylist()) == ["a", "b"]  # both files' good lines read


def test_quarantine_reasons_keep_their_numbers_and_can_be_listed(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    _ndjson(src / "o.ndjson", BundleBuilder(pid="p", id_prefix="p-")
            .obs("magnesium", 45.0, "mg/dL", 0.0).obs("magnesium", 60.0, "mg/dL", 1.0)
            .obs("potassium", 4.0, "U/L", 2.0).resources)
    r = runner.invoke(app, ["ingest", str(src), "--store", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    assert "#" not in r.output
    assert "magnesium 45.0 mg/dL" in r.output and "outside the possible range" in r.output  # one example per kind
    assert "[pH]" in r.output  # a unit in brackets is text, not rich markup
    q = runner.invoke(app, ["quarantine", "--store", str(tmp_path / "store"), "--format", "json"])
    out = json.loads(q.stdout)
    assert out["total"] == 3
    assert {row["reason"].split(" (")[0] for row in out["rows"]} >= {"unknown unit 'U/L'"}
    only = runner.invoke(app, ["quarantine", "--store", str(tmp_path / "store"), "--reason", "UNIT", "-f", "json"])
    assert json.loads(only.stdout)["total"] == 1
    assert json.loads(only.stdout)["rows"][0]["raw"]  # the raw row as read
    text = runner.invoke(app, ["quarantine", "--store", str(tmp_path / "store")])
    assert text.exit_code == 0 and "3 of 3 shown" in text.output
    assert runner.invoke(app, ["quarantine", "--store", str(tmp_path / "none")]).exit_code == 2


def test_a_time_without_its_zone_is_refused_by_assess_and_by_ingest_alike(tmp_path: Path) -> None:
    b = BundleBuilder(pid="z", id_prefix="z-").obs("magnesium", 1.2, "mg/dL", time="2024-03-01T08:00:00")
    bundle = tmp_path / "z.json"
    bundle.write_text(json.dumps(b.build()))
    r = runner.invoke(app, ["assess", str(bundle)])
    assert r.exit_code == 2 and "timezone" in r.output
    src = tmp_path / "export"
    src.mkdir()
    _ndjson(src / "z.ndjson", b.resources)
    r = runner.invoke(app, ["ingest", str(src), "--store", str(tmp_path / "store")])
    assert r.exit_code == 0, r.output
    assert "time '2024-03-01T08:00:00' has no timezone" in r.output
    assert EventStore(tmp_path / "store").read("events").num_rows == 0  # not read as UTC


def test_an_empty_folder_says_so(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "store")])
    assert r.exit_code == 2 and "the folder is empty" in r.output and "[]" not in r.output
