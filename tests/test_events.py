"""The event-log parser: every example and edge case of the log format, and the vectorised
path held to the reference parser on generated lines."""

import gzip
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recaudit.recsys import events as ev

FORMAT_EXAMPLES = (
    b"2024-02-27T18:45:18,156972,GET /data/m/batman+begins+2005/91.mpg\n"
    b"2022-02-25T13:38:49,284508,GET /rate/audition+1999=3\n"
    b"2023-03-20T08:12:38.176557,128017,recommendation request 17645-team14.example.org:8082, status 200, "
    b"result: the+green+mile+1999, the+sound+of+music+1965, 131 ms\n"
    b"2022-02-09T01:45:32.945123,284507,recommendation request 17645-team17.example.org:8082, status 0, "
    b"result: java.util.concurrent.TimeoutException: Request timeout to 17645-team17.example.org/10.0.0.1:8082 "
    b"after 800 ms, 815 ms\n"
)


def outcomes(parsed: ev.ParsedEvents) -> dict[int, tuple]:
    """Line number -> what the parser made of it, in parse_line's terms."""
    out: dict[int, tuple] = {}
    ns = lambda t: pd.Timestamp(t).value  # noqa: E731
    for r in parsed.watches.itertuples():
        out[r.line] = ("watch", (ns(r.time), r.user_id, r.movie_id, r.minute))
    for r in parsed.ratings.itertuples():
        out[r.line] = ("rate", (ns(r.time), r.user_id, r.movie_id, r.rating))
    items = parsed.items.groupby("line")["movie_id"].apply(list).to_dict()
    for r in parsed.recommendations.itertuples():
        out[r.line] = ("recommend", (ns(r.time), r.user_id, r.server, r.status, r.latency_ms,
                                     items.get(r.line, []), r.error))
    for r in parsed.rejects.itertuples():
        out[r.line] = ("reject", (r.reason,))
    return out


def reference(data: bytes) -> dict[int, tuple]:
    out = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        if number > data.count(b"\n") and not raw:
            break  # nothing after the final newline
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out[number] = ("reject", ("not UTF-8",))
            continue
        kind, fields = ev.parse_line(text)
        if kind != "blank":
            out[number] = (kind, fields)
    return out


def parse(text: bytes, **kw) -> ev.ParsedEvents:
    return ev.parse_bytes(text, "test.log", **kw)


def test_design_examples_parse_into_typed_frames():
    p = parse(FORMAT_EXAMPLES)
    assert p.counts == {"watch": 1, "rate": 1, "recommend": 2, "quarantined": 0}
    w = p.watches.iloc[0]
    assert (w.time, w.user_id, w.movie_id, w.minute) == (pd.Timestamp("2024-02-27T18:45:18"), 156972,
                                                         "batman+begins+2005", 91)
    r = p.ratings.iloc[0]
    assert (r.user_id, r.movie_id, r.rating) == (284508, "audition+1999", 3)
    ok, failed = p.recommendations.iloc[0], p.recommendations.iloc[1]
    assert (ok.server, ok.status, ok.latency_ms, ok.n_items, ok.error) == (
        "17645-team14.example.org:8082", 200, 131, 2, None)
    assert ok.time == pd.Timestamp("2023-03-20T08:12:38.176557")
    assert list(p.items.movie_id) == ["the+green+mile+1999", "the+sound+of+music+1965"]
    assert list(p.items["rank"]) == [1, 2]
    assert (failed.status, failed.latency_ms, failed.n_items) == (0, 815, 0)
    assert failed.error == ("java.util.concurrent.TimeoutException: Request timeout to "
                            "17645-team17.example.org/10.0.0.1:8082 after 800 ms")
    assert p.watches.dtypes.to_dict() == {k: np.dtype(v) if v != "category" else p.watches[k].dtype
                                          for k, v in ev.SCHEMAS["watches"].items()}


