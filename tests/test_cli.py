"""The command line as a user meets it: self-documenting, quick to answer --help, and described
in the README by what --help prints."""

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import click
import pytest

from recaudit.audits.urls import URL_ENV
from recaudit.recsys import events as ev
from recaudit.scheduler.cli import main
from support import HEAVY, free_port, get, run_cli, run_process

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ["demo", "schedule", "simulate", "ingest", "train", "recommend", "serve", "validate", "audit", "report",
            "alerts"]


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
    code = ("import sys\nfrom recaudit.scheduler.cli import main\n"
            "try:\n    main(['--help'] if len(sys.argv) < 2 else [sys.argv[1], '--help'])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    for args in ([], *([c] for c in COMMANDS)):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == "[]", (args, done.stdout)


def test_unknown_command_is_a_usage_error(recaudit_bin):
    done = run_cli(recaudit_bin, "frobnicate")
    assert done.returncode == 2 and "No such command" in done.stderr.decode()


def test_the_installed_console_script_runs_the_same_command(recaudit_bin):
    done = run_process(recaudit_bin, "frobnicate")
    assert done.returncode == 2 and "No such command" in done.stderr.decode()
    assert run_process(recaudit_bin, "--version").stdout == run_cli(recaudit_bin, "--version").stdout


def commands(group=main, words=()):
    """Every command under `group`, with the words after `recaudit` that name it."""
    for name, command in group.commands.items():
        yield (*words, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*words, name))


@pytest.mark.parametrize("command", [w for w, c in commands() if any(p.name == "db" for p in c.params)], ids=" ".join)
def test_every_command_with_a_database_names_its_environment_variable_in_help(recaudit_bin, command):
    shown = " ".join(run_cli(recaudit_bin, *command, "--help").stdout.decode().split())  # unwrapped
    assert f"[env var: {URL_ENV}; default: (./recaudit.db)]" in shown


def test_without_db_the_database_is_the_one_the_environment_names_and_db_wins_over_it(recaudit_bin, tmp_path):
    named, given = tmp_path / "named.db", tmp_path / "given.db"
    assert run_cli(recaudit_bin, "alerts", "list", cwd=tmp_path, env={URL_ENV: str(named)}).returncode == 0
    assert named.exists() and not (tmp_path / "recaudit.db").exists()
    assert run_cli(recaudit_bin, "alerts", "list", "--db", str(given), env={URL_ENV: str(named)}).returncode == 0
    assert given.exists()
    assert run_cli(recaudit_bin, "alerts", "list", cwd=tmp_path).returncode == 0
    assert (tmp_path / "recaudit.db").exists()


def test_the_readme_command_reference_is_what_help_prints():
    from cogapp import Cog

    regenerate = "regenerate it: .venv/bin/cog -r README.md"
    status = Cog().main(["cog", "--check", "--diff", "--check-fail-msg", regenerate, str(README)])
    assert status == 0, f"README.md's --help reference is stale: {regenerate}"


# -- input errors: one line naming the file and what is wrong, exit status 2, no traceback -------

