"""HTML pages for reviewers, rendered from runs' results (results.json), never from the data.

Jinja2 with autoescape: every value that comes from data is escaped. Pages are one file each,
styles and charts (SVG) inline, so they open from disk with no network and read on a phone.

- A run's page, OUT/runs/<run_id>/index.html: its findings, then its audits in the order a
  reviewer reads them (`SECTIONS`).
- The dashboard, OUT/index.html: the state now (the conditions open across every audit and
  schedule, worst first, so that its headline is the worst of them and not whatever the
  newest run said), then the key metrics over the last `TREND_POINTS` runs, then the newest
  `RUNS_SHOWN` runs; every run is listed, `ARCHIVE_SIZE` to a page, in OUT/archive/<n>/index.html.
  What it reads is bounded by those numbers, not by how many runs the store holds.
- `publish` renders what is missing or stale (`stale`), so that the report job costs as
  much with 10,000 runs as with 10; `full=True` renders every page again.

`AuditResult.save_html` writes one audit's section of a run page as a page of its own. Every
file the reports write goes through `write_atomic`, so a page served while the report job
runs is never half written.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup

from recaudit.audits.files import write_atomic
from recaudit.audits.vocabulary import counted
from recaudit.reports import charts
from recaudit.reports.names import metric_name

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
TRENDS = {  # chart title: {line name: metric key}
    "Concentration of recommendations": {"Gini": "feedback.gini", "top-10 share": "feedback.top10_share"},
    "Fairness: RMSE gap between groups": {"by sex": "fairness.rmse_gap.sex", "by age group": "fairness.rmse_gap.age"},
    "Drift: share of signals drifted": {"drifted share": "drift.share_drifted"},
    "Online: success rate and availability": {"success rate": "online.success_rate",
                                              "availability": "online.availability"},
}
# The settings that are an audit's own threshold on a trended key, for when no run documents
# it (a run writes the threshold into a finding only when it is crossed). Fairness documents
# its gap thresholds in every run (details.gaps), and those are read first.
SETTING_THRESHOLDS = {"drift.share_drifted": ("drift", "share_threshold"),
                      "online.availability": ("online", "min_availability"),
                      "fairness.rmse_gap": ("fairness", "gap_thresholds", "rmse")}
# The run page's order after its findings: what reviewers read first. Audits not named here
# come after these, in the run's order.
SECTIONS = ("fairness", "feedback", "drift", "online", "exposure", "validation")
DIMENSIONS_FIRST = ("sex", "age")  # then a fairness audit's other dimensions, in its configured order
RUNS_SHOWN = 30  # the newest runs on the dashboard: about a day of the default schedule
TREND_POINTS = 60  # runs per trend chart
ARCHIVE_SIZE = 200  # runs per archive page
RENDERER = [Path(__file__).parent / "templates", *(Path(__file__).with_name(f"{m}.py") for m in
                                                   ("html", "charts", "names"))]
EPOCH = datetime(1970, 1, 1)


@lru_cache(maxsize=1)
def environment():
    """The templates' environment, made once per process: publishing renders many pages."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("recaudit.reports", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["percent"] = lambda v: "–" if _missing(v) else (f"{v:.1f}%" if v >= 0.1 or v == 0 else f"{v:.2g}%")
    env.filters["number"] = lambda v: "–" if _missing(v) else (f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}")
    env.filters["grouped"] = _grouped
    env.filters["reviewed_first"] = reviewed_first
    env.filters["when"] = _when
    env.globals.update(charts=charts, metric=metric, counted=counted)
    return env


def _grouped(rows: list[dict], key: str) -> list[tuple]:
    """(value, rows) of `rows` by `key`, in the order the values first appear: the audit's own
    order (the configured dimensions), where jinja's groupby would sort them."""
    out: dict = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return list(out.items())


def reviewed_first(groups: list[tuple]) -> list[tuple]:
    """(dimension, rows) with sex first, then age, then the others in their own order: the
    dimensions reviewers look at first, whatever order the configuration lists them in.

    >>> [d for d, _ in reviewed_first([("occupation", []), ("age", []), ("region", []), ("sex", [])])]
    ['sex', 'age', 'occupation', 'region']
    """
    rank = {name: i for i, name in enumerate(DIMENSIONS_FIRST)}
    return sorted(groups, key=lambda group: rank.get(group[0], len(rank)))


