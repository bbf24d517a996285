"""The long-running service: APScheduler jobs persisted in the audited database, run by one
scheduler per database at a time.

Each job of `schedule.jobs` in recaudit.toml runs on its own interval or cron. Jobs live in an
SQLAlchemyJobStore on the same database, so a restart picks up where the service stopped:
with `coalesce`, `misfire_grace_time` and `max_instances=1`, a missed schedule runs once, not
once per missed time, and a slow run never overlaps the next. Every run of a job is recorded
in `job_runs` with its outcome; a job that raises is recorded as failed and the service goes
on. A job new to the store is due at once.

One scheduler per database runs the jobs: the holder of the lease in `scheduler_lease`. Every
process, the service and `--once` alike, takes it before it runs anything and renews it every
third of `schedule.lease_seconds`; the others stand by and try as often, so when the holder
dies one of them takes over within 4/3 of the lease. Whoever takes the lease marks the runs
that other processes left `running` as `interrupted` and makes their jobs due again: APScheduler
moves a job to its next time before running it, so a slot whose run died would otherwise be lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid

import pandas as pd
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from recaudit.audits.config import JOBS
from recaudit.audits.schema import SCHEDULER_JOBS
from recaudit.clock import utc_now

log = logging.getLogger("recaudit.schedule")

LEASE = "schedule"


def unreachable(exc: SQLAlchemyError) -> bool:
    """Whether a database error means the database did not answer (the outcome is kept and the
    service waits for it) rather than refused a statement (a bug, which keeps its traceback)."""
    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


def describe(exc: BaseException) -> str:
    """An error in one line; a database error by its driver's message, without the SQL."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


