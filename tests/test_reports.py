"""Reports open in a real headless browser (Debian's Chromium) from disk: nothing requested
beyond the files, no console errors, the findings and charts there, readable on a phone, and
data that looks like HTML shown as text. A screenshot of each page is kept as a test artifact."""

import json
import os
import re
import threading

import pandas as pd
import pytest

from recaudit.recsys.simulate import Config, simulate
from support import ARTIFACTS, open_page, run_cli

HOSTILE = "<script>alert('owned')</script> & <b>bold</b>"
RENDERS = 10  # every page and artifact rewritten this many times while a reader polls them


@pytest.fixture(scope="module")
def published(recaudit_bin, tmp_path_factory):
    """Three daily runs of every audit over a simulated service with the feedback and fairness
    faults, in which every movie's title carries markup."""
    root = tmp_path_factory.mktemp("reports")
    data = root / "data"
    simulate(data, Config(users=1500, movies=200, days=6, seed=3, inject=("feedback", "fairness")))
    movies = pd.read_csv(data / "movies.csv", dtype=str, keep_default_na=False)
    movies["title"] = HOSTILE + " " + movies["title"]
    movies.to_csv(data / "movies.csv", index=False)
    db, out = str(root / "r.db"), root / "site"
    (root / "recaudit.toml").write_text("[fairness]\nmin_group_size = 30\nresamples = 50\n")
    assert run_cli(recaudit_bin, "ingest", "--db", db, str(data)).returncode == 0
    assert run_cli(recaudit_bin, "train", "--db", db, "--until", "2024-01-04", "--factors", "8",
                   "--models", str(root / "models")).returncode == 0
    for day in ("2024-01-04", "2024-01-05", "2024-01-06"):
        done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(root / "recaudit.toml"), "--since", day,
                       "--out", str(out))
        assert done.returncode in (0, 1) and b"Traceback" not in done.stderr, done.stderr  # 1: critical findings
    return {"db": db, "out": out, "root": root}


def test_the_run_page_shows_findings_and_charts_offline_without_errors(chromium, published):
    page = sorted((published["out"] / "runs").iterdir(), key=lambda p: int(p.name))[-1] / "index.html"
    seen = open_page(chromium, page, "run-page")
    assert all(url.startswith("file://") for url in seen["requests"]), seen["requests"]
    assert seen["errors"] == [] and seen["dialogs"] == []
    assert seen["findings"] >= 1 and "feedback loop suspected" in seen["text"]
    assert seen["charts"] >= 4  # Lorenz curve, correlation scatter, concentration trend, fairness intervals
    for section in ("validation", "drift", "fairness", "feedback", "online"):
        assert f"{section}\n" in seen["text"] or f"{section} " in seen["text"]
    assert (ARTIFACTS / "run-page.png").stat().st_size > 10_000


def test_the_dashboard_lists_runs_newest_first_with_trends(chromium, published):
    seen = open_page(chromium, published["out"] / "index.html", "dashboard")
    assert all(url.startswith("file://") for url in seen["requests"]) and seen["errors"] == []
    assert seen["run_links"] == 3 and seen["charts"] >= 3
    html = (published["out"] / "index.html").read_text()
    assert html.index("2024-01-06") < html.index("2024-01-05") < html.index("2024-01-04")


def test_pages_read_on_a_phone_without_sideways_scrolling(chromium, published):
    for name, page in (("dashboard-phone", published["out"] / "index.html"),
                       ("run-page-phone", next((published["out"] / "runs").iterdir()) / "index.html")):
        seen = open_page(chromium, page, name, viewport=(390, 844))
        assert seen["overflow"] <= 1, name  # wide tables scroll inside their own box


def test_titles_that_look_like_html_are_shown_as_text(chromium, published):
    page = sorted((published["out"] / "runs").iterdir(), key=lambda p: int(p.name))[-1] / "index.html"
    html = page.read_text()
    assert "&lt;script&gt;alert(" in html and "<script>alert(" not in html
    seen = open_page(chromium, page, "escaped")
    assert HOSTILE in seen["text"] and seen["dialogs"] == []


def test_report_renders_every_page_again_from_the_database(recaudit_bin, published):
    again = published["root"] / "again"
    done = run_cli(recaudit_bin, "report", "--db", published["db"], "--out", str(again))
    assert done.returncode == 0 and b"dashboard:" in done.stdout
    runs = sorted(p.name for p in (again / "runs").iterdir())
    assert runs == sorted(p.name for p in (published["out"] / "runs").iterdir())
    first = again / "runs" / runs[0]
    assert (first / "index.html").exists() and (first / "drift.html").exists()  # evidently's report came along
    original = (published["out"] / "runs" / runs[0] / "index.html").read_text()
    assert (first / "index.html").read_text() == original