def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error line of a run that must end in an input error; fails on anything else."""
    err = done.stderr.decode()
    assert done.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, (done.returncode, err)
    return err.strip()


def as_unprivileged(recaudit_bin: str, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI as a user that file permissions apply to. Root reads any directory, so as root
    the child runs as nobody (setpriv, from util-linux)."""
    if os.geteuid() != 0:
        return run_cli(recaudit_bin, *args)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): permissions would not apply to the CLI")
    return run_process(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", recaudit_bin, *args)


@pytest.fixture
def shared_tmp():
    """A directory anyone may enter: above tmp_path is root's alone (0700), so nobody could not
    reach even a readable directory in it, and the test would pass for the wrong reason."""
    path = Path(tempfile.mkdtemp(prefix="recaudit-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("mode", [0o000, 0o333], ids=["no-permissions", "write-and-search-but-no-read"])
def test_a_directory_without_read_permission_is_named_with_permission_denied(recaudit_bin, shared_tmp, mode):
    data = shared_tmp / "data"
    data.mkdir()
    (data / "README").write_text("not data\n")
    readable = one_line_error(as_unprivileged(recaudit_bin, "validate", str(data)))
    assert "no users.csv, movies.csv, event log or MovieLens files in it" in readable  # nobody can read it so far
    data.chmod(mode)
    try:
        locked = one_line_error(as_unprivileged(recaudit_bin, "validate", str(data)))
        assert locked == f"error: {data}: permission denied"
    finally:
        data.chmod(0o755)


# Both commands that read the user's files, run in tmp_path (the database is a file there).
READERS = pytest.mark.parametrize("reader", [["validate"], ["ingest", "--db", "recaudit.db"]],
                                  ids=["validate", "ingest"])
LOG_LINES = b"".join(b"2024-01-01T00:%02d:%02d,%d,GET /data/m/movie%d/%d.mpg\n" % (i // 60, i % 60, i, i % 50, i % 90)
                     for i in range(3600))


@READERS
def test_a_truncated_gzip_log_is_named_as_one_that_cannot_be_read(recaudit_bin, tmp_path, reader):
    whole = gzip.compress(LOG_LINES)
    (tmp_path / "events.log.gz").write_bytes(whole[: len(whole) // 2])
    err = one_line_error(run_cli(recaudit_bin, *reader, "events.log.gz", cwd=tmp_path))
    assert err == ("error: events.log.gz: cannot be read "
                   "(Compressed file ended before the end-of-stream marker was reached)")


@READERS
def test_a_log_named_gz_that_is_not_gzip_is_named_as_not_gzip_compressed(recaudit_bin, tmp_path, reader):
    (tmp_path / "events.log.gz").write_bytes(LOG_LINES)
    err = one_line_error(run_cli(recaudit_bin, *reader, "events.log.gz", cwd=tmp_path))
    assert err == "error: events.log.gz: cannot be read: not gzip-compressed, though its name ends in .gz"


@READERS
@pytest.mark.parametrize("name, encoding", [("users.csv", "utf-16"), ("users.csv", "utf-16-be"),
                                            ("people.txt", "utf-16-le")])
def test_a_utf16_users_file_is_named_as_not_utf8(recaudit_bin, tmp_path, reader, name, encoding):
    (tmp_path / name).write_bytes("user_id,age,gender,occupation\r\n1,34,F,writer\r\n".encode(encoding))
    err = one_line_error(run_cli(recaudit_bin, *reader, name, cwd=tmp_path))
    assert err == f"error: {name}:1: not UTF-8: it looks like UTF-16 (save it as UTF-8)"


def test_a_binary_file_beside_the_data_is_still_skipped_in_a_directory(recaudit_bin, tmp_path):
    # NUL bytes mark UTF-16 only in a file that is meant to be read: not in an image kept beside the data
    data = tmp_path / "data"
    data.mkdir()
    (data / "users.csv").write_text("user_id,age,gender,occupation\n1,34,F,writer\n")
    (data / "cover.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    done = run_cli(recaudit_bin, "ingest", "--db", "recaudit.db", "data", cwd=tmp_path)
    assert done.returncode == 0 and "cover.png" not in done.stdout.decode() + done.stderr.decode()


@READERS
@pytest.mark.parametrize("links", [{"loop": "loop"}, {"a.log": "b.log", "b.log": "a.log"}], ids=["self", "pair"])
def test_a_symlink_loop_is_named_as_one_not_as_a_missing_file(recaudit_bin, tmp_path, reader, links):
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    first = next(iter(links))
    err = one_line_error(run_cli(recaudit_bin, *reader, first, cwd=tmp_path))
    assert err == f"error: {first}: too many levels of symbolic links"


@pytest.fixture(scope="module")
def rated_db(small_world, tmp_path_factory, recaudit_bin) -> Path:
    """A database with ratings to train on: the small simulated world, ingested."""
    db = tmp_path_factory.mktemp("rated") / "recaudit.db"
    done = run_cli(recaudit_bin, "ingest", "--db", str(db), str(small_world))
    assert done.returncode == 0, done.stderr
    return db


# Each command that writes where the user says, given a path under a regular file: no one, not
# even root, can create it. A placeholder {db} is a database with ratings, {port} a free port.
WRITERS = {
    "serve --log": ["serve", "--db", "{db}", "--port", "{port}", "--log", "file.txt/sub/service.log"],
    "audit --out": ["audit", "--db", "{db}", "--since", "2024-01-01", "--out", "file.txt/sub"],
    "train --models": ["train", "--db", "{db}", "--algo", "baseline", "--models", "file.txt/sub"],
    "report --out": ["report", "--db", "{db}", "--out", "file.txt/sub"],
    "simulate --out": ["simulate", "--out", "file.txt/sub", "--users", "5", "--movies", "20", "--days", "1"],
    "demo --out": ["demo", "--quick", "--out", "file.txt/sub"],
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_unwritable_output_path_is_named_in_one_line(recaudit_bin, rated_db, tmp_path, writer):
    (tmp_path / "file.txt").write_text("a file, not a directory\n")
    args = [a.format(db=rated_db, port=free_port()) for a in WRITERS[writer]]
    assert one_line_error(run_cli(recaudit_bin, *args, cwd=tmp_path)) == "error: file.txt/sub: not a directory"


def test_an_unwritable_audit_output_records_no_run(recaudit_bin, rated_db, tmp_path):
    from recaudit.audits.store import Store

    (tmp_path / "file.txt").write_text("a file, not a directory\n")
    store = Store(f"sqlite:///{rated_db}")
    before = len(store.runs())
    one_line_error(run_cli(recaudit_bin, *[a.format(db=rated_db) for a in WRITERS["audit --out"]], cwd=tmp_path))
    assert len(store.runs()) == before
    store.close()


def test_an_oserror_on_a_path_the_user_did_not_name_keeps_its_traceback(tmp_path):
    from recaudit.scheduler.cli import UserError, user_errors

    named = tmp_path / "named"
    with pytest.raises(UserError, match=f"{named}/inner: no such file or directory"):
        with user_errors(named):
            open(named / "inner")
    with pytest.raises(FileNotFoundError):  # the program's own file: a bug to see, not the user's mistake
        with user_errors(named):
            open(tmp_path / "internal")


def test_serve_answers_400_to_a_user_id_in_other_digits_than_ascii_and_logs_none(recaudit_bin, tmp_path):
    port, log = free_port(), tmp_path / "service.log"
    # No model is trained: a valid id is answered 503 and logged, which is enough to tell them apart.
    proc = subprocess.Popen([recaudit_bin, "serve", "--db", str(tmp_path / "empty.db"), "--port", str(port),
                             "--log", str(log)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(base + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
                time.sleep(0.1)
        for user_id in ("١٢", "１２", "۱۲", "१२"):  # Arabic-Indic, fullwidth, Persian, Devanagari twelve
            assert get(f"{base}/recommend/{urllib.parse.quote(user_id)}")[0] == 400, user_id
        assert get(f"{base}/recommend/12")[0] == 503
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert ev.parse_file(log).recommendations.user_id.tolist() == [12]  # only the ASCII request is logged


def test_train_compare_shows_all_and_warm_users_side_by_side_and_says_how_many_are_cold(recaudit_bin, tmp_path):
    import json

    from recaudit.recsys.simulate import Config, simulate

    # Dense enough that most users who rate after the cutoff rated before it too, and some did not.
    simulate(tmp_path / "world", Config(users=200, movies=80, days=10, active_share=0.8, seed=0))
    assert run_cli(recaudit_bin, "ingest", "--db", "audit.db", "world", cwd=tmp_path).returncode == 0
    args = ["train", "--db", "audit.db", "--compare", "--factors", "5", "--epochs", "2", "--models", "m"]
    table = run_cli(recaudit_bin, *args, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    out = table.stdout.decode()
    group, header = out.splitlines()[2:4]
    assert group.split() == ["all", "users", "warm", "users", "(seen", "in", "training)"]
    assert header.split() == ["algorithm", "RMSE", "MAE", "hit@20", "NDCG@20", "RMSE", "MAE", "hit@20", "NDCG@20"]
    assert "cold start: " in out and "the popularity ranking, so cold users rank the same in every row" in out
    done = run_cli(recaudit_bin, *args, "--json", cwd=tmp_path)
    result = json.loads(done.stdout)
    assert 0 < result["warm_test_ratings"] < result["test_ratings"]
    assert 0 < result["warm_ranked_users"] < result["ranked_users"]
    assert result["cold_test_ratings_share"] == 1 - result["warm_test_ratings"] / result["test_ratings"]
    assert f"{result['cold_test_ratings_share']:.1%}" in out
    for row in result["algorithms"]:
        assert {"warm_rmse", "warm_mae", "warm_hit_rate@20", "warm_ndcg@20", "warm_ranked_users"} <= set(row)
        assert row["ranked_users"] == result["ranked_users"] and row["warm_ranked_users"] == result["warm_ranked_users"]


def test_audit_prints_the_reason_an_audit_had_too_little_data(recaudit_bin, tmp_path):
    from recaudit.recsys.simulate import Config, simulate

    simulate(tmp_path / "data", Config(users=100, movies=40, days=1, seed=3))
    db = str(tmp_path / "a.db")
    assert run_cli(recaudit_bin, "ingest", "--db", db, str(tmp_path / "data")).returncode == 0
    done = run_cli(recaudit_bin, "audit", "--db", db, "--only", "feedback", "--since", "2030-01-01",
                   "--until", "2030-01-02", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "  feedback: insufficient_data (no recommendations in the window)" in done.stdout.decode().splitlines()