def ordered(audits: dict) -> list[tuple[str, dict]]:
    """A run's audits as (name, result) in the run page's order (`SECTIONS`).

    >>> [n for n, _ in ordered({"validation": {}, "drift": {}, "custom": {}, "fairness": {}})]
    ['fairness', 'drift', 'validation', 'custom']
    """
    rank = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(audits.items(), key=lambda item: rank.get(item[0], len(rank)))


def metric(key: str) -> Markup:
    """A metric key as the tables show it: the key, and beside it its name in words."""
    words = metric_name(key)
    name = Markup(' <span class="name">{}</span>').format(words) if words else ""
    return Markup('<code>{}</code>{}').format(key, name)


def _when(value) -> str:
    """An ISO time (or datetime) as pages show it: to the minute, UTC."""
    if _missing(value) or value == "":
        return ""
    return str(value)[:16].replace("T", " ")


def _missing(value) -> bool:
    """No value to show: None, or a field this audit's result does not have (jinja2.Undefined)."""
    from jinja2 import Undefined

    return value is None or isinstance(value, Undefined)


# -- a run's page -------------------------------------------------------------------------------

def render_run(run: dict, directory: str | Path) -> Path:
    """Write index.html for one run (its results.json document) into its directory.

    Parameters
    ----------
    run : dict
        The run's document: run_id, status, window and audits (each `AuditResult.to_dict()`).
    directory : str or Path
        Where the page goes, beside the run's artifacts.

    Returns
    -------
    Path
        The page written.
    """
    audits = ordered(run["audits"])
    findings = [f for _name, audit in audits for f in audit["findings"]]
    findings.sort(key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))
    page = environment().get_template("run.html.j2").render(run=run, audits=audits, findings=findings)
    return write_atomic(Path(directory) / "index.html", page)


def render_audit(name: str, audit: dict, standalone: bool = True) -> str:
    """One audit's result (`AuditResult.to_dict()`) on its own: its findings and the section the
    run page shows for it, as a whole page or (not `standalone`) as a fragment to embed."""
    return environment().get_template("audit.html.j2").render(name=name, audit=audit, standalone=standalone)


# -- the dashboard ------------------------------------------------------------------------------

def render_dashboard(store, out: str | Path, config: dict | None = None) -> Path:
    """Write OUT/index.html: the conditions open now, the trends, the newest runs; and the
    archive pages that are missing or older than a run they list.

    Parameters
    ----------
    store : recaudit.audits.store.Store
    out : str or Path
        The reports' directory.
    config : dict, optional
        The configuration (recaudit.audits.config.load()): its alert rules on a trended metric
        and the audits' thresholds are drawn on the trends. Without it, only the thresholds
        the runs document.

    Returns
    -------
    Path
        The dashboard written.
    """
    from recaudit.reports import alerts

    out = Path(out)
    conditions = [_condition(c) for c in alerts.open_now(store)]
    total = store.count_runs()
    runs = store.runs(limit=RUNS_SHOWN)
    documents = [r["document"] for r in runs if r["document"]]
    figures = _trends(store, documents, config or {})
    archive = _render_archive(store, out) if total > len(runs) else []
    page = environment().get_template("dashboard.html.j2").render(
        conditions=conditions, runs=[_run_row(r) for r in runs], total=total, figures=figures, archive=archive)
    out.mkdir(parents=True, exist_ok=True)
    return write_atomic(out / "index.html", page)


def _condition(c: dict) -> dict:
    """An open condition as the dashboard shows it: where to read more, which runs judge it,
    and its latest values with the values it opened with."""
    from recaudit.reports import alerts

    if c.get("run_id") is not None:
        link = f"runs/{c['run_id']}/index.html"
    else:  # a freshness condition: the configured report address, if any (never another scheme)
        link = c["link"] if str(c.get("link") or "").startswith(("https://", "http://", "file://")) else None
    scope = c.get("scope") or ""
    judged_by = scope.removeprefix("schedule:") if scope.startswith("schedule:") else \
        "ad hoc" if scope == alerts.ADHOC else None
    return {**c, "page": link, "schedule": judged_by,
            "values": [(key, value, c["metrics"].get(key)) for key, value in (c.get("latest") or {}).items()]}