@pytest.mark.parametrize("stamp, expected", [
    ("2025-10-17T01:33:45", "2025-10-17T01:33:45"),
    ("2025-10-17T01:33:45.122", "2025-10-17T01:33:45.122"),
    ("2025-10-17T01:33:45.122692", "2025-10-17T01:33:45.122692"),
    ("2025-10-17T01:33:45.122692921", "2025-10-17T01:33:45.122692921"),
    ("2025-10-17T01:33:45Z", "2025-10-17T01:33:45"),
    ("2025-10-17T01:33:45.5Z", "2025-10-17T01:33:45.5"),
    ("2024-02-29T23:59:59", "2024-02-29T23:59:59"),
])
def test_timestamps_of_every_fraction_length_and_a_trailing_z_are_utc(stamp, expected):
    p = parse(f"{stamp},1,GET /data/m/x+2001/0.mpg\n".encode())
    assert p.watches.time.iloc[0] == pd.Timestamp(expected)


@pytest.mark.parametrize("stamp", [
    "2025-10-17 01:33:45", "2025-10-17T01:33", "2025-13-01T00:00:00", "2023-02-29T00:00:00",
    "2025-10-17T24:00:00", "2025-10-17T01:33:45.1234567891", "2025-10-17T01:33:45.", "1600-01-01T00:00:00",
])
def test_malformed_timestamps_are_quarantined_as_bad_timestamp(stamp):
    p = parse(f"{stamp},1,GET /data/m/x+2001/0.mpg\n".encode())
    assert list(p.rejects.reason) == ["bad timestamp"]


@pytest.mark.parametrize("slug", [
    "the+hunger+games+mockingjay+-+part+1+2014", "monsters_+inc.+2001", "in+a++w+2010", "no+year+",
    "amélie+2001",
])
def test_slugs_with_dashes_underscores_dots_double_plus_missing_year_and_accents(slug):
    p = parse(f"2024-01-01T00:00:00,7,GET /data/m/{slug}/3.mpg\n2024-01-01T00:00:01,7,GET /rate/{slug}=5\n".encode())
    assert list(p.watches.movie_id) == [slug] and list(p.ratings.movie_id) == [slug]


@pytest.mark.parametrize("n, duplicate", [(2, False), (19, False), (20, False), (20, True)])
def test_recommendation_lists_that_parse_but_are_wrong_are_stored_not_rejected(n, duplicate):
    movies = [f"m+{i}+2000" for i in range(n)]
    if duplicate:
        movies[-1] = movies[0]
    line = f"2024-01-01T00:00:00.5,3,recommendation request s:8082, status 200, result: {', '.join(movies)}, 40 ms\n"
    p = parse(line.encode())
    assert p.recommendations.n_items.tolist() == [n]
    assert p.items.movie_id.tolist() == movies
    assert p.items["rank"].tolist() == list(range(1, n + 1))


def test_failed_request_is_a_recommendation_without_items_whose_error_keeps_colons_and_ms():
    line = (b"2024-01-01T00:00:00,3,recommendation request s:8082, status 500, result: Error: x: took 900 ms, "
            b"then: 2 ms, 901 ms\n")
    p = parse(line)
    rec = p.recommendations.iloc[0]
    assert (rec.status, rec.latency_ms, rec.n_items) == (500, 901, 0)
    assert rec.error == "Error: x: took 900 ms, then: 2 ms"
    assert p.items.empty


