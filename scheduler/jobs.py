"""The runtime's units of work, in one place for the CLI, the scheduler and the demo: an audit
run with everything that follows it (its page, the dashboard, its alerts and their delivery),
and saving a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Published:
    run: object  # audits.run.Run
    document: dict
    page: Path
    dashboard: Path
    alerts: list[str]
    delivery: dict | None


def audit_and_publish(store, cfg: dict, since, until, names: list[str] | None, out: str | Path,
                      reference: tuple | None = None, schedule: str | None = None) -> Published:
    """Run the audits, judge their alerts, render the run's page and the dashboard, deliver.
    `schedule` names the scheduled job running it (None: ad hoc): alerts are judged among the
    runs of the same schedule, so an ad-hoc run never mutes or resolves a scheduled condition."""
    from recaudit.audits import run as runs
    from recaudit.reports import alerts
    from recaudit.reports.html import render_dashboard, render_run

    result = runs.run(store, since, until, cfg, names, out, reference, schedule)
    document = result.to_dict()
    page = result.path / "index.html"
    # Alerts before pages, so that a page that fails to render loses no alert.
    created = alerts.evaluate(store, document, cfg["alerts"], alerts.link_for(cfg["alerts"], page, result.run_id))
    render_run(document, result.path)
    dashboard = render_dashboard(store, out, cfg)
    delivery = alerts.deliver(store, cfg["alerts"]) if cfg["alerts"]["webhooks"] else None
    return Published(result, document, page, dashboard, created, delivery)


def save_model(store, model, models_dir: str | Path) -> tuple[str, Path]:
    """Save a trained model as an artifact under `models_dir` and record it; returns (id, path).
    The directory appears whole (written aside, then renamed) before the database names it."""
    import shutil
    import uuid

    meta = model.metadata
    stamp = meta["created_at"].replace("-", "").replace(":", "").replace(".", "")  # sortable, file-safe
    model_id = f"{stamp}-{meta['algo']}-{meta['train']['sha256'][:8]}-{uuid.uuid4().hex[:4]}"
    root = Path(models_dir).resolve()
    staging = model.save(root / f".{model_id}.partial")
    path = staging.rename(root / model_id)
    try:
        store.record_model(model_id, path, meta)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return model_id, path
