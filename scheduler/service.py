"""The long-running service: APScheduler jobs persisted in the audited database.

Each job of `schedule.jobs` in recaudit.toml runs on its own interval or cron. Jobs live in an
SQLAlchemyJobStore on the same database, so a restart picks up where the service stopped:
with `coalesce`, `misfire_grace_time` and `max_instances=1`, a missed schedule runs once, not
once per missed time, and a slow run never overlaps the next. Every run of a job is recorded
in `job_runs` with its outcome; a job that raises is recorded as failed and the service goes
on. A job new to the store is due at once.
"""

from __future__ import annotations

import json
import logging
import traceback

import pandas as pd

log = logging.getLogger("recaudit.schedule")

JOBS = ("ingest", "validation", "drift", "fairness", "feedback", "retrain", "report", "alerts")
JOB_TABLE = "scheduler_jobs"


def run_job(name: str, db: str, config_path: str | None = None) -> str:
    """Run one job and record it; the function APScheduler persists, by import path, for every
    job. Returns the run's status (ok or failed); never raises for a job's own failure."""
    from audits import config
    from audits.store import Store

    store = Store(db)
    try:
        run_id = store.start_job(name)
        try:
            detail = json.dumps(WORK[name](store, config.load(config_path)), default=str)
            status = "ok"
        except Exception:  # recorded, and the service goes on
            detail, status = traceback.format_exc(), "failed"
            log.error("job %s failed:\n%s", name, detail)
        store.finish_job(run_id, status, detail)
        return status
    finally:
        store.close()


# -- the work of each job ----------------------------------------------------------------------

def _ingest(store, cfg: dict) -> dict:
    from audits.ingest import ingest

    paths = cfg["schedule"]["watch"]
    if not paths:
        return {"skipped": "nothing to watch: set schedule.watch"}
    return ingest(store, paths).totals()


def _audit(names: list[str]):
    def work(store, cfg: dict) -> dict:
        from audits import run as runs
        from scheduler.jobs import audit_and_publish

        latest = store.latest_event_time()
        if latest is None:
            return {"skipped": "no events stored yet"}
        # Complete hours only: events of the current hour are still arriving.
        since, until = runs.default_window(store, cfg["audit"]["window"], until=latest.floor("h"))
        done = audit_and_publish(store, cfg, since, until, names, cfg["audit"]["out"])
        return {"run_id": done.run.run_id, "status": done.document["status"], "alerts": len(done.alerts)}
    return work


def _retrain(store, cfg: dict) -> dict:
    from recsys import recommender as rc
    from scheduler.jobs import save_model

    settings = cfg["schedule"]["retrain"]
    ratings = store.read("ratings")
    if ratings.empty:
        return {"skipped": "no ratings yet"}
    data = rc.split(ratings)
    data.seen = store.watched_pairs(data.cutoff)
    model = rc.train(data, algo=settings["algo"], factors=settings["factors"], epochs=settings["epochs"],
                     seed=settings["seed"])
    model_id, path = save_model(store, model, cfg["schedule"]["models"])
    return {"model": model_id, "path": str(path), "metrics": model.metadata["metrics"]}


def _report(store, cfg: dict) -> dict:
    from reports.html import publish

    return {"dashboard": str(publish(store, cfg["audit"]["out"]))}


def _alerts(store, cfg: dict) -> dict:
    from reports import alerts

    return alerts.deliver(store, cfg["alerts"])


WORK = {"ingest": _ingest, "validation": _audit(["validation"]), "drift": _audit(["drift"]),
        "fairness": _audit(["fairness"]), "feedback": _audit(["feedback", "online"]), "retrain": _retrain,
        "report": _report, "alerts": _alerts}


# -- the scheduler ---------------------------------------------------------------------------

def trigger(spec: dict):
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    when = spec["when"].strip()
    if len(when.split()) == 5:
        return CronTrigger.from_crontab(when, timezone="UTC")
    return IntervalTrigger(seconds=pd.Timedelta(when).total_seconds(), timezone="UTC")


def build(db: str, config_path: str | None, cfg: dict):
    """A started, paused BackgroundScheduler whose persisted jobs match the configuration."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    settings = cfg["schedule"]
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=db, tablename=JOB_TABLE)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings["misfire_grace_seconds"]},
        timezone="UTC")
    scheduler.start(paused=True)
    now = pd.Timestamp.now("UTC").to_pydatetime()
    kwargs = {"db": db, "config_path": config_path}
    for name in JOBS:
        spec, job = settings["jobs"][name], scheduler.get_job(name)
        if not spec["enabled"]:
            if job is not None:
                scheduler.remove_job(name)
            continue
        wanted = trigger(spec)
        if job is None:
            scheduler.add_job("scheduler.service:run_job", wanted, id=name, name=name,
                              kwargs={"name": name, **kwargs}, next_run_time=now)
        elif str(job.trigger) != str(wanted) or job.kwargs != {"name": name, **kwargs}:
            job.modify(kwargs={"name": name, **kwargs})
            job.reschedule(wanted)
    return scheduler


def close(scheduler, wait: bool = False) -> None:
    """Stop the scheduler and keep its jobs as they are, after the running job finishes when
    `wait`. APScheduler 3, once shut down, processes due jobs one last time: it cannot run
    them, yet it moves them to their next time, and a daily audit would be skipped. So the job
    store is detached first; its jobs stay in the database for the next start."""
    scheduler.pause()
    store = scheduler._lookup_jobstore("default")
    scheduler.remove_jobstore("default", shutdown=False)
    scheduler.shutdown(wait=wait)
    store.shutdown()


def due(scheduler) -> list:
    now = pd.Timestamp.now("UTC")
    return [job for job in scheduler.get_jobs() if job.next_run_time is not None and job.next_run_time <= now]


def run_due_once(scheduler) -> dict[str, str]:
    """Run every due job now, in order, and move each to its next time (`--once`)."""
    outcomes = {}
    for job in sorted(due(scheduler), key=lambda j: JOBS.index(j.id)):
        now = pd.Timestamp.now("UTC").to_pydatetime()
        following = job.trigger.get_next_fire_time(job.next_run_time, now)
        while following is not None and following <= now:
            following = job.trigger.get_next_fire_time(following, now)
        job.modify(next_run_time=following)  # before running: an overlapping --once finds it not due
        outcomes[job.id] = run_job(**job.kwargs)
    return outcomes
