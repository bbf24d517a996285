"""`recaudit demo`: the whole loop on a laptop, in about a minute.

Two weeks of a simulated streaming service with the feedback and fairness faults (from the
middle day) are ingested day by day. The reference model is trained once a week of data is in.
Every audit runs once per day, so trends exist. The pages are rendered, and alerts are posted,
signed, to a webhook receiver started on 127.0.0.1, which checks each signature and appends
what it accepts to OUT/alerts.jsonl.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

SECRET_ENV = "RECAUDIT_DEMO_WEBHOOK_SECRET"
FULL = {"users": 3000, "movies": 400, "days": 14}
QUICK = {"users": 800, "movies": 150, "days": 6}


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies each signature and keeps what it accepts."""

    def __init__(self, path: Path, secret: str):
        self.path, self.accepted, self.rejected = path, 0, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                from recaudit.reports.alerts import SIGNATURE_HEADER, sign

                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), sign(body, secret)):
                    outer.rejected += 1
                    self.send_response(401)
                else:
                    with open(outer.path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(json.loads(body)) + "\n")
                    outer.accepted += 1
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Summary:
    out: Path
    dashboard: Path
    days: int
    runs: list[dict] = field(default_factory=list)
    model: str = ""
    alerts: int = 0
    rejected: int = 0
    lines: int = 0


def split_by_day(log: Path, into: Path, last_day: str) -> list[Path]:
    """The simulator's log, one file per day (it is in time order), as a service would rotate
    it; the sessions still running after the last day's midnight stay in its file."""
    into.mkdir(parents=True, exist_ok=True)
    files: dict[str, object] = {}
    with open(log, "rb") as f:
        for line in f:
            day = min(line[:10].decode("ascii", "replace"), last_day)
            if day not in files:
                files[day] = open(into / f"events-{day}.log", "wb")
            files[day].write(line)
    for handle in files.values():
        handle.close()
    return sorted(into / f"events-{day}.log" for day in files)


def run(out: str | Path, quick: bool = False, seed: int = 0, progress=print) -> Summary:
    from recaudit.audits import config
    from recaudit.audits.ingest import ingest
    from recaudit.audits.store import Store
    from recaudit.audits.vocabulary import counted
    from recaudit.recsys import recommender as rc
    from recaudit.recsys.simulate import Config, simulate
    from recaudit.scheduler.jobs import audit_and_publish, save_model

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sizes = QUICK if quick else FULL
    sim = Config(**sizes, seed=seed, inject=("feedback", "fairness"))
    progress(f"simulating {sim.days} days: {sim.users:,} users, {sim.movies:,} movies, "
             f"faults from day {sim.injection_day + 1}: feedback, fairness")
    simulated = simulate(out / "data", sim)
    last_day = (pd.Timestamp(sim.start) + pd.Timedelta(days=sim.days - 1)).strftime("%Y-%m-%d")
    days = split_by_day(out / "data" / "events.log", out / "data" / "days", last_day)
    (out / "data" / "events.log").unlink()  # now in one file per day

    store = Store(f"sqlite:///{out / 'recaudit.db'}")
    secret = secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret
    receiver = Receiver(out / "alerts.jsonl", secret)
    cfg = config.load()
    cfg["audit"]["out"] = str(out / "reports")
    cfg["alerts"]["webhooks"] = [{"name": "demo-receiver", "url": receiver.url, "secret_env": SECRET_ENV,
                                  "timeout": 5.0}]
    cfg["fairness"]["min_group_size"] = 50 if not quick else 20  # a small service: smaller groups get a verdict
    cfg["drift"]["reference_window"] = "3d"
    summary = Summary(out, out / "reports" / "index.html", len(days), lines=simulated.lines)
    try:
        ingest(store, [str(out / "data" / "users.csv"), str(out / "data" / "movies.csv")])
        for number, day in enumerate(days, start=1):
            ingest(store, [str(day)])
            since = pd.Timestamp(day.stem.removeprefix("events-"))
            if number == sim.injection_day:  # a week of data in: train the reference model on it
                ratings = store.read("ratings")
                data = rc.split(ratings, since + pd.Timedelta(days=1))
                data.seen = store.watched_pairs(data.cutoff)
                summary.model = save_model(store, rc.train(data, factors=20, epochs=20, seed=seed),
                                           out / "models")[0]
                progress(f"day {number}: trained the reference model {summary.model}")
            if number == 1:
                continue  # drift needs a day before
            until = since + pd.Timedelta(days=1 if number < len(days) else 2)  # the last file runs past midnight
            done = audit_and_publish(store, cfg, since, until, None, cfg["audit"]["out"])
            found = [f for a in done.document["audits"].values() for f in a["findings"] if f["severity"] != "info"]
            summary.runs.append({"day": number, "run_id": done.run.run_id, "status": done.document["status"],
                                 "findings": [f"{f['audit']}: {f['message']}" for f in found]})
            progress(f"day {number}: run {done.run.run_id}: {counted(len(found), 'finding')} (warning or critical), "
                     f"{counted(len(done.alerts), 'new alert')}")
    finally:
        receiver.close()
        store.close()
    summary.alerts, summary.rejected = receiver.accepted, receiver.rejected
    return summary