def test_a_page_read_while_the_pages_are_rendered_again_is_never_empty_or_cut_short(published):
    """The report job renders every page again while the service serves them: a reader sees
    the old file or the new one, whole."""
    from recaudit.audits.store import Store
    from recaudit.reports.html import publish

    out = published["root"] / "polled"
    store = Store(f"sqlite:///{published['db']}")
    publish(store, out)  # every file exists before it is polled
    files = sorted(p for p in out.rglob("*") if p.suffix in (".html", ".json"))
    assert {p.name for p in files} == {"index.html", "drift.html", "drift.json"}
    rendering, reads, partial = threading.Event(), [], []

    def poll():
        while rendering.is_set():
            for path in files:
                data = path.read_bytes()
                whole = data.rstrip().endswith(b"</html>") if path.suffix == ".html" else data.endswith(b"}\n")
                reads.append(path)
                if not whole:
                    partial.append((path.relative_to(out), len(data)))

    rendering.set()
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(RENDERS):
            publish(store, out, full=True)  # every page, not only the stale ones
    finally:
        rendering.clear()
        reader.join()
        store.close()
    assert len(reads) >= len(files) and partial == []
    assert list(out.rglob("*.tmp")) == []  # no temporary file is left behind


def test_an_audit_s_tables_come_in_the_order_of_its_dimensions_not_alphabetically():
    import numpy as np

    import recaudit

    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(60), 5)
    ratings = pd.DataFrame({"user_id": user, "rating": rng.integers(1, 6, user.size).astype(float),
                            "prediction": 3.0, "sex": np.where(user < 30, "F", "M"),
                            "age_group": np.where(user % 2, "teen", "senior"), "region": np.where(user < 20, "n", "s")})
    page = recaudit.fairness(ratings, dimensions=["sex", "region", "age_group"],
                             config={"fairness": {"resamples": 20}})._repr_html_()
    assert page.index("By sex") < page.index("By region") < page.index("By age_group")


# -- the dashboard's state now, its bounds, and publishing what changed ----------------------------

def doc(run_id: int, until: str, drift_share: float = 0.0, schedule: str | None = None) -> dict:
    """A run's results.json as `Run.to_dict` writes it, with one drift audit: critical dataset
    drift when `drift_share` reaches 0.25."""
    from recaudit.audits.result import AuditResult, Finding

    findings = [Finding("drift", "drift.share_drifted", "critical", f"dataset drift: {drift_share:.0%} of the signals",
                        value=drift_share, threshold=0.25, kind="dataset_drift")] if drift_share >= 0.25 else []
    result = AuditResult("drift", metrics={"drift.share_drifted": drift_share},
                         findings=findings)
    return {"run_id": run_id, "status": "critical" if findings else "ok", "schedule": schedule,
            "window": {"since": (pd.Timestamp(until) - pd.Timedelta(days=1)).isoformat(),
                       "until": pd.Timestamp(until).isoformat()},
            "audits": {"drift": result.to_dict()}}


def record(store, cfg, out, until: str, drift_share: float = 0.0, schedule: str | None = None) -> dict:
    """A run recorded as `audit_and_publish` records one: started, finished, judged for alerts."""
    from recaudit.reports import alerts

    since = pd.Timestamp(until) - pd.Timedelta(days=1)
    run_id = store.start_run(since, until, ["drift"], schedule)
    document = doc(run_id, until, drift_share, schedule)
    store.finish_run(run_id, document, out / "runs" / str(run_id))
    alerts.evaluate(store, document, cfg["alerts"], f"runs/{run_id}/index.html")
    return document


@pytest.fixture
def history(tmp_path):
    """A store whose daily job found a critical dataset drift in run 3, after which the hourly
    job wrote newer runs that are all ok."""
    from recaudit.audits import config
    from recaudit.audits.store import Store

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    cfg = config.load()
    out = tmp_path / "site"
    for day in ("2024-01-02", "2024-01-03"):
        record(store, cfg, out, day, 0.1, "daily")
    record(store, cfg, out, "2024-01-04", 0.5, "daily")
    for hour in range(1, 6):
        record(store, cfg, out, f"2024-01-04T{hour:02d}:00", 0.0, "hourly")
    yield store, cfg, out
    store.close()