@pytest.mark.parametrize("line, reason", [
    (b"test, data", "too few fields"),
    (b"2022-02-25T13:38:49,284508,GET /rate/audition+1999", "missing rating"),
    (b"2022-02-25T13:38:49,284508,GET /rate/audition+1999=8", "rating not an integer 1-5"),
    (b"2022-02-25T13:38:49,284508,GET /rate/audition+1999=4.5", "rating not an integer 1-5"),
    (b"2022-02-25T13:38:49,284508,GET /rate/audition+1999=", "rating not an integer 1-5"),
    (b"2022-02-25T13:38:49,284508,GET /rate/audition+1999=0", "rating not an integer 1-5"),
    (b"2024-02-27T18:45:18,156972,GET /data/m/batman+beg", "malformed watch request"),
    (b"2024-02-27T18:45:18,15x972,GET /data/m/batman+begins+2005/91.mpg", "bad user id"),
    (b"2024-02-27T18:45:18,-1,GET /data/m/batman+begins+2005/91.mpg", "bad user id"),
    (b"2024-02-27T18:45:18,156972,POST /login", "unknown request"),
    (b"2024-02-27T18:45:18,1,recommendation request , status 200, result: a+2001, 5 ms",
     "malformed recommendation line"),
    ("２０２４-０１-０１T００:００:００,１２３,GET /data/m/a+2001/1.mpg".encode(), "bad timestamp"),
    ("2024-01-01T00:00:00,١٢٣,GET /data/m/a+2001/1.mpg".encode(), "bad user id"),
    (b"2024-02-27T18:45:18,1,recommendation request s:8082, status 200, 131 ms", "missing result:"),
    (b"2024-02-27T18:45:18,1,recommendation request s:8082, status 200, result: a, b", "malformed recommendation line"),
    (b"2024-02-27T18:45:18,1,GET /data/m/caf\xe9+2001/1.mpg", "not UTF-8"),
    (b"2024-02-27T18:45:18,1,GET /data/m/a\tb/1.mpg", "control character in line"),
    (b"2024-02-27T18:45", "too few fields"),
])
def test_malformed_lines_are_quarantined_with_a_specific_reason_and_their_raw_text(line, reason):
    p = parse(b"2024-02-27T18:45:18,1,GET /data/m/ok+2001/1.mpg\n" + line + b"\n")
    assert p.rejects.reason.tolist() == [reason]
    assert p.rejects.line.tolist() == [2]
    assert p.rejects.source.tolist() == ["test.log"]
    assert p.rejects.raw.iloc[0] == line.decode("utf-8", "backslashreplace")


def test_blank_lines_are_neither_counted_nor_stored_but_keep_line_numbers():
    first, second = FORMAT_EXAMPLES.splitlines(keepends=True)[:2]
    data = b"\n  \n" + first + b"\t\r\n\n" + second
    p = parse(data)
    assert p.lines == 2
    assert p.watches.line.tolist() == [3] and p.ratings.line.tolist() == [6]


def test_crlf_line_endings_parse_like_lf():
    assert outcomes(parse(FORMAT_EXAMPLES.replace(b"\n", b"\r\n"))) == outcomes(parse(FORMAT_EXAMPLES))


def test_every_non_blank_line_is_stored_or_quarantined():
    data = FORMAT_EXAMPLES + b"garbage\n\n" + b"2024-01-01T00:00:00,1,GET /rate/x=9\n"
    p = parse(data)
    assert p.lines == 6 == sum(p.counts.values())


def test_canonical_lines_of_every_kind_never_reach_the_reference_parser(monkeypatch):
    """The speed of the parser rests on this: only odd lines take the per-line path."""
    def refuse(*args):
        raise AssertionError("a canonical line went to the reference parser")

    monkeypatch.setattr(ev, "_parse_slow", refuse)
    stamps = ["2024-01-01T00:00:00", "2024-01-31T23:59:59Z", "2024-02-29T12:00:00.1", "2023-12-15T08:30:00.123456Z",
              "1999-06-30T00:00:00.123456789", "2100-02-28T00:00:00"]
    lines = [f"{t},{u},GET /data/m/the+movie+-+part+1+2014/{m}.mpg" for t in stamps for u in (0, 7, 123456789012)
             for m in (0, 9, 99, 1234, 12345678)]
    lines += [f"{t},5,GET /rate/monsters_+inc.+2001={r}" for t in stamps for r in "12345"]
    lines += [f"{t},5,recommendation request s.example.org:8082, status 200, result: "
              f"{', '.join(f'm+{i}+2000' for i in range(20))}, {lat} ms" for t in stamps for lat in (0, 131, 123456789)]
    lines += [f"{t},5,recommendation request s:8082, status 0, result: Timeout: x, after 800 ms, 815 ms"
              for t in stamps]
    p = parse(("\n".join(lines) + "\n").encode())
    assert p.lines == len(lines) and p.rejects.empty