def _run_row(r: dict) -> dict:
    document = r["document"] or {"audits": {}}
    found = [f for _name, a in ordered(document["audits"]) for f in a["findings"]]
    return {**r, "counts": {s: sum(f["severity"] == s for f in found) for s in SEVERITY_ORDER},
            "top": sorted(found, key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))[:3],
            "audits": {k: a["status"] for k, a in ordered(document["audits"])},
            # a run that could not be finished has no page (publish renders none)
            "page": f"runs/{r['id']}/index.html" if r["document"] else None}


def _trends(store, documents: list[dict], config: dict) -> list[tuple[str, Markup]]:
    keys = [key for lines in TRENDS.values() for key in lines.values()]
    rows = list(store.metric_series(keys, newest=TREND_POINTS).itertuples(index=False))
    order = list(dict.fromkeys((run_id, until) for run_id, until, _k, _v in rows))
    if not order:
        return []
    at = {run_id: i for i, (run_id, _until) in enumerate(order)}
    values: dict[str, list] = {key: [None] * len(order) for key in keys}
    for run_id, _until, key, value in rows:
        values[key][at[run_id]] = None if value != value else value  # NaN: the run stored no value (NULL)
    labels = charts.time_labels([until for _run_id, until in order])
    figures = []
    for title, lines in TRENDS.items():
        levels = list(dict.fromkeys(t for key in lines.values() for t in thresholds(key, documents, config)))
        chart = charts.trend(title, {name: values[key] for name, key in lines.items()}, labels, thresholds=levels)
        if chart:
            figures.append((title, chart))
    return figures


def thresholds(key: str, documents: list[dict], config: dict) -> list[tuple[str, float]]:
    """The thresholds known for a metric key, as (name, value): the alert rules on it, and the
    audit's own, from the newest of `documents` that says (a finding on the key, fairness's
    documented gap thresholds), else from the configuration (`SETTING_THRESHOLDS`).

    >>> doc = {"audits": {"fairness": {"findings": [], "details": {"gaps": [
    ...     {"dimension": "sex", "metric": "rmse", "part": "", "threshold": 0.2}]}}}}
    >>> rules = {"alerts": {"rules": [{"name": "gap-high", "metric": "fairness.rmse_gap.sex", "op": ">",
    ...                                "threshold": 0.3}]}}
    >>> thresholds("fairness.rmse_gap.sex", [doc], rules)
    [('rule gap-high', 0.3), ('fairness threshold', 0.2)]
    """
    audit, _, rest = key.partition(".")
    found = [(f"rule {rule['name']}", float(rule["threshold"]))
             for rule in (config.get("alerts") or {}).get("rules") or []
             if rule.get("metric") == key and rule.get("threshold") is not None]
    own = None
    for document in documents:  # newest first
        result = document["audits"].get(audit)
        if not result:
            continue
        own = next((f["threshold"] for f in result["findings"] if f["key"] == key and f["threshold"] is not None), None)
        if own is None and audit == "fairness" and rest.startswith("rmse_gap."):
            dimension = rest.removeprefix("rmse_gap.")
            own = next((g["threshold"] for g in (result.get("details") or {}).get("gaps") or []
                        if g.get("dimension") == dimension and g.get("metric") == "rmse" and not g.get("part")
                        and g.get("threshold") is not None), None)
        if own is not None:
            break
    if own is None:
        setting = SETTING_THRESHOLDS.get(key) or SETTING_THRESHOLDS.get(key.rpartition(".")[0])
        value = config
        for part in setting or ():
            value = value.get(part) if isinstance(value, dict) else None
        own = value if setting and isinstance(value, (int, float)) else None
    if own is not None:
        found.append((f"{audit} threshold", float(own)))
    return found


# -- every run, a page of them at a time ---------------------------------------------------------

