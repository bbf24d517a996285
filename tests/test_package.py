"""The installed distribution: one import name, data files inside it, and an import that loads
nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from recaudit.audits import validation
from support import HEAVY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed, without its dependencies, into a fresh
    virtual environment: (wheel, the environment's python, its site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("recaudit-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    return wheel, python, site


def test_the_wheel_installs_recaudit_and_nothing_else_at_top_level(installed):
    wheel, python, site = installed
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"recaudit"}
    placed = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "__pycache__"}
    assert placed == {"recaudit"}, placed
    assert (python.parent / "recaudit").exists()  # the console script keeps its name
    for package in ("audits", "recsys", "reports", "scheduler", "expectations"):
        assert (site / "recaudit" / package / "__init__.py").exists()


def test_importing_recaudit_loads_no_heavy_library(installed):
    _, python, _ = installed
    code = f"import sys, json, recaudit; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_suites_and_templates_load_from_the_installed_wheel(installed, tmp_path):
    wheel, python, site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"recaudit/expectations/{d}.json" for d in validation.DATASETS} <= names
    assert "recaudit/reports/templates/run.html.j2" in names
    assert {"recaudit/audits/migrations/env.py", "recaudit/audits/migrations/versions/0001_baseline.py"} <= names
    # The dependencies come from this environment; recaudit itself only from the fresh one.
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"]}
    code = ("import recaudit.audits.validation as v, jinja2, recaudit.reports.html as h; print(v.suite_dir()); "
            "print(sorted(v.load_suites())); print(v.__file__)")
    done = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, found, module = done.stdout.strip().splitlines()
    assert where.startswith(str(site)) and module.startswith(str(site))
    assert eval(found) == sorted(validation.DATASETS)
