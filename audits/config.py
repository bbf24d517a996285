"""recaudit.toml: thresholds, windows and schedules, every value with a default.

Only what differs from the defaults needs writing; unknown keys are an input error, so that a
typo does not silently leave a default in place. Secrets and the database URL come from the
environment, not from this file.
"""

from __future__ import annotations

import copy
import tomllib
from datetime import date
from pathlib import Path

from recaudit.audits.groups import DEFAULT_AGE_GROUPS
from recaudit.recsys.formats import InputError

DEFAULT_PATH = "recaudit.toml"
# Tables whose keys are the user's own (replaced whole, not merged key by key).
OPEN_TABLES = {"groups.age"}
DRIFT_SIGNALS = {  # name: (method, threshold); justified in the README
    "rating": ("jensenshannon", 0.1),
    "ratings_per_user": ("wasserstein", 0.1),
    "minutes_per_session": ("wasserstein", 0.1),
    "watched_popularity": ("jensenshannon", 0.1),
    "recommended_popularity": ("jensenshannon", 0.1),
    "genre": ("jensenshannon", 0.1),
    "age_group": ("jensenshannon", 0.1),
    "sex": ("jensenshannon", 0.1),
    "occupation": ("jensenshannon", 0.1),
    "latency": ("wasserstein", 0.1),
    "status": ("jensenshannon", 0.1),
    "predicted_score": ("wasserstein", 0.1),
}

DEFAULTS: dict = {
    "audit": {
        "window": "1d",  # the current window: this long, ending at the end of the latest day with data
        "out": "recaudit-reports",  # the dashboard (index.html) and runs/<run_id>/
    },
    "groups": {
        "age": DEFAULT_AGE_GROUPS,  # name = [lowest age, highest age]
    },
    "drift": {
        "reference": "previous",  # previous: the reference_window before the current one; training: the model's
        "reference_window": "7d",
        "share_threshold": 0.25,  # dataset drift when at least this share of the signals drifted
        "dataset_severity": "critical",
        "min_sample": 200,  # fewer values in either window: insufficient data, no verdict
        "max_sample": 100_000,  # numerical signals are sampled (seeded) beyond this
        "seed": 0,
        "report": True,  # write evidently's own report (HTML and JSON) beside the run
        "signals": {name: {"enabled": True, "method": method, "threshold": threshold}
                    for name, (method, threshold) in DRIFT_SIGNALS.items()},
    },
    "fairness": {
        "model": "",  # a model id; "" for the newest
        "window": "7d",  # evaluate at least this far back from the window's end (after the model's cutoff)
        "dimensions": ["sex", "age", "occupation"],
        "min_group_size": 100,  # ratings; smaller groups are reported as insufficient, without a verdict
        "min_group_users": 20,  # users, likewise
        "resamples": 200,  # bootstrap resamples of users
        "confidence": 0.95,
        "seed": 0,
        "gap_thresholds": {"rmse": 0.2, "mae": 0.2},
        "severity": "warning",
        "k": 20,  # ranking quality at k
        "ranking_max_users": 5000,  # ranked per run at most (a seeded sample beyond)
        "success_horizon": "15min",  # a watch this soon after a recommendation is a success
        "export_predictions": "",  # a CSV path: one row per evaluated rating
    },
    "feedback": {
        "trend_runs": 5,  # K: the runs (this one included) the trend is fitted over
        "min_runs": 3,  # no verdict on a trend of fewer runs
        "gini_slope_threshold": 0.01,  # rise of the exposure Gini per run
        "correlation_method": "pearson",  # or spearman: the rating-recommendation correlation
        "correlation_threshold": 0.3,
        "correlation_window": "7d",  # the correlation counts over at least this span, ending with the window
        "head_share": 0.8,  # the most watched movies making this share of the viewing are the head
        "severity": "warning",
    },
    "online": {
        "success_horizon": "15min",
        "min_availability": 0.98,  # share of requests answered with status 200 (beyond chance: see README)
        "max_latency_p99": 1000.0,  # milliseconds, successful requests
        "alpha": 0.01,  # significance of a difference in success rate between servers
        "min_success_difference": 0.02,  # and the smallest difference worth a finding
        "severity": "warning",
    },
    "alerts": {
        "findings": "warning",  # every finding at least this severe alerts; "" for none (rules only)
        "report_url": "",  # where the reports are published, for links in alerts; "" for file paths
        "rules": [],  # [[alerts.rules]]: name, metric + op + threshold, or finding (a kind); severity, for_runs
        "webhooks": [],  # [[alerts.webhooks]]: name, url, format (json or slack), secret_env, timeout
        "backoff_seconds": 30.0,  # first retry after this, doubling each attempt ...
        "max_backoff_seconds": 3600.0,  # ... up to this; an alert is never given up
    },
    "schedule": {
        "watch": [],  # paths the ingest job ingests each time (logs grow, directories get new files)
        "models": "models",  # where the retrain job saves models
        "host": "127.0.0.1",  # the service's HTTP: /metrics, /healthz and the reports
        "port": 8090,
        "misfire_grace_seconds": 3600,  # a run missed by less than this still happens (once) after a restart
        "lease_seconds": 30.0,  # one scheduler per database runs jobs; a standby takes over within 4/3 of this
        "retrain": {"algo": "svd", "factors": 100, "epochs": 20, "seed": 0},
        "jobs": {  # each: enabled, and when: a duration ("5min": every 5 minutes) or a crontab line (UTC)
            "ingest": {"enabled": True, "when": "5min"},
            "validation": {"enabled": True, "when": "1h"},
            "drift": {"enabled": True, "when": "15 0 * * *"},
            "fairness": {"enabled": True, "when": "30 0 * * *"},
            "feedback": {"enabled": True, "when": "45 0 * * *"},  # feedback and online
            "retrain": {"enabled": True, "when": "0 3 * * 0"},
            "report": {"enabled": True, "when": "15min"},
            "alerts": {"enabled": True, "when": "1min"},
        },
    },
    "validation": {
        "list_length": 20,  # movies in a successful recommendation list
        "max_minute": 600,  # a watched minute beyond this is not a plausible movie
        "min_year": 1870,
        "max_year": None,  # None: next year
        "suite_dir": None,  # None: the suites shipped in the package
    },
}


