"""The service's HTTP face: Prometheus metrics, a health check, and the published reports.

    GET /metrics   the latest value of every metric key, as labelled gauges, job run counters,
                   whether the database answers, and whether this process runs the jobs
    GET /healthz   {"status": "ok", "role": "active" or "standby", "jobs": {name: next run time}, …};
                   503 {"status": "unavailable", "reason": …} while the database does not answer
    GET /          the reports directory (the dashboard, index.html, and each run's page)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
from sqlalchemy.exc import SQLAlchemyError


def exposition(latest: pd.DataFrame, outcomes: pd.DataFrame, database_up: bool, active: bool) -> bytes:
    """The Prometheus text exposition of the latest metric values (Store.latest_metrics), the job
    run counts (Store.job_outcomes), and the service's own state."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Latest:
        def collect(self):
            values = GaugeMetricFamily("recaudit_metric", "Latest value of each recaudit metric key "
                                       "(<audit>.<metric>[.<dimension>.<group>])",
                                       labels=["key", "audit"])
            runs = GaugeMetricFamily("recaudit_metric_run", "Audit run that recorded the latest value of each key",
                                     labels=["key"])
            for row in latest.itertuples():
                if row.value is not None and row.value == row.value:  # NaN: no value to expose
                    values.add_metric([row.key, row.key.split(".")[0]], float(row.value))
                    runs.add_metric([row.key], float(row.run_id))
            yield values
            yield runs
            jobs = CounterMetricFamily("recaudit_job_runs", "Scheduled job runs by outcome", labels=["job", "outcome"])
            for row in outcomes.itertuples():
                jobs.add_metric([row.job, row.status], float(row.n))
            yield jobs
            yield GaugeMetricFamily("recaudit_database_up", "1 when the database answered the last refresh of "
                                    "these values, 0 when they are the last ones read", value=float(database_up))
            yield GaugeMetricFamily("recaudit_scheduler_active", "1 when this process holds the lease and runs the "
                                    "jobs, 0 on a standby", value=float(active))

    registry = CollectorRegistry()
    registry.register(Latest())
    return generate_latest(registry)


class Metrics:
    """/metrics, kept in memory. The service refreshes it after every job run and at every lease
    try; a scrape reads no database, so it is cheap, and while the database is unreachable it
    still answers, with the last values read and recaudit_database_up 0."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()  # one refresh at a time: a late one must not overwrite a newer body
        self._latest = pd.DataFrame(columns=["key", "value", "run_id", "until"])
        self._outcomes = pd.DataFrame(columns=["job", "status", "n"])
        self.body = exposition(self._latest, self._outcomes, database_up=False, active=False)  # nothing read yet

    def refresh(self, active: bool) -> None:
        """Read the values again. When the database does not answer, keep the last ones, say so,
        and raise the SQLAlchemyError."""
        with self._lock:
            try:
                self._latest, self._outcomes = self.store.latest_metrics(), self.store.job_outcomes()
            except SQLAlchemyError:
                self.body = exposition(self._latest, self._outcomes, database_up=False, active=active)
                raise
            self.body = exposition(self._latest, self._outcomes, database_up=True, active=active)


def app(metrics: Metrics, health, reports: str | Path):
    """The HTTP application; `health()` returns /healthz's status code and body."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    class Reports(StaticFiles):
        """The published reports. An HTML file other than our own pages (index.html) is another
        tool's (evidently's drift.html) and runs its own scripts: the sandbox header gives it an
        opaque origin even when opened directly, as the run page's sandboxed frame does."""

        def file_response(self, full_path, *args, **kwargs):
            response = super().file_response(full_path, *args, **kwargs)
            name = Path(full_path).name
            if name.endswith(".html") and name != "index.html":
                response.headers["Content-Security-Policy"] = "sandbox allow-scripts"
            return response

    async def serve_metrics(_request):  # async: a body in memory needs no worker thread
        return Response(metrics.body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def healthz(_request):  # sync: it asks the database, from Starlette's thread pool
        status, body = health()
        return JSONResponse(body, status_code=status)

    Path(reports).mkdir(parents=True, exist_ok=True)
    return Starlette(routes=[Route("/metrics", serve_metrics), Route("/healthz", healthz),
                             Mount("/", Reports(directory=str(reports), html=True))])
