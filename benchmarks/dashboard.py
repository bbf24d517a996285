"""Dashboard and publish time with 10 runs and with 10,000: what the report job costs as runs pile up.

    python benchmarks/dashboard.py [--runs 10,10000] [--repeat 3]

For each count, an SQLite store in a temporary directory gets that many finished runs, written
in one transaction of bulk inserts into the tables `Store.finish_run` writes (audit_runs with
each run's results.json document, metrics, findings). Two jobs alternate, as a schedule's
would; the newest run of the daily job holds a critical dataset drift, judged by the real
alert code (`alerts.evaluate`), so the dashboard has a condition open while the hourly job's
newer run is ok. A document has the shape of the audits' (validation with its 50
expectations, drift, fairness with its documented gap thresholds, feedback, online), about
14 kB: real ones are larger, which weighs on the first publish only, the one that reads every
document. Reported, the median of --repeat where repeated:

- the first publish, every page rendered (the pages do not exist yet);
- one more run (`Store.start_run` and `finish_run`), then publish: its page and the dashboard;
- publish with nothing new;
- render_dashboard alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

START = pd.Timestamp("2024-01-01")
EVERY = pd.Timedelta(minutes=53)  # about 27 runs a day, as the default schedule writes


def document(run_id: int, until: pd.Timestamp, schedule: str, drifted: bool = False) -> dict:
    """A run's results.json: the audits' shape; `drifted`, with a critical dataset drift."""
    wave = (run_id % 50) / 50
    share = 0.5 if drifted else 0.1 * wave
    finding = {"audit": "drift", "key": "drift.share_drifted", "severity": "critical", "kind": "dataset_drift",
               "message": f"dataset drift: 3 of 6 signals drifted ({share:.0%} ≥ 25%): rating, genre, latency",
               "value": share, "threshold": 0.25, "fingerprint": "5f0c3d2a9b1e4f67"}
    expectations = [{"dataset": "ratings", "name": f"expectation_{i}", "type": "expect_column_values_to_not_be_null",
                     "severity": "critical", "success": True, "message": "", "unexpected_count": 0,
                     "unexpected_percent": 0.0, "element_count": 6000 + i, "examples": [], "skipped": None}
                    for i in range(50)]
    audits = {
        "validation": {"metrics": {"validation.failed": 0.0, "validation.skipped": 0.0},
                       "findings": [], "details": {"expectations": expectations}},
        "drift": {"metrics": {"drift.share_drifted": share, "drift.dataset_drift": float(drifted),
                              **{f"drift.{s}.score": 0.05 + wave / 10 for s in ("rating", "genre", "latency")}},
                  "findings": [finding] if drifted else [], "details": {}},
        "fairness": {"metrics": {f"fairness.{m}_gap.{d}": 0.1 + wave / 5 for m in ("rmse", "mae")
                                 for d in ("sex", "age", "occupation")},
                     "findings": [], "details": {"gaps": [{"dimension": d, "metric": "rmse", "part": "",
                                                           "threshold": 0.2} for d in ("sex", "age")]}},
        "feedback": {"metrics": {"feedback.gini": 0.45 + wave / 5, "feedback.top10_share": 0.2 + wave / 10,
                                 "feedback.hhi": 0.04, "feedback.coverage": 0.8},
                     "findings": [], "details": {}},
        "online": {"metrics": {"online.success_rate": 0.6 - wave / 10, "online.availability": 0.99,
                               "online.requests": 4000.0, "online.latency_p99": 180.0},
                   "findings": [], "details": {}},
    }
    for name, audit in audits.items():
        audit.update(audit=name, status="findings" if audit["findings"] else "ok", error=None, seconds=0.5)
    return {"run_id": run_id, "status": "critical" if drifted else "ok", "schedule": schedule,
            "window": {"since": (until - pd.Timedelta(hours=24)).isoformat(), "until": until.isoformat()},
            "audits": audits}


def build(store, n: int, out: Path) -> dict:
    """`n` finished runs in one transaction; returns the newest daily run's document."""
    from recaudit.audits.store import audit_runs, findings, metrics

    runs, values, found, newest_daily = [], [], [], None
    for run_id in range(1, n + 1):
        until = START + EVERY * run_id
        schedule = "daily" if run_id % 2 else "hourly"
        doc = document(run_id, until, schedule, drifted=run_id == n - 1 + n % 2)  # the newest daily run
        runs.append({"id": run_id, "started_at": until, "finished_at": until, "since": until - pd.Timedelta(hours=24),
                     "until": until, "audits": ",".join(doc["audits"]), "schedule": schedule, "status": doc["status"],
                     "path": str(out / "runs" / str(run_id)), "results": json.dumps(doc)})
        for a in doc["audits"].values():
            values += [{"run_id": run_id, "key": k, "value": v} for k, v in a["metrics"].items()]
            found += [{"run_id": run_id, **{k: f[k] for k in ("audit", "key", "kind", "severity", "message", "value",
                                                              "threshold", "fingerprint")}} for f in a["findings"]]
        if schedule == "daily" and doc["audits"]["drift"]["findings"]:
            newest_daily = doc
    with store.transaction() as conn:
        conn.execute(audit_runs.insert(), runs)
        conn.execute(metrics.insert(), values)
        if found:
            conn.execute(findings.insert(), found)
    return newest_daily


def timed(fn, repeat: int = 1) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(n: int, repeat: int) -> dict:
    from recaudit.audits import config
    from recaudit.audits.store import Store
    from recaudit.reports import alerts
    from recaudit.reports.html import publish, render_dashboard

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reports"
        store = Store(f"sqlite:///{Path(tmp) / 'r.db'}")
        try:
            started = time.perf_counter()
            drifted = build(store, n, out)
            cfg = config.load()
            if drifted is not None:  # the dashboard's headline: this, not the newest (ok) run
                alerts.evaluate(store, drifted, cfg["alerts"], f"runs/{drifted['run_id']}/index.html")
            built = time.perf_counter() - started
            first = timed(lambda: publish(store, out, cfg))
            until = START + EVERY * (n + 1)
            run_id = store.start_run(until - pd.Timedelta(hours=24), until, ["drift"], "hourly")
            store.finish_run(run_id, document(run_id, until, "hourly"), out / "runs" / str(run_id))
            one_more = timed(lambda: publish(store, out, cfg))
            nothing_new = timed(lambda: publish(store, out, cfg), repeat)
            dashboard = timed(lambda: render_dashboard(store, out, cfg), repeat)
            page = (out / "index.html").read_text()
            headline = "critical" in page.split('class="headline"')[1][:200] if drifted else None
        finally:
            store.close()
    return {"runs": n, "build": built, "first": first, "one_more": one_more, "nothing_new": nothing_new,
            "dashboard": dashboard, "headline_critical": headline, "bytes": len(page)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="10,10000", help="comma-separated counts of runs")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = [measure(int(n), args.repeat) for n in args.runs.split(",")]
    print(f"SQLite in a temporary directory; Python {sys.version.split()[0]}; seconds (median of {args.repeat} "
          "where repeated)\n")
    print("| runs stored | first publish (every page) | one more run, publish | publish, nothing new "
          "| render_dashboard | dashboard size | headline is the open critical drift |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['runs']:,} | {r['first']:.2f} | {r['one_more']:.3f} | {r['nothing_new']:.3f} "
              f"| {r['dashboard']:.3f} | {r['bytes'] / 1000:.0f} kB | {'yes' if r['headline_critical'] else 'no'} |")


if __name__ == "__main__":
    main()