class _Runs:
    """What this process's jobs are doing: the runs it is running now (its own rows are never
    marked interrupted when it takes the lease again), and the outcomes it could not record while
    the database was unreachable, kept to be recorded once it answers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: list[dict] = []
        self._unrecorded: list[dict] = []

    def begin(self, job: str) -> dict:
        run = {"job": job, "id": None, "started_at": utc_now().tz_localize("UTC")}
        with self._lock:
            self._running.append(run)
        return run

    def end(self, run: dict) -> None:
        with self._lock:
            self._running.remove(run)

    def keep(self, run: dict, status: str, detail: str) -> None:
        with self._lock:
            self._unrecorded.append({**run, "status": status, "detail": detail,
                                     "finished_at": utc_now().tz_localize("UTC")})

    def running(self) -> list[str]:
        with self._lock:
            return [run["job"] for run in self._running]

    def mine(self) -> set[int]:
        with self._lock:
            return {run["id"] for run in self._running + self._unrecorded if run["id"] is not None}

    def flush(self, store) -> None:
        """Record the outcomes kept; raises SQLAlchemyError while the database is unreachable."""
        with self._lock:
            kept = list(self._unrecorded)
        for run in kept:
            try:
                if run["id"] is None:  # its start could not be recorded either
                    run["id"] = store.start_job(run["job"], run["started_at"])
                store.finish_job(run["id"], run["status"], run["detail"], run["finished_at"])
            except SQLAlchemyError as exc:
                if unreachable(exc):
                    raise
                # Refused, and it would be refused at every try: said once, with its traceback.
                log.exception("job %s: outcome %s cannot be recorded; dropped", run["job"], run["status"])
            else:
                log.info("job %s: outcome %s recorded (run %d)", run["job"], run["status"], run["id"])
            with self._lock:
                self._unrecorded.remove(run)


RUNS = _Runs()


def run_job(name: str, db: str, config_path: str | None = None) -> str:
    """Run one job and record it; the function APScheduler persists, by import path, for every
    job. Returns the run's status (ok or failed); never raises for a job's own failure, nor when
    the database is unreachable: then the outcome is kept and recorded once it is back."""
    from recaudit.audits import config
    from recaudit.audits.store import Store

    run, store = RUNS.begin(name), None
    status, detail = "failed", None
    try:
        try:  # a settings file broken meanwhile fails the job, recorded as any failure is
            settings, broken = config.load(config_path), None
        except Exception as exc:
            settings, broken = None, exc
        try:  # where the events are cannot be opened (a lake refused or unreadable): recorded too
            store = Store(db, settings=(settings or config.DEFAULTS)["store"])
        except (ValueError, OSError) as exc:
            store, broken = Store(db, events=False), broken or exc
        run["id"] = store.start_job(name, run["started_at"])
        try:
            if broken is not None:
                raise broken
            detail, status = json.dumps(WORK[name](store, settings), default=str), "ok"
        except Exception as exc:  # recorded, and the service goes on
            detail, status = traceback.format_exc(), "failed"
            error = describe(exc)
        store.finish_job(run["id"], status, detail)
        if status == "failed":  # one line: the traceback is in job_runs
            log.error("job %s failed (run %d): %s", name, run["id"], error)
    except SQLAlchemyError as exc:
        if not unreachable(exc):
            raise  # a bug, not an outage: APScheduler logs it with its traceback
        detail = detail or f"database unreachable: {describe(exc)}"
        RUNS.keep(run, status, detail)
        log.error("job %s %s, not recorded yet: database unreachable (%s)", name, status, describe(exc))
    finally:
        RUNS.end(run)
        if store is not None:
            store.close()
    return status


# -- the work of each job ----------------------------------------------------------------------

def _ingest(store, cfg: dict) -> dict:
    from recaudit.audits.ingest import ingest
    from recaudit.recsys import detect

    paths = cfg["schedule"]["watch"]
    if not paths:
        return {"skipped": "nothing to watch: set schedule.watch"}
    # A watched directory that holds nothing yet is a quiet stream, not a fault: `recaudit
    # ingest DIR` refuses one (a mistyped path), the service waits for files to arrive.
    present = [p for p in paths if not (detect.kind(p) == "directory" and not detect.directory_files(p))]
    if not present:
        return {"skipped": f"nothing new: {', '.join(paths)} holds no users.csv, movies.csv, event log or "
                           "MovieLens files yet"}
    return ingest(store, present).totals()


def _audit(job: str, names: list[str]):
    def work(store, cfg: dict) -> dict:
        from recaudit.audits import freshness
        from recaudit.audits import run as runs
        from recaudit.scheduler.jobs import audit_and_publish

        latest = store.latest_event_time()
        if latest is None:
            return {"skipped": "no events stored yet"}
        # Complete hours only: events of the current hour are still arriving.
        since, until = runs.default_window(store, cfg["audit"]["window"], until=latest.floor("h"))
        # The same window again with nothing ingested since: the same answer, not news. Late
        # events into the window (ingested after the last run started) are news, and audited.
        [last] = store.runs(limit=1, schedule=job) or [None]
        if last is not None and pd.Timestamp(last["until"]) == until:
            arrived = freshness.arrivals(store)["last_ingest"].max()
            if pd.isna(arrived) or arrived < pd.Timestamp(last["started_at"]):
                return {"skipped": f"no new data: nothing ingested since run {last['id']} audited the window ending "
                                   f"{until.isoformat()}", "run_id": last["id"]}
        done = audit_and_publish(store, cfg, since, until, names, cfg["audit"]["out"], schedule=job)
        return {"run_id": done.run.run_id, "status": done.document["status"], "alerts": len(done.alerts)}
    return work


def _retrain(store, cfg: dict) -> dict:
    from recaudit.recsys import recommender as rc
    from recaudit.scheduler.jobs import save_model

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
    from recaudit.reports.html import publish

    return {"dashboard": str(publish(store, cfg["audit"]["out"], cfg))}


def _alerts(store, cfg: dict) -> dict:
    from recaudit.reports import alerts

    # Silence is judged by the clock, so by this job, which runs whatever else is due or failing.
    opened = alerts.check_freshness(store, cfg)
    return {**alerts.deliver(store, cfg["alerts"]), "freshness_alerts": len(opened)}


WORK = {"ingest": _ingest, "validation": _audit("validation", ["validation"]), "drift": _audit("drift", ["drift"]),
        "fairness": _audit("fairness", ["fairness"]),
        "feedback": _audit("feedback", ["feedback", "online", "exposure"]), "retrain": _retrain,
        "report": _report, "alerts": _alerts}


# -- the scheduler ---------------------------------------------------------------------------

def trigger(spec: dict):
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    when = spec["when"].strip()
    if len(when.split()) == 5:
        return CronTrigger.from_crontab(when, timezone="UTC")
    return IntervalTrigger(seconds=pd.Timedelta(when).total_seconds(), timezone="UTC")


class _Scheduler(BackgroundScheduler):
    """APScheduler's background scheduler with two guards on its loop. It looks for due jobs only
    while `may_run()`: this process holds the lease and the database answers. And a job store
    error costs a retry, not the loop's thread, which APScheduler 3 lets die when the database
    goes away between the queries that follow the due jobs'."""

    def __init__(self, may_run, **options):
        self._may_run = may_run
        super().__init__(**options)

    def _process_jobs(self):
        if self.state == STATE_RUNNING and not self._may_run():
            return self.jobstore_retry_interval
        try:
            return super()._process_jobs()
        except SQLAlchemyError:  # the service reports the database's state (Reachability)
            return self.jobstore_retry_interval