def test_the_dashboard_s_headline_is_the_worst_open_condition_even_when_the_newest_run_is_ok(history):
    from recaudit.reports.html import render_dashboard

    store, cfg, out = history
    assert store.runs(limit=1)[0]["status"] == "ok"
    html = render_dashboard(store, out, cfg).read_text()
    headline = html.split('class="headline"')[1].split("</p>")[0]
    assert "critical" in headline and "dataset drift: 50% of the signals" in headline and "run 3" in headline
    now = html.split('id="now"')[1].split("</section>")[0]
    assert 'href="runs/3/index.html"' in now and "daily" in now  # the run that opened it, and its job
    assert "drift.share_drifted" in now and "share of drift signals that drifted" in now
    assert html.index('id="now"') < html.index('id="trends"') < html.index('id="runs"')


def test_the_dashboard_shows_the_newest_runs_and_links_every_other_from_an_archive(history, monkeypatch):
    from recaudit.reports import html as pages

    store, cfg, out = history
    monkeypatch.setattr(pages, "RUNS_SHOWN", 3)
    monkeypatch.setattr(pages, "ARCHIVE_SIZE", 5)
    dashboard = pages.render_dashboard(store, out, cfg).read_text()
    listed = dashboard.split('id="runs"')[1]
    assert re.findall(r'href="runs/(\d+)/index.html"', listed) == ["8", "7", "6"]
    assert "The newest 3 of 8 runs" in listed
    archive = re.findall(r'href="(archive/\d+/index.html)">(\d+)–(\d+)<', listed)
    assert archive == [("archive/2/index.html", "6", "8"), ("archive/1/index.html", "1", "5")]
    first = (out / "archive" / "1" / "index.html").read_text()
    assert sorted(re.findall(r'href="../../runs/(\d+)/index.html"', first)) == ["1", "2", "3", "4", "5"]


def test_trends_read_only_the_last_points_and_draw_the_known_thresholds(history, monkeypatch):
    from recaudit.reports import html as pages

    store, cfg, out = history
    cfg["alerts"]["rules"] = [{"name": "drifting", "metric": "drift.share_drifted", "op": ">=", "threshold": 0.4}]
    monkeypatch.setattr(pages, "TREND_POINTS", 4)
    rows = store.metric_series(["drift.share_drifted"], newest=4)
    assert rows["run_id"].tolist() == [5, 6, 7, 8]
    html = pages.render_dashboard(store, out, cfg).read_text()
    drift = html.split("Drift: share of signals drifted</figcaption>")[1].split("</figure>")[0]
    assert drift.count('class="threshold"') == 2  # the rule's and the audit's own (documented by run 3)
    assert "rule drifting 0.4" in drift and "drift threshold 0.25" in drift
    assert drift.count("<circle") == 4


def test_publish_renders_only_the_pages_that_are_missing_or_stale_unless_asked_for_all(history):
    from recaudit.reports.html import publish

    store, cfg, out = history
    publish(store, out, cfg)
    pages = sorted((out / "runs").glob("*/index.html"))
    assert len(pages) == 8
    written = {p: p.stat().st_mtime_ns for p in pages}
    (out / "runs" / "2" / "index.html").unlink()
    publish(store, out, cfg)
    again = {p: p.stat().st_mtime_ns for p in pages}
    assert [p.parent.name for p in pages if again[p] != written[p]] == ["2"]
    later = record(store, cfg, out, "2024-01-05", 0.0, "daily")
    publish(store, out, cfg)
    assert (out / "runs" / str(later["run_id"]) / "index.html").exists()
    assert all(p.stat().st_mtime_ns == again[p] for p in pages)
    publish(store, out, cfg, full=True)
    assert all(p.stat().st_mtime_ns != again[p] for p in pages)


def test_a_run_page_is_stale_when_older_than_the_templates(history):
    from recaudit.reports import html as pages

    store, cfg, out = history
    pages.publish(store, out, cfg)
    page = out / "runs" / "4" / "index.html"
    old = pages.renderer_mtime() - 60
    os.utime(page, (old, old))
    pages.publish(store, out, cfg)
    assert page.stat().st_mtime > old + 30


