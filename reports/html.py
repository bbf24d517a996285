"""HTML pages for reviewers, rendered from runs' results (results.json), never from the data.

Jinja2 with autoescape: every value that comes from data is escaped. Pages are one file each,
styles and charts (SVG) inline, so they open from disk with no network and read on a phone.
A run's page lives in OUT/runs/<run_id>/index.html; the dashboard, OUT/index.html, lists every
run and draws the key metrics across runs. `AuditResult.save_html` writes one audit's section
of a run page as a page of its own. Every file the reports write goes through
`write_atomic`, so a page served while the report job runs is never half written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recaudit.audits.files import write_atomic
from recaudit.reports import charts

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
TRENDS = {  # chart title: {line name: metric key}
    "Concentration of recommendations": {"Gini": "feedback.gini", "top-10 share": "feedback.top10_share"},
    "Fairness: RMSE gap between groups": {"by sex": "fairness.rmse_gap.sex", "by age group": "fairness.rmse_gap.age"},
    "Drift: share of signals drifted": {"drifted share": "drift.share_drifted"},
    "Online: success rate and availability": {"success rate": "online.success_rate",
                                              "availability": "online.availability"},
}


def environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("recaudit.reports", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["percent"] = lambda v: "–" if _missing(v) else (f"{v:.1f}%" if v >= 0.1 or v == 0 else f"{v:.2g}%")
    env.filters["number"] = lambda v: "–" if _missing(v) else (f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}")
    env.filters["grouped"] = _grouped
    env.globals["charts"] = charts
    return env


def _grouped(rows: list[dict], key: str) -> list[tuple]:
    """(value, rows) of `rows` by `key`, in the order the values first appear: the audit's own
    order (the configured dimensions), where jinja's groupby would sort them."""
    out: dict = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return list(out.items())


def _missing(value) -> bool:
    """No value to show: None, or a field this audit's result does not have (jinja2.Undefined)."""
    from jinja2 import Undefined

    return value is None or isinstance(value, Undefined)


def render_run(run: dict, directory: str | Path) -> Path:
    """Write index.html for one run into its directory."""
    findings = [f for audit in run["audits"].values() for f in audit["findings"]]
    findings.sort(key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))
    page = environment().get_template("run.html.j2").render(run=run, findings=findings)
    return write_atomic(Path(directory) / "index.html", page)


def render_audit(name: str, audit: dict, standalone: bool = True) -> str:
    """One audit's result (`AuditResult.to_dict()`) on its own: its findings and the section the
    run page shows for it, as a whole page or (not `standalone`) as a fragment to embed."""
    return environment().get_template("audit.html.j2").render(name=name, audit=audit, standalone=standalone)


def render_dashboard(store, out: str | Path) -> Path:
    """Write OUT/index.html: every run newest first, and the key metrics across runs."""
    runs = store.runs()
    series = store.metric_series([key for lines in TRENDS.values() for key in lines.values()])
    figures = []
    if len(series):  # one row per run (oldest first), one column per key
        order = series.drop_duplicates("run_id")
        wide = series.pivot_table(index="run_id", columns="key", values="value",
                                  aggfunc="first").reindex(order["run_id"])
        labels = [str(until)[:16].replace("T", " ") for until in order["until"]]
        for title, lines in TRENDS.items():
            values = {name: [None if pd.isna(v) else float(v) for v in wide[key]] if key in wide else []
                      for name, key in lines.items()}
            chart = charts.trend(title, values, labels)
            if chart:
                figures.append((title, chart))
    rows = []
    for r in runs:
        document = r["document"] or {"audits": {}}
        counts = {s: sum(f["severity"] == s for a in document["audits"].values() for f in a["findings"])
                  for s in SEVERITY_ORDER}
        top = sorted((f for a in document["audits"].values() for f in a["findings"]),
                     key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))[:3]
        rows.append({**r, "counts": counts, "top": top,
                     "audits": {k: a["status"] for k, a in document["audits"].items()},
                     # a run that could not be finished has no page (publish renders none)
                     "page": f"runs/{r['id']}/index.html" if r["document"] else None})
    page = environment().get_template("dashboard.html.j2").render(runs=rows, figures=figures)
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_atomic(Path(out) / "index.html", page)


def publish(store, out: str | Path) -> Path:
    """Render every stored run's page and the dashboard under `out`, from the database alone;
    artifacts (evidently's report) are copied from where the run wrote them when still there."""
    for r in store.runs():
        if r["document"] is None:
            continue
        directory = Path(out) / "runs" / str(r["id"])
        directory.mkdir(parents=True, exist_ok=True)
        for audit in r["document"]["audits"].values():
            for name in (audit.get("details") or {}).get("artifacts", {}).values():
                source = Path(r["path"] or "") / name
                if source.exists() and source.resolve() != (directory / name).resolve():
                    write_atomic(directory / name, source.read_bytes())
        render_run(r["document"], directory)
    return render_dashboard(store, out)
