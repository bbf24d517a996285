"""Predictions of any model: a predictions file (CSV, JSON Lines or Parquet) ingests with every
guarantee of a source, and the fairness audit evaluates the team's own model from it, or from a
scorer it calls, naming the model, its coverage and its gaps; recaudit's reference model only
when nothing else exists or when asked for."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import team_model

import recaudit
from recaudit.audits import config as configuration
from recaudit.audits import fairness
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.audits.store import Store
from recaudit.recsys import predictions
from recaudit.recsys.simulate import Config, simulate
from support import run_cli

WORLD = Config(users=3000, movies=120, days=5, seed=11)
SINCE, UNTIL = "2024-01-01", "2024-01-07"


def latest_before(ratings: pd.DataFrame, made: pd.DataFrame) -> np.ndarray:
    """The oracle: for each rating, the prediction of the same user and movie made last,
    strictly before it (NaN when none), by pandas' as-of join rather than the audit's SQL."""
    left = ratings.reset_index().assign(movie_id=ratings["movie_id"].astype(str).to_numpy()).sort_values("time")
    right = made.assign(movie_id=made["movie_id"].astype(str)).sort_values("time")
    joined = pd.merge_asof(left, right[["time", "user_id", "movie_id", "prediction"]], on="time",
                           by=["user_id", "movie_id"], allow_exact_matches=False, direction="backward")
    return joined.set_index("index").sort_index()["prediction"].to_numpy()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A simulated service whose recommender is the team's own: its predictions, written before
    most (not all) ratings, noisier for the users of the largest region."""
    out = tmp_path_factory.mktemp("service")
    simulate(out, WORLD)
    users = pd.read_csv(out / "users.csv")
    noisy = users["region"].value_counts().idxmax()
    team_model.serve(WORLD, users, noisy)
    ratings = recaudit.read_log(out / "events.log").ratings
    rng = np.random.default_rng(0)
    scored = rng.random(len(ratings)) < 0.85
    before = ratings[scored]
    made = [pd.DataFrame({"time": before["time"] - pd.to_timedelta(rng.integers(60, 7200, len(before)), "s"),
                          "user_id": before["user_id"], "movie_id": before["movie_id"].astype(str),
                          "prediction": team_model.predict(before["user_id"], before["movie_id"].astype(str))})]
    stale = before.sample(frac=0.1, random_state=1)  # an older, wrong prediction: the later one counts
    made.append(pd.DataFrame({"time": stale["time"] - pd.Timedelta("3d"), "user_id": stale["user_id"],
                              "movie_id": stale["movie_id"].astype(str), "prediction": 1.0}))
    late = ratings[~scored].sample(frac=0.5, random_state=2)  # made after its rating: not used for it
    made.append(pd.DataFrame({"time": late["time"] + pd.Timedelta("1min"), "user_id": late["user_id"],
                              "movie_id": late["movie_id"].astype(str), "prediction": 5.0}))
    made = pd.concat(made, ignore_index=True).sample(frac=1, random_state=3)  # in no particular order
    made.assign(time=made["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")).to_csv(out / "predictions.csv", index=False)
    return {"dir": out, "ratings": ratings, "made": made, "noisy": noisy, "expected": latest_before(ratings, made)}


def audit(db_url, tmp_path, toml: str, *extra):
    (tmp_path / "recaudit.toml").write_text(toml)
    done = run_cli("recaudit", "audit", "--db", db_url, "--config", str(tmp_path / "recaudit.toml"), "--only",
                   "fairness", "--since", SINCE, "--until", UNTIL, "--out", str(tmp_path / "reports"), "--json",
                   *extra)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    page = (tmp_path / "reports" / "runs" / str(run["run_id"]) / "index.html").read_text()
    return run["audits"]["fairness"], page


REGION = '[fairness]\ndimensions = ["region"]\nmin_group_size = 40\nresamples = 100\n'


