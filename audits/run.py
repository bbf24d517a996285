"""An audit run: the registered audits over one window of stored data, each isolated from the
others' failures, recorded in the store and written as results.json under the output
directory (the page beside it is reports.html's)."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recaudit.audits import registry
from recaudit.audits.files import write_atomic
from recaudit.audits.result import AuditResult, Finding
from recaudit.audits.store import Store


@dataclass
class AuditContext:
    """What an audit may look at: the window of stored data, the configuration, its own
    directory for artifacts (e.g. an evidently report)."""

    store: Store
    since: pd.Timestamp
    until: pd.Timestamp
    config: dict
    run_id: int
    out_dir: Path
    reference: tuple[pd.Timestamp, pd.Timestamp] | None = None  # a reference window given by the user


@dataclass
class Run:
    run_id: int
    since: pd.Timestamp
    until: pd.Timestamp
    results: dict[str, AuditResult] = field(default_factory=dict)
    path: Path | None = None
    schedule: str | None = None  # the scheduled job that ran it; None for an ad-hoc run

    @property
    def status(self) -> str:
        statuses = [r.status for r in self.results.values()]
        if "errored" in statuses:
            return "errored"
        if any(r.critical for r in self.results.values()):
            return "critical"
        return "findings" if "findings" in statuses else "ok"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "status": self.status, "schedule": self.schedule,
                "window": {"since": self.since.isoformat(), "until": self.until.isoformat()},
                "audits": {name: r.to_dict() for name, r in self.results.items()}}


def parse_duration(text: str) -> pd.Timedelta:
    try:
        return pd.Timedelta(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 1d, 12h, 7d)") from None


def default_window(store: Store, length: str, since=None, until=None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[since, until): the bounds given; a missing `until` is `since` + `length`, or without
    either, the `length` that ends at the top of the hour after the latest stored event (whole
    hours let audits read the hourly rollups)."""
    span = parse_duration(length)
    if until is None and since is not None:
        until = pd.Timestamp(since) + span
    elif until is None:
        latest = store.latest_event_time()
        if latest is None:
            raise LookupError("no events stored: ingest some first")
        until = latest.floor("h") + pd.Timedelta(hours=1)
    until = pd.Timestamp(until)
    since = pd.Timestamp(since) if since is not None else until - span
    if since >= until:
        raise ValueError(f"the window is empty: since {since} is not before until {until}")
    return since, until


def run(store: Store, since, until, config: dict, only: list[str] | None = None, out: str | Path = "reports",
        reference: tuple | None = None, schedule: str | None = None) -> Run:
    """Run the audits (all registered, or `only`) over [since, until), record and write them.
    `reference` is the window drift compares with, when not the configured one; `schedule`
    names the scheduled job running it (None: ad hoc)."""
    names = only or list(registry.AUDITS)
    unknown = [n for n in names if n not in registry.AUDITS]
    if unknown:
        raise ValueError(f"unknown audit {unknown[0]!r} (known: {', '.join(registry.AUDITS)})")
    run_id = store.start_run(since, until, names, schedule)
    try:
        return _run(store, run_id, since, until, config, names, Path(out), reference, schedule)
    except BaseException as exc:  # interrupted too: a run is never left "running" by a live process
        try:
            store.abandon_run(run_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database itself failed: the original error is the one to show
            pass
        raise


def _run(store: Store, run_id: int, since, until, config: dict, names: list[str], out: Path,
         reference: tuple | None, schedule: str | None) -> Run:
    result = Run(run_id, pd.Timestamp(since), pd.Timestamp(until), path=out / "runs" / str(run_id), schedule=schedule)
    result.path.mkdir(parents=True, exist_ok=True)
    ctx = AuditContext(store, result.since, result.until, config, run_id, result.path,
                       tuple(pd.Timestamp(t) for t in reference) if reference else None)
    for name in names:
        started = time.perf_counter()
        try:
            outcome = registry.get(name)(ctx)
        except Exception as exc:  # one audit's failure must not stop the others
            error = f"{type(exc).__name__}: {exc}"
            outcome = AuditResult(name, status="errored", error=error, details={"traceback": traceback.format_exc()},
                                  findings=[Finding(name, f"{name}.errored", "critical",
                                                    f"the {name} audit could not run: {error}", kind="audit_errored")])
        outcome.seconds = time.perf_counter() - started
        result.results[name] = outcome
    document = result.to_dict()
    write_atomic(result.path / "results.json", json.dumps(document, indent=2, default=str) + "\n")
    store.finish_run(run_id, document, result.path)
    return result
