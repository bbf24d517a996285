"""Data contracts: every expectation fails on a crafted bad input and holds on good input; the
CI gate's exit codes and JUnit output; quarantine at ingestion; and the audit run's spine."""

import json
import socket
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import registry, validation
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.audits.result import AuditResult
from recaudit.recsys.simulate import Config, simulate
from support import run_cli

T0 = pd.Timestamp("2024-01-01T10:00:00")
SINCE, UNTIL = pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02")
MOVIES = ["a+2001", "b+2002", "c+2003"]


def good_frames() -> dict[str, pd.DataFrame]:
    times = [T0 + pd.Timedelta(minutes=i) for i in range(3)]
    return {
        "log": pd.DataFrame({"line": [1, 2, 3], "reason": [None, None, None]}),
        "watches": pd.DataFrame({"line": [1, 2, 3], "time": times, "user_id": [1, 1, 2],
                                 "movie_id": pd.Categorical(["a+2001", "a+2001", "b+2002"]), "minute": [0, 1, 7],
                                 "unknown_movie": None}),
        "ratings": pd.DataFrame({"line": [4, 5], "time": times[:2], "user_id": [1, 2],
                                 "movie_id": pd.Categorical(["a+2001", "c+2003"]), "rating": [4, 1],
                                 "unknown_movie": None}),
        "recommendations": pd.DataFrame({
            "line": [6, 7], "time": times[:2], "user_id": [1, 2], "server": pd.Categorical(["s:1", "s:1"]),
            "status": [200, 0], "latency_ms": [120, 800], "n_items": [3, 0], "n_distinct_items": [3, 0],
            "n_unknown_items": [0, 0], "error": [None, "timeout"]}),
        "users": pd.DataFrame({"user_id": [1, 2], "age": pd.array([30, None], dtype="Int64"),
                               "age_group": [None, "under_18"], "gender": ["F", "M"], "occupation": ["x", "y"]}),
        "movies": pd.DataFrame({"movie_id": MOVIES, "title": ["A", "B", "C"],
                                "year": pd.array([2001, 2002, 2003], dtype="Int64"), "genres": ["Drama"] * 3}),
    }


def params(**extra) -> dict:
    cfg = configuration.load()
    cfg["validation"]["list_length"] = 3
    return {**validation.parameters(cfg, SINCE, UNTIL, set(MOVIES)), **extra}


def with_users(frames):
    return {**frames, **validation.table_frames(frames["users"], None)}


def setting(frame, column, value, row=0):
    frame = frame.copy()
    if isinstance(frame[column].dtype, pd.CategoricalDtype):
        frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


def drop(column):
    return lambda f: f.drop(columns=[column])


def set_(column, value, row=0):
    return lambda f: setting(f, column, value, row)


def as_text(column):
    return lambda f: f.assign(**{column: f[column].astype(str)})


def duplicate_first(f):
    return pd.concat([f, f.iloc[[0]]], ignore_index=True)


def all_null(column):
    return lambda f: f.assign(**{column: None})


