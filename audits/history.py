"""What the store remembers besides events: audit runs with their metrics and findings, the
scheduler's job runs and its lease, and the trained models.

All of it is small, row-at-a-time history, read and written with SQLAlchemy Core.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import cached_property

import numpy as np
import pandas as pd
from sqlalchemy import exists, func, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateTable

from recaudit.audits.database import connect
from recaudit.audits.schema import audit_results, audit_runs, findings, job_runs, metrics, models, scheduler_lease
from recaudit.clock import utc_now

ANY = "*"  # a `schedule` argument meaning runs of every job and ad-hoc ones alike


def _of_schedule(query, schedule: str | None):
    """`query` narrowed to the runs of the job `schedule` (None: the ad-hoc runs; ANY: all)."""
    if schedule == ANY:
        return query
    return query.where(audit_runs.c.schedule.is_(None) if schedule is None else audit_runs.c.schedule == schedule)


class HistoryStore:
    """Runs, metrics, findings, jobs, the lease and models of a `Store` (which gives `engine`,
    `dialect` and `transaction`)."""

    # -- audit runs, their metrics and findings --------------------------------------------

    def start_run(self, since, until, audits: list[str], schedule: str | None = None) -> int:
        """Record that a run of `audits` over [since, until) started, by the scheduled job
        `schedule` (None: ad hoc); returns its id."""
        with self.transaction() as conn:
            return conn.execute(audit_runs.insert().values(
                started_at=utc_now(), since=pd.Timestamp(since), until=pd.Timestamp(until),
                audits=",".join(audits), status="running", schedule=schedule,
            ).returning(audit_runs.c.id)).scalar_one()

    def finish_run(self, run_id: int, document: dict, path) -> None:
        """Record each audit's status, metrics and findings, and close the run, in one
        transaction; `document` is the run's results.json."""
        with self.transaction() as conn:
            for name, a in document["audits"].items():
                conn.execute(audit_results.insert().values(run_id=run_id, audit=name, status=a["status"],
                                                           error=a["error"], seconds=a["seconds"]))
                if a["metrics"]:
                    conn.execute(metrics.insert(), [{"run_id": run_id, "key": k, "value": v}
                                                    for k, v in a["metrics"].items()])
                if a["findings"]:
                    conn.execute(findings.insert(), [
                        {"run_id": run_id, **{k: f[k] for k in ("audit", "key", "kind", "severity", "message",
                                                                 "value", "threshold", "fingerprint")}}
                        for f in a["findings"]])
            conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                finished_at=utc_now(), status=document["status"], path=str(path),
                results=json.dumps(document, default=str)))

    def abandon_run(self, run_id: int, reason: str) -> None:
        """Close a run that could not be finished (its results could not be written or
        recorded): errored, with the reason, never left running."""
        with self.transaction() as conn:
            conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                finished_at=utc_now(), status="errored", error=reason))

    def runs(self, limit: int | None = None, schedule: str | None = ANY) -> list[dict]:
        """Finished runs, newest first (the newest `limit`; those of the job `schedule`, None for
        the ad-hoc ones, when given): id, since, until, status, started_at, schedule, path and its
        results.json document."""
        query = (_of_schedule(select(audit_runs).where(audit_runs.c.finished_at.is_not(None)), schedule)
                 .order_by(audit_runs.c.until.desc(), audit_runs.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**{k: row[k] for k in ("id", "since", "until", "status", "started_at", "schedule", "path", "error")},
                 "document": json.loads(row["results"]) if row["results"] else None} for row in rows]

    def count_runs(self) -> int:
        """How many runs finished."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit_runs)
                                .where(audit_runs.c.finished_at.is_not(None))).scalar_one()

    def newest_window_end(self, schedule: str | None = ANY) -> pd.Timestamp | None:
        """The latest window end of the runs that finished with results (of the job `schedule`,
        None for the ad-hoc ones, when given). A run that could not be finished judged nothing,
        and must not hide the windows of later runs."""
        with self.engine.connect() as conn:
            value = conn.execute(_of_schedule(select(func.max(audit_runs.c.until)).where(
                audit_runs.c.finished_at.is_not(None), audit_runs.c.results.is_not(None)), schedule)).scalar()
        return None if value is None else pd.Timestamp(value)

    def latest_metrics(self) -> pd.DataFrame:
        """(key, value, run_id, until): every metric key's value in the latest finished run that
        recorded it."""
        query = (select(metrics.c.key, metrics.c.value, audit_runs.c.id, audit_runs.c.until)
                 .join(audit_runs, metrics.c.run_id == audit_runs.c.id).where(audit_runs.c.finished_at.is_not(None))
                 .order_by(audit_runs.c.until, audit_runs.c.id))
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(query).all(), columns=["key", "value", "run_id", "until"])
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    def metric_series(self, keys: list[str], schedule: str | None = ANY, newest: int | None = None) -> pd.DataFrame:
        """(run_id, until, key, value) of the given keys over every finished run (of the job
        `schedule`, None for the ad-hoc ones, when given; the `newest` runs that recorded any of
        the keys, when given, so that a chart reads the same at 10,000 runs as at 10), oldest first."""
        runs = _of_schedule(select(audit_runs.c.id).where(audit_runs.c.finished_at.is_not(None)), schedule)
        if newest is not None:
            recorded = exists().where(metrics.c.run_id == audit_runs.c.id, metrics.c.key.in_(keys))
            runs = runs.where(recorded).order_by(audit_runs.c.until.desc(), audit_runs.c.id.desc()).limit(newest)
        query = (select(audit_runs.c.id, audit_runs.c.until, metrics.c.key, metrics.c.value)
                 .join(metrics, metrics.c.run_id == audit_runs.c.id)
                 .where(metrics.c.key.in_(keys), audit_runs.c.id.in_(runs.scalar_subquery()))
                 .order_by(audit_runs.c.until, audit_runs.c.id))
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).all(), columns=["run_id", "until", "key", "value"])

    # -- aggregates for the audits: distributions at millions of events, computed in the database


    def metric_history(self, keys: list[str], until, limit: int, schedule: str | None = ANY) -> pd.DataFrame:
        """(run_id, until, key, value) of the latest `limit` finished runs (of `schedule`, when
        given) whose window ends before `until` and that recorded any of `keys`, one run per
        window end (the latest)."""
        df = self.metric_series(keys, schedule)
        df = df[df["until"] < pd.Timestamp(until)]
        if df.empty:
            return df
        df = df[df["run_id"] == df.groupby("until")["run_id"].transform("max")]
        ends = np.sort(df["until"].unique())[-limit:] if limit > 0 else []
        return df[df["until"].isin(ends)].reset_index(drop=True)


    # -- scheduled jobs and the scheduler's lease -----------------------------------------


    def start_job(self, job: str, started_at=None) -> int:
        """Record that `job` started, now or at `started_at`; returns the run's id."""
        started_at = utc_now() if started_at is None else started_at
        with self.transaction() as conn:
            return conn.execute(job_runs.insert().values(job=job, started_at=started_at, status="running")
                                .returning(job_runs.c.id)).scalar_one()

    def finish_job(self, run_id: int, status: str, detail: str, finished_at=None) -> None:
        """Record a run's outcome, which happened now or at `finished_at` (an outcome recorded
        late, once the database answers again, keeps the time it happened)."""
        finished_at = utc_now() if finished_at is None else finished_at
        with self.transaction() as conn:
            conn.execute(job_runs.update().where(job_runs.c.id == run_id).values(
                finished_at=finished_at, status=status, detail=detail))

    def unfinished_jobs(self, exclude=()) -> list[tuple[int, str]]:
        """(id, job) of the runs still marked running, but those whose id is in `exclude`."""
        query = select(job_runs.c.id, job_runs.c.job).where(job_runs.c.status == "running").order_by(job_runs.c.id)
        exclude = set(exclude)
        with self.engine.connect() as conn:
            return [(i, job) for i, job in conn.execute(query).all() if i not in exclude]

    def interrupt_jobs(self, run_ids: list[int], detail: str) -> None:
        """Mark these runs interrupted, those that are still running: their process died."""
        if not run_ids:
            return
        with self.transaction() as conn:
            conn.execute(job_runs.update().where(job_runs.c.id.in_(run_ids), job_runs.c.status == "running")
                         .values(finished_at=utc_now(), status="interrupted", detail=detail))

    def take_lease(self, name: str, holder: str, seconds: float) -> str:
        """Take the lease `name` for `seconds`, or renew it, if it is free, expired or already
        `holder`'s: one conditional UPDATE in a transaction, so that of processes racing for it
        exactly one wins. Returns who holds it afterwards (`holder` when taken)."""
        lease = scheduler_lease.c
        try:
            with self._lease_engine.begin() as conn:
                now = self._lease_clock(conn)
                values = {"holder": holder, "expires_at": now + timedelta(seconds=seconds)}
                free = or_(lease.holder == holder, lease.expires_at <= now)
                if conn.execute(scheduler_lease.update().where(lease.name == name, free).values(**values)).rowcount:
                    return holder
                current = conn.execute(select(lease.holder).where(lease.name == name)).scalar()
                if current is not None:
                    return current
                conn.execute(scheduler_lease.insert().values(name=name, **values))
                return holder
        except IntegrityError:  # another process inserted the first row in the meantime: the lease is its
            with self._lease_engine.connect() as conn:
                return conn.execute(select(lease.holder).where(lease.name == name)).scalar_one()

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease expire now, if `holder` has it, so that a standby takes it at its next try."""
        with self._lease_engine.begin() as conn:
            conn.execute(scheduler_lease.update().where(scheduler_lease.c.name == name,
                                                        scheduler_lease.c.holder == holder)
                         .values(expires_at=self._lease_clock(conn)))

    @cached_property
    def _lease_engine(self) -> Engine:
        """Where the lease lives. On SQLite, a file of its own beside the database (`<file>-lease`):
        the database has one write lock, which an ingest holds for as long as it stores a log,
        and a lease renewal waiting behind it would make the active scheduler step down."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return self.engine
        engine = connect(f"sqlite:///{database}-lease")
        with engine.begin() as conn:  # IF NOT EXISTS: several schedulers may start at once
            conn.execute(CreateTable(scheduler_lease, if_not_exists=True))
        return engine

    def _lease_clock(self, conn: Connection) -> datetime:
        """Now, naive UTC. PostgreSQL's clock on PostgreSQL, so that schedulers on hosts whose
        clocks differ agree on when a lease expires; an SQLite file has one host, and its clock."""
        if self.dialect == "postgresql":
            return conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()
        return utc_now().to_pydatetime()

    # -- models ----------------------------------------------------------------------------

    def record_model(self, model_id: str, path, meta: dict) -> None:
        """Record a model artifact; the newest one is the default everywhere."""
        with self.transaction() as conn:
            conn.execute(models.insert().values(
                id=model_id, created_at=pd.Timestamp(meta["created_at"]), algo=meta["algo"], path=str(path),
                cutoff=pd.Timestamp(meta["cutoff"]), train_ratings=meta["train"]["ratings"],
                data_sha256=meta["train"]["sha256"], rmse=meta["metrics"]["rmse"], mae=meta["metrics"]["mae"],
                metadata=json.dumps(meta, default=str)))

    def model_artifact(self, model_id: str | None = None) -> tuple[str, str] | None:
        """(id, path) of the named model, or of the newest when no id is given; None if none."""
        query = select(models.c.id, models.c.path)
        query = query.where(models.c.id == model_id) if model_id else query.order_by(
            models.c.created_at.desc(), models.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row[0], row[1]) if row else None

    def model_metadata(self, model_id: str | None = None) -> dict | None:
        """The recorded metadata of a model (the newest when no id is given)."""
        query = select(models.c.metadata)
        query = query.where(models.c.id == model_id) if model_id else query.order_by(
            models.c.created_at.desc(), models.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return json.loads(row[0]) if row else None

