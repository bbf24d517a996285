from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from recaudit.recsys import detect, events, formats, movielens
from recaudit.recsys.formats import InputError

FLAGS = {name: i for i, name in enumerate(movielens.GENRES_100K)}
CHILDRENS = "Children's"


def flags(*names: str) -> str:
    bits = ["0"] * len(FLAGS)
    for name in names:
        bits[FLAGS[name]] = "1"
    return "|".join(bits)


def write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes("".join(line + newline for line in lines).encode("latin-1"))
    return path


def nonblank_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    write(d / "u.user", [
        "1|24|M|technician|85711",
        "2|53|F|other|94043",
        "",
        "3|x|M|writer|32067",
        "1|33|F|writer|55105",
    ])
    write(d / "u.item", [
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
        f"{flags('Animation', CHILDRENS, 'Comedy')}",
        f"2|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables|"
        f"{flags('Drama', 'Musical')}",
        f"3|Untitled|05-Oct-1996|||{flags()}",
        f"267|unknown||||{flags('unknown')}",
        "4|Short Row (1995)|01-Jan-1995||",
    ])
    write(d / "u.data", [
        "1\t1\t5\t874965758",
        "2\t2\t3\t876893171",
        "",
        "1\t2\t6\t874965758",
        "x\t1\t3\t874965758",
        "1\t3\t4",
        "2\t267\t1\t0",
    ])
    return d


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    d.mkdir()
    write(d / "users.dat", [
        "1::F::1::10::48067",
        "2::M::56::16::70072",
        "3::M::25::15::55117",
        "4::M::7::0::02460",
        "5::F::18::21::55455",
    ])
    write(d / "movies.dat", [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "2::Misérables, Les (1995)::Drama|Musical",
        "3::Untitled Project::",
        "x::Bad Id (1990)::Drama",
    ])
    write(d / "ratings.dat", [
        "1::1::5::978300760",
        "2::2::3::978302109",
        "   ",
        "1::3::4::978301968",
        "1::2::6::978300760",
        "1.5::2::3::978300760",
        "1::2::3",
        "3::1::2::soon",
    ], newline="\r\n")
    return d


def test_detect_version_recognises_each_format_by_its_three_files(ml100k, ml1m):
    assert movielens.detect_version(ml100k) == "100k"
    assert movielens.detect_version(ml1m) == "1m"
    assert detect.kind(ml1m) == "movielens"


