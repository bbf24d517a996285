"""What every audit returns, the one shape that storage, reports and alerts read: flat metrics
(`<audit>.<metric>[.<dimension>.<group>]`) and findings, plus free-form details for the report's tables."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Finding:
    """Something a human should look at, in plain words, with the number behind it."""

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
        return {**asdict(self), "value": _number(self.value), "threshold": _number(self.threshold),
                "fingerprint": self.fingerprint}


@dataclass
class AuditResult:
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
        return {"status": self.status, "metrics": {k: _number(v) for k, v in self.metrics.items()},
                "findings": [f.to_dict() for f in sorted(self.findings, key=lambda f: -SEVERITIES.index(f.severity))],
                "details": self.details, "error": self.error, "seconds": round(self.seconds, 3)}


def _number(value) -> float | None:
    """A JSON-safe number: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
