"""recaudit audits a recommender in production; from Python, on your own DataFrames too.

`read_log` reads a log as the scheduler does; each other function is one of its audits, for
data at hand, and returns an `AuditResult`: the metrics, the findings and a page of its own
(`AuditResult.save_html`).

================  ===================================================================
`read_log`        an event log as typed frames: watches, ratings, recommendations, items, rejects
`fairness`        per-group accuracy of predictions, and the gaps between groups beyond chance
`drift`           how a current window of data differs from a reference one
`feedback`        concentration of recommendations and the loop between them and ratings
`online`          availability, latency and success of recommendation requests
`exposure`        what the recommender serves each group of users and shows of each group of movies
`validate`        the data contracts (expectation suites) over a log's frames
`AuditResult`     what an audit returns: metrics, findings, details
`Finding`         one thing a human should look at, in words, with its number
================  ===================================================================

Importing `recaudit` loads none of them: each is imported on first use (PEP 562), so that a
command, a test or ``import recaudit`` does not pay for pandas, evidently or Great
Expectations it may never need.

Examples
--------
>>> import recaudit
>>> recaudit.fairness.__module__
'recaudit.audits.fairness'
"""

__all__ = ["read_log", "fairness", "drift", "feedback", "online", "exposure", "validate", "AuditResult", "Finding"]

_HOMES = {  # each public name: the module that defines it
    "read_log": "recaudit.recsys.events",
    "fairness": "recaudit.audits.fairness",
    "drift": "recaudit.audits.drift",
    "feedback": "recaudit.audits.feedback",
    "online": "recaudit.audits.online",
    "exposure": "recaudit.audits.exposure",
    "validate": "recaudit.audits.validation",
    "AuditResult": "recaudit.audits.result",
    "Finding": "recaudit.audits.result",
}


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import version

        return version("recaudit")
    if name not in _HOMES:
        raise AttributeError(f"module 'recaudit' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