TIME_CASES = {
    "time_is_a_timestamp": as_text("time"),
    "time_not_in_future": set_("time", pd.Timestamp("2100-01-01")),
    "time_in_window": set_("time", pd.Timestamp("2023-06-01")),
}
BAD = {
    ("log", "lines_parse"): set_("reason", "bad timestamp"),
    **{("watches", name): case for name, case in {
        "watches_columns": drop("minute"), "user_id_is_an_integer": as_text("user_id"),
        "minute_is_an_integer": lambda f: f.assign(minute=f.minute + 0.5), "user_id_not_null": set_("user_id", None),
        "movie_id_not_null": set_("movie_id", None), "minute_between_0_and_max_minute": set_("minute", 10_000),
        "no_duplicate_watch_events": duplicate_first, "watched_movie_known": set_("unknown_movie", "z+1999"),
        **TIME_CASES}.items()},
    **{("ratings", name): case for name, case in {
        "ratings_columns": drop("rating"), "user_id_is_an_integer": as_text("user_id"),
        "rating_is_an_integer": lambda f: f.assign(rating=f.rating + 0.5), "user_id_not_null": set_("user_id", None),
        "movie_id_not_null": set_("movie_id", None), "rating_between_1_and_5": set_("rating", 7),
        "no_duplicate_ratings": duplicate_first, "rated_movie_known": set_("unknown_movie", "z+1999"),
        **TIME_CASES}.items()},
    **{("recommendations", name): case for name, case in {
        "recommendations_columns": drop("n_items"), "status_is_an_integer": as_text("status"),
        "latency_ms_is_an_integer": lambda f: f.assign(latency_ms=f.latency_ms + 0.5),
        "user_id_not_null": set_("user_id", None), "server_not_null": set_("server", None),
        "status_known": set_("status", 299, row=1), "latency_not_negative": set_("latency_ms", -1),
        "list_has_list_length_movies": lambda f: setting(setting(f, "n_items", 2), "n_distinct_items", 2),
        "list_without_duplicates": set_("n_distinct_items", 2), "recommended_movies_known": set_("n_unknown_items", 1),
        **TIME_CASES}.items()},
    **{("users", name): case for name, case in {
        "users_columns": drop("occupation"), "user_id_is_an_integer": as_text("user_id"),
        "user_id_not_null": set_("user_id", None), "user_id_unique": set_("user_id", 2),
        "age_between_0_and_120": set_("age", 130), "gender_in_M_F": set_("gender", "X"),
        "age_mostly_known": lambda f: f.assign(age=pd.array([None, None], dtype="Int64"), age_group=None),
        "gender_mostly_known": all_null("gender")}.items()},
    **{("movies", name): case for name, case in {
        "movies_columns": drop("genres"), "movie_id_not_null": set_("movie_id", None),
        "movie_id_unique": set_("movie_id", "b+2002"), "year_plausible": set_("year", 1700),
        "title_mostly_known": all_null("title"), "year_mostly_known": all_null("year")}.items()},
}


def shipped_expectations() -> list[tuple[str, str]]:
    return [(dataset, e["meta"]["name"]) for dataset, suite in validation.load_suites().items()
            for e in suite["expectations"]]


def test_every_shipped_expectation_has_a_crafted_failing_case():
    assert sorted(shipped_expectations()) == sorted(BAD)


def test_good_input_meets_every_expectation():
    outcomes = validation.run_suites(with_users(good_frames()), params())
    assert len(outcomes) == len(BAD)
    assert [o for o in outcomes if not o.success] == []


@pytest.mark.parametrize("dataset, name", sorted(BAD))
def test_each_expectation_fails_on_its_crafted_bad_input(dataset, name):
    bad = {dataset: BAD[dataset, name](good_frames()[dataset])}
    if dataset == "users":
        bad = validation.table_frames(bad["users"], None)
    outcome = next(o for o in validation.run_suites(bad, params()) if (o.dataset, o.name) == (dataset, name))
    assert outcome.success is False, outcome
    assert outcome.message


def test_expectations_missing_a_parameter_are_skipped_and_say_why():
    frames = good_frames()
    frames["watches"] = setting(frames["watches"], "movie_id", "z+1999")  # would fail if checked
    cfg = configuration.load()
    outcomes = validation.run_suites(with_users(frames), validation.parameters(cfg))  # no window, no catalogue
    skipped = {(o.dataset, o.name): o.skipped for o in outcomes if o.success is None}
    assert skipped[("watches", "watched_movie_known")] == "no catalogue to check against"
    assert skipped[("recommendations", "recommended_movies_known")] == "no catalogue to check against"
    assert skipped[("ratings", "time_in_window")] == "no since, until to check against"


def test_failure_messages_say_how_many_in_plain_words_with_examples():
    frames = good_frames()
    recs = frames["recommendations"]
    frames["recommendations"] = pd.concat([recs] * 50, ignore_index=True).assign(line=range(100))
    frames["recommendations"].loc[[10, 30, 50], ["n_items", "n_distinct_items"]] = [19, 19]
    o = next(o for o in validation.run_suites(frames, params()) if o.name == "list_has_list_length_movies")
    assert o.message.startswith("3 recommendation lists (6.0%) do not have 3 movies; examples: line 10: 19")


def test_an_expectation_that_cannot_be_evaluated_says_so():
    frames = {"ratings": good_frames()["ratings"].drop(columns=["rating"])}
    o = next(o for o in validation.run_suites(frames, params()) if o.name == "rating_between_1_and_5")
    assert o.success is False and o.message.startswith("could not be checked:")


