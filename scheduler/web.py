"""The service's HTTP face: Prometheus metrics, a health check, and the published reports.

    GET /metrics   the latest value of every metric key, as labelled gauges, and job run counters
    GET /healthz   {"status": "ok", "jobs": {name: next run time}}
    GET /          the reports directory (the dashboard, index.html, and each run's page)
"""

from __future__ import annotations

from pathlib import Path


def exposition(store) -> bytes:
    """The Prometheus text exposition of what the store knows now."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Latest:
        def collect(self):
            values = GaugeMetricFamily("recaudit_metric", "Latest value of each recaudit metric key (DESIGN.md 2.1)",
                                       labels=["key", "audit"])
            runs = GaugeMetricFamily("recaudit_metric_run", "Audit run that recorded the latest value of each key",
                                     labels=["key"])
            for row in store.latest_metrics().itertuples():
                if row.value is not None and row.value == row.value:  # NaN: no value to expose
                    values.add_metric([row.key, row.key.split(".")[0]], float(row.value))
                    runs.add_metric([row.key], float(row.run_id))
            yield values
            yield runs
            jobs = CounterMetricFamily("recaudit_job_runs", "Scheduled job runs by outcome", labels=["job", "outcome"])
            for row in store.job_outcomes().itertuples():
                jobs.add_metric([row.job, row.status], float(row.n))
            yield jobs

    registry = CollectorRegistry()
    registry.register(Latest())
    return generate_latest(registry)


def app(store, reports: str | Path, scheduler=None):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def metrics(_request):
        return Response(exposition(store), media_type="text/plain; version=0.0.4; charset=utf-8")

    def healthz(_request):
        jobs = {} if scheduler is None else {j.id: j.next_run_time.isoformat() if j.next_run_time else None
                                             for j in scheduler.get_jobs()}
        return JSONResponse({"status": "ok", "jobs": jobs})

    Path(reports).mkdir(parents=True, exist_ok=True)
    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz),
                             Mount("/", StaticFiles(directory=str(reports), html=True))])