class _QuietJobStoreErrors(logging.Filter):
    """The service logs once that the database is unreachable and once that it is back;
    APScheduler would add a line of its own at every retry in between."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Error getting due jobs from job store")


logging.getLogger("apscheduler.scheduler").addFilter(_QuietJobStoreErrors())


def paused(db: str, cfg: dict, may_run=lambda: True):
    """A started, paused scheduler on the job store of `db`, its jobs as they are stored."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    settings = cfg["schedule"]
    scheduler = _Scheduler(
        may_run, jobstores={"default": SQLAlchemyJobStore(url=db, tablename=SCHEDULER_JOBS)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings["misfire_grace_seconds"]},
        jobstore_retry_interval=settings["lease_seconds"] / 3, timezone="UTC")
    scheduler.start(paused=True)
    return scheduler


def sync(scheduler, db: str, config_path: str | None, cfg: dict) -> None:
    """Make the stored jobs match the configuration. Only the lease holder does this: two
    processes adding the same new job at once would collide."""
    settings = cfg["schedule"]
    now = utc_now().tz_localize("UTC").to_pydatetime()
    kwargs = {"db": db, "config_path": config_path}
    for name in JOBS:
        spec, job = settings["jobs"][name], scheduler.get_job(name)
        if not spec["enabled"]:
            if job is not None:
                scheduler.remove_job(name)
            continue
        wanted = trigger(spec)
        if job is None:
            scheduler.add_job("recaudit.scheduler.service:run_job", wanted, id=name, name=name,
                              kwargs={"name": name, **kwargs}, next_run_time=now)
        elif str(job.trigger) != str(wanted) or job.kwargs != {"name": name, **kwargs}:
            job.modify(kwargs={"name": name, **kwargs})
            job.reschedule(wanted)


def build(db: str, config_path: str | None, cfg: dict):
    """A started, paused scheduler whose persisted jobs match the configuration."""
    scheduler = paused(db, cfg)
    sync(scheduler, db, config_path, cfg)
    return scheduler


