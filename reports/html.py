"""HTML pages for reviewers, rendered from a run's results (results.json), never from the data.

Jinja2 with autoescape: every value that comes from data is escaped. Pages are one file each,
with their styles inlined, so they open from disk with no network.
"""

from __future__ import annotations

from pathlib import Path

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["percent"] = lambda v: "–" if v is None else (f"{v:.1f}%" if v >= 0.1 or v == 0 else f"{v:.2g}%")
    env.filters["number"] = lambda v: "–" if v is None else (f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}")
    return env


def render_run(run: dict, directory: str | Path) -> Path:
    """Write index.html for one run into its directory."""
    findings = [f for audit in run["audits"].values() for f in audit["findings"]]
    findings.sort(key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))
    page = environment().get_template("run.html.j2").render(run=run, findings=findings)
    out = Path(directory) / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
