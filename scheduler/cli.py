"""The `recaudit` command: the front door that wires recsys, audits and reports together.

Heavy libraries are imported inside the commands that need them, so `recaudit --help` answers
at once. A user's mistake (a missing file, a wrong header, an unreachable database) prints one
line that names what is wrong and exits 2; an internal error keeps its traceback.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from datetime import date

import click

DB_HELP = "Database URL, or a path for an SQLite file [default: $RECAUDIT_DATABASE_URL, else ./recaudit.db]."


class UserError(click.ClickException):
    """Bad input or usage: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@contextmanager
def user_errors():
    """Turn the errors a user can fix into one-line messages."""
    from recsys.formats import InputError

    try:
        yield
    except InputError as exc:
        raise UserError(str(exc)) from None


def open_store(db: str | None):
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from audits.store import Store, resolve_url

    url = resolve_url(db)
    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    try:
        return Store(url)
    except (OperationalError, ArgumentError, NoSuchModuleError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"cannot open database {shown}: {reason}") from None


def emit(data: dict, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str))
    else:
        human(data)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="recaudit")
def main() -> None:
    """Audit a movie-streaming recommender in production.

    Typical use: simulate (or collect) logs, ingest them into the database, then audit.

    \b
      recaudit simulate --out data --days 14 --inject feedback,fairness
      recaudit ingest data
    """


@main.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--users", default=2000, show_default=True, type=click.IntRange(min=1), help="Number of users.")
@click.option("--movies", default=1000, show_default=True, type=click.IntRange(min=20),
              help="Number of movies (at least 20: a list has 20).")
@click.option("--days", default=14, show_default=True, type=click.IntRange(min=1), help="Days of activity.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option("--start", default="2024-01-01", show_default=True, help="First day (YYYY-MM-DD, UTC).")
@click.option("--inject", default="", metavar="LIST",
              help="Comma list of faults starting on the middle day: corrupt, drift, fairness, feedback.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def simulate(out, users, movies, days, seed, start, inject, as_json):
    """Write a simulated streaming service: users.csv, movies.csv and events.log.

    The log follows the production format (one line per watched minute, per rating and per
    recommendation request), in time order. Users have a latent taste that drives what they
    watch and how they rate, so a recommender can learn from it. Same arguments, same bytes.

    \b
    Faults (--inject), each from the middle day on:
      corrupt   malformed lines of every kind, out-of-range ratings, short and
                duplicate recommendation lists, unknown movie ids
      drift     more young users, a different genre mix, inflated ratings
      fairness  ratings by women and by seniors become noisier
      feedback  the recommender retrains daily on its own exposure
    """
    from recsys.simulate import INJECTIONS, Config, simulate as run

    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise UserError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
    faults = tuple(f.strip() for f in inject.split(",") if f.strip())
    for fault in faults:
        if fault not in INJECTIONS:
            raise UserError(f"--inject: unknown fault {fault!r} (choose from {', '.join(INJECTIONS)})")
    summary = run(out, Config(users=users, movies=movies, days=days, seed=seed, start=first, inject=faults))

    def human(s):
        click.echo(f"wrote {out}/users.csv ({users:,} users), {out}/movies.csv ({movies:,} movies), "
                   f"{out}/events.log ({s['lines']:,} lines over {days} days)")
        if faults:
            click.echo(f"faults {', '.join(faults)} start at {s['injection_start']}")

    from dataclasses import asdict

    emit({**asdict(summary), "out": str(out)}, as_json, human)


@main.command()
@click.option("--db", metavar="URL", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.argument("paths", nargs=-1, required=True)
def ingest(db, as_json, paths):
    """Store event logs, users.csv, movies.csv or MovieLens directories in the database.

    PATHS are event logs (plain or .gz, or - for standard input, read in batches so that a
    Kafka consumer can pipe into it), users.csv, movies.csv, a MovieLens 100K or 1M directory,
    or a directory of stream files (users and movies first, then logs). Files are recognised
    by their content, not their name.

    Every non-blank line is stored or quarantined with its reason; a source is committed whole
    or not at all. Ingesting the same content again stores nothing; a log that has grown since
    it was ingested contributes only its new lines.
    """
    from audits.ingest import ingest as run

    with user_errors():
        store = open_store(db)
        summary = run(store, paths)
    data = summary.to_dict()

    def human(d):
        for s in d["sources"]:
            if s["status"] != "ingested":
                why = "content already ingested" if s["status"] == "skipped" else "no new lines"
                click.echo(f"{s['name']}: skipped ({why})")
                continue
            stored = ", ".join(f"{n:,} {k}" for k, n in s["stored"].items() if n or k in ("watch", "rate", "recommend"))
            click.echo(f"{s['name']}: {s['lines']:,} lines: {stored} stored; {s['quarantined']:,} quarantined")
        click.echo(f"total: {d['lines']:,} lines, {d['quarantined']:,} quarantined, "
                   f"{d['skipped_sources']} source(s) skipped")

    emit(data, as_json, human)