def test_detect_version_is_none_for_a_directory_missing_a_file(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t874965758\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    assert movielens.detect_version(tmp_path) is None
    assert movielens.detect_version(tmp_path / "missing") is None


def test_load_of_a_non_movielens_directory_raises_naming_the_directory(tmp_path):
    with pytest.raises(InputError) as err:
        movielens.load(tmp_path)
    assert err.value.path == str(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "not a MovieLens 100K or 1M directory" in str(err.value)


@pytest.mark.parametrize("fixture", ["ml100k", "ml1m"])
def test_frames_have_the_shared_schemas_and_the_fingerprint_of_the_bytes_read(fixture, request):
    d = request.getfixturevalue(fixture)
    ml = movielens.load(d)
    assert dict(ml.users.dtypes.astype(str)) == {**formats.SCHEMAS["users"], "zip_code": "object"}
    assert dict(ml.movies.dtypes.astype(str)) == formats.SCHEMAS["movies"]
    assert dict(ml.ratings.dtypes.astype(str)) == events.SCHEMAS["ratings"]
    assert dict(ml.rejects.dtypes.astype(str)) == formats.SCHEMAS["rejects"]
    files = [d / name for name in movielens.FILES[ml.version]]
    digest = hashlib.sha256()
    for f in files:  # each file's name, a NUL and its bytes, in reading order
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    assert (ml.fingerprint, ml.size) == (digest.hexdigest(), sum(f.stat().st_size for f in files))


def test_100k_users_keep_age_in_years_and_occupation_names(ml100k):
    users = movielens.load(ml100k).users
    assert users.to_dict("list") == {
        "user_id": [1, 2], "age": [24, 53], "age_group": [None, None],
        "gender": ["M", "F"], "occupation": ["technician", "other"], "zip_code": ["85711", "94043"],
    }


def test_100k_movies_split_year_from_title_and_name_genre_flags(ml100k):
    movies = movielens.load(ml100k).movies.set_index("movie_id")
    assert movies.loc["1"].tolist() == ["Toy Story", 1995, "Animation|Children's|Comedy"]
    assert movies.loc["2"].tolist() == ["Misérables, Les", 1995, "Drama|Musical"]
    assert movies.loc["3"].tolist() == ["Untitled", 1996, ""]  # year from the release date
    assert movies.loc["267", "title"] == "unknown"
    assert movies.loc["267", "year"] is pd.NA
    assert movies.loc["267", "genres"] == "unknown"


def test_100k_ratings_values_and_utc_times(ml100k):
    ratings = movielens.load(ml100k).ratings
    assert ratings["line"].tolist() == [1, 2, 7]
    assert ratings["user_id"].tolist() == [1, 2, 2]
    assert ratings["movie_id"].astype(str).tolist() == ["1", "2", "267"]
    assert ratings["rating"].tolist() == [5, 3, 1]
    assert ratings["time"].tolist() == [pd.Timestamp("1997-09-22 22:02:38"),
                                        pd.Timestamp("1997-10-15 05:26:11"),
                                        pd.Timestamp("1970-01-01 00:00:00")]


def test_1m_users_map_age_and_occupation_codes(ml1m):
    users = movielens.load(ml1m).users
    assert users["user_id"].tolist() == [1, 2, 3]
    assert users["age"].tolist() == [pd.NA, 56, 25]
    assert users["age_group"].tolist() == ["under_18", None, None]
    assert users["gender"].tolist() == ["F", "M", "M"]
    assert users["occupation"].tolist() == ["K-12 student", "self-employed", "scientist"]


def test_1m_movies_split_year_from_title_and_keep_genres(ml1m):
    movies = movielens.load(ml1m).movies
    assert movies["movie_id"].tolist() == ["1", "2", "3"]
    assert movies["title"].tolist() == ["Toy Story", "Misérables, Les", "Untitled Project"]
    assert movies["year"].tolist() == [1995, 1995, pd.NA]
    assert movies["genres"].tolist() == ["Animation|Children's|Comedy", "Drama|Musical", ""]


def test_1m_ratings_values_and_utc_times(ml1m):
    ratings = movielens.load(ml1m).ratings
    assert ratings["line"].tolist() == [1, 2, 4]
    assert ratings["user_id"].tolist() == [1, 2, 1]
    assert ratings["movie_id"].astype(str).tolist() == ["1", "2", "3"]
    assert ratings["rating"].tolist() == [5, 3, 4]
    assert ratings["time"].tolist() == [pd.Timestamp("2000-12-31 22:12:40"),
                                        pd.Timestamp("2000-12-31 22:35:09"),
                                        pd.Timestamp("2000-12-31 22:32:48")]


def test_100k_rejects_name_file_line_and_reason(ml100k):
    rejects = movielens.load(ml100k).rejects
    got = [(Path(s).name, line, reason) for s, line, reason in
           rejects[["source", "line", "reason"]].itertuples(index=False)]
    assert got == [
        ("u.user", 4, "age not an integer"),
        ("u.user", 5, "duplicate user id (first at line 1)"),
        ("u.item", 5, "expected 24 fields, got 5"),
        ("u.data", 4, "rating not an integer 1-5"),
        ("u.data", 5, "user id not an integer"),
        ("u.data", 6, "expected 4 fields, got 3"),
    ]
    assert rejects["raw"].iloc[-1] == "1\t3\t4"


def test_1m_rejects_name_file_line_and_reason(ml1m):
    rejects = movielens.load(ml1m).rejects
    got = [(Path(s).name, line, raw, reason) for s, line, raw, reason in rejects.itertuples(index=False)]
    assert got == [
        ("users.dat", 4, "4::M::7::0::02460", "unknown age code 7"),
        ("users.dat", 5, "5::F::18::21::55455", "unknown occupation code 21"),
        ("movies.dat", 4, "x::Bad Id (1990)::Drama", "movie id not an integer"),
        ("ratings.dat", 5, "1::2::6::978300760", "rating not an integer 1-5"),
        ("ratings.dat", 6, "1.5::2::3::978300760", "user id not an integer"),
        ("ratings.dat", 7, "1::2::3", "expected 4 fields, got 3"),
        ("ratings.dat", 8, "3::1::2::soon", "timestamp not an integer"),
    ]
    assert rejects["source"].iloc[-1] == str(ml1m / "ratings.dat")


@pytest.mark.parametrize("fixture", ["ml100k", "ml1m"])
def test_every_nonblank_ratings_line_is_a_rating_or_a_reject(fixture, request):
    d = request.getfixturevalue(fixture)
    ml = movielens.load(d)
    ratings_file = d / movielens.FILES[ml.version][2]
    rejected = ml.rejects.loc[ml.rejects["source"] == str(ratings_file), "line"]
    assert nonblank_lines(ratings_file) == len(ml.ratings) + len(rejected)
    assert set(ml.ratings["line"]).isdisjoint(rejected)


def test_unusual_ratings_lines_are_judged_by_their_original_fields(ml1m):
    # Lines outside the canonical form the vectorised path takes; each must get the answer the
    # format gives it, not one made up by replacing "::" with a tab.
    write(ml1m / "ratings.dat", [
        "0001::02::05::978300760",            # leading zeros: still integers
        "0000000000000000000001::2::3::0",    # longer than the fast path parses
        "1::2\t3::4::978300760",              # a tab inside a field
        "1::2::3\t978300760",                 # a tab that would make a fourth field
        "1:::2::3::978300760",                # a stray colon
        "1::2::3::978300760 ",                # trailing space
        "1::2::3::99999999999",               # beyond datetime64[ns]
        "-1::2::3::978300760",                # negative id
        "\xe9::2::3::978300760",              # a Latin-1 letter
    ])
    ml = movielens.load(ml1m)
    assert ml.ratings[["line", "user_id", "rating"]].values.tolist() == [[1, 1, 5], [2, 1, 3]]
    assert ml.ratings["movie_id"].astype(str).tolist() == ["2", "2"]
    reasons = ml.rejects.loc[ml.rejects["source"].str.endswith("ratings.dat"), ["line", "reason"]]
    assert reasons.values.tolist() == [
        [3, "movie id not an integer"],
        [4, "expected 4 fields, got 3"],
        [5, "movie id not an integer"],
        [6, "timestamp not an integer"],
        [7, "timestamp out of range"],
        [8, "user id out of range"],
        [9, "user id not an integer"],
    ]
    assert ml.rejects["raw"].iloc[-1] == "\xe9::2::3::978300760"


def test_ratings_line_numbers_run_on_across_read_chunks(ml100k, monkeypatch):
    lines = [f"{u}\t{m}\t{1 + (u + m) % 5}\t{874965758 + u}" for u in range(1, 40) for m in range(1, 4)]
    lines[50] = "1\t2\t9\t874965758"
    write(ml100k / "u.data", lines)
    monkeypatch.setattr(movielens, "iter_chunks", lambda stream: events.iter_chunks(stream, 100))
    ml = movielens.load(ml100k)
    assert ml.ratings["line"].tolist() == [n for n in range(1, len(lines) + 1) if n != 51]
    users = [int(line.split("\t")[0]) for n, line in enumerate(lines) if n != 50]
    assert ml.ratings["user_id"].tolist() == users
    assert ml.rejects.loc[ml.rejects["source"].str.endswith("u.data"), "line"].tolist() == [51]


# -- the package's import graph ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audits", "recsys", "reports", "scheduler")  # installed as recaudit.<folder>


def package_modules() -> dict[str, Path]:
    """Every module of the package by its import name, packages by their own name."""
    modules = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = ("recaudit", folder, *path.relative_to(ROOT / folder).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in it, in a function body too: a
    function-level import only postpones a cycle to the first call, it does not cut it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import mod` imports the module `pkg.mod`; `from mod import name`, `mod`.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names}
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search: empty exactly when the graph has none."""
    found, done, stack = [], set(), []

    def visit(node: str) -> None:
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return found


def test_the_cycle_finder_names_a_cycle_and_passes_a_layered_graph():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_the_package_imports_itself_through_others_even_inside_a_function():
    modules = package_modules()
    assert "recaudit.recsys.detect" in modules and "recaudit.audits.ingest" in modules
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert "recaudit.recsys.movielens" in graph["recaudit.recsys.detect"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
