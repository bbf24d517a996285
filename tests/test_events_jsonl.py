"""JSON Lines, the event log's second form: the simulator's JSON world stores exactly the tables of
its text world (on a real SQLite file and a real PostgreSQL), the JSON parser under attack and held
to its per-line reference, and the text log's guarantees (growth, rotation, gzip, standard input,
idempotence, the count invariant) for JSON logs."""

from __future__ import annotations

import gzip
import json
import uuid

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from test_events import FORMAT_EXAMPLES, outcomes

from recaudit.audits.ingest import ingest
from recaudit.audits.store import Store
from recaudit.recsys import events as ev
from recaudit.recsys.simulate import LOG_FILES, Config, simulate
from support import run_cli

WORLD = dict(users=300, movies=120, days=4, seed=7, inject=("corrupt",))
WATCH = {"time": "2024-02-27T18:45:18", "user_id": 156972, "event": "watch", "movie_id": "batman+begins+2005",
         "minute": 91}
RATE = {"time": "2022-02-25T13:38:49", "user_id": 284508, "event": "rate", "movie_id": "audition+1999", "rating": 3}
REC = {"time": "2023-03-20T08:12:38.176557", "user_id": 128017, "event": "recommend",
       "server": "17645-team14.example.org:8082", "status": 200,
       "result": ["the+green+mile+1999", "the+sound+of+music+1965"], "latency_ms": 131}
FAILED = {"time": "2022-02-09T01:45:32.945123", "user_id": 284507, "event": "recommend",
          "server": "17645-team17.example.org:8082", "status": 0,
          "result": "java.util.concurrent.TimeoutException: Request timeout to 17645-team17.example.org/10.0.0.1:8082 "
                    "after 800 ms", "latency_ms": 815}


def line(obj) -> bytes:
    return json.dumps(obj).encode()


def parse(data: bytes, **kw) -> ev.ParsedEvents:
    return ev.parse_bytes(data, "test.jsonl", **kw)


def reference(data: bytes) -> dict[int, tuple]:
    """Line number -> what the per-line reference parsers make of it (test_events.outcomes' terms)."""
    out = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        if number > data.count(b"\n") and not raw:
            break
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            out[number] = ("reject", ("not UTF-8",))
            continue
        if not decoded.strip(ev.BLANK):
            continue
        out[number] = (ev.parse_json_line if ev.is_json_line(decoded) else ev.parse_line)(decoded)
    return out


# -- the same world in both forms ----------------------------------------------------------------

@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict:
    """The same simulated service, corrupt from day 2, written in each form."""
    out = {}
    for log_format in LOG_FILES:
        out[log_format] = tmp_path_factory.mktemp(log_format)
        simulate(out[log_format], Config(**WORLD, log_format=log_format))
    return out


