"""The pages as reviewers see them, in Debian's Chromium at a desktop's 1280×900 and a phone's
390×844: the quick demo's dashboard and its newest run's page (real audits over a simulated
service with the feedback and fairness faults, alerts judged and posted). No sideways scrolling,
no console errors, chart text of at least 10 px as drawn, and a validation that passed folded.
Screenshots are kept in support.ARTIFACTS ($RECAUDIT_TEST_ARTIFACTS, else ./test-artifacts/)."""

import os

import pytest

from support import ARTIFACTS

VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
# What the page shows, measured as drawn: SVG text is sized in the drawing's units, so its
# size on screen is the computed size scaled by the drawing's width on screen over its viewBox.
MEASURE = """() => ({
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  chartText: [...document.querySelectorAll('svg.chart')].flatMap(svg => {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    return [...svg.querySelectorAll('text')].map(t => parseFloat(getComputedStyle(t).fontSize) * scale);
  }),
  charts: document.querySelectorAll('svg.chart').length,
  validationOpen: [...document.querySelectorAll('#validation details.expectations')].map(d => d.open),
  validationRowsShown: [...document.querySelectorAll('#validation details.expectations tr')]
      .filter(r => r.checkVisibility()).length,
  headline: (document.querySelector('.headline') || {}).innerText || '',
})"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`recaudit demo --quick`: six simulated days, a run a day from the second, its reports."""
    from recaudit.scheduler import demo as demo_module

    before = dict(os.environ)
    try:
        summary = demo_module.run(tmp_path_factory.mktemp("demo") / "demo", quick=True, progress=lambda *_: None)
    finally:  # the demo sets its webhook's secret in the environment
        os.environ.clear()
        os.environ.update(before)
    newest = max(r["run_id"] for r in summary.runs)
    return {"dashboard": summary.dashboard, "run": summary.out / "reports" / "runs" / str(newest) / "index.html"}


def look(chromium, path, name, viewport):
    """Open a page from disk at `viewport`; what it measures (MEASURE), console errors, and a
    full-page screenshot ARTIFACTS/`name`.png."""
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        seen = page.evaluate(MEASURE)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        browser.close()
    return {**seen, "errors": errors}


@pytest.mark.parametrize("size", VIEWPORTS)
@pytest.mark.parametrize("which", ["dashboard", "run"])
def test_pages_fit_the_screen_without_errors_and_their_chart_text_stays_legible(chromium, demo, which, size):
    seen = look(chromium, demo[which], f"browser-{which}-{size}", VIEWPORTS[size])
    assert seen["overflow"] <= 0, seen["overflow"]  # scrollWidth <= innerWidth
    assert seen["errors"] == []
    assert seen["charts"] >= 3 and seen["chartText"]
    assert min(seen["chartText"]) >= 10, min(seen["chartText"])
    assert (ARTIFACTS / f"browser-{which}-{size}.png").stat().st_size > 10_000


def test_the_dashboard_opens_with_the_worst_condition_open_now(chromium, demo):
    seen = look(chromium, demo["dashboard"], "browser-dashboard-headline", VIEWPORTS["phone"])
    assert seen["headline"].startswith("warning") and "open since" in seen["headline"]


def test_a_validation_that_passed_is_folded_on_the_run_page(chromium, demo):
    seen = look(chromium, demo["run"], "browser-run-validation", VIEWPORTS["desktop"])
    assert seen["validationOpen"] == [False] and seen["validationRowsShown"] == 0