def recover(scheduler, store, me: str) -> list[str]:
    """Mark the runs left running by other processes interrupted, and make their jobs due now;
    returns those jobs. Only the lease holder calls this, so the process of such a run is dead,
    or cut off from the database for longer than the lease. The jobs are made due before the runs
    are marked, so that a failure in between leaves them to be found again."""
    left = store.unfinished_jobs(exclude=RUNS.mine())
    now = utc_now().tz_localize("UTC").to_pydatetime()
    names = sorted({job for _, job in left})
    for name in names:
        job = scheduler.get_job(name)
        if job is not None and job.next_run_time is not None and job.next_run_time > now:  # not paused, not due yet
            job.modify(next_run_time=now)
    store.interrupt_jobs([i for i, _ in left],
                         f"interrupted: its process stopped before it finished; {me} runs it again")
    if left:
        log.warning("%d run(s) left running by a stopped process marked interrupted; running again: %s",
                    len(left), ", ".join(names))
    return names


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
    now = utc_now().tz_localize("UTC")
    return [job for job in scheduler.get_jobs() if job.next_run_time is not None and job.next_run_time <= now]


def run_due_once(scheduler, may_run=lambda: True) -> dict[str, str]:
    """Run every due job now, in order, and move each to its next time (`--once`), while
    `may_run()`."""
    outcomes = {}
    for job in sorted(due(scheduler), key=lambda j: JOBS.index(j.id)):
        if not may_run():
            break
        now = utc_now().tz_localize("UTC").to_pydatetime()
        following = job.trigger.get_next_fire_time(job.next_run_time, now)
        while following is not None and following <= now:
            following = job.trigger.get_next_fire_time(following, now)
        job.modify(next_run_time=following)  # before running: were the lease lost, another finds it not due
        outcomes[job.id] = run_job(**job.kwargs)
    return outcomes


# -- one scheduler per database ----------------------------------------------------------------

class Lease:
    """This process's claim on the database's lease."""

    def __init__(self, store, seconds: float):
        self.store, self.seconds = store, float(seconds)
        self.poll = self.seconds / 3  # between renewals, and between a standby's tries: two may fail in a lease
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.holder: str | None = None  # who held it at the last try
        self._valid_until = 0.0  # time.monotonic() before which this process surely holds it

    def renew(self) -> bool:
        """Take the lease or renew it; whether this process holds it. Raises SQLAlchemyError
        when the database does not answer."""
        asked = time.monotonic()
        self.holder = self.store.take_lease(LEASE, self.me, self.seconds)
        # Counted from before the request, less one poll: the database's expiry is later in any
        # case, so no standby takes over while this process believes it holds the lease.
        self._valid_until = asked + self.seconds - self.poll if self.holder == self.me else 0.0
        return self.holder == self.me

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def release(self) -> None:
        self._valid_until = 0.0
        self.store.release_lease(LEASE, self.me)


class LeaseHeld(Exception):
    """Another scheduler holds the lease: `--once` runs nothing."""


def once(store, config_path: str | None, cfg: dict) -> dict[str, str]:
    """`--once`: take the lease (LeaseHeld when another scheduler has it), run every due job,
    and let the lease go. It is renewed while the jobs run: a retrain outlasts it."""
    lease = Lease(store, cfg["schedule"]["lease_seconds"])
    if not lease.renew():
        raise LeaseHeld(lease.holder)
    scheduler = build(store.url, config_path, cfg)
    done = threading.Event()

    def keep():
        while not done.wait(lease.poll):
            try:
                lease.renew()
            except SQLAlchemyError:  # the lease runs out by itself, and no further job starts
                pass

    keeper = threading.Thread(target=keep, name="recaudit-lease", daemon=True)
    keeper.start()
    try:
        recover(scheduler, store, lease.me)
        return run_due_once(scheduler, lambda: lease.held)
    finally:
        close(scheduler)
        done.set()
        keeper.join()
        try:
            RUNS.flush(store)
            lease.release()
        except SQLAlchemyError as exc:
            log.error("database unreachable at exit (%s): outcomes not recorded are lost, the lease expires "
                      "by itself", describe(exc))


