"""``mgaki evaluate``: do the alerts help? Burden, PPV and the live-vs-silent comparison (docs/evaluation.md).

From a running service's data (``--config``: its database and event store) or from a cohort's event store
after ``mgaki surveil`` (``--store``: a retrospective shadow run, the modes and allocation of ``--mode`` /
``--seed`` applied in time order as the service would have).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mgaki.cli.common import console, err

__all__ = ["evaluate", "register"]


def evaluate(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="The service's config (its database and "
                                                                       "event store)")] = None,
    store: Annotated[Path | None, typer.Option("--store", "-s", help="A cohort event store after `mgaki surveil` "
                                                                     "(retrospective shadow run)")] = None,
    mode: Annotated[str, typer.Option(help="With --store: every kind's mode (randomised | silent | live)")]
    = "randomised",
    seed: Annotated[int, typer.Option(help="With --store: the allocation seed")] = 20261206,
    unit: Annotated[str, typer.Option(help="With --store: allocate by patient | ward")] = "patient",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for evaluation.html, .json and charts")] = Path(
        "mgaki-evaluation"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout")] = False,
) -> None:
    """Alert burden, PPV, and the live against the silent arm (lab-to-action, outcomes), with a report."""
    from mgaki.events import EventStore
    from mgaki.knowledge import load
    from mgaki.research.alert_eval import retrospective_alerts, run
    from mgaki.research.alert_report import clean, render_html
    from mgaki.research.alert_trial import AlertPolicy, AllocationSettings

    feedback: list[dict[str, object]] | None
    if (config is None) == (store is None):
        err.print("give exactly one of --config (a service's data) and --store (a cohort event store)")
        raise typer.Exit(2)
    kb = load()
    if config is not None:
        from mgaki.service.config import load_config
        from mgaki.service.persistence.db import make_engine
        from mgaki.service.persistence.workflow import evaluation_alerts, feedback_counts

        cfg = load_config(config)
        engine = make_engine(cfg.db_url())
        try:
            alerts = evaluation_alerts(engine)
            feedback = feedback_counts(engine)
        finally:
            engine.dispose()
        ev_store = EventStore(cfg.data_dir / "events")
        unit_used: str | None = cfg.alerts.allocation.unit if cfg.alerts.randomised() else None
        source = f"Service data in {cfg.data_dir}"
    else:
        assert store is not None
        if mode not in ("randomised", "silent", "live") or unit not in ("patient", "ward"):
            err.print("--mode is randomised | silent | live and --unit patient | ward")
            raise typer.Exit(2)
        policy = AlertPolicy(default=mode, allocation=AllocationSettings(seed=seed, unit=unit))
        ev_store = EventStore(store)
        try:
            alerts = retrospective_alerts(ev_store, policy)
        except FileNotFoundError as exc:
            err.print(str(exc))
            raise typer.Exit(2) from None
        unit_used = unit if mode == "randomised" else None
        feedback = None
        source = (f"Retrospective shadow run on {store}: every alert kind {mode}"
                  + (f", allocated by {unit} with seed {seed}" if mode == "randomised" else "")
                  + "; no alert was shown, so no difference between the arms is expected")
    with err.status("following every alert in the data"):
        res, _ = run(ev_store, kb, alerts, unit_used, feedback)
    with err.status("rendering the report"):
        paths = render_html(res, out, source)
    if as_json:
        typer.echo(json.dumps(clean(res), default=str))
        return
    c = console()
    c.print(f"{res['alerts']} alerts ({res['alerts_shown']} live) over {res['patient_days']:.1f} patient-days, "
            f"{res['encounters']} encounters")
    for b in res["burden"]:
        c.print(f"  {b['label']}: {b['per_100_patient_days']:.1f} per 100 patient-days, "
                f"{b['per_encounter']:.2f} per encounter")
    for w in res["warnings"]:
        c.print(f"[yellow]{w}[/yellow]")
    c.print(f"report: {paths['html']}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