def test_the_team_s_own_model_is_audited_from_its_predictions_and_its_region_gap_is_found(service, db_url, tmp_path):
    done = run_cli("recaudit", "ingest", "--db", db_url, "--model-name", "team-knn", "--json", str(service["dir"]))
    assert done.returncode == 0, done.stderr
    [source] = [s for s in json.loads(done.stdout)["sources"] if s["kind"] == "predictions"]
    assert source["stored"] == {"predictions": len(service["made"])} and source["quarantined"] == 0
    store = Store(db_url)
    assert store.model_artifact() is None  # no reference model trained
    store.close()

    result, page = audit(db_url, tmp_path, REGION, "--export-predictions", str(tmp_path / "evaluated.csv"))
    expected = service["expected"]
    assert (result["details"]["model"], result["details"]["source"]) == ("team-knn", "stored predictions")
    assert result["metrics"]["fairness.unscored"] == np.isnan(expected).sum() > 0
    assert result["metrics"]["fairness.n"] == (~np.isnan(expected)).sum()
    assert result["metrics"]["fairness.scored_share"] == pytest.approx((~np.isnan(expected)).mean())
    [gap] = [f for f in result["findings"] if f["key"] == "fairness.rmse_gap.region"]
    assert f"for region {service['noisy']} against" in gap["message"]
    exported = pd.read_csv(tmp_path / "evaluated.csv")
    ratings = service["ratings"]
    oracle = pd.DataFrame({"user_id": ratings["user_id"], "movie_id": ratings["movie_id"].astype(str),
                           "time": ratings["time"], "prediction": expected}).dropna()
    mine = exported.assign(time=pd.to_datetime(exported["time"]))
    # The export rounds times to the second: compare the multiset of (user, movie, prediction).
    assert sorted(zip(mine.user_id, mine.movie_id, mine.prediction.round(9))) == \
        sorted(zip(oracle.user_id, oracle.movie_id, oracle.prediction.round(9)))
    assert result["metrics"]["fairness.cold_start_share"] is None and exported["cold_start"].isna().all()
    assert "fairness.hit_rate.region." + service["noisy"] not in result["metrics"]  # no ranking of its own
    assert "team-knn" in page and "stored predictions" in page and "unknown for an outside model" in page
    assert "hit rate and NDCG need recaudit" in page  # its apostrophe is escaped

    # The same model plugged in as a scorer: every rating scored, in chunks, and the same gap.
    asked = len(team_model.calls())
    hooked, _page = audit(db_url, tmp_path, REGION + 'scorer = "team_model:predict"\nscorer_batch = 100\n',
                          "--export-predictions", str(tmp_path / "hooked.csv"))
    assert (hooked["details"]["model"], hooked["details"]["source"]) == ("team_model:predict", "scorer")
    assert hooked["metrics"]["fairness.unscored"] == 0 and hooked["metrics"]["fairness.n"] == len(ratings)
    chunks = team_model.calls()[asked:]
    assert sum(chunks) == len(ratings) and max(chunks) == 100
    [same] = [f for f in hooked["findings"] if f["key"] == "fairness.rmse_gap.region"]
    assert f"for region {service['noisy']} against" in same["message"]
    by_pair = pd.read_csv(tmp_path / "hooked.csv").merge(exported, on=["user_id", "movie_id", "time"])
    # Where the file's latest prediction was the model's own (not a stale or late decoy, which a
    # user who rated a movie twice can meet), the hook predicted the same.
    own = ~by_pair.prediction_y.isin([1.0, 5.0])
    assert len(by_pair) == len(exported) and own.mean() > 0.95
    assert np.allclose(by_pair.prediction_x[own], by_pair.prediction_y[own])