def test_chunked_reading_gives_the_same_frames_as_one_piece():
    data = FORMAT_EXAMPLES * 50 + b"bad line\n" + b"2024-01-01T00:00:00,1,GET /rate/x+2001=4"  # no final newline
    whole = parse(data)
    pieces = ev.ParsedEvents.concat([ev.parse_bytes(c, "test.log", f)
                                     for c, f in ev.iter_chunks(io.BytesIO(data), 300)])
    assert outcomes(pieces) == outcomes(whole)
    assert pieces.lines == whole.lines == 202


def test_parse_file_reads_gzip_logs(tmp_path):
    path = tmp_path / "events.log.gz"
    path.write_bytes(gzip.compress(FORMAT_EXAMPLES))
    assert ev.parse_file(path).counts == parse(FORMAT_EXAMPLES).counts


# -- the vectorised path against the reference parser ---------------------------------------

_slug = st.text(alphabet="abcxyz019+-_.'&!", min_size=1, max_size=30)
_stamp = st.builds(
    lambda d, frac, z: f"2024-0{d % 9 + 1}-{d % 28 + 1:02d}T{d % 24:02d}:{d % 60:02d}:{(d * 7) % 60:02d}{frac}{z}",
    st.integers(0, 10_000), st.sampled_from(["", ".1", ".123", ".123456", ".123456789"]), st.sampled_from(["", "Z"]))
_user = st.integers(0, 10**12).map(str)
_watch = st.builds(lambda t, u, m, n: f"{t},{u},GET /data/m/{m}/{n}.mpg", _stamp, _user, _slug, st.integers(0, 10**6))
_rate = st.builds(lambda t, u, m, r: f"{t},{u},GET /rate/{m}={r}", _stamp, _user, _slug, st.sampled_from("123456"))
_rec = st.builds(
    lambda t, u, s, items, lat: f"{t},{u},recommendation request {s}, status 200, result: {', '.join(items)}, {lat} ms",
    _stamp, _user, st.sampled_from(["a.example.org:8082", "s1", "", "a b", "x,y"]),
    st.lists(_slug, min_size=1, max_size=25), st.integers(0, 10**5))
_failed = st.builds(
    lambda t, u, code, err, lat: f"{t},{u},recommendation request srv:1, status {code}, result: {err}, {lat} ms",
    _stamp, _user, st.sampled_from([0, 404, 500]), st.text(alphabet="abc :,ms0.", max_size=40), st.integers(0, 999))
_line = st.one_of(_watch, _rate, _rec, _failed).map(str.encode)


@st.composite
def mutated(draw):
    line = draw(_line)
    how = draw(st.sampled_from(["keep", "keep", "insert", "delete", "replace", "truncate", "crlf"]))
    if how == "keep" or not line:
        return line
    i = draw(st.integers(0, len(line) - 1))
    byte = draw(st.sampled_from([b",", b" ", b"/", b"=", b"\t", b"\xff", b"\xc3\xa9", b"x", b"5", b".", b"Z", b":"]))
    if how == "insert":
        return line[:i] + byte + line[i:]
    if how == "delete":
        return line[:i] + line[i + 1:]
    if how == "replace":
        return line[:i] + byte + line[i + 1:]
    if how == "crlf":
        return line + b"\r"
    return line[:i]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=40))
def test_vectorised_parser_agrees_with_the_reference_parser_line_by_line(lines):
    data = b"\n".join(lines) + b"\n"
    assert outcomes(parse(data)) == reference(data)


def test_the_date_table_knows_every_real_date_and_no_impossible_one():
    lut = ev._date_lut()
    for year in (1900, 1999, 2000, 2023, 2024, 2100):
        for month in range(1, 13):
            for day in range(1, 32):
                try:
                    expected = (pd.Timestamp(year, month, day) - pd.Timestamp(1970, 1, 1)).days
                except ValueError:
                    expected = lut.min()
                assert lut[((year - ev.MIN_YEAR) * 12 + month - 1) * 31 + day - 1] == expected, (year, month, day)
