"""JUnit XML for CI systems (GitHub Actions, GitLab, Jenkins show it natively): one testcase
per expectation per dataset, a failure carrying the finding's message."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def write(outcomes: list, path: str | Path) -> Path:
    """`outcomes` are audits.validation.Outcome; skipped expectations are marked skipped."""
    root = ET.Element("testsuites", name="recaudit validate")
    by_dataset: dict[str, list] = {}
    for o in outcomes:
        by_dataset.setdefault(o.dataset, []).append(o)
    for dataset, items in by_dataset.items():
        suite = ET.SubElement(root, "testsuite", name=f"recaudit.{dataset}", tests=str(len(items)),
                              failures=str(sum(o.success is False for o in items)),
                              skipped=str(sum(o.success is None for o in items)), errors="0")
        for o in items:
            case = ET.SubElement(suite, "testcase", classname=f"recaudit.{dataset}", name=o.name)
            if o.success is None:
                ET.SubElement(case, "skipped", message=o.skipped or "not evaluated")
            elif not o.success:
                failure = ET.SubElement(case, "failure", message=o.message, type=o.type)
                failure.text = (f"{o.message}\nseverity: {o.severity}; unexpected {o.unexpected_count} of "
                                f"{o.element_count} rows")
    for key in ("tests", "failures", "skipped"):
        root.set(key, str(sum(int(s.get(key)) for s in root)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out
