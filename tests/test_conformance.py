"""One simulated service stored four ways (SQLite, PostgreSQL, a lake read by DuckDB, a lake read
by Spark) must give every audit the same metrics, to 1e-9, and the same findings.

The service is eight days with every fault injected from its middle, ingested as a log that
grew (two tails, the first cut in the middle of a line), with a reference model trained on the
first four days; the audits run over the last four, drift against the first four.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recaudit.audits import config as cfg
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.audits.store import Store
from recaudit.recsys import recommender as rc
from recaudit.recsys.simulate import Config, simulate
from recaudit.scheduler.cli import load_split
from recaudit.scheduler.jobs import save_model

START = pd.Timestamp("2026-01-01")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "lake-duckdb",
            pytest.param("lake-spark", marks=pytest.mark.spark)]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conformance") / "service"
    simulate(out, Config(users=1200, movies=150, days=8, seed=23, start=START.date(),
                         inject=("corrupt", "drift", "fairness", "feedback", "starve")))
    return out


def _grown_log(service: Path, where: Path) -> list[Path]:
    """The log as two tails: first up to the middle of a line past its half, then whole."""
    data = (service / "events.log").read_bytes()
    cut = data.index(b"\n", len(data) // 2) - 7
    where.mkdir(parents=True, exist_ok=True)
    (where / "events.log").write_bytes(data[:cut])
    return [where / "events.log"]


def _stored(url: str, service: Path, tmp_path: Path, **lake) -> dict:
    store = Store(url, **lake)
    try:
        log = _grown_log(service, tmp_path / "logs")
        first = ingest(store, [str(service / "users.csv"), str(service / "movies.csv"), str(log[0])])
        shutil.copy(service / "events.log", log[0])  # the log grew: its half-written line is read again
        second = ingest(store, [str(log[0])])
        counts = {k: store.count(k) for k in ("watches", "ratings", "recommendations", "recommendation_items",
                                              "quarantine")}
        data = load_split(store, START + pd.Timedelta(days=4))
        model = rc.train(data, algo="svd", factors=8, epochs=5, seed=3)
        save_model(store, model, tmp_path / "models")
        config = cfg.load(None)
        config["drift"]["min_sample"] = 50
        run = runs.run(store, START + pd.Timedelta(days=4), START + pd.Timedelta(days=8), config,
                       out=tmp_path / "reports", reference=(START, START + pd.Timedelta(days=4)))
        return {"totals": [first.totals(), second.totals()], "counts": counts,
                "status": {n: r.status for n, r in run.results.items()},
                "errors": {n: r.error for n, r in run.results.items() if r.error},
                "metrics": {n: r.metrics for n, r in run.results.items()},
                "findings": sorted((f.key, f.severity, f.message) for r in run.results.values() for f in r.findings)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def reference(service, tmp_path_factory) -> dict:
    where = tmp_path_factory.mktemp("sqlite")
    return _stored(f"sqlite:///{where / 'recaudit.db'}", service, where)


@pytest.fixture
def stored(request, service, tmp_path) -> dict:
    backend = request.param
    if backend == "sqlite":
        return _stored(f"sqlite:///{tmp_path / 'again.db'}", service, tmp_path)
    if backend == "postgres":
        return _stored(request.getfixturevalue("postgres_schema_url"), service, tmp_path)
    engine = backend.split("-")[1]
    if engine == "spark":
        request.getfixturevalue("spark")
    return _stored(f"sqlite:///{tmp_path / 'manifest.db'}", service, tmp_path, lake=str(tmp_path / "lake"),
                   engine=engine)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def test_the_reference_run_measures_every_audit(reference):
    """What the backends are compared on: every audit ran and had data (no vacuous agreement)."""
    assert reference["errors"] == {}
    assert set(reference["status"]) == {"validation", "drift", "fairness", "feedback", "online", "exposure"}
    assert "insufficient_data" not in {reference["status"][n] for n in ("drift", "fairness", "feedback", "online")}
    assert sum(len(m) for m in reference["metrics"].values()) > 300
    assert reference["findings"], "the injected faults give findings"
    assert reference["totals"][1]["lines"] > 0, "the second tail was ingested"


@pytest.mark.parametrize("stored", BACKENDS, indirect=True)
def test_every_backend_gives_the_same_metrics_and_findings(stored, reference):
    assert stored["errors"] == {}
    assert stored["totals"] == reference["totals"]
    assert stored["counts"] == reference["counts"]
    assert stored["status"] == reference["status"]
    for audit, metrics in reference["metrics"].items():
        theirs = stored["metrics"][audit]
        assert set(theirs) == set(metrics), audit
        differing = {k: (v, theirs[k]) for k, v in metrics.items() if not _same(v, theirs[k])}
        assert differing == {}, audit
    assert stored["findings"] == reference["findings"]
