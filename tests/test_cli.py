"""The command line as a user meets it: self-documenting, and quick to answer --help."""

import subprocess
import sys

import pytest

from conftest import run_cli

COMMANDS = ["demo", "schedule", "simulate", "ingest", "train", "recommend", "serve", "validate", "audit", "report", "alerts"]
HEAVY = ["pandas", "numpy", "pyarrow", "sqlalchemy", "evidently", "great_expectations", "surprise"]


def test_help_lists_every_command(recaudit_bin):
    done = run_cli(recaudit_bin, "--help")
    assert done.returncode == 0
    out = done.stdout.decode()
    assert all(f"  {c} " in out for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(recaudit_bin, command):
    done = run_cli(recaudit_bin, command, "--help")
    assert done.returncode == 0 and "Usage: recaudit " + command in done.stdout.decode()
    assert len(done.stdout.decode().splitlines()) > 8


def test_help_imports_no_heavy_library_so_it_answers_at_once():
    code = ("import sys\nfrom scheduler.cli import main\n"
            "try:\n    main(['--help'] if len(sys.argv) < 2 else [sys.argv[1], '--help'])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    for args in ([], *([c] for c in COMMANDS)):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == "[]", (args, done.stdout)


def test_unknown_command_is_a_usage_error(recaudit_bin):
    done = run_cli(recaudit_bin, "frobnicate")
    assert done.returncode == 2 and "No such command" in done.stderr.decode()
