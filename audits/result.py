"""What every audit returns, the one shape that storage, reports and alerts read: flat metrics
(`<audit>.<metric>[.<dimension>.<group>]`) and findings, plus free-form details for the report's tables."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recaudit.audits.vocabulary import SEVERITIES


@dataclass
class Finding:
    """Something a human should look at, in plain words, with the number behind it.

    Parameters
    ----------
    audit : str
        The audit that found it: validation, drift, fairness, feedback or online.
    key : str
        The metric key (or condition) it is about, e.g. ``fairness.rmse_gap.region``.
    severity : {"info", "warning", "critical"}
        What alerts act on: ``info`` says something worth knowing, never a fault.
    message : str
        The finding in words, naming the groups, signals or servers and the numbers.
    value, threshold : float, optional
        The number found and the threshold it crossed.
    kind : str
        The sort of condition (``fairness_gap``, ``drift``, ``expectation_failed``, ...): with
        `audit` and `key` it makes the `fingerprint` an open condition keeps from run to run.

    Examples
    --------
    >>> from recaudit import Finding
    >>> gap = Finding("fairness", "fairness.rmse_gap.region", "warning", "RMSE is 0.65 for region south "
    ...               "against 0.29 for region north", value=0.36, threshold=0.2, kind="fairness_gap")
    >>> gap.to_dict()["value"], len(gap.fingerprint)
    (0.36, 16)
    """

    audit: str
    key: str  # the metric key (or condition) the finding is about
    severity: str  # info, warning, critical
    message: str
    value: float | None = None
    threshold: float | None = None
    kind: str = ""  # what sort of condition: expectation_failed, drift, fairness_gap, ...

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    @property
    def fingerprint(self) -> str:
        """The same open condition has the same fingerprint from run to run, whatever its value."""
        return hashlib.sha256(f"{self.audit}|{self.kind}|{self.key}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**asdict(self), "value": finite(self.value), "threshold": finite(self.threshold),
                "fingerprint": self.fingerprint}


@dataclass
class AuditResult:
    """What one audit found: flat metrics, findings, and the details its report section shows.

    Every audit returns one, scheduled (``recaudit audit``) or called from Python
    (`recaudit.fairness`, ...), so a result from a notebook is stored, rendered and alerted on
    like any other.

    Parameters
    ----------
    audit : str
        The audit's name: validation, drift, fairness, feedback or online.
    status : {"ok", "findings", "insufficient_data", "errored"}
        ``ok`` becomes ``findings`` when a finding is more than ``info``.
    metrics : dict of str to float or None
        ``<audit>.<metric>[.<dimension>.<group>]``: None where there is no value to give
        (a group too small for a verdict).
    findings : list of Finding
    details : dict
        Free-form rows for the report's tables (per group, per signal, ...).
    error : str, optional
        Why an errored audit failed.
    seconds : float
        How long it took.

    Examples
    --------
    >>> from recaudit import AuditResult, Finding
    >>> result = AuditResult("fairness", metrics={"fairness.rmse_gap.region": 0.36}, findings=[
    ...     Finding("fairness", "fairness.rmse_gap.region", "warning",
    ...             "RMSE is 0.65 for region south against 0.29 for region north")])
    >>> result.status, result.to_dict()["metrics"]
    ('findings', {'fairness.rmse_gap.region': 0.36})

    `save_html` writes the section a run's page shows for the audit as a page of its own:

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     page = result.save_html(pathlib.Path(tmp) / "fairness.html")
    ...     "region south" in page.read_text()
    True
    """

    audit: str
    status: str = "ok"  # ok, findings, insufficient_data, errored
    metrics: dict[str, float | None] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status == "ok" and any(f.severity != "info" for f in self.findings):
            self.status = "findings"

    @property
    def critical(self) -> bool:
        return any(f.severity == "critical" for f in self.findings)

    def to_dict(self) -> dict:
        """The result as JSON-safe data (NaN becomes None), findings most severe first: what
        results.json stores and the report pages render."""
        return {"status": self.status, "metrics": {k: finite(v) for k, v in self.metrics.items()},
                "findings": [f.to_dict() for f in sorted(self.findings, key=lambda f: -SEVERITIES.index(f.severity))],
                "details": self.details, "error": self.error, "seconds": round(self.seconds, 3)}

    def save_html(self, path: str | Path) -> Path:
        """Write the result as a page of its own: its findings and the section a run's page
        shows for this audit, from the same template.

        The page is one file that opens from disk: styles and charts inline, nothing loaded
        from the network, and a content security policy that runs no script, so text from the
        data (titles, group names) stays text.

        Parameters
        ----------
        path : str or pathlib.Path
            The file to write; missing directories are made.

        Returns
        -------
        pathlib.Path
            `path`.
        """
        from recaudit.audits.files import write_atomic
        from recaudit.reports.html import render_audit

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, render_audit(self.audit, self.to_dict()))

    def _repr_html_(self) -> str:
        """How a notebook shows the result: the page's body, without its head and styles, which
        would restyle the notebook."""
        from recaudit.reports.html import render_audit

        return render_audit(self.audit, self.to_dict(), standalone=False)


def finite(value) -> float | None:
    """A JSON-safe number: NaN and infinities (and None) become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