class Reachability:
    """Whether the database answered the last query; one log line when it stops answering and
    one when it is back, however many queries fail in between."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reason: str | None = None
        self._since = 0.0

    @property
    def up(self) -> bool:
        return self.reason is None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.reason is None:
                self._since = time.monotonic()
                log.error("database unreachable: %s; /healthz answers 503 and /metrics its last values until it "
                          "is back", describe(exc))
            self.reason = describe(exc)

    def answered(self) -> None:
        with self._lock:
            if self.reason is not None:
                log.warning("database reachable again after %.0f s", time.monotonic() - self._since)
            self.reason = None


class Service:
    """One `recaudit schedule` process: it runs the jobs while it holds the database's lease, and
    otherwise stands by; a thread renews the lease, or tries to take it, every `lease.poll`."""

    def __init__(self, store, config_path: str | None, cfg: dict):
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

        from recaudit.scheduler import web

        self.store, self.config_path, self.cfg = store, config_path, cfg
        self.lease = Lease(store, cfg["schedule"]["lease_seconds"])
        self.database = Reachability()
        self.metrics = web.Metrics(store)
        self.active = False
        self._stopping = False
        self._lock = threading.Lock()  # one change of role at a time
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="recaudit-lease", daemon=True)
        self.scheduler = paused(store.url, cfg, lambda: self.active and self.lease.held and self.database.up)
        # After each run, so that /metrics shows it without reading the database per scrape.
        self.scheduler.add_listener(lambda _event: self.refresh_metrics(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"

    def start(self) -> None:
        """Take the lease if it is free, or stand by; then keep trying in a thread."""
        self._tick()
        if not self.active and self.database.up:
            log.info("standby: %s holds the lease; trying every %.1f s", self.lease.holder, self.lease.poll)
        self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease.poll):
            try:
                self._tick()
            except Exception:  # this thread keeps the lease: it must outlive any one failure
                log.exception("lease keeper: unexpected error; trying again in %.1f s", self.lease.poll)

    def _tick(self) -> None:
        with self._lock:
            try:
                held = self.lease.renew()
                if held and not self.active and not self._stopping:
                    self._take_over()
                RUNS.flush(self.store)
            except SQLAlchemyError as exc:
                self.database.failed(exc)
                held = self.lease.held  # active still, until the lease may have run out
            else:
                self.database.answered()
            if self.active and not held:
                self.active = False
                if not self._stopping:
                    self.scheduler.pause()
                log.warning("standby: the lease %s", f"is held by {self.lease.holder}" if self.database.up
                            else "could not be renewed")
        self.refresh_metrics()

    def _take_over(self) -> None:
        sync(self.scheduler, self.store.url, self.config_path, self.cfg)
        recover(self.scheduler, self.store, self.lease.me)
        self.active = True
        self.scheduler.resume()
        log.info("active: %s holds the lease and runs the jobs", self.lease.me)

    def refresh_metrics(self) -> None:
        try:
            self.metrics.refresh(self.active)
        except SQLAlchemyError as exc:
            self.database.failed(exc)

    def health(self) -> tuple[int, dict]:
        """/healthz: its HTTP status and body. 503 while the database does not answer."""
        state = {"role": self.role, "instance": self.lease.me, "running": RUNS.running()}
        try:
            jobs = {j.id: j.next_run_time.isoformat() if j.next_run_time else None for j in self.scheduler.get_jobs()}
        except SQLAlchemyError as exc:
            self.database.failed(exc)
            return 503, {"status": "unavailable", "reason": f"database unreachable: {describe(exc)}", **state}
        self.database.answered()
        return 200, {"status": "ok", **state, "jobs": jobs}

    def stop(self) -> None:
        """Start no more jobs and let the running one finish, the lease still renewed meanwhile;
        then let the lease go, so that a standby takes over at its next try."""
        with self._lock:
            self._stopping = True
            self.scheduler.pause()
        close(self.scheduler, wait=True)
        self._stop.set()
        self._keeper.join()
        try:
            RUNS.flush(self.store)
            if self.lease.holder == self.lease.me:
                self.lease.release()
        except SQLAlchemyError as exc:
            log.error("database unreachable at exit (%s): outcomes not recorded are lost, the lease expires "
                      "by itself", describe(exc))
