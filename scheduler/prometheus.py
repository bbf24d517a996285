"""/metrics by Prometheus's conventions: what the service reads for it, and how it is named.

Every metric key (`<audit>.<metric>[.<dimension>.<group>]`, README "Metric keys") becomes a
sample of the family of its measure, the key's parts after the metric becoming labels:

    fairness.rmse.sex.F               recaudit_fairness_rmse{dimension="sex",group="F"}
    fairness.rmse                     recaudit_fairness_rmse
    fairness.rmse_gap.sex             recaudit_fairness_rmse_gap{dimension="sex"}
    drift.rating.score                recaudit_drift_score{signal="rating"}
    online.latency_p95.server.a:8082  recaudit_online_latency_p95_seconds{dimension="server",group="a:8082"} (ms / 1000)
    validation.unexpected_percent.ratings.rating_is_an_integer
                                      recaudit_validation_unexpected_ratio{dataset="ratings",
                                      expectation="rating_is_an_integer"} (% / 100)

A key the convention cannot name (no metric part, or a name another family has) still shows,
as `recaudit_metric{key="…"}`: nothing is dropped. Groups and dimensions come from users' data:
they are only ever label values, which the exposition escapes; family names come from the
audits' own metric names and are sanitised all the same.

Beside the audits' values: when each audit's latest window ended, the job runs (a counter of
finished runs, a gauge of running ones, the last success, a duration histogram), the alert
outbox's backlog and the open conditions, and the last event and ingest of each event kind.
`read` makes every query, in the service's refresh; `exposition` only formats what it read, so
that a scrape reads no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
from sqlalchemy import BigInteger, DateTime, case, func, select, type_coerce

PREFIX = "recaudit_"
GENERIC = "recaudit_metric"  # a key the convention cannot name: its own label
# Job durations: from an alerts run of a second to a retrain of hours.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
TIMED = ("ok", "failed")  # an interrupted run's finish is when its death was noticed, not its duration
# Suffixes Prometheus gives meanings of their own (histograms, summaries, counters, info): a
# gauge whose name ends so would be misread.
_RESERVED = re.compile(r"_(count|sum|bucket|total|created|info)$")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

# Metric names whose family takes another name: what they count, or their base unit.
_RENAMED = {"validation.unexpected_count": "validation_unexpected_rows"}
# Per audit, the metrics whose one further part is a statistic of the measure, not a dimension.
_STATISTICS = {"feedback": {"rating_rec_corr", "rating_rec_corr_lagged"}}
_DRIFT_MEASURES = {"score", "drifted"}  # drift.<signal>.<measure>


class Series(NamedTuple):
    """Where one metric key's value goes: its family, its labels, the factor to its base unit,
    and the key's shape (its label parts as placeholders) for the family's help text."""

    family: str
    labels: tuple[tuple[str, str], ...]
    scale: float
    shape: str


def _name(*parts: str) -> str:
    return PREFIX + _INVALID.sub("_", "_".join(parts))


def _unit(audit: str, metric: str) -> tuple[str, float, str]:
    """(family name, scale, unit note) of a metric: milliseconds to seconds, percent to a ratio."""
    if f"{audit}.{metric}" in _RENAMED:
        return PREFIX + _RENAMED[f"{audit}.{metric}"], 1.0, ""
    if audit == "online" and metric.startswith("latency_"):  # online's latencies are in milliseconds
        return _name(audit, metric, "seconds"), 1e-3, " in seconds (the key's milliseconds / 1000)"
    if metric.endswith("_ms"):
        return _name(audit, metric[:-3], "seconds"), 1e-3, " in seconds (the key's milliseconds / 1000)"
    if metric.endswith("_percent"):
        return _name(audit, metric[:-8], "ratio"), 1e-2, " as a ratio (the key's percent / 100)"
    name = _name(audit, metric)
    return (name + "_value" if _RESERVED.search(name) else name), 1.0, ""


def series(key: str) -> Series:
    """The family, labels and scale of a metric key by the convention (module docstring).

    Parameters
    ----------
    key : str
        A metric key, ``<audit>.<metric>[.<dimension>[.<group>]]``; any string is taken.

    Returns
    -------
    Series
        The family (``recaudit_metric`` for a key with no metric part), the labels, the factor
        from the key's unit to the base unit, and the key's shape.

    Examples
    --------
    >>> s = series("fairness.rmse.sex.F")
    >>> s.family, s.labels, s.shape
    ('recaudit_fairness_rmse', (('dimension', 'sex'), ('group', 'F')), 'fairness.rmse.<dimension>.<group>')
    >>> series("online.availability.server.recs-a.example.org:8082").labels
    (('dimension', 'server'), ('group', 'recs-a.example.org:8082'))
    >>> series("online.latency_p95").family, series("online.latency_p95").scale
    ('recaudit_online_latency_p95_seconds', 0.001)
    >>> series("drift.ratings_per_user.score")[:2]
    ('recaudit_drift_score', (('signal', 'ratings_per_user'),))
    >>> series("nodots").family
    'recaudit_metric'
    """
    audit, _, rest = key.partition(".")
    metric, *more = rest.split(".") if rest else [""]
    if not audit or not metric:
        return Series(GENERIC, (("key", key),), 1.0, key)
    if audit == "drift" and len(more) >= 1 and key.rsplit(".", 1)[1] in _DRIFT_MEASURES:
        # Signals are named in the configuration (a user attribute's name among them): all but the last part.
        signal, measure = rest.rsplit(".", 1)
        return Series(_name("drift", measure), (("signal", signal),), 1.0, f"drift.<signal>.{measure}")
    family, scale, _ = _unit(audit, metric)
    if metric in _STATISTICS.get(audit, ()) and len(more) == 1:
        return Series(_name(audit, metric, more[0]), (), scale, key)
    if audit == "validation" and more:
        labels = (("dataset", more[0]),) + ((("expectation", ".".join(more[1:])),) if len(more) > 1 else ())
    elif more:  # a dimension, and the group in it; a group may hold dots (a server's host name)
        labels = (("dimension", more[0]),) + ((("group", ".".join(more[1:])),) if len(more) > 1 else ())
    else:
        labels = ()
    shape = ".".join([audit, metric, *(f"<{name}>" for name, _ in labels)])
    return Series(family, labels, scale, shape)


def _help(audit: str, metric: str) -> str:
    return _unit(audit, metric)[2]


@dataclass
class Snapshot:
    """What /metrics shows, as read by `read`: frames only, so that formatting reads nothing."""

    latest: pd.DataFrame  # key, value, run_id, until (Store.latest_metrics)
    jobs: pd.DataFrame  # job, status, n, last_finished
    durations: pd.DataFrame  # job, n, sum, and one column per bucket bound: runs at most that long
    deliveries: pd.DataFrame  # webhook, pending
    open_alerts: pd.DataFrame  # severity, n
    arrivals: pd.DataFrame  # kind, last_event, last_ingest (audits.freshness.arrivals)

    @classmethod
    def empty(cls) -> Snapshot:
        """Nothing read yet."""
        return cls(pd.DataFrame(columns=["key", "value", "run_id", "until"]),
                   pd.DataFrame(columns=["job", "status", "n", "last_finished"]),
                   pd.DataFrame(columns=["job", "n", "sum", *DURATION_BUCKETS]),
                   pd.DataFrame(columns=["webhook", "pending"]), pd.DataFrame(columns=["severity", "n"]),
                   pd.DataFrame(columns=["kind", "last_event", "last_ingest"]))


def _elapsed_seconds(dialect: str, later, earlier):
    """SQL for the seconds from `earlier` to `later`, two UTCTime columns: integer microseconds
    on SQLite, timestamps on PostgreSQL (audits.schema.UTCTime)."""
    if dialect == "sqlite":
        return (type_coerce(later, BigInteger) - type_coerce(earlier, BigInteger)) / 1e6
    return func.extract("epoch", type_coerce(later, DateTime) - type_coerce(earlier, DateTime))


def read(store) -> Snapshot:
    """Every value /metrics shows, in a few aggregate queries (the job durations' histogram is
    counted in the database: job_runs grows by every run of every job).

    Parameters
    ----------
    store : recaudit.audits.store.Store
        The database.

    Returns
    -------
    Snapshot
        Frames only: formatting them reads nothing.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database does not answer.
    """
    from recaudit.audits import freshness
    from recaudit.audits import store as st

    runs = st.job_runs.c
    seconds = _elapsed_seconds(store.dialect, runs.finished_at, runs.started_at)
    with store.engine.connect() as conn:
        jobs = pd.DataFrame(conn.execute(
            select(runs.job, runs.status, func.count(), func.max(runs.finished_at))
            .group_by(runs.job, runs.status)).all(), columns=["job", "status", "n", "last_finished"])
        durations = pd.DataFrame(conn.execute(
            select(runs.job, func.count(), func.sum(seconds),
                   *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS))
            .where(runs.status.in_(TIMED), runs.finished_at.is_not(None)).group_by(runs.job)).all(),
            columns=["job", "n", "sum", *DURATION_BUCKETS])
        deliveries = pd.DataFrame(conn.execute(
            select(st.alert_deliveries.c.webhook,
                   func.sum(case((st.alert_deliveries.c.status == "pending", 1), else_=0)))
            .group_by(st.alert_deliveries.c.webhook)).all(), columns=["webhook", "pending"])
        open_alerts = pd.DataFrame(conn.execute(
            select(st.alerts.c.severity, func.count())
            .join(st.open_conditions, st.open_conditions.c.alert_id == st.alerts.c.id)
            .group_by(st.alerts.c.severity)).all(), columns=["severity", "n"])
    return Snapshot(store.latest_metrics(), jobs, durations, deliveries, open_alerts, freshness.arrivals(store))


def _timestamp(value) -> float | None:
    """Seconds since the epoch of a naive UTC time (the store's), None for none."""
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")).timestamp()


# The service's own families: no key's family may take one of these names.
OWN = {
    "recaudit_audit_window_end_timestamp_seconds": "End of the window of the newest value of each audit's metric "
                                                   "keys, in seconds since the epoch",
    "recaudit_audit_run_id": "Audit run (audit_runs.id) that recorded the newest of each audit's values",
    "recaudit_job_runs": "Finished runs of each scheduled job by outcome (ok, failed, interrupted)",
    "recaudit_jobs_running": "Runs of each scheduled job recorded as running now, in any process",
    "recaudit_job_last_success_timestamp_seconds": "When each job's last successful run finished, "
                                                   "in seconds since the epoch",
    "recaudit_job_duration_seconds": "Duration of each finished run (ok or failed) of each job, in seconds",
    "recaudit_alerts_pending": "Alert deliveries still pending (the outbox's backlog), by webhook",
    "recaudit_alerts_open": "Alert conditions open now (fired and not yet resolved), by severity",
    "recaudit_last_event_timestamp_seconds": "Time of the newest stored event of each kind, in seconds since the "
                                             "epoch (the events' own clock)",
    "recaudit_last_ingest_timestamp_seconds": "When an ingest last stored an event of each kind, in seconds since "
                                              "the epoch (wall clock)",
    "recaudit_database_up": "1 when the database answered the last refresh of these values, 0 when they are the "
                            "last ones read",
    "recaudit_scheduler_active": "1 when this process holds the lease and runs the jobs, 0 on a standby",
    GENERIC: "Latest value of a metric key the naming convention cannot name (<audit>.<metric>[.<dimension>."
             "<group>])",
}
OWN_SAMPLES = {f"{name}{suffix}" for name in OWN for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created")}


def _audit_families(latest: pd.DataFrame):
    """The per-measure gauges of the latest values, and the generic one, as prometheus_client
    metric families, in the order of their first key."""
    from prometheus_client.core import Metric

    families: dict[str, Metric] = {}
    shapes: dict[str, list[str]] = {}
    seen: set[tuple[str, tuple]] = set()
    generic = Metric(GENERIC, OWN[GENERIC], "gauge")
    # Where two keys would make one series (fairness.rmse-gap.sex, fairness.rmse_gap.sex), the one
    # whose name needed no sanitising keeps it, whatever order the database returned them in.
    sanitised = latest["key"].map(lambda key: bool(_INVALID.search("_".join(key.split(".")[:2]))))
    for row in latest.assign(sanitised=sanitised).sort_values(["sanitised", "key"]).itertuples():
        if row.value is None or row.value != row.value:  # NaN: no value to expose
            continue
        s = series(row.key)
        if s.family in OWN_SAMPLES or (s.family, s.labels) in seen:  # a name taken: the key names itself
            s = Series(GENERIC, (("key", row.key),), 1.0, "")
        seen.add((s.family, s.labels))
        if s.family == GENERIC:
            generic.add_sample(GENERIC, {"key": row.key}, float(row.value))
            continue
        if s.family not in families:
            audit, _, rest = row.key.partition(".")
            families[s.family] = Metric(s.family, "", "gauge")
            shapes[s.family] = [_help(audit, rest.split(".")[0])]
        if s.shape not in shapes[s.family]:
            shapes[s.family].append(s.shape)
        families[s.family].add_sample(s.family, dict(s.labels), float(row.value) * s.scale)
    for name, family in families.items():
        note, *keys = shapes[name]
        family.documentation = f"Latest value of the metric keys {', '.join(keys)}{note}"
        yield family
    yield generic


def exposition(snap: Snapshot, database_up: bool, active: bool) -> bytes:
    """The Prometheus text exposition of what `read` read, and the service's own state.

    Parameters
    ----------
    snap : Snapshot
        What `read` returned (or `Snapshot.empty()`).
    database_up : bool
        Whether the database answered the refresh that read `snap`.
    active : bool
        Whether this process holds the lease and runs the jobs.

    Returns
    -------
    bytes
        The text format 0.0.4 body of /metrics.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    from recaudit.audits.config import JOBS
    from recaudit.audits.vocabulary import SEVERITIES

    def gauge(name, labels=()):
        return GaugeMetricFamily(name, OWN[name], labels=list(labels))

    class Collector:
        def collect(self):
            yield from _audit_families(snap.latest)
            window, run = gauge("recaudit_audit_window_end_timestamp_seconds", ["audit"]), \
                gauge("recaudit_audit_run_id", ["audit"])
            audits = snap.latest["key"].map(lambda key: key.partition(".")[0])
            newest = snap.latest.assign(audit=audits).sort_values(["until", "run_id"])
            for audit, rows in newest.groupby("audit", sort=True):
                last = rows.iloc[-1]
                if _timestamp(last["until"]) is not None:
                    window.add_metric([audit], _timestamp(last["until"]))
                run.add_metric([audit], float(last["run_id"]))
            yield window
            yield run

            jobs = snap.jobs
            finished = CounterMetricFamily("recaudit_job_runs", OWN["recaudit_job_runs"], labels=["job", "outcome"])
            for row in jobs[jobs["status"] != "running"].itertuples():
                finished.add_metric([row.job, row.status], float(row.n))
            yield finished
            running = gauge("recaudit_jobs_running", ["job"])
            counts = jobs[jobs["status"] == "running"].set_index("job")["n"]
            for job in sorted(set(JOBS) | set(jobs["job"])):  # 0 for every job, not only the running ones
                running.add_metric([job], float(counts.get(job, 0)))
            yield running
            success = gauge("recaudit_job_last_success_timestamp_seconds", ["job"])
            for row in jobs[jobs["status"] == "ok"].itertuples():
                if _timestamp(row.last_finished) is not None:
                    success.add_metric([row.job], _timestamp(row.last_finished))
            yield success
            duration = HistogramMetricFamily("recaudit_job_duration_seconds", OWN["recaudit_job_duration_seconds"],
                                             labels=["job"])
            for row in snap.durations.to_dict("records"):
                buckets = [(floatToGoString(bound), float(row[bound] or 0)) for bound in DURATION_BUCKETS]
                duration.add_metric([row["job"]], buckets + [("+Inf", float(row["n"]))],
                                    sum_value=float(row["sum"] or 0))
            yield duration

            pending = gauge("recaudit_alerts_pending", ["webhook"])
            for row in snap.deliveries.itertuples():
                pending.add_metric([row.webhook], float(row.pending or 0))
            yield pending
            opened = gauge("recaudit_alerts_open", ["severity"])
            by_severity = snap.open_alerts.set_index("severity")["n"]
            for severity in [*SEVERITIES, *sorted(set(by_severity.index) - set(SEVERITIES))]:
                opened.add_metric([severity], float(by_severity.get(severity, 0)))
            yield opened

            event, ingest = gauge("recaudit_last_event_timestamp_seconds", ["kind"]), \
                gauge("recaudit_last_ingest_timestamp_seconds", ["kind"])
            for row in snap.arrivals.itertuples():  # a kind never stored has no value (audits.freshness)
                for family, at in ((event, row.last_event), (ingest, row.last_ingest)):
                    if _timestamp(at) is not None:
                        family.add_metric([row.kind], _timestamp(at))
            yield event
            yield ingest
            yield GaugeMetricFamily("recaudit_database_up", OWN["recaudit_database_up"], value=float(database_up))
            yield GaugeMetricFamily("recaudit_scheduler_active", OWN["recaudit_scheduler_active"],
                                    value=float(active))

    registry = CollectorRegistry()
    registry.register(Collector())
    return generate_latest(registry)
