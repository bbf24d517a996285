"""The `recaudit` command: the front door that wires recsys, audits and reports together.

Heavy libraries are imported inside the commands that need them, so `recaudit --help` answers
at once. A user's mistake (a missing file, a wrong header, an unreachable database) prints one
line that names what is wrong and exits 2; an internal error keeps its traceback. The options
several commands take (--db, --config, --json, ...) are declared once, in options.py. The
README's reference is generated from --help: `cog -r README.md` after changing one.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from datetime import date

import click

from recaudit.audits.vocabulary import counted
from recaudit.scheduler.options import config_option, db_option, json_option, out_option, window_options


class UserError(click.ClickException):
    """Bad input or usage: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@contextmanager
def user_errors(*paths):
    """Turn the errors a user can fix into one-line messages: an InputError, and an OSError on
    one of `paths` (those the user named: None for one not given), on a directory above one or on
    a file inside one. Any other error is the program's and keeps its traceback."""
    from recaudit.recsys.formats import InputError

    try:
        yield
    except InputError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        if not any(_within(exc.filename, p) for p in paths if p is not None):
            raise
        raise UserError(str(InputError.from_os(exc, exc.filename))) from None


def _within(failed, named) -> bool:
    """Whether `failed` (an OSError's filename) is `named`, a directory above it or a path inside it."""
    import os

    if not isinstance(failed, (str, bytes, os.PathLike)):  # None, or a file descriptor
        return False
    a, b = (os.path.realpath(os.fsdecode(x)) for x in (failed, named))
    return os.path.commonpath([a, b]) in (a, b)


