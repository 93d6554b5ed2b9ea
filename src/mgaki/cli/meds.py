"""`mgaki export meds` (the store as a MEDS 0.4 dataset) and `mgaki labels` (MEDS task labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgaki.cli.common import console, err, require_extra, require_store, run_or_exit

__all__ = ["export_meds_cmd", "labels_cmd", "register"]

export_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Export the event store in another standard layout.")


@export_app.command("meds")
def export_meds_cmd(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (mgaki ingest)")] = Path(
        "mgaki-store"),
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the MEDS dataset")] = Path("mgaki-meds"),
    seed: Annotated[int, typer.Option(help="Seed of the train/tuning/held_out split (by subject)")] = 0,
    tuning: Annotated[float, typer.Option(help="Share of subjects in split 'tuning'")] = 0.15,
    held_out: Annotated[float, typer.Option(help="Share of subjects in split 'held_out'")] = 0.15,
    derived: Annotated[bool, typer.Option(help="Add the KDIGO stages surveillance derives "
                                               "(MGAKI_KDIGO//... codes; the ACES AKI tasks need them)")] = True,
) -> None:
    """The store as a MEDS 0.4 dataset (data/, metadata/codes.parquet, subject_splits, dataset.json), validated."""
    from mgaki.events import EventStore
    from mgaki.research.meds_export import export_meds

    require_extra("meds", "export meds")
    require_store(store)
    with err.status(f"exporting {store} as MEDS to {out}"):
        s = run_or_exit(lambda: export_meds(EventStore(store), out, (1.0 - tuning - held_out, tuning, held_out),
                                            seed, derived))
    console().print(f"MEDS 0.4 dataset: {s.root} ({s.rows} rows, {s.codes} codes, {s.derived_rows} derived rows; "
                    f"subjects " + ", ".join(f"{k} {v}" for k, v in s.subjects.items()) + "); validated with meds")


def labels_cmd(
    store: Annotated[Path, typer.Option("--store", "-s", help="Event store folder (mgaki ingest)")] = Path(
        "mgaki-store"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <task>.parquet label files")] = Path(
        "mgaki-labels"),
    meds: Annotated[Path | None, typer.Option(help="The MEDS export of the same store, whose subject ids to use "
                                                   "(needed when mgaki's ids are not integers)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Study config (landmark_step_hours, "
                                                                      "prediction_horizon_hours)")] = None,
) -> None:
    """Task labels in the MEDS label schema: AKI (full KDIGO), AKI (creatinine only), hypomagnesaemia, within 48 h."""
    from mgaki.events import EventStore
    from mgaki.research import load_config
    from mgaki.research.meds_export import TASKS, task_labels, write_labels

    require_extra("meds", "labels")
    require_store(store)
    cfg = run_or_exit(lambda: load_config(config))
    with err.status("computing labels"):
        labels = run_or_exit(lambda: task_labels(EventStore(store), cfg))
        paths = run_or_exit(lambda: write_labels(labels, out, meds))
    c = console()
    for task, tab in labels.items():
        pos = sum(tab.column("boolean_value").to_pylist())
        c.print(f"{task}: {tab.num_rows} prediction times, {pos} positive ({TASKS[task].description}) -> "
                f"{paths[task]}")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.command("labels")(labels_cmd)