def test_validation_opens_no_network_connection(monkeypatch):
    real = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost")):
            raise AssertionError(f"validation tried to connect to {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    assert validation.run_suites(with_users(good_frames()), params())


# -- the CI gate ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = {}
    for name, inject in (("clean", ()), ("corrupt", ("corrupt",))):
        path = tmp_path_factory.mktemp(name)
        simulate(path, Config(users=400, movies=100, days=4, seed=5, inject=inject))
        out[name] = path
    return out


def test_gate_passes_clean_simulated_data(recaudit_bin, worlds):
    done = run_cli(recaudit_bin, "validate", str(worlds["clean"]))
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert "0 failed" in done.stdout.decode()


def test_gate_passes_a_clean_log_alone_without_a_catalogue(recaudit_bin, worlds):
    done = run_cli(recaudit_bin, "validate", str(worlds["clean"] / "events.log"))
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "skip recommendations.recommended_movies_known: no catalogue to check against" in out


def test_gate_fails_corrupt_data_naming_the_expectations_and_writes_junit(recaudit_bin, worlds, tmp_path):
    junit = tmp_path / "reports" / "validation.xml"
    done = run_cli(recaudit_bin, "validate", "--junit", str(junit), "--json", str(worlds["corrupt"]))
    assert done.returncode == 1
    result = json.loads(done.stdout)
    failed = {f"{e['dataset']}.{e['name']}" for e in result["expectations"] if e["success"] is False}
    assert {"log.lines_parse", "recommendations.list_has_list_length_movies",
            "recommendations.list_without_duplicates", "watches.watched_movie_known"} <= failed
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert int(root.get("tests")) == len(cases) == len(result["expectations"])
    assert int(root.get("failures")) == len(root.findall(".//failure")) == len(failed)
    assert (int(root.get("skipped")) == len(root.findall(".//skipped"))
            == sum(e["success"] is None for e in result["expectations"]))
    names = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert ("recaudit.log", "lines_parse") in names
    message = next(c.find("failure").get("message") for c in cases if c.get("name") == "lines_parse")
    assert "lines" in message and "malformed" in message


@pytest.mark.parametrize("args, message", [
    (["validate", "{tmp}/missing.log"], "missing.log: no such file or directory"),
    (["validate", "--suite-dir", "{tmp}/nowhere", "{clean}"], "nowhere: no such suite directory"),
    (["validate", "--since", "2024-01-01", "{clean}"], "--since and --until go together"),
    (["validate", "{tmp}"], "no users.csv, movies.csv, event log or MovieLens files"),
])
def test_gate_input_errors_exit_2_with_one_line(recaudit_bin, worlds, tmp_path, args, message):
    done = run_cli(recaudit_bin, *[a.format(tmp=tmp_path, clean=worlds["clean"]) for a in args])
    err = done.stderr.decode()
    assert done.returncode == 2 and message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1


def test_a_suite_edited_by_hand_is_what_runs(recaudit_bin, worlds, tmp_path):
    suites = tmp_path / "suites"
    suites.mkdir()
    ratings = json.loads((validation.suite_dir() / "ratings.json").read_text())
    rule = next(e for e in ratings["expectations"] if e["meta"]["name"] == "rating_between_1_and_5")
    rule["kwargs"]["min_value"] = 5  # a stricter contract: only fives
    (suites / "ratings.json").write_text(json.dumps(ratings))
    done = run_cli(recaudit_bin, "validate", "--suite-dir", str(suites), str(worlds["clean"] / "events.log"))
    assert done.returncode == 1 and "ratings.rating_between_1_and_5" in done.stdout.decode()


# -- quarantine at ingestion ------------------------------------------------------------------

def test_ingest_validate_quarantines_failing_events_with_the_expectation_name(store, worlds):
    summary = ingest(store, [str(worlds["corrupt"])], check=validation.row_check(configuration.load())).to_dict()
    stored = summary["stored"]
    assert summary["lines"] == sum(stored.values()) + summary["quarantined"]
    reasons = store.read("quarantine").reason
    assert (reasons == "failed expectation recommendations.list_has_list_length_movies").any()
    assert (reasons == "failed expectation recommendations.list_without_duplicates").any()
    recs = store.read("recommendations")
    lists = store.read("items").groupby("line").movie_id.agg(["size", "nunique"])
    ok = recs[recs.status == 200]
    assert (ok.n_items == 20).all() and (lists["size"] == lists["nunique"]).all()
    assert set(store.read("items").line) <= set(recs.line)


def test_events_quarantined_by_an_expectation_are_not_counted_as_malformed_lines(store, worlds, tmp_path):
    ingest(store, [str(worlds["corrupt"])], check=validation.row_check(configuration.load()))
    run = runs.run(store, "2024-01-03", "2024-01-05", configuration.load(), ["validation"], tmp_path)
    audit = run.results["validation"]
    q = store.quarantine_of_window(pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-05"))
    malformed = (~q.reason.str.startswith(validation.QUARANTINED_BY)).sum()
    assert audit.metrics["validation.unexpected_count.log.lines_parse"] == malformed
    assert audit.metrics["validation.quarantined.recommendations.list_has_list_length_movies"] > 0
    assert any(f.kind == "quarantined_by_expectation" and f.severity == "info" for f in audit.findings)


# -- the audit run -----------------------------------------------------------------------------

@pytest.fixture
def audited_store(store, worlds):
    ingest(store, [str(worlds["corrupt"])])
    return store


def test_audit_run_records_metrics_and_findings_and_writes_results(audited_store, tmp_path):
    cfg = configuration.load()
    before = runs.run(audited_store, "2024-01-01", "2024-01-02", cfg, out=tmp_path)
    after = runs.run(audited_store, "2024-01-03", "2024-01-04", cfg, out=tmp_path)
    assert before.status == "ok" and before.results["validation"].metrics["validation.failed"] == 0
    assert after.status == "critical"
    data = json.loads((tmp_path / "runs" / str(after.run_id) / "results.json").read_text())
    assert data["run_id"] == after.run_id and data["window"] == {"since": "2024-01-03T00:00:00",
                                                                 "until": "2024-01-04T00:00:00"}
    audit = data["audits"]["validation"]
    assert audit["metrics"]["validation.success.log.lines_parse"] == 0.0
    assert audit["metrics"]["validation.unexpected_percent.recommendations.list_has_list_length_movies"] > 0
    messages = [f["message"] for f in audit["findings"]]
    assert any("malformed" in m for m in messages)
    with audited_store.engine.connect() as conn:
        from sqlalchemy import text

        stored = dict(conn.execute(text("SELECT key, value FROM metrics WHERE run_id = :r"), {"r": after.run_id}).all())
        found = conn.execute(text("SELECT count(*) FROM findings WHERE run_id = :r"), {"r": after.run_id}).scalar()
        status = conn.execute(text("SELECT status FROM audit_runs WHERE id = :r"), {"r": after.run_id}).scalar()
    every = {k: v for a in data["audits"].values() for k, v in a["metrics"].items()}
    findings = sum(len(a["findings"]) for a in data["audits"].values())
    assert stored == every and found == findings and status == "critical"


def test_an_audit_that_raises_is_recorded_as_errored_and_the_others_still_run(audited_store, tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("out of coffee")

    monkeypatch.setitem(registry.AUDITS, "broken", "builtins:len")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: broken if name == "broken" else real_get(name))
    result = runs.run(audited_store, "2024-01-01", "2024-01-02", configuration.load(), out=tmp_path)
    assert result.results["broken"].status == "errored" and "out of coffee" in result.results["broken"].error
    assert result.results["validation"].status == "ok"
    assert result.status == "errored" and result.results["broken"].critical


def test_an_empty_window_is_insufficient_data_not_ok(audited_store, tmp_path):
    result = runs.run(audited_store, "2030-01-01", "2030-01-02", configuration.load(), ["validation"], tmp_path)
    assert result.results["validation"].status == "insufficient_data" and not result.results["validation"].findings


def test_cli_audit_exits_1_when_an_audit_errored(recaudit_bin, tmp_path, worlds):
    db = tmp_path / "a.db"
    assert run_cli(recaudit_bin, "ingest", "--db", str(db), str(worlds["clean"])).returncode == 0
    (tmp_path / "recaudit.toml").write_text('[validation]\nsuite_dir = "/nonexistent"\n')
    done = run_cli(recaudit_bin, "audit", "--db", str(db), "--only", "validation", "--config",
                   str(tmp_path / "recaudit.toml"), "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "could not run" in done.stdout.decode()


def test_findings_keep_their_fingerprint_across_runs_whatever_the_value():
    from recaudit.audits.result import Finding

    a = Finding("validation", "validation.success.log.lines_parse", "critical", "3 lines", value=3)
    b = Finding("validation", "validation.success.log.lines_parse", "critical", "9 lines", value=9)
    assert a.fingerprint == b.fingerprint != Finding("validation", "other", "critical", "x").fingerprint
    assert AuditResult("x", findings=[a]).status == "findings"


def test_cli_audit_exits_1_on_critical_findings_and_writes_an_escaped_page(recaudit_bin, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=200, movies=60, days=2, seed=3))
    log = data / "events.log"
    log.write_bytes(log.read_bytes() + b"2024-01-02T23:00:00,5,GET /data/m/<svg+onload=alert(1)>/1.mpg\n"
                    b"broken line\n")
    db = tmp_path / "audit.db"
    assert run_cli(recaudit_bin, "ingest", "--db", str(db), str(data)).returncode == 0
    clean = run_cli(recaudit_bin, "audit", "--db", str(db), "--since", "2024-01-01", "--until", "2024-01-02",
                    "--out", str(tmp_path / "out"))
    assert clean.returncode == 0, clean.stdout
    bad = run_cli(recaudit_bin, "audit", "--db", str(db), "--out", str(tmp_path / "out"), "--json")
    assert bad.returncode == 1
    run = json.loads(bad.stdout)
    page = (tmp_path / "out" / "runs" / str(run["run_id"]) / "index.html").read_text()
    assert "<svg+onload" not in page and "&lt;svg+onload=alert(1)&gt;" in page  # an unknown movie, escaped
    assert "are malformed" in page
    unknown = run_cli(recaudit_bin, "audit", "--db", str(db), "--only", "nope")
    assert unknown.returncode == 2 and "unknown audit 'nope'" in unknown.stderr.decode()


def test_config_file_overrides_defaults_and_rejects_unknown_settings(tmp_path):
    path = tmp_path / "recaudit.toml"
    path.write_text("[validation]\nlist_length = 10\n")
    assert configuration.load(path)["validation"]["list_length"] == 10
    assert configuration.load(path)["audit"]["window"] == "1d"
    path.write_text("[validation]\nlist_lenght = 10\n")
    with pytest.raises(Exception, match="validation.list_lenght: unknown setting"):
        configuration.load(path)


@pytest.mark.parametrize("body, message", [
    ("[audit]\nwindow = 1\n", "audit.window: must be a string"),
    ('[audit]\nwindow = "soon"\n', "audit.window: must be a positive duration"),
    ('[drift]\nshare_threshold = "half"\n', "drift.share_threshold: must be a number"),
    ("[drift.signals.sex]\nenabled = 1\n", "drift.signals.sex.enabled: must be true or false"),
])
def test_a_setting_of_the_wrong_type_is_an_input_error(recaudit_bin, tmp_path, body, message):
    (tmp_path / "recaudit.toml").write_text(body)
    done = run_cli(recaudit_bin, "audit", "--db", str(tmp_path / "x.db"), "--config", str(tmp_path / "recaudit.toml"))
    assert done.returncode == 2 and message in done.stderr.decode()


def test_default_window_ends_with_the_latest_event(audited_store):
    since, until = runs.default_window(audited_store, "1d")
    latest = audited_store.latest_event_time()
    assert until - since == pd.Timedelta(days=1) and since < latest < until
    assert runs.default_window(audited_store, "1d", since="2024-01-02") == (pd.Timestamp("2024-01-02"),
                                                                           pd.Timestamp("2024-01-03"))


# -- over frames ------------------------------------------------------------------------------

def test_validate_over_frames_gives_the_outcomes_of_the_cli_on_the_same_files(recaudit_bin, worlds):
    from recaudit.recsys import events, formats

    world = worlds["corrupt"]
    done = run_cli(recaudit_bin, "validate", "--json", str(world))
    assert done.returncode == 1
    framed = validation.validate(events.parse_file(world / "events.log"),
                                 formats.read_users_csv(world / "users.csv")[0],
                                 formats.read_movies_csv(world / "movies.csv")[0])
    fields = ("dataset", "name", "success", "unexpected_count", "element_count", "message", "skipped")
    assert [{k: e[k] for k in fields} for e in framed.details["expectations"]] == \
        [{k: e[k] for k in fields} for e in json.loads(done.stdout)["expectations"]]
    assert framed.metrics["validation.failed"] == sum(e["success"] is False for e in framed.details["expectations"]) > 0


def test_ingestion_and_validation_do_not_import_each_other():
    import ast
    from pathlib import Path

    import recaudit.audits.ingest as ingestion

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module or ""}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert not any("validation" in name for name in imported(ingestion))
    assert not any("ingest" in name for name in imported(validation))