def _render_archive(store, out: Path) -> list[dict]:
    """Render the archive pages that are missing or stale; returns every page's link and
    range, newest first. A page holds the runs of ids ARCHIVE_SIZE × (n - 1) + 1 to
    ARCHIVE_SIZE × n, so that a new run changes one page only."""
    from sqlalchemy import func, select

    from recaudit.audits.store import audit_runs

    number = (audit_runs.c.id - 1) // ARCHIVE_SIZE + 1
    query = (select(number, func.max(audit_runs.c.finished_at), func.count(), func.min(audit_runs.c.id),
                    func.max(audit_runs.c.id))
             .where(audit_runs.c.finished_at.is_not(None)).group_by(number).order_by(number.desc()))
    with store.engine.connect() as conn:
        pages = conn.execute(query).all()
    rendered_after = renderer_mtime()
    links = []
    for n, finished, count, low, high in pages:
        path = out / "archive" / str(n) / "index.html"
        if stale(path, max(rendered_after, _epoch(finished))):
            _render_archive_page(store, path, n)
        links.append({"page": f"archive/{n}/index.html", "number": n, "runs": count, "low": low, "high": high})
    return links


def _render_archive_page(store, path: Path, n: int) -> None:
    from sqlalchemy import select

    from recaudit.audits.store import audit_runs

    c = audit_runs.c
    low, high = ARCHIVE_SIZE * (n - 1) + 1, ARCHIVE_SIZE * n
    query = (select(c.id, c.since, c.until, c.status, c.schedule, c.results.is_not(None).label("has_page"))
             .where(c.finished_at.is_not(None), c.id.between(low, high))
             .order_by(c.until.desc(), c.id.desc()))
    with store.engine.connect() as conn:
        runs = conn.execute(query).mappings().all()
    page = environment().get_template("archive.html.j2").render(runs=runs, low=low, high=high)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)


# -- publishing --------------------------------------------------------------------------------

def renderer_mtime() -> float:
    """When the templates or the code that renders them last changed: a page older than this
    may look otherwise rendered now."""
    times = [p.stat().st_mtime for p in RENDERER if p.is_file()]
    times += [p.stat().st_mtime for p in RENDERER[0].glob("*.j2")]
    return max(times)


def stale(page: str | Path, after: float) -> bool:
    """Whether `page` is missing or was written before `after` (seconds since the epoch)."""
    try:
        return os.stat(page).st_mtime < after
    except FileNotFoundError:
        return True


def _epoch(value) -> float:
    """A naive UTC time from the store as seconds since the epoch, as file times are."""
    return (value - EPOCH).total_seconds() if isinstance(value, datetime) else 0.0


def publish(store, out: str | Path, config: dict | None = None, full: bool = False) -> Path:
    """Render, from the database alone, the run pages that are missing or stale under `out`
    (older than the run's finish or than the templates; every page with `full`), then the
    dashboard. Artifacts (evidently's report) are copied, with the pages rendered, from where
    the run wrote them when still there.

    Parameters
    ----------
    store : recaudit.audits.store.Store
    out : str or Path
        The reports' directory.
    config : dict, optional
        The configuration, for the dashboard's threshold lines (`render_dashboard`).
    full : bool
        Render every run's page again, stale or not.

    Returns
    -------
    Path
        The dashboard.
    """
    from sqlalchemy import select

    from recaudit.audits.store import audit_runs

    out = Path(out)
    c = audit_runs.c
    # Only ids and times: a run's document (hundreds of kilobytes) is read when its page is rendered.
    listed = select(c.id, c.finished_at).where(c.finished_at.is_not(None), c.results.is_not(None)).order_by(c.id)
    with store.engine.connect() as conn:
        finished = conn.execute(listed).all()
    rendered_after = renderer_mtime()
    runs = os.path.join(out, "runs")  # strings, not Paths: this looks at every run's page
    due = [run_id for run_id, at in finished
           if full or stale(os.path.join(runs, str(run_id), "index.html"), max(rendered_after, _epoch(at)))]
    for start in range(0, len(due), 50):  # a bounded number of documents in memory at once
        chunk = due[start:start + 50]
        with store.engine.connect() as conn:
            rows = conn.execute(select(c.id, c.path, c.results).where(c.id.in_(chunk))).all()
        for run_id, where, results in rows:
            _publish_run(json.loads(results), Path(where or ""), out / "runs" / str(run_id))
    return render_dashboard(store, out, config)


def _publish_run(document: dict, source: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for audit in document["audits"].values():
        for name in (audit.get("details") or {}).get("artifacts", {}).values():
            if source.joinpath(name).exists() and os.path.realpath(source / name) != os.path.realpath(directory / name):
                write_atomic(directory / name, (source / name).read_bytes())
    render_run(document, directory)
