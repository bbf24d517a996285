"""Reports open in a real headless browser (Debian's Chromium) from disk: nothing requested
beyond the files, no console errors, the findings and charts there, readable on a phone, and
data that looks like HTML shown as text. A screenshot of each page is kept as a test artifact."""

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
            publish(store, out)
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