def test_csv_json_lines_and_parquet_hold_the_same_rows(store, tmp_path):
    rows = pd.DataFrame({"time": pd.to_datetime(["2024-01-01T10:00:00", "2024-01-01T10:00:00.123456",
                                                 "2024-01-02T00:00:00"], format="ISO8601"),
                         "user_id": [1, 2, 3], "movie_id": ["heat+1995", "up+2009", "in+a++w+2010"],
                         "prediction": [3.5, 4.0, 1.25], "model": ["knn", "knn", "xgb"]})
    text = rows.assign(time=rows["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    text.to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text.to_dict("records")))
    rows.to_parquet(tmp_path / "p.parquet")
    summary = ingest(store, [str(tmp_path / n) for n in ("p.csv", "p.jsonl", "p.parquet")])
    assert [(s.kind, s.stored, s.quarantined) for s in summary.sources] == [("predictions", {"predictions": 3}, 0)] * 3
    stored = store.read("predictions")
    columns = ["time", "user_id", "movie_id", "model", "prediction"]
    each = [part[columns].astype({"movie_id": str}).reset_index(drop=True) for _, part in stored.groupby("source_id")]
    for part in each:
        pd.testing.assert_frame_equal(part, rows[columns])


BAD_CSV = (b"time,user_id,movie_id,prediction,model\n"
           b"2024-01-01T10:00:00,1,heat+1995,3.5,knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,3.5,knn\n"  # a duplicate line
           b"2024-01-01 10:00:00,1,heat+1995,3.5,knn\n"
           b"2024-01-01T10:00:00,-1,heat+1995,3.5,knn\n"
           b"2024-01-01T10:00:00,99999999999999999999,heat+1995,3.5,knn\n"
           b"2024-01-01T10:00:00,1,heat 1995,3.5,knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,NaN,knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,1e999,knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,high,knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,3,\n"
           b"2024-01-01T10:00:00,1,heat+1995\n"
           b"2024-01-01T10:00:00,1,heat+1995,3,\"knn\n"
           b"2024-01-01T10:00:00,1,heat+1995,3,caf\xe9\n"
           b"\n"
           b"2024-01-02T10:00:00,2,up+2009,4,</script><script>alert(1)</script>\n"
           b"2024-01-02T10:00:0")  # truncated
BAD_REASONS = ["duplicate of line 2 (same model, user, movie and time)", "bad timestamp",
               "user_id not a non-negative integer", "user_id not a non-negative integer",
               "movie_id not a movie id (a slug such as heat+1995, without spaces, commas or /)",
               "prediction not a finite number", "prediction not a finite number", "prediction not a finite number",
               "model empty", "expected 5 fields, got 3", "not a CSV row (unexpected end of data)", "not UTF-8"]


def test_every_kind_of_bad_row_is_quarantined_with_its_reason_file_and_line(db_url, tmp_path):
    store = Store(db_url)
    (tmp_path / "bad.csv").write_bytes(BAD_CSV)
    [result] = ingest(store, [str(tmp_path / "bad.csv")]).sources
    quarantined = store.read("quarantine")
    assert quarantined["reason"].tolist() == BAD_REASONS + ["expected 5 fields, got 1"]
    assert quarantined["line"].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17]
    assert set(quarantined["file"]) == {str(tmp_path / "bad.csv")}
    assert quarantined["raw"].iloc[-1] == "2024-01-02T10:00:0"
    assert result.lines == result.stored["predictions"] + result.quarantined == 15  # blank lines are not rows
    assert store.read("predictions")["model"].tolist() == ["knn", "</script><script>alert(1)</script>"]
    store.close()


def test_bad_json_lines_and_parquet_rows_are_quarantined_with_their_reasons(store, tmp_path):
    good = {"time": "2024-01-01T10:00:00Z", "user_id": 1, "movie_id": "heat+1995", "prediction": 3}
    lines = [good, {**good, "user_id": "1"}, {**good, "user_id": True}, {**good, "prediction": float("nan")},
             {**good, "prediction": 10 ** 400}, {**good, "time": 1704103200}, {**good, "model": None},
             {**good, "score": 1}, {k: v for k, v in good.items() if k != "movie_id"}, [1, 2]]
    text = "".join((json.dumps(v) if not isinstance(v, dict) or v.get("prediction") != 10 ** 400
                    else json.dumps(v).replace(str(10 ** 400), "1" + "0" * 400)) + "\n" for v in lines)
    (tmp_path / "p.jsonl").write_text(text + '{"time": "2024-01-01T10:00:01", "user_id": 1, "movie_\n')
    [result] = ingest(store, [str(tmp_path / "p.jsonl")]).sources
    assert store.read("quarantine")["reason"].tolist() == [
        "user_id not a non-negative integer", "user_id not a non-negative integer", "malformed JSON",  # NaN: not JSON
        "prediction not a finite number", "bad timestamp", "model not text", "unknown key 'score'",
        "missing key 'movie_id'", "not a JSON object", "malformed JSON"]
    assert (result.lines, result.stored["predictions"], result.quarantined) == (11, 1, 10)

    frame = pd.DataFrame({"time": pd.to_datetime(["2024-01-01T10:00:00", "2024-01-01T11:00:00", None]),
                          "user_id": [-4, 1, 1], "movie_id": ["a+2001", "a+2001", "b+2002"],
                          "prediction": [3.0, float("inf"), 2.0]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    table, rejects = predictions.read("p.parquet", buffer.getvalue())
    assert table.empty and rejects["line"].tolist() == [1, 2, 3]
    assert rejects["reason"].tolist() == ["user_id not a non-negative integer", "prediction not a finite number",
                                          "bad timestamp"]
    assert json.loads(rejects["raw"].iloc[0]) == {"time": "2024-01-01T10:00:00", "user_id": -4, "movie_id": "a+2001",
                                                  "prediction": 3.0}


@pytest.mark.parametrize("name, content, message", [
    ("p.parquet", b"time,user_id,movie_id,prediction\n", "not Parquet, though its name ends in .parquet"),
    ("q.parquet", b"PAR1 and then nothing of a Parquet file", "cannot be read as Parquet"),
    ("r.parquet", "columns", "expected the Parquet columns time,user_id,movie_id,prediction[,model]"),
])
def test_a_file_that_is_not_what_it_claims_is_a_one_line_input_error(tmp_path, name, content, message):
    if content == "columns":
        buffer = io.BytesIO()
        pd.DataFrame({"time": [1], "user": [1], "movie_id": ["a"], "prediction": [1.0]}).to_parquet(buffer)
        content = buffer.getvalue()
    (tmp_path / name).write_bytes(content)
    done = run_cli("recaudit", "ingest", "--db", str(tmp_path / "x.db"), str(tmp_path / name))
    assert done.returncode == 2 and message in done.stderr.decode() and b"Traceback" not in done.stderr
    assert done.stderr.decode().count("\n") == 1 and str(tmp_path / name) in done.stderr.decode()


@pytest.mark.parametrize("name", ["", " padded", "tab\there", "x" * 201])
def test_a_model_name_of_the_wrong_form_is_refused(tmp_path, name):
    (tmp_path / "p.csv").write_text("time,user_id,movie_id,prediction\n2024-01-01T00:00:00,1,a+2001,3\n")
    done = run_cli("recaudit", "ingest", "--db", str(tmp_path / "x.db"), "--model-name", name, str(tmp_path / "p.csv"))
    assert done.returncode == 2 and done.stderr.startswith(b"error: --model-name: model ")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_predictions_file_again_stores_nothing_and_a_grown_one_only_its_new_lines(store, tmp_path, suffix):
    def line(i, value="3.25"):
        if suffix == "csv":
            return f"2024-01-01T00:00:{i:02d},{i},a+2001,{value}\n"
        return json.dumps({"time": f"2024-01-01T00:00:{i:02d}", "user_id": i, "movie_id": "a+2001",
                           "prediction": float(value)}) + "\n"

    path = tmp_path / f"p.{suffix}"
    head = "time,user_id,movie_id,prediction\n" if suffix == "csv" else ""
    path.write_text(head + line(1) + line(2)[:-6])  # the last line half-written
    first = ingest(store, [str(path)]).sources[0]
    assert first.lines == first.stored["predictions"] + first.quarantined == 2
    assert ingest(store, [str(path)]).sources[0].status == "unchanged"
    path.write_text(head + line(1) + line(2) + line(3))
    grown = ingest(store, [str(path)]).sources[0]
    assert (grown.status, grown.lines, grown.stored["predictions"], grown.quarantined) == ("ingested", 2, 2, 0)
    assert store.read("predictions")[["user_id", "prediction"]].values.tolist() == [[1, 3.25], [2, 3.25], [3, 3.25]]
    assert store.count("quarantine") == 0
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / path.name).write_bytes(path.read_bytes())
    assert ingest(store, [str(tmp_path / "copy" / path.name)]).sources[0].status in ("skipped", "unchanged")
    assert store.count("predictions") == 3


LOG = ("2024-01-02T10:00:00,1,GET /rate/a+2001=4\n"
       "2024-01-02T10:00:00,2,GET /rate/a+2001=2\n"
       "2024-01-02T11:00:00,3,GET /rate/a+2001=5\n"
       "2024-01-02T12:00:00,4,GET /rate/b+2002=1\n")


def test_the_latest_prediction_strictly_before_a_rating_scores_it(store, tmp_path):
    (tmp_path / "e.log").write_text(LOG)
    (tmp_path / "p.csv").write_text(
        "time,user_id,movie_id,prediction,model\n"
        "2024-01-01T10:00:00,1,a+2001,1.0,m\n"
        "2024-01-02T09:59:59,1,a+2001,3.5,m\n"  # the latest before user 1's rating
        "2024-01-02T09:59:59,1,a+2001,9.0,other\n"  # another model's
        "2024-01-02T10:00:00,2,a+2001,2.5,m\n"  # at the very time of the rating: not before it
        "2024-01-02T10:30:00,3,a+2001,4.0,m\n"
        "2024-01-02T11:00:01,3,a+2001,1.0,m\n"  # after user 3's rating
        "2024-01-02T11:00:00,4,a+2001,1.0,m\n")  # another movie
    (tmp_path / "q.csv").write_text("time,user_id,movie_id,prediction,model\n2024-01-02T10:30:00,3,a+2001,4.5,m\n")
    ingest(store, [str(tmp_path / n) for n in ("e.log", "p.csv", "q.csv")])
    scored = fairness.stored_predictions(store, "m", pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03"))
    assert scored["user_id"].tolist() == [1, 2, 3, 4]
    # User 3's two predictions at 10:30 came from two sources: the one stored last counts.
    assert scored["prediction"].tolist()[:1] + scored["prediction"].tolist()[2:3] == [3.5, 4.5]
    assert scored["prediction"].isna().tolist() == [False, True, False, True]


def test_two_models_in_one_file_the_busiest_in_the_window_is_the_default_and_either_can_be_chosen(store, tmp_path):
    (tmp_path / "e.log").write_text(LOG)
    (tmp_path / "p.csv").write_text(
        "time,user_id,movie_id,prediction,model\n"
        + "".join(f"2023-12-{d:02d}T00:00:00,9,z+2000,3,old\n" for d in range(1, 20))  # busiest, but long before
        + "2024-01-02T09:00:00,1,a+2001,3.5,</script><b>new</b>\n"
        "2024-01-02T09:00:00,2,a+2001,2.5,</script><b>new</b>\n"
        "2024-01-02T09:00:00,3,a+2001,4,old\n")
    ingest(store, [str(tmp_path / n) for n in ("e.log", "p.csv")])
    cfg = configuration.resolve({"fairness": {"min_group_size": 1, "min_group_users": 1, "resamples": 10,
                                              "window": "1d"}})
    done = runs.run(store, "2024-01-02", "2024-01-03", cfg, ["fairness"], tmp_path / "r").results["fairness"]
    assert (done.details["model"], done.details["scored"], done.details["unscored"]) == ("</script><b>new</b>", 2, 2)
    cfg["fairness"]["model"] = "old"
    done = runs.run(store, "2024-01-02", "2024-01-03", cfg, ["fairness"], tmp_path / "r").results["fairness"]
    assert (done.details["model"], done.details["scored"], done.metrics["fairness.scored_share"]) == ("old", 1, 0.25)
    page = done.save_html(tmp_path / "old.html").read_text()
    assert "<b>new</b>" not in page
    cfg["fairness"]["model"] = "</script><b>new</b>"
    done = runs.run(store, "2024-01-02", "2024-01-03", cfg, ["fairness"], tmp_path / "r").results["fairness"]
    page = done.save_html(tmp_path / "new.html").read_text()
    assert "&lt;/script&gt;&lt;b&gt;new&lt;/b&gt;" in page and "</script><b>" not in page


def test_audit_model_takes_a_predictions_model_name(tmp_path):
    db = str(tmp_path / "x.db")
    (tmp_path / "e.log").write_text(LOG)
    (tmp_path / "p.csv").write_text("time,user_id,movie_id,prediction\n2024-01-02T09:00:00,1,a+2001,4\n")
    assert run_cli("recaudit", "ingest", "--db", db, "--model-name", "knn", str(tmp_path / "e.log"),
                   str(tmp_path / "p.csv")).returncode == 0
    done = run_cli("recaudit", "audit", "--db", db, "--only", "fairness", "--model", "knn", "--since", "2024-01-02",
                   "--out", str(tmp_path / "r"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["audits"]["fairness"]
    assert result["details"]["model"] == "knn" and result["metrics"]["fairness.unscored"] == 3
    done = run_cli("recaudit", "audit", "--db", db, "--only", "fairness", "--model", "production")
    assert done.returncode == 2 and b"no model 'production'" in done.stderr


SCORERS = {
    "wrong shape": ("def predict(users, movies):\n    return [[1.0, 2.0]]\n", "of shape (1, 2) for 4"),
    "not finite": ("import numpy as np\ndef predict(users, movies):\n    return np.full(len(users), np.nan)\n",
                   "4 values that are not finite numbers of at most 1e+09 in magnitude, e.g. nan for user 1 and movie "
                   "'a+2001'"),
    "not numbers": ("def predict(users, movies):\n    return ['high'] * len(users)\n", "returned list, not numbers"),
}


@pytest.mark.parametrize("case", list(SCORERS))
def test_a_scorer_that_answers_wrongly_errors_the_audit_naming_the_setting(tmp_path, case):
    code, message = SCORERS[case]
    module = f"scorer_{case.replace(' ', '_')}"
    (tmp_path / f"{module}.py").write_text(code)  # found in the directory the audit runs in
    db = str(tmp_path / "x.db")
    (tmp_path / "e.log").write_text(LOG)
    assert run_cli("recaudit", "ingest", "--db", db, str(tmp_path / "e.log")).returncode == 0
    (tmp_path / "recaudit.toml").write_text(f'[fairness]\nscorer = "{module}:predict"\n')
    done = run_cli("recaudit", "audit", "--db", db, "--only", "fairness", "--since", "2024-01-02", "--out", "r",
                   "--json", cwd=tmp_path)
    assert done.returncode == 1
    result = json.loads(done.stdout)["audits"]["fairness"]
    assert result["status"] == "errored" and result["error"].startswith("InputError: fairness.scorer: ")
    assert message in result["error"] and "\n" not in result["error"]


@pytest.mark.parametrize("setting, message", [
    ("no_such_module_here:predict", "fairness.scorer: cannot import 'no_such_module_here' (ModuleNotFoundError"),
    ("team_model:nothing", "fairness.scorer: 'team_model' has no 'nothing'"),
    ("team_model:NOISY_SD", "fairness.scorer: 'team_model:NOISY_SD' is not callable"),
    ("team_model.predict", 'fairness.scorer: must be "package.module:function"'),
])
def test_a_scorer_that_cannot_be_found_is_a_one_line_error_before_the_audit_runs(tmp_path, setting, message):
    (tmp_path / "recaudit.toml").write_text(f'[fairness]\nscorer = "{setting}"\n')
    (tmp_path / "e.log").write_text(LOG)
    db = str(tmp_path / "x.db")
    assert run_cli("recaudit", "ingest", "--db", db, str(tmp_path / "e.log")).returncode == 0
    done = run_cli("recaudit", "audit", "--db", db, "--config", str(tmp_path / "recaudit.toml"), "--only", "fairness")
    assert done.returncode == 2 and message in done.stderr.decode() and b"Traceback" not in done.stderr
    assert done.stderr.decode().count("\n") == 1


ROW = {"time": "2024-01-01T10:00:00", "user_id": 1, "movie_id": "heat+1995", "prediction": 3.5}


def test_an_event_with_a_prediction_key_of_its_own_is_still_an_event(store, tmp_path):
    # Events may carry keys the format does not name; only an object of a prediction's columns
    # (and nothing else) makes a predictions file.
    event = {"time": "2024-01-01T10:00:00", "user_id": 1, "event": "watch", "movie_id": "heat+1995", "minute": 1}
    (tmp_path / "e.jsonl").write_text(json.dumps({**event, "prediction": 0.9}) + "\n" + json.dumps(event) + "\n")
    [result] = ingest(store, [str(tmp_path / "e.jsonl")]).sources
    assert result.kind == "events" and result.stored["watch"] == 2 and result.quarantined == 0


@pytest.mark.parametrize("name, text", [
    ("blank.jsonl", "\n" + json.dumps(ROW) + "\n"),
    ("blank.csv", "\ntime,user_id,movie_id,prediction\n2024-01-01T10:00:00,1,heat+1995,3.5\n"),
    ("bom.jsonl", "\ufeff" + json.dumps(ROW) + "\n"),
])
def test_a_predictions_file_is_recognised_past_blank_lines_and_a_byte_order_mark(store, tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    [result] = ingest(store, [str(tmp_path / name)]).sources
    assert result.kind == "predictions" and result.stored["predictions"] == 1 and result.quarantined == 0


def test_a_gzip_compressed_predictions_file_is_a_one_line_error_not_a_log_of_rejects(tmp_path):
    import gzip

    (tmp_path / "p.csv.gz").write_bytes(gzip.compress(b"time,user_id,movie_id,prediction\n"
                                                      b"2024-01-01T10:00:00,1,heat+1995,3.5\n"))
    done = run_cli("recaudit", "ingest", "--db", str(tmp_path / "x.db"), str(tmp_path / "p.csv.gz"))
    assert done.returncode == 2 and b"gzip-compressed predictions file" in done.stderr
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr


def test_duplicate_json_keys_and_predictions_beyond_any_scale_are_quarantined(store, tmp_path):
    twice = json.dumps(ROW)[:-1] + ', "prediction": 5.0}'
    (tmp_path / "p.jsonl").write_text("\n".join([json.dumps(ROW), twice, json.dumps({**ROW, "prediction": 1e308}),
                                                 json.dumps({**ROW, "user_id": 2, "prediction": -1e10})]) + "\n")
    [result] = ingest(store, [str(tmp_path / "p.jsonl")]).sources
    assert (result.lines, result.stored["predictions"], result.quarantined) == (4, 1, 3)
    assert store.read("quarantine")["reason"].tolist() == [
        "duplicate JSON key", "prediction beyond 1e+09 in magnitude", "prediction beyond 1e+09 in magnitude"]


def test_a_run_without_a_single_scored_rating_still_names_its_model_and_the_reason_on_its_page(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    (tmp_path / "e.log").write_text(LOG)
    (tmp_path / "p.csv").write_text("time,user_id,movie_id,prediction,model\n"
                                    "2024-01-02T23:00:00,1,a+2001,3.0,after</script>\n")  # after every rating
    assert run_cli("recaudit", "ingest", "--db", db, str(tmp_path / "e.log"), str(tmp_path / "p.csv")).returncode == 0
    done = run_cli("recaudit", "audit", "--db", db, "--only", "fairness", "--since", "2024-01-02",
                   "--until", "2024-01-03", "--out", str(tmp_path / "out"), "--json")
    run = json.loads(done.stdout)
    assert run["audits"]["fairness"]["status"] == "insufficient_data"
    page = (tmp_path / "out" / "runs" / str(run["run_id"]) / "index.html").read_text()
    assert "Model audited: <code>after&lt;/script&gt;</code>, from its stored predictions" in page
    assert "has a prediction by" in page and "</script>," not in page