def open_store(db: str | None, config_path: str | None = None):
    """The store of --db, with the lake of --lake, $RECAUDIT_LAKE or the configuration's store.lake."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from recaudit.audits import config
    from recaudit.audits.store import Store, resolve_url

    url = resolve_url(db)
    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    settings = config.load_settings(config_path).store.model_dump()
    try:
        return Store(url, settings=settings)
    except (ValueError, OSError) as exc:  # the lake: where it is, what reads it, whether it fits the database
        raise UserError(f"cannot open {shown}: {exc}") from None
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
              help="Comma list of faults starting on the middle day, each perhaps with a strength "
                   "(fault:strength): corrupt, drift, fairness, feedback, starve.")
@click.option("--format", "log_format", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="Form of the event log: text lines (events.log) or JSON Lines (events.jsonl).")
@json_option("Print a JSON summary.")
def simulate(out, users, movies, days, seed, start, inject, log_format, as_json):
    """Write a simulated streaming service: users.csv, movies.csv and events.log.

    The log follows the production format (one line per watched minute, per rating and per
    recommendation request), in time order. Users have a latent taste that drives what they
    watch and how they rate, so a recommender can learn from it. Same arguments, same bytes.
    With --format jsonl the same events (and the same faults) are written as JSON Lines to
    events.jsonl instead.

    \b
    Faults (--inject), each from the middle day on, and their strength s
    (--inject fairness:1.1,drift; without one, the default):
      corrupt   malformed lines of every kind, out-of-range ratings, short and
                duplicate recommendation lists, unknown movie ids;
                s: the share of lines corrupted, 0-1 (default 0.03)
      drift     more young users, a different genre mix, inflated ratings;
                s: a multiple of the default drift, >= 0 (default 1): young
                users 1+3s times as active, Horror, Animation and Sci-Fi
                1+2s times as likely outside recommendations, ratings +0.6s
      fairness  ratings by women and by seniors become noisier;
                s: their rating noise in stars (sd), >= 0 (default 1.4;
                everyone else's is 0.5)
      feedback  the recommender retrains daily on its own exposure;
                s: how fast it leans on it, >= 0 (default 1: on the loop's
                d-th day min(1, 0.1 s d) of the way)
      starve    the recommender stops showing Romance movies; users keep
                watching them on their own;
                s: the share of Romance movies starved, 0-1 (default 1)
    At s = 0 (fairness: 0.5) a fault leaves the log as it is without it.
    """
    from recaudit.recsys.simulate import Config, parse_inject
    from recaudit.recsys.simulate import simulate as run

    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise UserError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
    try:
        faults = parse_inject(inject)
    except ValueError as exc:
        raise UserError(f"--inject: {exc}") from None
    with user_errors(out):
        summary = run(out, Config(users=users, movies=movies, days=days, seed=seed, start=first, inject=faults,
                                  log_format=log_format))

    def human(s):
        click.echo(f"wrote {out}/users.csv ({users:,} users), {out}/movies.csv ({movies:,} movies), "
                   f"{out}/{s['files']['events']} ({s['lines']:,} lines over {days} days)")
        if faults:
            click.echo(f"faults {', '.join(f'{f}:{v:g}' for f, v in faults.items())} start at "
                       f"{s['injection_start']}")

    from dataclasses import asdict

    emit({**asdict(summary), "out": str(out)}, as_json, human)


@main.command()
@db_option
@click.option("--validate", is_flag=True, help="Quarantine events that fail a row-level expectation of the suites.")
@click.option("--model-name", default="production", show_default=True, metavar="NAME",
              help="The model of predictions files without a model column.")
@config_option("Settings file (with --validate).")
@json_option("Print exactly one JSON object.")
@click.argument("paths", nargs=-1, required=True)
def ingest(db, validate, model_name, config_path, as_json, paths):
    """Store event logs, users.csv, movies.csv or MovieLens directories in the database.

    PATHS are event logs (plain or .gz, or - for standard input, read in batches so that a
    Kafka consumer can pipe into it), users.csv, movies.csv, predictions files of any model
    (CSV, JSON Lines or Parquet with time, user_id, movie_id, prediction and optionally
    model), a MovieLens 100K or 1M directory, or a directory of stream files (users and movies
    first, then logs, then predictions). Files are recognised by their content, not their name.

    Every non-blank line is stored or quarantined with its reason; a source is committed whole
    or not at all. Ingesting the same content again stores nothing; a log that has grown since
    it was ingested contributes only its new lines.

    With --validate, events that fail an expectation marked for quarantine (a rating outside
    1-5, a list without 20 movies, a duplicate event, ...) are quarantined with the
    expectation's name as the reason instead of stored.
    """
    from recaudit.audits import validation
    from recaudit.audits.ingest import ingest as run

    check = validation.row_check(load_config(config_path)) if validate else None
    with user_errors(*paths):
        store = open_store(db, config_path)
        summary = run(store, paths, check=check, model_name=model_name)
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


def parse_time(value: str | None, option: str):
    if value is None:
        return None
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise UserError(f"{option} {value!r} is not a time (e.g. 2024-01-10 or 2024-01-10T12:00)") from None
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def load_split(store, until):
    from recaudit.recsys import recommender as rc

    ratings = store.read("ratings")
    if ratings.empty:
        raise UserError(f"no ratings in {store.url}: ingest some first (recaudit ingest)")
    try:
        data = rc.split(ratings, until)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    data.seen = store.watched_pairs(data.cutoff)
    return data


@main.command()
@db_option
@click.option("--models", "models_dir", default="models", show_default=True, type=click.Path(file_okay=False),
              help="Directory of model artifacts.")
@click.option("--until", metavar="TIME", help="Train on ratings strictly before TIME; evaluate on those after "
                                               "[default: all but the most recent 20% of the time span].")
@click.option("--algo", type=click.Choice(["svd", "baseline"]), default="svd", show_default=True,
              help="svd: surprise's SVD; baseline: biases only (BaselineOnly).")
@click.option("--factors", default=100, show_default=True, type=click.IntRange(min=1), help="Latent factors (SVD).")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1), help="Training epochs (SVD).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of SVD's initialisation and of sampling.")
@click.option("--compare", is_flag=True, help="Compare SVD, KNNBaseline (item-based), BaselineOnly and popularity "
                                              "on the same split instead of saving a model.")
@json_option("Print JSON.")
def train(db, models_dir, until, algo, factors, epochs, seed, compare, as_json):
    """Train the reference recommender on the past and evaluate it on the most recent ratings.

    The model learns from ratings strictly before the cutoff and is scored (RMSE, MAE) on the
    ratings after it, as production would see it. It is saved as an artifact in --models
    (model.npz and metadata.json with the provenance: training rows, time range, a SHA-256 of
    the training data, parameters, library versions, metrics) and recorded in the database;
    the newest model is the one `recommend` and `serve` use.

    With --compare, four algorithms are trained on the same split and compared on rating
    accuracy, hit rate and NDCG at 20 on held-out ratings of 4 or 5, training time, time to rank
    one user's top 20, and size; the table is saved as JSON in --models/comparisons. Accuracy
    and ranking are shown for all users and for warm users (seen in training) alone: every
    algorithm gives a cold user the popularity ranking.
    """
    from pathlib import Path

    from recaudit.recsys import recommender as rc

    store = open_store(db)
    data = load_split(store, parse_time(until, "--until"))
    with user_errors(models_dir):
        # Made before training, which can take minutes, so that an unwritable --models fails at once.
        Path(models_dir).mkdir(parents=True, exist_ok=True)
        if compare:
            result = rc.compare(data, factors=factors, epochs=epochs, seed=seed)
            out = Path(models_dir) / "comparisons" / f"comparison-{result['created_at'].replace(':', '')}.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            emit({**result, "path": str(out)}, as_json, lambda r: _print_comparison(r, out))
            return
        from recaudit.scheduler.jobs import save_model

        model = rc.train(data, algo=algo, factors=factors, epochs=epochs, seed=seed)
        meta = model.metadata
        model_id, path = save_model(store, model, models_dir)

    def human(m):
        metrics = m["metrics"]
        click.echo(f"model {model_id} saved in {path}")
        click.echo(f"trained on {m['train']['ratings']:,} ratings before {m['cutoff']} "
                   f"({m['train']['users']:,} users, {m['train']['movies']:,} movies) in {m['training_seconds']:.1f} s")
        if metrics["n"]:
            click.echo(f"evaluated on {metrics['n']:,} later ratings: RMSE {metrics['rmse']:.4f}, "
                       f"MAE {metrics['mae']:.4f} ({metrics['cold_start_share']:.0%} by users or of movies "
                       "the model never saw)")
        else:
            click.echo("no ratings after the cutoff to evaluate on")

    emit({"id": model_id, "path": str(path), **meta}, as_json, human)


def _print_comparison(result: dict, path) -> None:
    k = result["k"]
    click.echo(f"{result['train_ratings']:,} ratings before {result['cutoff']}, {result['test_ratings']:,} after\n")
    fmt = lambda v, f: "—".rjust(len(format(0, f))) if v is None else format(v, f)  # noqa: E731
    group = f"{'RMSE':>8}{'MAE':>8}{f'hit@{k}':>8}{f'NDCG@{k}':>9}"
    click.echo(f"{'':<11}{'all users':^33}  {'warm users (seen in training)':^33}".rstrip())
    click.echo(f"{'algorithm':<11}{group}  {group}")
    for r in result["algorithms"]:
        if "skipped" in r:
            click.echo(f"{r['algo']:<11}skipped: {r['skipped']}")
            continue
        click.echo(f"{r['algo']:<11}" + "  ".join(
            f"{fmt(r[p + 'rmse'], '8.4f')}{fmt(r[p + 'mae'], '8.4f')}{fmt(r[f'{p}hit_rate@{k}'], '8.3f')}"
            f"{fmt(r[f'{p}ndcg@{k}'], '9.3f')}" for p in ("", "warm_")))
    click.echo(f"\n{'algorithm':<11}{'train s':>9}{f'top-{k} ms':>11}{'disk MB':>9}{'memory MB':>11}")
    for r in result["algorithms"]:
        if "skipped" not in r:
            click.echo(f"{r['algo']:<11}{r['train_seconds']:9.2f}{fmt(r['top_k_ms'], '11.2f')}"
                       f"{r['disk_bytes'] / 1e6:9.2f}{r['memory_bytes'] / 1e6:11.2f}")
    ranked, warm = result["ranked_users"], result["warm_ranked_users"]
    click.echo(f"\nall users: {result['test_ratings']:,} held-out ratings; {ranked:,} users ranked (those with "
               "held-out ratings of 4 or 5)")
    click.echo(f"warm users: {result['warm_test_ratings']:,} ratings whose user and movie were rated before the "
               f"cutoff; {warm:,} ranked users who rated before it")
    if result["cold_test_ratings_share"] is not None:
        users = "" if result["cold_ranked_users_share"] is None else \
            f" and {ranked - warm:,} of the ranked users ({result['cold_ranked_users_share']:.1%})"
        click.echo(f"cold start: {result['test_ratings'] - result['warm_test_ratings']:,} of the ratings "
                   f"({result['cold_test_ratings_share']:.1%}){users}; every algorithm gives a cold user\n"
                   "  the popularity ranking, so cold users rank the same in every row: compare algorithms on the "
                   "warm columns")
    click.echo(f"saved to {path}")


def load_model(store, model_id: str | None):
    from recaudit.recsys.recommender import Model

    found = store.model_artifact(model_id)
    if found is None:
        raise UserError(f"no model {model_id!r} in {store.url}" if model_id else
                        f"no model trained yet in {store.url}: run recaudit train")
    try:
        return found[0], Model.load(found[1])
    except FileNotFoundError:
        raise UserError(f"model {found[0]}: its artifact {found[1]} is missing") from None


@main.command()
@click.argument("user_id", type=click.IntRange(min=0))
@db_option
@click.option("--model", "model_id", metavar="ID", help="A model id [default: the newest].")
@click.option("--k", default=20, show_default=True, type=click.IntRange(min=1), help="How many movies.")
@json_option("Print JSON.")
def recommend(user_id, db, model_id, k, as_json):
    """Recommend K movies to a user with the newest model (or --model).

    Movies the user already rated or watched before the model's cutoff are never recommended.
    A user the model never saw gets the most popular movies of its training window, and the
    output says so.
    """
    store = open_store(db)
    model_id, model = load_model(store, model_id)
    movies, scores, cold = model.recommend(user_id, k)
    titles = store.read("movies").set_index("movie_id")["title"].to_dict()
    data = {"user_id": user_id, "model": model_id, "cold_start": cold,
            "movies": [{"rank": r, "movie_id": m, "title": titles.get(m),  # clipped to 1-5, as predict() gives it
                        "predicted_rating": None if cold else round(min(max(float(s), 1.0), 5.0), 4)}
                       for r, (m, s) in enumerate(zip(movies, scores), 1)]}

    def human(d):
        if d["cold_start"]:
            click.echo(f"user {user_id} is unknown to model {model_id}: the {len(movies)} most popular movies "
                       f"of its training window they have not seen")
        for row in d["movies"]:
            rating = "" if row["predicted_rating"] is None else f"{row['predicted_rating']:.2f}  "
            click.echo(f"{row['rank']:>3}. {rating}{row['movie_id']}" + (f"  ({row['title']})" if row["title"] else ""))

    emit(data, as_json, human)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8082, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@db_option
@click.option("--log", "log_path", default="recaudit-service.log", show_default=True, type=click.Path(dir_okay=False),
              help="Event log the service appends one recommendation line per request to.")
@click.option("--server-name", metavar="NAME", help="Server name in the log lines [default: <hostname>:<port>].")
@click.option("--reload-seconds", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="How often to look for a newer model.")
def serve(host, port, db, log_path, server_name, reload_seconds):
    """Serve recommendations over HTTP with the newest model, logging every request.

    \b
      GET /recommend/<user_id>   20 movie ids, comma-separated (text/plain);
                                 400 for an id that is not a non-negative integer,
                                 503 until a model has been trained
      GET /healthz               the model in use (JSON; 503 without one)

    Each request to /recommend appends a recommendation line to --log in the production log
    format, so the service's own traffic can be ingested and audited. When `recaudit train`
    records a newer model, it is loaded in the background and swapped in without downtime.
    """
    import socket

    from recaudit.recsys import serving

    store = open_store(db)
    holder = serving.ModelHolder(lambda: store.model_artifact())
    holder.refresh()
    name = server_name or f"{socket.gethostname()}:{port}"
    with user_errors(log_path):
        events = serving.EventLog(log_path)
    app = serving.create_app(holder, events, name, reload_seconds)
    click.echo(f"serving {holder.model_id or 'no model yet'} on http://{host}:{port} (log: {log_path})", err=True)
    serving.serve(app, host, port)


def load_config(path):
    from recaudit.audits import config

    with user_errors():
        return config.load(path)


@main.command()
@click.option("--suite-dir", type=click.Path(file_okay=False),
              help="Suites to run [default: those shipped with recaudit].")
@config_option()
@window_options
@json_option("Print every expectation's outcome as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write JUnit XML (one testcase per expectation).")
@click.argument("paths", nargs=-1, required=True)
def validate(suite_dir, config_path, since, until, as_json, junit, paths):
    """Check files against the data contracts (Great Expectations suites); no database needed.

    PATHS are event logs, users.csv, movies.csv, MovieLens or stream directories. Every suite
    whose dataset appears is run: log (every line parses), watches, ratings,
    recommendations, users, movies. Expectations that need something not given are skipped
    and said so: the catalogue (give movies.csv) or the window (--since and --until).

    Exit status: 0 when every expectation holds, 1 when any fails, 2 for a usage or input
    error. Made for CI: `--junit` writes a report GitHub Actions, GitLab and Jenkins display.
    """
    from recaudit.audits import validation

    cfg = load_config(config_path)
    if suite_dir:
        cfg["validation"]["suite_dir"] = suite_dir
    if (since is None) != (until is None):
        raise UserError("--since and --until go together (the window checked)")
    with user_errors(*paths, cfg["validation"]["suite_dir"], junit):
        frames, found = validation.read_paths(paths)
        window = parse_time(since, "--since"), parse_time(until, "--until")
        params = validation.parameters(cfg, *window, found["catalog"])
        outcomes = validation.run_suites(frames, params, cfg["validation"]["suite_dir"])
        if junit:
            from recaudit.reports import junit as junit_xml

            junit_xml.write(outcomes, junit)
    failed = [o for o in outcomes if o.success is False]

    def human(_):
        for o in outcomes:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[o.success]
            detail = o.message if o.success is False else (o.skipped or "")
            click.echo(f"{mark} {o.dataset}.{o.name}" + (f": {detail}" if detail else ""))
        passed = sum(o.success is True for o in outcomes)
        click.echo(f"{len(outcomes)} expectations: {passed} passed, {len(failed)} failed, "
                   f"{len(outcomes) - passed - len(failed)} skipped")

    emit({"success": not failed, "expectations": [o.to_dict() for o in outcomes]}, as_json, human)
    if failed:
        raise SystemExit(1)


@main.command()
@db_option
@config_option()
@window_options
@click.option("--reference-since", metavar="TIME", help="Start of the reference window drift compares with.")
@click.option("--reference-until", metavar="TIME", help="End of the reference window (exclusive).")
@click.option("--only", metavar="LIST", help="Comma list of audits to run [default: all].")
@out_option
@click.option("--model", "model_id", metavar="NAME",
              help="Model the fairness audit evaluates: a model of the stored predictions, or a trained model's id "
                   "[default: the model with the most predictions, else the newest trained].")
@click.option("--export-predictions", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the fairness audit's evaluated ratings with their predictions and groups as CSV.")
@json_option("Print the run's results.json.")
def audit(db, config_path, since, until, reference_since, reference_until, only, out, model_id, export_predictions,
          as_json):
    """Run the audits over a window of stored data and record what they find.

    The window is [--since, --until). A missing --until is --since plus `audit.window`
    (1 day); without either, the window is the `audit.window` that ends with the latest stored
    event. Each audit's metrics and
    findings are stored in the database and written to OUT/runs/<run_id>/results.json, with a
    page (index.html) beside it. One audit that fails is recorded as errored, with a critical
    finding, and the others still run.

    Drift compares the window with a reference: [--reference-since, --reference-until), or by
    default the `drift.reference_window` (7 days) before it, or the newest model's training
    window when `drift.reference = "training"`.

    Fairness evaluates the team's model (or --model) on the ratings at least `fairness.window`
    (7 days) back from the window's end: each rating scored by the latest stored prediction of
    that user and movie made before it, or by `fairness.scorer`; without predictions, the
    newest trained model, on the ratings after its training cutoff. --export-predictions writes
    the evaluated ratings with their predictions and groups as CSV.

    Exit status: 1 when a critical finding exists, else 0 (2 for a usage or input error).
    """
    from pathlib import Path

    from recaudit.audits import fairness, groups, registry
    from recaudit.audits import run as runs
    from recaudit.scheduler.jobs import audit_and_publish

    cfg = load_config(config_path)
    if model_id:
        cfg["fairness"]["model"] = model_id
    if export_predictions:
        cfg["fairness"]["export_predictions"] = export_predictions
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    for name in names or []:
        if name not in registry.AUDITS:
            raise UserError(f"--only: unknown audit {name!r} (known: {', '.join(registry.AUDITS)})")
    store = open_store(db, config_path)
    if model_id and not fairness.is_model(store, model_id):
        raise UserError(f"--model: no model {model_id!r} in {store.url} (neither in the stored predictions "
                        "nor trained)")
    if cfg["fairness"]["scorer"] and (not names or "fairness" in names):
        with user_errors():
            fairness.load_scorer(cfg["fairness"])  # a scorer that cannot be imported fails now, in one line
    with user_errors():  # so does a fairness dimension or a drift attribute that no stored user has
        groups.check_stored(cfg, store.attribute_names("users"), names or list(registry.AUDITS))
    if (reference_since is None) != (reference_until is None):
        raise UserError("--reference-since and --reference-until go together")
    reference = None
    if reference_since is not None:
        reference = (parse_time(reference_since, "--reference-since"), parse_time(reference_until, "--reference-until"))
        if reference[0] >= reference[1]:
            raise UserError("the reference window is empty: --reference-since is not before --reference-until")
    try:
        since, until = runs.default_window(store, cfg["audit"]["window"], parse_time(since, "--since"),
                                           parse_time(until, "--until"))
    except (LookupError, ValueError) as exc:
        raise UserError(str(exc)) from None
    out = out or cfg["audit"]["out"]
    with user_errors(out, export_predictions):
        # Made before the run is recorded, so that an unwritable --out leaves no run behind.
        Path(out).mkdir(parents=True, exist_ok=True)
        done = audit_and_publish(store, cfg, since, until, names, out, reference)
    result = done.run

    def human(d):
        click.echo(f"run {d['run_id']} over {d['window']['since']} → {d['window']['until']}: {d['status']}")
        for name, a in d["audits"].items():
            reason = (a.get("details") or {}).get("reason") if a["status"] == "insufficient_data" else None
            click.echo(f"  {name}: {a['status']}" + (f" ({reason})" if reason else "")
                       + (f" ({counted(len(a['findings']), 'finding')})" if a["findings"] else ""))
            for f in a["findings"]:
                click.echo(f"    [{f['severity']}] {f['message']}")
        click.echo(f"results: {result.path / 'results.json'}\npage: {done.page}\ndashboard: {done.dashboard}")
        if done.alerts:
            sent = f", {done.delivery['delivered']} deliveries made" if done.delivery else ""
            click.echo(f"alerts: {len(done.alerts)} new{sent} (recaudit alerts list)")

    emit(done.document, as_json, human)
    if any(r.critical for r in result.results.values()):  # an audit that errored raises a critical finding too
        raise SystemExit(1)


@main.command()
@db_option
@config_option()
@out_option
@click.option("--all", "full", is_flag=True, help="Render every run's page, not only those missing or stale.")
def report(db, config_path, out, full):
    """Render the run pages that are missing or stale, and the dashboard, from the database.

    Writes OUT/index.html (the conditions open now, the key metrics over the last runs, the
    newest runs), OUT/archive/<n>/index.html (every run) and OUT/runs/<run_id>/index.html for
    each run whose page is missing or older than the run or the templates (every run's with
    --all). The pages work offline, straight from the file system.
    """
    from recaudit.reports.html import publish

    cfg = load_config(config_path)
    store = open_store(db, config_path)
    out = out or cfg["audit"]["out"]
    with user_errors(out):
        path = publish(store, out, cfg, full=full)
    click.echo(f"dashboard: {path}")


@main.group()
def alerts():
    """See and drive the alerts: list the outbox, deliver what is due, test the webhooks.

    Alerts are written after each audit run from its findings (`alerts.findings`, warning and
    above by default) and the rules of recaudit.toml, and posted to its webhooks. A condition
    that stays open is not sent again; when it clears, one "resolved" alert is.
    """


@alerts.command("list")
@db_option
@json_option("Print the alerts as JSON.")
def alerts_list(db, as_json):
    """Every alert, newest first, with the state of its delivery to each webhook."""
    from recaudit.reports import alerts as alerting

    rows = alerting.outbox(open_store(db))

    def human(data):
        if not data["alerts"]:
            click.echo("no alerts")
        for a in data["alerts"]:
            click.echo(f"{a['created_at'][:19]} {a['status']:<8} {a['severity']:<8} {a['message']}")
            for d in a["deliveries"]:
                state = f"delivered {d['delivered_at'][:19]}" if d["status"] == "delivered" else \
                    f"pending, {d['attempts']} attempts, next at {d['next_attempt_at'][:19]}" + \
                    (f" (last error: {d['last_error']})" if d["last_error"] else "")
                click.echo(f"    → {d['webhook']}: {state}")

    emit({"alerts": rows}, as_json, human)


@alerts.command("deliver")
@db_option
@config_option()
@json_option("Print the counts as JSON.")
def alerts_deliver(db, config_path, as_json):
    """Post every delivery that is due. Failures stay in the outbox and are retried with
    exponential backoff (`alerts.backoff_seconds`, doubling up to `alerts.max_backoff_seconds`).

    Exit status: 1 when some delivery failed this time, else 0.
    """
    from recaudit.reports import alerts as alerting

    cfg = load_config(config_path)
    counts = alerting.deliver(open_store(db, config_path), cfg["alerts"])
    emit(counts, as_json, lambda c: click.echo(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items())))
    if counts["failed"]:
        raise SystemExit(1)


@alerts.command("test")
@config_option()
def alerts_test(config_path):
    """Send a test alert to every configured webhook, now, and say how each answered.

    Exit status: 1 when a webhook did not accept it.
    """
    from recaudit.reports import alerts as alerting

    cfg = load_config(config_path)
    if not cfg["alerts"]["webhooks"]:
        raise UserError("no webhooks configured: add [[alerts.webhooks]] to recaudit.toml")
    failed = False
    for hook in cfg["alerts"]["webhooks"]:
        try:
            alerting.post(hook, alerting.test_payload())
            click.echo(f"{hook['name']}: accepted")
        except Exception as exc:  # report every webhook's answer
            failed = True
            click.echo(f"{hook['name']}: failed ({alerting.describe_error(exc)})")
    if failed:
        raise SystemExit(1)


@main.command()
@db_option
@config_option()
@click.option("--once", is_flag=True, help="Run every job that is due, then exit (for cron or a Kubernetes CronJob).")
@click.option("--host", help="Address of the HTTP endpoints [default: schedule.host, 127.0.0.1].")
@click.option("--port", type=int, help="Port of the HTTP endpoints [default: schedule.port, 8090].")
def schedule(db, config_path, once, host, port):
    """Run the audit service: ingest, audits, retraining, reports and alerts on a schedule.

    Each job of `schedule.jobs` in recaudit.toml runs on its own interval or cron line (UTC).
    Jobs are persisted in the database, so a restart resumes the schedule: a run missed while
    the service was down happens once (within `schedule.misfire_grace_seconds`), never twice,
    and a slow job never overlaps itself. Every job run is recorded with its outcome; one that
    fails does not stop the service. A job new to the database is due at once.

    One scheduler per database runs the jobs, the holder of a lease in the database; others
    stand by and take over within 4/3 of `schedule.lease_seconds` when it dies. Runs a dead
    scheduler left running are marked interrupted and run again.

    The service also answers over HTTP (127.0.0.1 by default): GET /metrics (Prometheus: the
    latest value of every metric key, and job run counters), GET /healthz (its role: active or
    standby; 503 while the database is unreachable), and the reports under /. SIGTERM or SIGINT
    let the running job finish, then stop the service.

    With --once: run the jobs that are due now, then exit; status 1 when one failed. Nothing
    runs while another scheduler holds the lease.
    """
    import logging
    from pathlib import Path

    from recaudit.scheduler import service

    cfg = load_config(config_path)
    if config_path is None and Path("recaudit.toml").exists():
        config_path = "recaudit.toml"
    config_path = str(Path(config_path).resolve()) if config_path else None  # jobs are persisted with it
    store = open_store(db, config_path)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recaudit").setLevel(logging.INFO)  # changes of role, recoveries, outcomes recorded late
    if once:
        try:
            outcomes = service.once(store, config_path, cfg)
        except service.LeaseHeld as held:
            click.echo(f"nothing run: another scheduler holds the lease on this database ({held})")
            return
        for name, status in outcomes.items():
            click.echo(f"{name}: {status}")
        if not outcomes:
            click.echo("no job was due")
        if "failed" in outcomes.values():
            raise SystemExit(1)
        return
    import uvicorn

    from recaudit.scheduler import web

    settings = cfg["schedule"]
    host, port = host or settings["host"], port or settings["port"]
    running = service.Service(store, config_path, cfg)
    server = uvicorn.Server(uvicorn.Config(web.app(running.metrics, running.health, cfg["audit"]["out"]),
                                           host=host, port=port, log_level="warning"))
    # uvicorn stops on SIGTERM/SIGINT and then raises the signal again for the handler found
    # before it: that handler must let the scheduler finish its running job, not kill the process.
    # It asks uvicorn to stop, so that a signal arriving before uvicorn has installed its own
    # (the jobs run by then) stops the service as soon as it is up instead of being lost.
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    running.start()
    click.echo(f"recaudit schedule ({running.role}): http://{host}:{port}/metrics", err=True)
    server.run()  # until SIGTERM or SIGINT
    click.echo("stopping: letting the running job finish", err=True)
    running.stop()
    click.echo("stopped", err=True)


@main.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for everything the demo makes (emptied first).")
@click.option("--quick", is_flag=True, help="A smaller service over 6 days (what CI runs).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the simulation and the model.")
def demo(out, quick, seed):
    """Show the whole loop on a simulated service, in about a minute.

    Simulates two weeks of a streaming service whose recommender falls into a feedback loop and
    serves women and seniors worse, from the middle day on. Ingests it day by day, trains the
    reference model once a week of data is in, runs every audit for every day, renders the
    reports and posts the alerts, signed, to a webhook receiver it starts on 127.0.0.1 (they are
    also written to OUT/alerts.jsonl). Ends with the dashboard's path and what was found.
    """
    import time

    from recaudit.scheduler import demo as demonstration

    started = time.perf_counter()
    with user_errors(out):
        summary = demonstration.run(out, quick=quick, seed=seed, progress=lambda m: click.echo(m, err=True))
    last = summary.runs[-1]
    click.echo(f"\n{summary.lines:,} log lines over {summary.days} days, {len(summary.runs)} audit runs "
               f"in {time.perf_counter() - started:.0f} s.")
    click.echo(f"Found on the last day (run {last['run_id']}): {counted(len(last['findings']), 'finding')}"
               f"{':' if last['findings'] else ''}")
    for message in last["findings"]:
        click.echo(f"  - {message}")
    click.echo(f"{summary.alerts} alerts delivered to the webhook receiver ({summary.out / 'alerts.jsonl'}), "
               f"{summary.rejected} rejected.")
    click.echo(f"Dashboard: {summary.dashboard.resolve()}")
