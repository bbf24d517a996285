"""The service's HTTP face: Prometheus metrics, a health check, and the published reports.

    GET /metrics   by Prometheus's conventions (recaudit.scheduler.prometheus): the latest value
                   of every metric key in the family of its measure, labelled by dimension and
                   group (or signal, dataset), in base units; when each audit's window ended;
                   finished job runs (a counter), running ones (a gauge), each job's last
                   success and a histogram of durations; the alert outbox's backlog and the open
                   conditions; each event kind's last event and last ingest; whether the
                   database answers, and whether this process runs the jobs
    GET /healthz   {"status": "ok", "role": "active" or "standby", "jobs": {name: next run time}, …};
                   503 {"status": "unavailable", "reason": …} while the database does not answer
    GET /          the reports directory (the dashboard, index.html, and each run's page)
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from recaudit.scheduler import prometheus


class Metrics:
    """/metrics, kept in memory. The service refreshes it after every job run and at every lease
    try; a scrape reads no database, so it is cheap, and while the database is unreachable it
    still answers, with the last values read and recaudit_database_up 0."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()  # one refresh at a time: a late one must not overwrite a newer body
        self._snapshot = prometheus.Snapshot.empty()
        self.body = prometheus.exposition(self._snapshot, database_up=False, active=False)  # nothing read yet

    def refresh(self, active: bool) -> None:
        """Read the values again. When the database does not answer, keep the last ones, say so,
        and raise the SQLAlchemyError."""
        with self._lock:
            try:
                self._snapshot = prometheus.read(self.store)
            except SQLAlchemyError:
                self.body = prometheus.exposition(self._snapshot, database_up=False, active=active)
                raise
            self.body = prometheus.exposition(self._snapshot, database_up=True, active=active)


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
