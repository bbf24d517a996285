"""Data validation: the Great Expectations suites of expectations/ run on a window of stored
data or on files, each failed expectation told in plain words.

The suites are data (one JSON file per dataset, GX 1.x format). Each expectation's `meta`
gives it a stable `name` (the metric key), a `severity`, a `message` template, whether rows
failing it may be quarantined, and what it `needs` besides its parameters. Values known only
when validating (the window, "now", the list length) are suite parameters; an expectation
whose parameter or need is missing (no catalogue given, no window) is reported as skipped,
never silently passed. Membership in the catalogue is computed here, as the columns
`unknown_movie` and `n_unknown_items`: handing GX a 27,000-value set costs seconds per check.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from recaudit.audits import config as configuration
from recaudit.audits import pushdown, sources
from recaudit.audits.pushdown import QUARANTINED_BY
from recaudit.audits.result import AuditResult, Finding
from recaudit.clock import utc_now
from recaudit.recsys import events as ev
from recaudit.recsys import formats, movielens

DATASETS = ("log", "watches", "ratings", "recommendations", "users", "movies")
EXAMPLES = 5


@dataclass
class Outcome:
    """One expectation on one dataset."""

    dataset: str
    name: str
    type: str
    severity: str
    success: bool | None  # None: skipped
    message: str = ""  # what failed, in plain words (empty when it held)
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    element_count: int | None = None
    examples: list = field(default_factory=list)
    skipped: str | None = None  # why it could not be evaluated
    quarantine: bool = False
    rows: np.ndarray | None = None  # positions of failing rows, when asked for

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "rows"}
        out["examples"] = [str(x) for x in self.examples]
        return out


def suite_dir(configured: str | Path | None = None) -> Path:
    return Path(configured) if configured else Path(str(files("recaudit.expectations")))


def load_suites(directory: str | Path | None = None) -> dict[str, dict]:
    """The suites of a directory by dataset name (GX 1.x JSON)."""
    path = suite_dir(directory)
    if not path.is_dir():
        raise formats.InputError(path, "no such suite directory")
    suites = {}
    for file in sorted(path.glob("*.json")):
        try:
            suite = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise formats.InputError(file, f"not valid JSON ({exc.msg})", line=exc.lineno) from None
        suites[suite.get("name", file.stem)] = suite
    return suites


# -- the frames the suites check -------------------------------------------------------------

def event_frames(parsed: ev.ParsedEvents, catalog: set[str] | None) -> dict[str, pd.DataFrame]:
    """Watches and ratings (with `unknown_movie`: the movie id when it is not in the catalogue),
    recommendations (one row per request, with its list's distinct and unknown movies counted)
    and the log's parse outcome per line. Without a catalogue, the unknown columns are left out."""
    items = parsed.items
    # A stored window holds several sources, whose line numbers repeat: a list is its source's line.
    key = ["source_id", "line"] if "source_id" in items else ["line"]
    per_list = items.groupby(key, sort=False).agg(n_distinct_items=("movie_id", "nunique"))
    if catalog is not None and len(items):
        unknown = ~items["movie_id"].astype(str).isin(catalog)
        per_list["n_unknown_items"] = unknown.groupby([items[k].to_numpy() for k in key], sort=False).sum()
    recs = parsed.recommendations.merge(per_list, left_on=key, right_index=True, how="left")
    recs["n_distinct_items"] = recs["n_distinct_items"].fillna(0).astype(np.int64)
    recs["n_unknown_items"] = (recs["n_unknown_items"].fillna(0).astype(np.int64)
                               if "n_unknown_items" in recs else 0)
    log = pd.concat([
        pd.DataFrame({"line": pd.concat([parsed.watches["line"], parsed.ratings["line"],
                                         parsed.recommendations["line"]], ignore_index=True), "reason": None}),
        parsed.rejects[["line", "reason"]],
    ], ignore_index=True).sort_values("line", ignore_index=True, kind="stable")
    watches, ratings = parsed.watches, parsed.ratings
    if catalog is not None:
        watches, ratings = (f.assign(unknown_movie=f["movie_id"].astype(object).where(
            ~f["movie_id"].astype(str).isin(catalog))) for f in (parsed.watches, parsed.ratings))
    else:
        recs = recs.drop(columns="n_unknown_items")
    return {"log": log, "watches": watches, "ratings": ratings, "recommendations": recs}


def table_frames(users: pd.DataFrame | None, movies: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    out = {}
    if users is not None:
        out["users"] = users.assign(age_or_group=users["age"].astype(object).where(users["age"].notna(),
                                                                                  users["age_group"]))
    if movies is not None:
        out["movies"] = movies
    return out


def read_paths(paths: list[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Frames of every file the paths name (event logs, users.csv, movies.csv, MovieLens or
    stream directories), for validation without a database; and the catalogue found."""
    parts: dict[str, list] = {"events": [], "users": [], "movies": []}
    for kind, path in sources.plan(paths):
        if kind == "events":
            try:
                parts["events"].append(ev.parse_file(path))
            except formats.READ_ERRORS as exc:  # a damaged .gz breaks mid-read
                raise formats.InputError.unreadable(path, exc) from None
        elif kind == "users":
            parts["users"].append(formats.read_users_csv(path)[0])
        elif kind == "movies":
            parts["movies"].append(formats.read_movies_csv(path)[0])
        elif kind == "predictions":
            continue  # no suite checks a model's predictions; ingest checks each row of them
        else:
            data = movielens.load(path)
            parts["users"].append(data.users)
            parts["movies"].append(data.movies)
            parts["events"].append(ev.ParsedEvents(ev.frame("watches"), data.ratings, ev.frame("recommendations"),
                                                   ev.frame("items"), ev.frame("rejects"), lines=len(data.ratings)))
    users = pd.concat(parts["users"], ignore_index=True) if parts["users"] else None
    movies = pd.concat(parts["movies"], ignore_index=True) if parts["movies"] else None
    catalog = set(movies["movie_id"].astype(str)) if movies is not None else None
    frames = table_frames(users, movies)
    for i, parsed in enumerate(parts["events"]):
        for name, frame in event_frames(parsed, catalog).items():
            frames[name] = frame if name not in frames else pd.concat([frames[name], frame], ignore_index=True)
    return frames, {"catalog": catalog}


# -- running the suites ----------------------------------------------------------------------

def parameters(config: dict, since=None, until=None, catalog: set[str] | int | None = None) -> dict:
    """Suite parameters; a missing one makes the expectations that need it skip. `catalog` is
    the catalogue's movie ids, or how many there are."""
    v = config["validation"]
    params = {"list_length": v["list_length"], "max_minute": v["max_minute"], "min_year": v["min_year"],
              "max_year": v["max_year"], "now": utc_now()}
    if since is not None and until is not None:
        params["since"], params["until"] = pd.Timestamp(since), pd.Timestamp(until) - pd.Timedelta(1, "ns")
    if catalog is not None:
        params["catalogue"] = catalog if isinstance(catalog, int) else len(catalog)
    return params


_CONTEXT = None


def _gx():
    """Great Expectations with analytics and progress bars off, and one ephemeral context."""
    global _CONTEXT
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if _CONTEXT is None:
        context = gx.get_context(mode="ephemeral")
        context.config.analytics_enabled = False
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT = (context, context.data_sources.add_pandas("recaudit"))
    return gx, _CONTEXT


def run_suites(frames: dict[str, pd.DataFrame], params: dict, directory=None, rows: bool = False,
               quarantine_only: bool = False) -> list[Outcome]:
    """Every suite whose dataset has a frame; `rows` also returns the positions of failing rows,
    and `quarantine_only` keeps the expectations whose failing rows may be quarantined."""
    suites = load_suites(directory)
    outcomes = []
    for dataset in DATASETS:
        if dataset not in frames or dataset not in suites:
            continue
        frame = frames[dataset].reset_index(drop=True)
        runnable, skipped = split(dataset, suites[dataset], params, quarantine_only)
        outcomes += skipped
        for expectation, res in _validated(dataset, frame, runnable, params, rows):
            outcomes.append(_outcome(dataset, expectation, res, frame=frame, params=params, rows=rows))
    return outcomes


def split(dataset: str, suite: dict, params: dict, quarantine_only: bool = False
          ) -> tuple[list[dict], list[Outcome]]:
    """A dataset's suite's expectations that can run with `params`, and the outcomes of those
    that cannot."""
    runnable, skipped = [], []
    for expectation in suite["expectations"]:
        if quarantine_only and not expectation.get("meta", {}).get("quarantine"):
            continue
        missing = sorted(_parameters_in(expectation) - set(params))
        if missing:
            skipped.append(_outcome(dataset, expectation, None, skipped=f"no {', '.join(missing)} to check against"))
        else:
            runnable.append(expectation)
    return runnable, skipped


def _validated(dataset: str, frame: pd.DataFrame, expectations: list[dict], params: dict, rows: bool = False):
    """Great Expectations' result of each expectation on a frame, in the suite's order."""
    if not expectations:
        return []
    gx, (context, source) = _gx()
    suite = gx.ExpectationSuite(name=f"recaudit-{dataset}", expectations=expectations)
    asset_name = f"{dataset}-{id(frame)}"
    batch = source.add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all") \
        .get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, expectation_parameters=params,
                            result_format={"result_format": "COMPLETE" if rows else "SUMMARY"})
    source.delete_asset(asset_name)
    by_name = {res.expectation_config.meta["name"]: res for res in result.results}  # GX reorders results
    return [(e, by_name[e["meta"]["name"]]) for e in expectations]


def _parameters_in(expectation: dict) -> set[str]:
    """The suite parameters and other inputs (`meta.needs`) an expectation cannot run without."""
    used = {v["$PARAMETER"] for v in expectation["kwargs"].values() if isinstance(v, dict) and "$PARAMETER" in v}
    return used | set(expectation.get("meta", {}).get("needs", []))


def _outcome(dataset: str, expectation: dict, res, frame=None, params=None, rows=False, skipped=None) -> Outcome:
    meta = expectation.get("meta", {})
    out = Outcome(dataset=dataset, name=meta.get("name", expectation["type"]), type=expectation["type"],
                  severity=meta.get("severity", "warning"), success=None, skipped=skipped,
                  quarantine=bool(meta.get("quarantine")))
    if res is None:
        return out
    r = res.result or {}
    error = _raised(res.exception_info)
    if error is not None:
        out.success = False
        out.message = f"could not be checked: {error}"
        return out
    out.success = bool(res.success)
    out.unexpected_count = r.get("unexpected_count")
    out.unexpected_percent = r.get("unexpected_percent")
    out.element_count = r.get("element_count")
    index = r.get("unexpected_index_list") if rows else r.get("partial_unexpected_index_list")
    if rows and index is not None:
        out.rows = np.asarray(index, dtype=np.int64)
        if expectation["type"] == "expect_compound_columns_to_be_unique":  # keep each first occurrence
            first = ~frame.duplicated(expectation["kwargs"]["column_list"], keep="first").to_numpy()
            out.rows = out.rows[~first[out.rows]]
    if not out.success:
        out.examples = _examples(r, frame)
        out.message = _message(meta, expectation, r, params or {}) + (
            f"; examples: {', '.join(map(str, out.examples))}" if out.examples else "")
    return out


def _raised(info) -> str | None:
    """The first error GX reports for an expectation (flat, or nested by metric), if any."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        message = (info.get("exception_message") or "an error").strip().splitlines()
        return message[0] if message else "an error"
    for value in info.values():
        found = _raised(value)
        if found is not None:
            return found
    return None


def _examples(result: dict, frame: pd.DataFrame) -> list[str]:
    values = result.get("partial_unexpected_list") or []
    index = result.get("partial_unexpected_index_list") or []
    lines = frame["line"].to_numpy() if frame is not None and "line" in frame else None
    out = []
    for i, value in enumerate(values[:EXAMPLES]):
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = " vs ".join(map(str, value))
        position = index[i] if i < len(index) else None
        if lines is not None and isinstance(position, (int, np.integer)) and 0 <= position < len(lines):
            out.append(f"line {lines[position]}: {value}")
        else:
            out.append(str(value))
    return out


def _percent(value: float | None) -> str:
    if value is None:
        return "?%"
    return f"{value:.1f}%" if value >= 0.1 or value == 0 else f"{value:.2g}%"


def _message(meta: dict, expectation: dict, result: dict, params: dict) -> str:
    template = meta.get("message") or expectation["type"].replace("_", " ")
    values = {**{k: v for k, v in params.items() if not isinstance(v, (list, set))},
              **expectation["kwargs"], "count": f"{result.get('unexpected_count') or 0:,}",
              "percent": _percent(result.get("unexpected_percent")),
              "mostly_percent": _percent(100 * (1 - expectation["kwargs"].get("mostly", 1)))}
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


def row_check(config: dict):
    """What `ingest(check=...)` takes to quarantine, as each piece of a log is parsed, the
    events failing a quarantining expectation of the configured suites."""
    def check(parsed: ev.ParsedEvents, source: str) -> ev.ParsedEvents:
        return quarantine_failing(parsed, source, parameters(config), config["validation"]["suite_dir"])

    return check


def quarantine_failing(parsed: ev.ParsedEvents, source: str, params: dict, directory=None) -> ev.ParsedEvents:
    """Move the rows that fail a quarantining expectation (`meta.quarantine`) to the rejects,
    with the expectation's name as the reason; a recommendation takes its items along."""
    frames = event_frames(parsed, catalog=None)
    del frames["log"]
    reasons: dict[str, dict[int, str]] = {}
    for o in run_suites(frames, params, directory, rows=True, quarantine_only=True):
        if o.success is False and o.rows is not None:
            for position in o.rows.tolist():
                reasons.setdefault(o.dataset, {}).setdefault(position, f"{QUARANTINED_BY}{o.dataset}.{o.name}")
    if not reasons:
        return parsed
    kept, rejects = {}, [parsed.rejects]
    for name in ("watches", "ratings", "recommendations"):
        frame = getattr(parsed, name).reset_index(drop=True)
        failing = reasons.get(name, {})
        if failing:
            positions = np.array(sorted(failing))
            lines = frame["line"].to_numpy()[positions]
            rejects.append(pd.DataFrame({"source": source, "line": lines, "raw": parsed.raw(lines),
                                         "reason": [failing[p] for p in positions]}))
            frame = frame.drop(index=positions).reset_index(drop=True)
        kept[name] = frame
    items = parsed.items[parsed.items["line"].isin(kept["recommendations"]["line"])].reset_index(drop=True)
    all_rejects = pd.concat(rejects, ignore_index=True).sort_values("line", ignore_index=True)
    return ev.ParsedEvents(kept["watches"], kept["ratings"], kept["recommendations"], items,
                           all_rejects.astype(ev.SCHEMAS["rejects"]), lines=parsed.lines, span=parsed.span,
                           text=parsed.text)


# -- results ---------------------------------------------------------------------------------

def result(outcomes: list[Outcome], details: dict | None = None) -> AuditResult:
    """The validation audit's metrics and findings from the outcomes of the suites."""
    metrics, findings = {}, []
    for o in outcomes:
        if o.success is None:
            continue
        base = f"{o.dataset}.{o.name}"
        metrics[f"validation.success.{base}"] = float(o.success)
        if o.unexpected_count is not None:
            metrics[f"validation.unexpected_count.{base}"] = float(o.unexpected_count)
        if o.unexpected_percent is not None:
            metrics[f"validation.unexpected_percent.{base}"] = float(o.unexpected_percent)
        if not o.success:
            findings.append(Finding(audit="validation", key=f"validation.success.{base}", severity=o.severity,
                                    message=o.message, value=o.unexpected_percent, kind="expectation_failed"))
    metrics["validation.failed"] = float(sum(o.success is False for o in outcomes))
    metrics["validation.skipped"] = float(sum(o.success is None for o in outcomes))
    return AuditResult("validation", metrics=metrics, findings=findings,
                       details={"expectations": [o.to_dict() for o in outcomes], **(details or {})})


def validate(events: ev.ParsedEvents, users: pd.DataFrame | None = None, movies: pd.DataFrame | None = None, *,
             since=None, until=None, config: dict | None = None) -> AuditResult:
    """The suites on a notebook's own frames, with the outcomes `recaudit validate` gives for
    the files they were read from.

    Parameters
    ----------
    events : ParsedEvents
        A parsed log (`recaudit.recsys.events.parse_file`), its rejects included: they are
        what the log suite's "every line parses" counts.
    users, movies : DataFrame, optional
        users.csv and movies.csv as `recaudit.recsys.formats` reads them. Without movies there
        is no catalogue, and the expectations that need one are skipped, saying so.
    since, until : timestamp, optional
        The window the events should fall in; without both, the expectations on it are skipped.
    config : dict, optional
        Settings in the shape of recaudit.toml (``{"validation": {"list_length": 10}}``), over
        the defaults.

    Returns
    -------
    AuditResult
        ``validation.*`` metrics per expectation, a finding per failed one, and every
        outcome in ``details["expectations"]``.

    Examples
    --------
    >>> from recaudit.recsys import events
    >>> log = events.parse_bytes(b"2024-01-01T10:00:00,1,GET /rate/x+1=4\\nnot an event\\n")
    >>> result = validate(log)
    >>> [f.key for f in result.findings]
    ['validation.success.log.lines_parse']
    """
    return check(events, users, movies, since, until, configuration.resolve(config))


def check(events: ev.ParsedEvents, users: pd.DataFrame | None, movies: pd.DataFrame | None, since, until,
          config: dict) -> AuditResult:
    """The suites on events and the tables beside them, whichever reads them: `validate` from
    frames, `audit` from the store. Empty tables count as not given."""
    users = users if users is not None and len(users) else None
    movies = movies if movies is not None and len(movies) else None
    catalog = set(movies["movie_id"].astype(str)) if movies is not None else None
    frames = {**event_frames(events, catalog), **table_frames(users, movies)}
    params = parameters(config, since, until, catalog)
    return result(run_suites(frames, params, config["validation"]["suite_dir"]))


def audit(ctx) -> AuditResult:
    """The registered audit: the suites on the run's window of stored data."""
    by_rule = pushdown.quarantined_by_rule(ctx.store, ctx.since, ctx.until)
    if not by_rule and not pushdown.window_rows(ctx.store, ctx.since, ctx.until):
        return AuditResult("validation", status="insufficient_data",
                           details={"note": "no events and no quarantined lines in the window"})
    outcomes, read = stored_outcomes(ctx.store, ctx.since, ctx.until, ctx.config)
    out = result(outcomes, {"read": read})
    # Events `ingest --validate` quarantined failed an expectation, not the log's format.
    for reason, n in by_rule:
        name = reason.removeprefix(QUARANTINED_BY)
        out.metrics[f"validation.quarantined.{name}"] = float(n)
        out.findings.append(Finding("validation", f"validation.quarantined.{name}", "info",
                                    f"{n:,} events failing {name} were quarantined at ingestion", value=float(n),
                                    kind="quarantined_by_expectation"))
    return out


def stored_outcomes(store, since, until, config: dict, push_down: bool = True) -> tuple[list[Outcome], dict]:
    """The suites' outcomes on the stored rows of [since, until), and what was read for each
    dataset.

    Each dataset's suite is pushed down to the store (recaudit.audits.pushdown): Great
    Expectations sees only its suspect rows. One whose suite holds an expectation that cannot be
    pushed down, or every one when `push_down` is false, is read whole, as a notebook's frames
    are checked. Empty users and movies tables count as not given. What was read is, by dataset,
    ``{"rows": ..., "suspects": ...}`` or ``{"whole": why}``.
    """
    suites = load_suites(config["validation"]["suite_dir"])
    n_movies, n_users = store.count("movies"), store.count("users")
    params = parameters(config, since, until, n_movies or None)
    given = {"users": n_users > 0, "movies": n_movies > 0}
    by_dataset: dict[str, list[Outcome]] = {}
    read: dict[str, dict] = {}
    for dataset in DATASETS:
        if dataset not in suites or not given.get(dataset, True):
            continue
        if not push_down:
            read[dataset] = {"whole": "asked to"}
            continue
        runnable, skipped = split(dataset, suites[dataset], params)
        try:
            done, read[dataset] = _pushed_down(store, dataset, runnable, params, since, until, n_movies > 0)
            by_dataset[dataset] = skipped + done
        except pushdown.NotTranslated as why:
            read[dataset] = {"whole": str(why)}
    whole = [d for d, r in read.items() if "whole" in r]
    if whole:
        frames = _whole_frames(store, since, until, whole, n_movies > 0)
        for o in run_suites({d: frames[d] for d in whole}, params, config["validation"]["suite_dir"]):
            by_dataset.setdefault(o.dataset, []).append(o)
    return [o for dataset in DATASETS for o in by_dataset.get(dataset, [])], read


def _pushed_down(store, dataset: str, expectations: list[dict], params: dict, since, until,
                 catalogue: bool) -> tuple[list[Outcome], dict]:
    """The outcomes of a dataset's runnable expectations from its suspect rows and the store's
    counts, and how many rows there were and were suspect; NotTranslated when one of them
    cannot be pushed down."""
    plan = pushdown.plan(dataset, expectations, params, since, until, catalogue)
    frame, rows, clean = pushdown.fetch(store, plan)
    outcomes = []
    for expectation, res in _validated(dataset, frame, expectations, params):
        name = expectation["meta"]["name"]
        if _raised(res.exception_info) is None:
            if name in clean:
                pushdown.complete(res, plan.share_of[name], clean[name],
                                  pushdown.resolved(expectation["kwargs"].get("mostly", 1.0), params))
            elif (res.result or {}).get("element_count") is not None:
                # A column check that looked at values (a column of Python objects): only the
                # whole frame tells.
                raise pushdown.NotTranslated(f"{expectation['type']} looks at every value of its column")
        outcomes.append(_outcome(dataset, expectation, res, frame=frame, params=params))
    return outcomes, {"rows": rows, "suspects": len(frame)}


# The stored tables the frame of each dataset is made from (users and movies are their own).
_MADE_OF = {"watches": {"watches"}, "ratings": {"ratings"}, "recommendations": {"recommendations", "items"},
            "log": {"watches", "ratings", "recommendations", "quarantine"}}


def _whole_frames(store, since, until, datasets: list[str], with_movies: bool) -> dict[str, pd.DataFrame]:
    """The frames of `datasets` for [since, until), read whole from the store: only the tables
    they are made from (a team's check of users does not read a day of watches)."""
    needed = set(datasets).union(*(_MADE_OF.get(d, set()) for d in datasets))
    if with_movies and needed & {"watches", "ratings", "recommendations"}:
        needed.add("movies")  # the catalogue

    def read(name: str) -> pd.DataFrame:
        return store.read(name, since, until) if name in needed else ev.frame(name)

    rejects = ev.frame("rejects")
    if "quarantine" in needed:
        quarantined = store.quarantine_of_window(since, until)
        rejects = quarantined[~quarantined["reason"].str.startswith(QUARANTINED_BY)]
    parsed = ev.ParsedEvents(read("watches"), read("ratings"), read("recommendations"), read("items"), rejects,
                             lines=0)
    movies = store.read("movies") if "movies" in needed else None
    catalog = set(movies["movie_id"].astype(str)) if with_movies and movies is not None else None
    return {**event_frames(parsed, catalog),
            **table_frames(store.read("users") if "users" in needed else None, movies)}