def realistic() -> dict:
    """A run document of the real audits' results for fairness (three dimensions, sex last in
    the configuration), feedback-like metrics, and a validation that passed."""
    import numpy as np

    import recaudit
    from recaudit.audits.result import AuditResult

    rng = np.random.default_rng(1)
    user = np.repeat(np.arange(90), 4)
    ratings = pd.DataFrame({"user_id": user, "rating": rng.integers(1, 6, user.size).astype(float),
                            "prediction": 3.0, "sex": np.where(user < 45, "F", "M"),
                            "age": np.where(user % 2, "teen", "senior"), "region": np.where(user < 30, "n", "s")})
    fairness = recaudit.fairness(ratings, dimensions=["region", "age", "sex"], config={"fairness": {"resamples": 20}})
    validation = AuditResult("validation", metrics={"validation.failed": 0.0}, details={"expectations": [
        {"dataset": "ratings", "name": f"check_{i}", "severity": "critical", "success": True, "message": "",
         "unexpected_count": 0, "unexpected_percent": 0.0, "element_count": 10} for i in range(50)]})
    feedback = AuditResult("feedback", metrics={"feedback.hhi": 0.04375, "feedback.gini": 0.5})
    audits = {"validation": validation, "online": AuditResult("online", metrics={"online.mrr": 0.2}),
              "exposure": AuditResult("exposure", metrics={"exposure.mrr": 0.2}),
              "drift": AuditResult("drift", metrics={"drift.share_drifted": 0.0}), "feedback": feedback,
              "fairness": fairness}
    return {"run_id": 1, "status": "ok", "schedule": None,
            "window": {"since": "2024-01-03T00:00:00", "until": "2024-01-04T00:00:00"},
            "audits": {name: json.loads(json.dumps(r.to_dict(), default=str)) for name, r in audits.items()}}


def test_a_run_page_reads_findings_then_fairness_feedback_drift_online_exposure_validation(tmp_path):
    from recaudit.reports.html import render_run

    html = render_run(realistic(), tmp_path).read_text()
    body = html.split('id="summary"')[1]
    at = [body.index(f'<section id="{name}">') for name in
          ("fairness", "feedback", "drift", "online", "exposure", "validation")]
    assert at == sorted(at)
    fairness = body.split('<section id="fairness">')[1].split("</section>")[0]
    assert fairness.index("By sex") < fairness.index("By age") < fairness.index("By region")


def test_a_validation_that_passed_is_folded_and_one_that_failed_is_open(tmp_path):
    from recaudit.reports.html import render_run

    run = realistic()
    html = render_run(run, tmp_path).read_text()
    assert re.search(r'<details class="expectations">\s*<summary>50 expectations: all passed</summary>', html)
    run["audits"]["validation"]["details"]["expectations"][7]["success"] = False
    html = render_run(run, tmp_path).read_text()
    assert '<details class="expectations" open>' in html and "1 failed" in html
    assert html.index("check_7") < html.index("check_0")  # what failed comes first


def test_metric_tables_show_each_key_with_its_name_in_words(tmp_path):
    from recaudit.reports.html import render_run

    html = render_run(realistic(), tmp_path).read_text()
    assert ('<code>feedback.hhi</code> <span class="name">Herfindahl–Hirschman index of recommendations</span>'
            in html)
    assert '<code>fairness.rmse_gap.sex</code> <span class="name">gap in RMSE, worst group against best, by sex' \
        in html


def test_trend_legends_have_a_swatch_per_line_under_the_plot_and_distinct_date_ticks():
    from recaudit.reports import charts

    days = [f"2024-01-{d:02d}T00:00:00" for d in range(1, 31)]
    svg = str(charts.trend("t", {"Gini": [0.5] * 30, "top-10 share": [0.2] * 30}, charts.time_labels(days),
                           thresholds=[("rule high", 0.8)]))
    swatches = re.findall(r'<rect class="swatch" x="[\d.]+" y="([\d.]+)"[^>]* fill="(#\w+)"', svg)
    assert [color for _y, color in swatches] == list(charts.PALETTE[:2])
    assert all(float(y) > charts.HEIGHT - charts.BOTTOM for y, _c in swatches)  # below the plot and its axis
    assert '<line class="swatch"' in svg and 'class="threshold"' in svg
    ticks = re.findall(r'<text class="xtick" x="([\d.]+)" y="[\d.]+" text-anchor="(\w+)">([^<]+)<', svg)
    labels = [label for *_, label in ticks]
    assert len(labels) >= 3 and len(set(labels)) == len(labels) and all(len(t) == 10 for t in labels)
    extents = []
    for x, anchor, label in ticks:
        width, x = charts.text_width(label), float(x)
        start = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        extents.append((start, start + width))
    assert all(a[1] < b[0] for a, b in zip(extents, extents[1:]))  # no two labels touch


def test_a_metric_key_s_name_is_composed_from_its_parts():
    from recaudit.reports.names import metric_name

    assert metric_name("feedback.hhi") == "Herfindahl–Hirschman index of recommendations"
    assert metric_name("fairness.rmse_gap_p_warm.age") == ("p-value of gap in RMSE, worst group against best on "
                                                           "warm ratings, by age")
    assert metric_name("exposure.ratio.genre.Romance") == "exposure-to-watch ratio, genre Romance"
    assert metric_name("made.up") is None
