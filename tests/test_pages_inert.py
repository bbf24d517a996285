"""Every page the reports write is inert to data: a world whose titles, genres, occupations,
server names, error texts and movie ids carry markup and script is simulated, ingested into a
real store and audited, and each page (the dashboard, each run's page with its audit sections,
evidently's drift page) is opened in Debian's Chromium: no script of the data runs and no
element of the data exists, in the page or in any frame inside it."""

import re

import pandas as pd
import pytest

from recaudit.audits.store import Store
from recaudit.recsys.simulate import Config, simulate
from support import ARTIFACTS, run_cli

JS = "window.__pwned=1;alert(1)"
# Anywhere text is free (CSV fields, error texts): one of each way out of a context.
PAYLOADS = (f"</script><script>{JS}</script>", f'<img src=x onerror="{JS}">', f'"><svg onload="{JS}">')
# A server name holds no space or comma (the log's format): `/` separates attributes instead.
SERVERS = (f"</script><script>{JS}</script>:8082", f"<img/src=x/onerror={JS}>:8082", f'"><svg/onload={JS}>:8082')
# A movie id holds no `/`, `,` or space either: it can still open an element and, inside an
# attribute, close the quotes and add an attribute of its own.
MOVIE_PREFIX = f'<pwned-movie>"onmouseover="{JS}"'
ERROR = " ".join(PAYLOADS)

WATCH = re.compile(r"(.*?,GET /data/m/)([^/]+)(/\d+\.mpg)")
RATE = re.compile(r"(.*?,GET /rate/)(.+)(=[1-5])")
REC = re.compile(r"(.*?,recommendation request )([^,\s]+)(, status )(\d+)(, result: )(.*)(, \d+ ms)")

# What a page grew from the data, in one frame: script that ran, elements parsed from a value.
INSPECT = """() => ({
  pwned: typeof window.__pwned,
  injected: [...document.querySelectorAll('*')].filter(e =>
      e.localName.startsWith('pwned-') || [...e.attributes].some(a => a.name.startsWith('on'))
      || (e.localName === 'img' && e.getAttribute('src') === 'x')
      || (e.localName === 'script' && e.textContent.trim().startsWith('window.__pwned')))
    .map(e => e.outerHTML.slice(0, 120)),
  text: document.body ? document.body.innerText : '',
})"""


def hostile_line(line: str, servers: dict, n: int) -> str:
    """An event line (the `n`th) with markup before its movie ids and for its server name; an
    answered request on every tenth line becomes a failure whose error text is markup."""
    if m := WATCH.fullmatch(line):
        return f"{m[1]}{MOVIE_PREFIX}{m[2]}{m[3]}"
    if m := RATE.fullmatch(line):
        return f"{m[1]}{MOVIE_PREFIX}{m[2]}{m[3]}"
    if m := REC.fullmatch(line):
        status, result = m[4], m[6]
        if status == "200" and n % 10 == 0:
            status, result = "500", ERROR
        elif status == "200":
            result = ", ".join(MOVIE_PREFIX + movie for movie in result.split(", "))
        return f"{m[1]}{servers[m[2]]}{m[3]}{status}{m[5]}{result}{m[7]}"
    return line


