"""recaudit.toml: every value checked when the file is read, one line naming the key and what is
wrong, and the README's table of settings drawn from the same models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recaudit.audits import config
from recaudit.recsys.formats import InputError
from support import run_process

README = Path(__file__).resolve().parents[1] / "README.md"


def load_text(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "recaudit.toml"
    path.write_text(text)
    return config.load(path)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def toml(table: dict, where: str = "") -> str:
    """`table` written as recaudit.toml: scalars and lists as JSON writes them (the same in TOML),
    tables as [sections]; None, which TOML cannot write, left out."""
    lines, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict) and f"{where}{key}" not in config.OPEN_TABLES:
            tables.append(toml(value, f"{where}{key}."))
        elif isinstance(value, dict):
            tables.append(f"[{where}{key}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in value.items()))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}\n")
    head = f"[{where.rstrip('.')}]\n" if where and lines else ""
    return head + "".join(lines) + "".join(tables)


# -- refusals: one line, the file, the dotted key and the reason -------------------------------

REFUSED = [
    ("[groups]\nage = 'young'\n", "groups.age: must be a table (got 'young')"),
    ("[groups.age]\nteen = [13]\n", "groups.age.teen: must be [lowest age, highest age], whole numbers with "
                                    "lowest <= highest (got [13])"),
    ("[fairness]\nresamples = -3\n", "fairness.resamples: must be at least 1 (got -3)"),
    ("[drift.signals.sex]\nmethod = 'nosuch'\n", "drift.signals.sex.method: must be 'anderson', "),
    ("[schedule.jobs.drift]\nwhen = '99 99 * * *'\n", "schedule.jobs.drift.when: not a valid crontab line "
                                                      "(got '99 99 * * *': Error validating expression '99'"),
]


@pytest.mark.parametrize("text, message", REFUSED, ids=["age-not-a-table", "age-band-not-a-pair", "resamples",
                                                        "drift-method", "crontab"])
def test_a_bad_value_is_refused_in_one_line_naming_the_file_the_key_and_the_reason(tmp_path, text, message):
    assert refusal(tmp_path, text).startswith(f"{tmp_path / 'recaudit.toml'}: {message}")


def test_an_age_band_whose_low_end_is_above_its_high_end_is_refused(tmp_path):
    assert "groups.age.teen: must be [lowest age, highest age]" in refusal(tmp_path, "[groups.age]\nteen = [17, 13]\n")


def test_a_negative_resample_count_is_refused_naming_the_key(tmp_path):
    assert refusal(tmp_path, "[fairness]\nresamples = -3\n").endswith("recaudit.toml: fairness.resamples: "
                                                                       "must be at least 1 (got -3)")


def test_every_bad_value_of_a_file_is_named_on_the_one_line(tmp_path):
    message = refusal(tmp_path, "[fairness]\nresamples = -3\nconfidence = 1.5\n")
    assert "fairness.resamples: must be at least 1 (got -3); fairness.confidence: must be less than 1" in message


def test_a_value_of_another_toml_type_is_refused_not_converted(tmp_path):
    assert "drift.signals.sex.enabled: must be true or false (got 1)" in refusal(
        tmp_path, "[drift.signals.sex]\nenabled = 1\n")
    assert "fairness.k: must be a whole number (got '20')" in refusal(tmp_path, "[fairness]\nk = '20'\n")


def test_checks_across_settings_name_the_setting_at_fault(tmp_path):
    message = refusal(tmp_path, "[feedback]\nmin_runs = 9\n")
    assert "feedback.min_runs: must be at most trend_runs (5) (got 9)" in message
    hooks = '[[alerts.webhooks]]\nname = "w"\nurl = "http://a"\n[[alerts.webhooks]]\nname = "w"\nurl = "http://b"\n'
    assert "alerts.webhooks[2].name: 'w' is used twice" in refusal(tmp_path, hooks)


@pytest.mark.parametrize("text, key", [
    ("[audti]\nwindow = '1d'\n", "audti: unknown setting (known: audit, groups, drift,"),
    ("[fairness]\nresample = 20\n", "fairness.resample: unknown setting (known: model, window,"),
    ("[drift.signals.colour]\nenabled = false\n", "drift.signals.colour: unknown setting (known: rating,"),
    ("[schedule.jobs.backup]\nwhen = '1h'\n", "schedule.jobs.backup: unknown setting (known: ingest,"),
    ('[[alerts.rules]]\nname = "r"\nfinding = "x"\nwhen = 3\n', "alerts.rules[1].when: unknown setting (known: name,"),
])
def test_an_unknown_key_is_refused_with_the_keys_that_table_knows(tmp_path, text, key):
    assert key in refusal(tmp_path, text)


# -- through the command line -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["schedule --once", "audit"])
def test_the_command_line_exits_2_with_one_line_naming_the_key_and_opens_no_database(recaudit_bin, tmp_path, command):
    bad, db = tmp_path / "bad.toml", tmp_path / "recaudit.db"
    bad.write_text("[fairness]\nresamples = -3\n")
    done = run_process(recaudit_bin, *command.split(), "--config", str(bad), "--db", f"sqlite:///{db}")
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.strip() == f"error: {bad}: fairness.resamples: must be at least 1 (got -3)"
    assert not db.exists()


def test_a_bad_crontab_line_stops_the_scheduler_before_it_starts(recaudit_bin, tmp_path):
    bad, db = tmp_path / "bad.toml", tmp_path / "recaudit.db"
    bad.write_text('[schedule.jobs.drift]\nwhen = "99 99 * * *"\n')
    done = run_process(recaudit_bin, "schedule", "--once", "--config", str(bad), "--db", f"sqlite:///{db}")
    stderr = done.stderr.decode()
    assert done.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "schedule.jobs.drift.when: not a valid crontab line" in stderr


# -- the defaults -------------------------------------------------------------------------------

def test_without_a_file_the_settings_are_the_defaults():
    assert config.load() == config.DEFAULTS == config.Settings().model_dump()
    assert config.load_settings().fairness.resamples == config.DEFAULTS["fairness"]["resamples"]


def test_the_defaults_keep_the_shape_the_audits_read():
    defaults = config.load()
    assert defaults["drift"]["signals"] == {name: {"enabled": True, "method": method, "threshold": threshold}
                                            for name, (method, threshold) in config.DRIFT_SIGNALS.items()}
    assert defaults["schedule"]["jobs"] == {name: {"enabled": True, "when": when}
                                            for name, when in config.JOB_SCHEDULES.items()}
    assert defaults["alerts"]["rules"] == [] and defaults["validation"]["suite_dir"] is None
    assert all(isinstance(band, list) for band in defaults["groups"]["age"].values())


def test_every_default_written_out_as_a_file_loads_back_unchanged(tmp_path):
    assert load_text(tmp_path, toml(config.DEFAULTS)) == config.DEFAULTS


def test_a_key_of_a_signal_or_a_job_keeps_the_others_defaults(tmp_path):
    loaded = load_text(tmp_path, "[drift.signals.latency]\nmethod = 'ks'\n[schedule.jobs.retrain]\nenabled = false\n")
    assert loaded["drift"]["signals"]["latency"] == {"enabled": True, "method": "ks", "threshold": 0.1}
    assert loaded["schedule"]["jobs"]["retrain"] == {"enabled": False, "when": "0 3 * * 0"}


def test_the_age_groups_of_a_file_replace_the_default_ones_whole(tmp_path):
    loaded = load_text(tmp_path, "[groups.age]\nyoung = [0, 29]\nold = [30, 200]\n")
    assert loaded["groups"]["age"] == {"young": [0, 29], "old": [30, 200]}


def test_a_rule_is_read_with_only_the_condition_it_has(tmp_path):
    loaded = load_text(tmp_path, '[[alerts.rules]]\nname = "loop"\nfinding = "feedback_loop"\n')
    assert loaded["alerts"]["rules"] == [{"name": "loop", "finding": "feedback_loop", "severity": "warning",
                                          "for_runs": 1}]


# -- one definition -----------------------------------------------------------------------------

def test_every_drift_method_is_one_evidently_knows():
    from evidently.legacy.calculations.stattests.registry import (
        StatTestInvalidFeatureTypeError,
        StatTestNotFoundError,
        get_registered_stattest,
    )
    from evidently.legacy.core import ColumnType

    def known(method: str) -> bool:
        """Registered for numerical or for categorical columns, as audits/drift.py asks for it."""
        for kind in (ColumnType.Numerical, ColumnType.Categorical):
            try:
                get_registered_stattest(method, kind)
                return True
            except StatTestInvalidFeatureTypeError:
                continue
            except StatTestNotFoundError:
                return False
        return False

    assert [m for m in config.DRIFT_METHODS if not known(m)] == []
    assert {method for method, _threshold in config.DRIFT_SIGNALS.values()} <= set(config.DRIFT_METHODS)


def test_reading_the_settings_imports_none_of_the_heavy_libraries(tmp_path):
    (tmp_path / "recaudit.toml").write_text("[drift.signals.sex]\nmethod = 'ks'\n")
    heavy = ("evidently", "great_expectations", "surprise", "sqlalchemy")
    code = (f"import sys\nfrom recaudit.audits import config\nconfig.load(sys.argv[1])\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "recaudit.toml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_scheduler_runs_the_jobs_the_settings_name():
    from recaudit.scheduler import service

    assert service.JOBS is config.JOBS and list(config.DEFAULTS["schedule"]["jobs"]) == list(config.JOBS)


def test_the_fairness_settings_name_what_the_fairness_audit_compares():
    from recaudit.audits import fairness

    assert set(config.FAIRNESS_DIMENSIONS) == set(fairness.COLUMNS)
    assert set(config.DEFAULTS["fairness"]["gap_thresholds"]) == set(fairness.ACCURACY)


def test_the_readme_table_of_settings_is_the_one_the_models_give():
    text = README.read_text(encoding="utf-8")
    start, end = text.index(config.README_START) + len(config.README_START), text.index(config.README_END)
    assert text[start:end].strip() == config.settings_table(), (
        "the README's table of settings differs from the models: put the output of\n"
        "  .venv/bin/python -c 'from recaudit.audits import config; print(config.settings_table())'\n"
        f"between {config.README_START} and {config.README_END} in README.md")


def test_every_setting_in_the_table_is_described():
    rows = [row.strip(" |").split(" | ") for row in config.settings_table().splitlines()[2:]]
    assert [row[0] for row in rows if row[-1].strip() in ("", "None")] == []