@pytest.fixture
def second_url(db_url, tmp_path):
    """A second empty database on db_url's backend (its own SQLite file or PostgreSQL schema)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    import psycopg

    base, _, _ = db_url.partition("?")
    schema = f"recaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{base}?options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def plain(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    out = df.drop(columns=[c for c in ("source_id", "file", "id") if c in df])
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object)
    return out.sort_values(by, kind="stable").reset_index(drop=True)


def stored_tables(url: str) -> dict[str, pd.DataFrame]:
    """Every table ingestion fills, with movies by id (keys are the store's own numbering) and
    without source ids; line numbers stay: a JSON line holds one event, as a text line does."""
    store = Store(url)
    try:
        ids = store.movie_ids()
        by_id = lambda df: df.assign(movie_key=ids.loc[df.movie_key].to_numpy()).rename(  # noqa: E731
            columns={"movie_key": "movie_id"})
        return {
            "watches": plain(store.read("watches"), ["line"]),
            "ratings": plain(store.read("ratings"), ["line"]),
            "recommendations": plain(store.read("recommendations"), ["line"]),
            "items": plain(store.read("items"), ["line", "rank"]),
            "users": plain(store.read("users"), ["user_id"]),
            "movies": plain(store.read("movies"), ["movie_id"]),
            "watch_hours": plain(by_id(store.frame(text("SELECT user_id, hour, movie_key, minutes FROM watch_hours"))),
                                 ["user_id", "hour", "movie_id"]),
            "watch_spans": plain(by_id(store.frame(text("SELECT * FROM watch_spans"))),
                                 ["user_id", "quarter", "movie_id"]),
            "quarantine": plain(store.frame(text("SELECT line, raw, reason, near_time FROM quarantine")), ["line"]),
        }
    finally:
        store.close()


def test_the_json_lines_world_stores_exactly_the_tables_of_its_text_world(recaudit_bin, worlds, db_url, second_url):
    summaries = {}
    for log_format, url in (("text", db_url), ("jsonl", second_url)):
        done = run_cli(recaudit_bin, "ingest", "--db", url, "--json", str(worlds[log_format]))
        assert done.returncode == 0, done.stderr.decode()
        summaries[log_format] = json.loads(done.stdout)
    logs = [s for s in summaries["jsonl"]["sources"] if s["kind"] == "events"]
    assert [s["name"] for s in logs] == [str(worlds["jsonl"] / "events.jsonl")]  # picked up by its name
    drop = lambda s: {k: v for k, v in s.items() if k != "sources"}  # noqa: E731
    assert drop(summaries["text"]) == drop(summaries["jsonl"])
    log = logs[0]
    assert log["lines"] == sum(log["stored"][k] for k in ("watch", "rate", "recommend")) + log["quarantined"] > 0

    text_tables, json_tables = stored_tables(db_url), stored_tables(second_url)
    for name in text_tables:
        if name != "quarantine":
            assert len(text_tables[name]) > 0, name
            pd.testing.assert_frame_equal(json_tables[name], text_tables[name], obj=name)

    # The same lines are quarantined, dated alike, for the same reasons -- except a truncated
    # line: the text parser judges what survived the cut, a JSON parser sees unfinished JSON.
    t, j = text_tables["quarantine"], json_tables["quarantine"]
    assert j.line.tolist() == t.line.tolist() and j.near_time.tolist() == t.near_time.tolist()
    truncated = j.raw.str.startswith('{"time": "') & ~j.raw.str.endswith("}")
    assert (j.reason[truncated] == "malformed JSON").all() and truncated.sum() >= 5
    assert j.reason[~truncated].tolist() == t.reason[~truncated].tolist()
    assert {"too few fields", "missing rating", "bad timestamp", "not UTF-8", "bad user id",
            "rating not an integer 1-5"} <= set(j.reason[~truncated])


def test_simulating_jsonl_writes_the_same_world_and_the_text_form_stays_the_default(recaudit_bin, tmp_path):
    for log_format in ("text", "jsonl"):
        args = ["simulate", "--out", str(tmp_path / log_format), "--users", "80", "--movies", "40", "--days", "2",
                "--inject", "corrupt", "--json"] + (["--format", log_format] if log_format == "jsonl" else [])
        done = run_cli(recaudit_bin, *args)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["files"]["events"] == LOG_FILES[log_format]
    assert (tmp_path / "text" / "users.csv").read_bytes() == (tmp_path / "jsonl" / "users.csv").read_bytes()
    text_log = ev.parse_file(tmp_path / "text" / "events.log")
    json_log = ev.parse_file(tmp_path / "jsonl" / "events.jsonl")
    assert text_log.lines == json_log.lines and text_log.counts == json_log.counts
    first = (tmp_path / "jsonl" / "events.jsonl").read_bytes().split(b"\n", 1)[0]
    assert set(json.loads(first)) >= {"time", "user_id", "event"}
    bad = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / "x"), "--format", "xml")
    assert bad.returncode == 2 and "xml" in bad.stderr.decode()


# -- the parser ------------------------------------------------------------------------------------

def test_the_design_examples_as_json_lines_parse_into_the_frames_of_their_text_lines():
    data = b"\n".join(line(o) for o in (WATCH, RATE, REC, FAILED)) + b"\n"
    assert outcomes(parse(data)) == outcomes(parse(FORMAT_EXAMPLES))
    p = parse(data)
    assert p.counts == {"watch": 1, "rate": 1, "recommend": 2, "quarantined": 0}
    assert p.watches.dtypes.to_dict() == ev.parse_bytes(FORMAT_EXAMPLES).watches.dtypes.to_dict()


@pytest.mark.parametrize("layout", [
    lambda o: json.dumps(o, separators=(",", ":")),  # compact, as most loggers write
    lambda o: json.dumps(dict(reversed(list(o.items())))),  # any key order
    lambda o: "  \t" + json.dumps(o, indent=None) + " \t",  # JSON whitespace around the object
    lambda o: json.dumps(o, ensure_ascii=False).replace('"time"', '"\\u0074ime"'),  # an escaped key
    lambda o: "\ufeff" + json.dumps(o),  # a byte order mark, as Windows tools write
    lambda o: json.dumps({**o, "request_id": "a1", "session": {"id": [1, 2]}}),  # keys the format does not name
])
def test_any_json_layout_of_an_event_is_the_same_event(layout):
    data = "\n".join(layout(o) for o in (WATCH, RATE, REC, FAILED)).encode() + b"\r\n"
    assert outcomes(parse(data)) == outcomes(parse(FORMAT_EXAMPLES))


def with_(base: dict, **changes) -> dict:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not MISSING}


MISSING = object()


@pytest.mark.parametrize("obj, reason", [
    # every field of every kind, wrong in every way: the text form's reason for the same fault
    *[(with_(WATCH, time=v), "bad timestamp") for v in (
        MISSING, None, 1709059518, ["2024-02-27T18:45:18"], "2024-02-27 18:45:18", "2024-02-30T00:00:00",
        "2024-02-27T18:45:18+01:00", "2024-02-27T18:45:18.1234567891", "２０２４-０２-２７T18:45:18", "")],
    *[(with_(WATCH, user_id=v), "bad user id") for v in (
        MISSING, None, "12", 12.5, 12.0, True, False, -1, 10**18, 10**40, [12], {"id": 12})],
    *[(with_(WATCH, event=v), "unknown request") for v in (MISSING, None, "WATCH", "play", 1, ["watch"])],
    *[(with_(WATCH, minute=v), "malformed watch request") for v in (
        MISSING, None, -1, "91", 91.0, 10**9, True, [91])],
    *[(with_(WATCH, movie_id=v), "malformed watch request") for v in (
        MISSING, None, "", "a b", "a/b", "a,b", "</script><script>alert(1)</script>", 5, ["a+2001"])],
    (with_(RATE, rating=MISSING), "missing rating"),
    *[(with_(RATE, rating=v), "rating not an integer 1-5") for v in (
        None, 0, 6, 8, -1, 4.5, 3.0, "4", "", True, [3])],
    *[(with_(RATE, movie_id=v), "malformed rate request") for v in (MISSING, None, "", "a b", 7)],
    (with_(REC, result=MISSING), "missing result:"),
    *[(with_(REC, **change), "malformed recommendation line") for change in (
        {"result": "a+2001, b+2002"}, {"result": None}, {"result": [1, 2]}, {"result": ["a b"]}, {"result": [""]},
        {"result": [["a+2001"]]}, {"status": "200"}, {"status": 1000}, {"status": -1}, {"status": 200.0},
        {"status": MISSING}, {"latency_ms": -1}, {"latency_ms": "131"}, {"latency_ms": 10**9},
        {"latency_ms": MISSING}, {"server": ""}, {"server": "a b"}, {"server": "a,b"}, {"server": 8082},
        {"server": MISSING})],
    (with_(FAILED, result=["a+2001"]), "malformed recommendation line"),
    (with_(FAILED, result=MISSING), "missing result:"),
])
def test_every_field_wrong_in_every_way_is_quarantined_with_the_text_forms_reason(obj, reason):
    raw = line(obj)
    p = parse(line(WATCH) + b"\n" + raw + b"\n")
    assert p.rejects[["line", "reason"]].values.tolist() == [[2, reason]]
    assert p.rejects.raw.iloc[0] == raw.decode() and p.counts["watch"] == 1
    assert ev.parse_json_line(raw.decode()) == ("reject", (reason,))


def test_a_bad_timestamp_outranks_a_later_fault_as_in_the_text_form():
    assert ev.parse_line("2024-02-27 18:45:18,x,GET /rate/a=9") == ("reject", ("bad timestamp",))
    p = parse(line(with_(RATE, time="2024-02-27 18:45:18", user_id="x", rating=9)) + b"\n")
    assert p.rejects.reason.tolist() == ["bad timestamp"]


@pytest.mark.parametrize("raw, reason", [
    (json.dumps(WATCH)[:-9].encode(), "malformed JSON"),  # truncated
    (json.dumps(WATCH)[:1].encode(), "malformed JSON"),
    (json.dumps(WATCH).encode() + b" x", "malformed JSON"),
    (json.dumps(WATCH).encode() * 2, "malformed JSON"),  # two objects on a line
    (json.dumps(WATCH).encode().replace(b"91", b"NaN"), "malformed JSON"),
    (json.dumps(WATCH).encode().replace(b"91", b"Infinity"), "malformed JSON"),
    (json.dumps(WATCH).encode().replace(b"91", b"-Infinity"), "malformed JSON"),
    (json.dumps(WATCH).encode().replace(b"91", b"091"), "malformed JSON"),  # JSON has no leading zeros
    (json.dumps(WATCH).encode().replace(b"156972", b"1e400"), "bad user id"),  # a float, infinite
    (json.dumps(WATCH).encode().replace(b"91", b"9" * 5000), "malformed JSON"),  # past Python's 4,300 digits
    (json.dumps(WATCH).encode().replace(b'"watch"', b"'watch'"), "malformed JSON"),
    (json.dumps(WATCH).encode().replace(b", ", b",\x01 "), "control character in line"),
    (json.dumps(WATCH).encode().replace(b"begins", b"be\\u0000gins"), "control character in line"),
    (json.dumps(WATCH).encode().replace(b"begins", b"be\\ngins"), "control character in line"),
    (json.dumps(FAILED).encode().replace(b"Request", b"Re\\tquest"), "control character in line"),
    (json.dumps(WATCH).encode().replace(b"begins", b"be\\ud800gins"), "not UTF-8"),  # a lone surrogate
    (json.dumps(WATCH).encode().replace(b"begins", b"be\xe9\xffgins"), "not UTF-8"),
    (json.dumps(WATCH).encode().replace(b'"user_id": 156972', b'"user_id": 1, "user_id": 156972'),
     "duplicate JSON key"),
    (json.dumps(WATCH).encode().replace(b"}", b', "extra": {"a": 1, "a": 2}}'), "duplicate JSON key"),
    (b"[" + json.dumps(WATCH).encode() + b"]", "not a JSON object"),
    (b'"2024-02-27T18:45:18,156972,GET /data/m/batman+begins+2005/91.mpg"', "not a JSON object"),
    (b"[]", "not a JSON object"),
    (b"{}", "bad timestamp"),
    (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON nested too deeply"),
    (b"[" * 2_000_000, "JSON nested too deeply"),  # a 2 MB line
    (b"12", "too few fields"),  # a JSON number is a text line: text begins with a digit
])
def test_malformed_json_lines_are_quarantined_whole_with_their_reason(raw, reason):
    p = parse(line(WATCH) + b"\n" + raw + b"\n" + line(RATE) + b"\n")
    assert p.rejects[["line", "reason"]].values.tolist() == [[2, reason]]
    assert p.rejects.raw.iloc[0] == raw.decode("utf-8", "backslashreplace")
    assert p.counts["watch"] == p.counts["rate"] == 1 and p.lines == 3 == sum(p.counts.values())


def test_text_fields_are_kept_verbatim_however_hostile_and_long():
    error = '</script><script>alert("x")</script> \\ é 😀 ' + "x" * 2_000_000  # a 2 MB line
    items = [f"m+{i}+2000" for i in range(50_000)]
    data = b"\n".join([line(with_(FAILED, result=error, server="</script>")), line(with_(REC, result=items))]) + b"\n"
    p = parse(data)
    assert p.rejects.empty
    assert p.recommendations.error.tolist() == [error, None] and p.recommendations.server.tolist()[0] == "</script>"
    assert p.recommendations.n_items.tolist() == [0, 50_000] and p.items.movie_id.tolist() == items


def test_a_log_may_mix_the_forms_line_by_line():
    text_lines = FORMAT_EXAMPLES.splitlines()
    json_lines = [line(o) for o in (WATCH, RATE, REC, FAILED)]
    data = b"\n".join([text_lines[0], json_lines[1], b"", text_lines[2], json_lines[3], b"test, data",
                       b" " + json_lines[0], b"\xef\xbb\xbf" + text_lines[1]]) + b"\n"
    p = parse(data)
    got = outcomes(p)
    assert p.lines == 7 == sum(p.counts.values())
    assert got[1] == got[7] and got[2] == got[8] and got[6] == ("reject", ("too few fields",))
    assert [got[n][0] for n in (4, 5)] == ["recommend", "recommend"] and 3 not in got
    assert got == reference(data)


# -- the vectorised timestamps and the batch against the reference parser ----------------------

_stamp = st.one_of(
    st.builds(lambda d, frac, z: f"20{d % 90 + 10:02d}-{d % 12 + 1:02d}-{d % 31 + 1:02d}T{d % 25:02d}:{d % 61:02d}:"
                                 f"{(d * 7) % 61:02d}{frac}{z}",
              st.integers(0, 10**6), st.sampled_from(["", ".1", ".123456", ".123456789", ".1234567891", "."]),
              st.sampled_from(["", "Z", "z", "+00:00"])),
    st.text(alphabet="0123456789-T:.Z é", max_size=30))
_value = st.one_of(st.integers(-2, 10**19), st.sampled_from([None, True, 1.5, 3.0, "", "5", [], ["a+1"], {}]),
                   st.text(alphabet="ab/+, é\t\\\"", max_size=8))
_slug = st.one_of(st.text(alphabet="abz019+-_.'&é", min_size=1, max_size=12), _value)


@st.composite
def json_line(draw) -> bytes:
    event = draw(st.sampled_from(["watch", "rate", "recommend", "other"]))
    obj = {"time": draw(st.one_of(_stamp, _value)), "user_id": draw(st.one_of(st.integers(0, 10**18), _value)),
           "event": event}
    if event in ("watch", "rate"):
        obj["movie_id"] = draw(_slug)
        obj["minute" if event == "watch" else "rating"] = draw(st.one_of(st.integers(0, 6), _value))
    else:
        obj.update(server=draw(st.sampled_from(["s:1", "", "a b"])), status=draw(st.sampled_from([200, 0, 500, "200"])),
                   result=draw(st.one_of(st.lists(_slug, max_size=4), _slug)), latency_ms=draw(_value))
    keys = draw(st.permutations(list(obj)))
    dropped = draw(st.sampled_from([None, *keys]))
    raw = json.dumps({k: obj[k] for k in keys if k != dropped}, separators=draw(st.sampled_from([(",", ":"), None])),
                     ensure_ascii=draw(st.booleans())).encode()
    how = draw(st.sampled_from(["keep", "keep", "keep", "insert", "delete", "truncate"]))
    if how == "keep" or not raw:
        return raw
    i = draw(st.integers(0, len(raw) - 1))
    byte = draw(st.sampled_from([b",", b" ", b'"', b"\\", b"{", b"]", b"\t", b"\xff", b"\xc3\xa9", b"5", b":"]))
    return raw[:i] + byte + raw[i:] if how == "insert" else raw[:i] + raw[i + 1:] if how == "delete" else raw[:i]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_line(), min_size=1, max_size=30))
def test_the_batch_parser_agrees_with_the_per_line_reference_on_every_json_line(lines):
    data = b"\n".join(lines) + b"\n"
    assert outcomes(parse(data)) == reference(data)


# -- ingestion: the text log's guarantees ------------------------------------------------------

def watch_json(user: int, minute: int, second: int) -> bytes:
    return line(with_(WATCH, time=f"2024-01-01T00:{second // 60:02d}:{second % 60:02d}", user_id=user,
                      movie_id="a+2001", minute=minute)) + b"\n"


def test_a_grown_json_log_ingests_only_its_tail_and_re_ingesting_stores_nothing(store, tmp_path):
    log = tmp_path / "live.jsonl"
    log.write_bytes(watch_json(1, 0, 0) + line(with_(RATE, time="2024-01-01T00:00:01", user_id=1)) + b"\n")
    first = ingest(store, [str(log)]).sources[0]
    assert (first.lines, first.stored["watch"], first.stored["rate"]) == (2, 1, 1)
    with open(log, "ab") as f:
        f.write(watch_json(1, 1, 60) + b'{"time": "2024-01-01T00:01:01", "user_id": 1, "event"\n')
    result = ingest(store, [str(log)]).sources[0]
    assert (result.status, result.first_line, result.lines, result.quarantined) == ("ingested", 3, 2, 1)
    assert store.read("watches").line.tolist() == [1, 3]
    at = pd.Timestamp("2024-01-01T00:01:00")  # the time of the event before it
    q = store.quarantine_of_window(at, at + pd.Timedelta(microseconds=1))
    assert q[["line", "reason"]].values.tolist() == [[4, "malformed JSON"]] and store.count("quarantine") == 1
    assert ingest(store, [str(log)]).sources[0].status == "unchanged"
    assert store.count("watches") == 2 and store.count("ratings") == 1


def test_a_half_written_json_line_is_read_again_whole_when_the_log_grows(store, tmp_path):
    log = tmp_path / "live.jsonl"
    whole = watch_json(1, 1, 1)
    log.write_bytes(watch_json(1, 0, 0) + whole[:40])
    first = ingest(store, [str(log)]).totals()
    assert first["lines"] == 2 and first["stored"]["watch"] == 1 and first["quarantined"] == 1
    with open(log, "ab") as f:
        f.write(whole[40:] + watch_json(1, 2, 2))
    again = ingest(store, [str(log)]).sources[0]
    assert (again.first_line, again.lines, again.quarantined) == (2, 2, 0)
    assert store.read("watches")[["line", "minute"]].values.tolist() == [[1, 0], [2, 1], [3, 2]]
    assert store.count("quarantine") == 0


def test_a_rotated_and_compressed_json_log_is_not_stored_twice(store, tmp_path):
    head = b"".join(watch_json(1, i, i) for i in range(5))
    tail = b"".join(watch_json(2, i, 60 + i) for i in range(3))
    (tmp_path / "events.jsonl").write_bytes(head)
    ingest(store, [str(tmp_path / "events.jsonl")])
    (tmp_path / "events.jsonl.1").write_bytes(head + tail)  # rotated after it grew
    result = ingest(store, [str(tmp_path / "events.jsonl.1")]).sources[0]
    assert (result.status, result.first_line, result.lines) == ("ingested", 6, 3)
    (tmp_path / "events.jsonl.2.gz").write_bytes(gzip.compress(head + tail))
    assert ingest(store, [str(tmp_path / "events.jsonl.2.gz")]).sources[0].status == "unchanged"
    assert store.count("watches") == 8


def test_a_directory_picks_up_json_logs_by_their_names_and_standard_input_reads_them(recaudit_bin, tmp_path, worlds):
    data = (worlds["jsonl"] / "events.jsonl").read_bytes()
    expected = ev.parse_file(worlds["jsonl"] / "events.jsonl")
    directory = tmp_path / "logs"
    directory.mkdir()
    for name in ("a.ndjson", "b.jsonl.gz", "notes.json"):
        (directory / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "dir.db"), "--json", str(directory))
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert [s["name"].rsplit("/", 1)[1] for s in summary["sources"]] == ["a.ndjson", "b.jsonl.gz"]
    assert [s["status"] for s in summary["sources"]] == ["ingested", "unchanged"]  # the same content
    assert summary["lines"] == expected.lines and summary["quarantined"] == len(expected.rejects)
    piped = json.loads(run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "stdin.db"), "--json", "-",
                               input=data).stdout)
    assert piped["lines"] == expected.lines and piped["stored"]["watch"] == len(expected.watches)


def test_read_log_reads_a_json_lines_log(tmp_path):
    import recaudit

    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(line(o) for o in (WATCH, RATE, REC, with_(RATE, rating=9))) + b"\n")
    events = recaudit.read_log(log)
    assert events.ratings.rating.tolist() == [3] and events.items.movie_id.tolist() == REC["result"]
    assert events.rejects[["line", "reason"]].to_dict("records") == [{"line": 4, "reason": "rating not an integer 1-5"}]