@pytest.fixture(scope="module")
def hostile(recaudit_bin, tmp_path_factory):
    """Two daily audit runs, with their pages, over a simulated service in which every value an
    attacker could choose carries markup."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    simulate(data, Config(users=800, movies=120, days=4, seed=7, servers=len(SERVERS)))
    movies = pd.read_csv(data / "movies.csv", dtype=str, keep_default_na=False)
    movies["movie_id"] = MOVIE_PREFIX + movies["movie_id"]
    movies["title"] = PAYLOADS[0] + movies["title"] + PAYLOADS[1]
    for i, payload in enumerate(PAYLOADS):  # each a genre of its own, beside the movie's others
        movies.loc[i::len(PAYLOADS), "genres"] = payload + "|" + movies.loc[i::len(PAYLOADS), "genres"]
    movies.to_csv(data / "movies.csv", index=False)
    users = pd.read_csv(data / "users.csv", dtype=str, keep_default_na=False)
    for i, payload in enumerate(PAYLOADS):
        users.loc[i::len(PAYLOADS), "occupation"] = payload
    users.to_csv(data / "users.csv", index=False)
    log = (data / "events.log").read_text().splitlines()
    names = sorted({m[2] for line in log if (m := REC.fullmatch(line))})
    servers = dict(zip(names, SERVERS))
    (data / "events.log").write_text("\n".join(hostile_line(line, servers, n) for n, line in enumerate(log)) + "\n")

    db, out = str(root / "r.db"), root / "site"
    # Small groups and samples still get their tables, charts and evidently's report.
    (root / "recaudit.toml").write_text("[fairness]\nmin_group_size = 20\nmin_group_users = 5\nresamples = 20\n"
                                        "[drift]\nmin_sample = 20\n")
    assert run_cli(recaudit_bin, "ingest", "--db", db, str(data)).returncode == 0
    assert run_cli(recaudit_bin, "train", "--db", db, "--until", "2024-01-03", "--factors", "8",
                   "--models", str(root / "models")).returncode == 0
    for day in ("2024-01-03", "2024-01-04"):
        done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(root / "recaudit.toml"), "--since", day,
                       "--out", str(out))
        assert done.returncode in (0, 1) and b"Traceback" not in done.stderr, done.stderr
    return {"db": db, "out": out}


def runs(out):
    return sorted((out / "runs").iterdir(), key=lambda p: int(p.name))


def visit(chromium, path, name):
    """Open a page from disk and inspect it and every frame in it (`views`, one per inspection):
    evidently's page once drawn, and again with each row opened whose plots are labelled with
    data."""
    from playwright.sync_api import TimeoutError, sync_playwright

    seen = {"dialogs": [], "views": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        for frame in page.frames:
            where = {"url": frame.url, "drawn": True,
                     "sandbox": frame.frame_element().get_attribute("sandbox") if frame.parent_frame else None}
            if frame.url.endswith("/drift.html"):
                try:  # evidently draws its report from the data after load
                    frame.wait_for_function("document.querySelector('[id^=root_]')?.childElementCount > 0",
                                            timeout=20_000)
                except TimeoutError:  # the data broke its script
                    where["drawn"] = False
                for column in ("genre", "occupation") if where["drawn"] else ():
                    frame.get_by_placeholder("Search").fill(column)  # its table shows ten rows a page
                    row = frame.get_by_role("row").filter(has=frame.get_by_role("cell", name=column, exact=True))
                    row.get_by_role("button").click()
                    frame.locator(".js-plotly-plot").first.wait_for()
                    seen["views"].append({**where, "opened": column, **frame.evaluate(INSPECT)})
            seen["views"].append({**where, **frame.evaluate(INSPECT)})
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        browser.close()
    return seen


def test_markup_in_every_stored_value_neither_runs_nor_becomes_an_element_on_any_page(chromium, hostile):
    store = Store(f"sqlite:///{hostile['db']}")
    try:  # the payloads are in storage, where every page is rendered from
        assert set(store.read("recommendations")["server"].astype(str)) == set(SERVERS)
        assert (store.read("recommendations")["error"] == ERROR).any()
        assert store.read("movies")["movie_id"].str.startswith(MOVIE_PREFIX).all()
        assert set(PAYLOADS) <= set(store.read("users")["occupation"])
    finally:
        store.close()
    out = hostile["out"]
    pages = [out / "index.html", *(r / "index.html" for r in runs(out)), *(r / "drift.html" for r in runs(out))]
    for path in pages:
        name = "inert-" + path.relative_to(out).with_suffix("").as_posix().replace("/", "-")
        seen = visit(chromium, path, name)
        assert seen["dialogs"] == [], name
        for view in seen["views"]:
            assert view["drawn"] and view["pwned"] == "undefined" and view["injected"] == [], \
                (name, {k: v for k, v in view.items() if k != "text"})
        if path.name == "index.html" and path.parent.parent.name == "runs":  # a run's page shows the data as text
            shown = seen["views"][0]["text"]
            for value in (*SERVERS, PAYLOADS[0], MOVIE_PREFIX):
                assert value in shown, (name, value)


def test_evidently_page_is_shown_only_in_a_frame_sandboxed_from_the_run_page(chromium, hostile):
    run = runs(hostile["out"])[-1]
    assert 'href="drift.html"' not in (run / "index.html").read_text()  # a link opens it at the page's origin
    views = visit(chromium, run / "index.html", "sandboxed")["views"]
    frames = {v["url"]: v["sandbox"] for v in views if v["url"] != (run / "index.html").as_uri()}
    assert frames == {(run / "drift.html").as_uri(): "allow-scripts"}
    assert all("Dataset Drift" in v["text"] for v in views if v["sandbox"])  # it draws, in its sandbox
