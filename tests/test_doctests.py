"""The examples of the public API's docstrings run and print what they say, and so do the README's
"From Python" section's: documentation that shows a call cannot drift from what the call does."""

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
README = Path(__file__).resolve().parents[1] / "README.md"
# The modules that define `recaudit.__all__`, and the package itself: each must have examples.
API = ("recaudit", "recaudit.recsys.events", "recaudit.audits.fairness", "recaudit.audits.drift",
       "recaudit.audits.feedback", "recaudit.audits.online", "recaudit.audits.validation", "recaudit.audits.result",
       "recaudit.audits.exposure")


def documented() -> list[str]:
    """The API's modules, and any other module of the package whose docstrings carry examples."""
    found = set(API)
    for package in ("audits", "recsys", "reports", "scheduler"):
        for folder in importlib.util.find_spec(f"recaudit.{package}").submodule_search_locations:
            for path in Path(folder).glob("*.py"):
                if "\n    >>> " in path.read_text(encoding="utf-8"):
                    found.add(f"recaudit.{package}.{path.stem}")
    return sorted(found)


@pytest.mark.parametrize("name", documented())
def test_every_example_in_the_modules_docstrings_runs_as_written(name):
    failed, attempted = doctest.testmod(importlib.import_module(name), optionflags=FLAGS)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0


def test_the_readmes_from_python_section_runs_as_written():
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## From Python\n")
    section = text[start:text.index("\n## ", start + 1)]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failed, attempted = runner.run(doctest.DocTestParser().get_doctest(section, {}, "README: From Python",
                                                                       str(README), text[:start].count("\n")))
    assert attempted >= 10 and failed == 0
