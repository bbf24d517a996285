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

from recsys.formats import InputError

DEFAULT_PATH = "recaudit.toml"

DEFAULTS: dict = {
    "audit": {
        "window": "1d",  # the current window: this long, ending at the end of the latest day with data
        "out": "reports",  # where runs/<run_id>/ are written
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
    except tomllib.TOMLDecodeError as exc:
        raise InputError(file, f"not valid TOML ({exc})") from None
    _merge(config, data, file, [])
    return config


def _merge(into: dict, data: dict, file: Path, where: list[str]) -> None:
    for key, value in data.items():
        if key not in into:
            place = ".".join(where + [key])
            raise InputError(file, f"unknown setting {place!r} (known: {', '.join(sorted(into))})")
        if isinstance(into[key], dict):
            if not isinstance(value, dict):
                raise InputError(file, f"{'.'.join(where + [key])} must be a table")
            _merge(into[key], value, file, where + [key])
        else:
            into[key] = value