def load(path: str | Path | None = None) -> dict:
    """The configuration: DEFAULTS overridden by the TOML file (`path`, or ./recaudit.toml if
    it exists)."""
    config = copy.deepcopy(DEFAULTS)
    config["validation"]["max_year"] = date.today().year + 1
    file = Path(path) if path else Path(DEFAULT_PATH)
    if path is None and not file.exists():
        return config
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(file, "no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(file, f"not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(file, exc.strerror or "cannot be read") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(file, f"not valid TOML ({exc})") from None
    _merge(config, data, file, [])
    _check_values(config, file)
    return config


def _merge(into: dict, data: dict, file: Path, where: list[str]) -> None:
    for key, value in data.items():
        place = ".".join(where + [key])
        if place in OPEN_TABLES:
            into[key] = value
            continue
        if key not in into:
            raise InputError(file, f"unknown setting {place!r} (known: {', '.join(sorted(into))})")
        default = into[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise InputError(file, f"{place} must be a table")
            _merge(default, value, file, where + [key])
            continue
        expected = (int, float) if isinstance(default, float) else type(default)
        if default is not None and (not isinstance(value, expected) or isinstance(value, bool) != isinstance(default, bool)):
            raise InputError(file, f"{place} must be {_kind(default)}, not {value!r}")
        into[key] = value


def _kind(value) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(type(value), "a value")


def _check_values(config: dict, file: Path) -> None:
    import pandas as pd

    for place, value in (("audit.window", config["audit"]["window"]),
                         ("drift.reference_window", config["drift"]["reference_window"]),
                         ("fairness.window", config["fairness"]["window"]),
                         ("fairness.success_horizon", config["fairness"]["success_horizon"]),
                         ("online.success_horizon", config["online"]["success_horizon"]),
                         ("feedback.correlation_window", config["feedback"]["correlation_window"])):
        try:
            ok = pd.Timedelta(value) > pd.Timedelta(0)
        except ValueError:
            ok = False
        if not ok:
            raise InputError(file, f"{place} must be a positive duration such as \"1d\" or \"12h\", not {value!r}")
    _check_alerts(config["alerts"], file)
    _check_jobs(config["schedule"]["jobs"], file)
    if not config["schedule"]["lease_seconds"] > 0:
        raise InputError(file, f"schedule.lease_seconds must be positive, not {config['schedule']['lease_seconds']!r}")
    if config["feedback"]["correlation_method"] not in ("pearson", "spearman"):
        raise InputError(file, f"feedback.correlation_method must be \"pearson\" or \"spearman\", "
                               f"not {config['feedback']['correlation_method']!r}")
    unknown = set(config["fairness"]["dimensions"]) - {"sex", "age", "occupation"}
    if unknown:
        raise InputError(file, f"fairness.dimensions: unknown dimension {sorted(unknown)[0]!r} "
                               "(known: sex, age, occupation)")


RULE_KEYS = {"name": str, "metric": str, "op": str, "threshold": (int, float), "finding": str, "severity": str,
             "for_runs": int}
WEBHOOK_KEYS = {"name": str, "url": str, "format": str, "secret_env": str, "timeout": (int, float)}
OPS = (">", ">=", "<", "<=", "==", "!=")


def _check_alerts(alerts: dict, file: Path) -> None:
    """Rules and webhooks are lists of tables: each entry checked key by key."""
    if alerts["findings"] not in ("", "info", "warning", "critical"):
        raise InputError(file, f"alerts.findings must be \"\", \"info\", \"warning\" or \"critical\", "
                               f"not {alerts['findings']!r}")
    names = set()
    for kind, entries, keys in (("rules", alerts["rules"], RULE_KEYS), ("webhooks", alerts["webhooks"], WEBHOOK_KEYS)):
        for i, entry in enumerate(entries):
            place = f"alerts.{kind}[{i + 1}]"
            if not isinstance(entry, dict):
                raise InputError(file, f"{place} must be a table")
            for key, value in entry.items():
                if key not in keys:
                    raise InputError(file, f"{place}: unknown setting {key!r} (known: {', '.join(keys)})")
                if not isinstance(value, keys[key]) or isinstance(value, bool):
                    raise InputError(file, f"{place}.{key} has the wrong type: {value!r}")
            if not entry.get("name"):
                raise InputError(file, f"{place} needs a name")
            if (kind, entry["name"]) in names:
                raise InputError(file, f"{place}: the name {entry['name']!r} is used twice")
            names.add((kind, entry["name"]))
            if kind == "rules":
                if ("metric" in entry) == ("finding" in entry):
                    raise InputError(file, f"{place} needs either metric (with op and threshold) or finding")
                if "metric" in entry and (entry.get("op") not in OPS or "threshold" not in entry):
                    raise InputError(file, f"{place}: a metric rule needs op (one of {' '.join(OPS)}) and threshold")
                if entry.get("severity", "warning") not in ("info", "warning", "critical"):
                    raise InputError(file, f"{place}.severity must be info, warning or critical")
                if entry.get("for_runs", 1) < 1:
                    raise InputError(file, f"{place}.for_runs must be at least 1")
            else:
                if not entry.get("url", "").startswith(("http://", "https://")):
                    raise InputError(file, f"{place}.url must be an http:// or https:// URL")
                if entry.get("format", "json") not in ("json", "slack"):
                    raise InputError(file, f"{place}.format must be json or slack")


def _check_jobs(jobs: dict, file: Path) -> None:
    """`when` is a positive duration ("5min") or a crontab line of five fields ("15 0 * * *")."""
    import pandas as pd

    for name, spec in jobs.items():
        when = spec["when"].strip()
        if len(when.split()) == 5:
            continue
        try:
            ok = pd.Timedelta(when) > pd.Timedelta(0)
        except ValueError:
            ok = False
        if not ok:
            raise InputError(file, f"schedule.jobs.{name}.when must be a duration (\"5min\") or a crontab line "
                                   f"(\"15 0 * * *\"), not {spec['when']!r}")
