"""The audits a run knows, by name. An audit is a function of an AuditContext to an
AuditResult; adding one means writing its module and adding a line here, nothing else.
Modules are imported only when their audit runs, so the heavy libraries some of them need
(great_expectations, evidently, surprise) are loaded only then."""

from __future__ import annotations

from importlib import import_module
from typing import Callable

AUDITS: dict[str, str] = {
    "validation": "recaudit.audits.validation:audit",
    "drift": "recaudit.audits.drift:audit",
    "fairness": "recaudit.audits.fairness:audit",
    "feedback": "recaudit.audits.feedback:audit",
    "online": "recaudit.audits.online:audit",
    "exposure": "recaudit.audits.exposure:audit",
}


def get(name: str) -> Callable:
    module, function = AUDITS[name].split(":")
    return getattr(import_module(module), function)
