"""Aggregates of stored activity that several audits read.

Feedback and drift both compare what was recommended with what was watched and rated; the
per-movie and per-user-day counts they read are defined here once, as SQLAlchemy Core selects
over the store's tables, so that each database does the grouping and only the counts travel.
Movie keys come back as a categorical `movie_id`, as the parser gives them.

`Stored` and `Frames` answer the same questions, from the store or from frames shaped like the
parser's (a notebook's own data): an audit written against either computes the same metrics
from both, so the CLI, the scheduler and a notebook share one implementation. `given_frames`,
`require_columns` and `window` take a notebook's frames and window in, the same way for each
audit of frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Date, cast, func, literal_column, select, type_coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from recaudit.audits.store import (
    SPAN_SECONDS,
    between,
    ratings,
    recommendation_items,
    recommendations,
    users,
    watch_hours,
    watches,
    whole_hours,
)

_DAY_US = 86_400_000_000


def watch_sessions(store, since, until) -> pd.DataFrame:
    """(user_id, day, movie_id, minutes): minutes watched per user, day and movie in the window.

    A window of whole hours is summed from the hourly rollup (a few rows per viewer and hour
    instead of one per minute watched); any other window counts the watches themselves.
    """
    hours = whole_hours(since, until)
    if hours is not None:
        user, movie, hour = watch_hours.c.user_id, watch_hours.c.movie_key, watch_hours.c.hour
        day = (hour // 24).label("day")
        query = select(user, day, movie, func.sum(watch_hours.c.minutes).label("minutes")).where(
            hour >= hours[0], hour < hours[1])
    else:
        user, movie = watches.c.user_id, watches.c.movie_key
        day = day_of(watches.c.time).label("day")
        query = select(user, day, movie, func.count().label("minutes")).where(*between(watches.c.time, since, until))
    df = store.frame(query.group_by(user, day, movie).order_by(user, day, movie), fixed=True)
    return store.with_movie_ids(df.astype({"day": np.int64, "minutes": np.int64}))


def recommended_counts(store, since, until) -> pd.DataFrame:
    """(movie_id, n): how often each movie was recommended by the requests of the window."""
    key = recommendation_items.c.movie_key
    query = (select(key, func.count().label("n")).select_from(items_of_requests())
             .where(*between(recommendations.c.time, since, until)).group_by(key).order_by(key))
    return store.with_movie_ids(store.frame(query, fixed=True))


def rated_counts(store, since, until) -> pd.DataFrame:
    """(movie_id, n): how often each movie was rated in the window."""
    key = ratings.c.movie_key
    query = (select(key, func.count().label("n")).where(*between(ratings.c.time, since, until))
             .group_by(key).order_by(key))
    return store.with_movie_ids(store.frame(query, fixed=True))


def recommended_counts_by_user(store, since, until) -> pd.DataFrame:
    """(age, age_group, gender, movie_id, n): recommendations of each movie in the window by
    the attributes of the users they were made to (missing for users not in the users table)."""
    columns = [users.c.age, users.c.age_group, users.c.gender, recommendation_items.c.movie_key]
    query = (select(*columns, func.count().label("n"))
             .select_from(items_of_requests().outerjoin(users, users.c.user_id == recommendations.c.user_id))
             .where(*between(recommendations.c.time, since, until)).group_by(*columns).order_by(*columns))
    df = store.frame(query).astype({"age_group": object, "gender": object, "n": np.int64})
    return store.with_movie_ids(df.astype({"movie_key": np.int64}))


def quarter_spans(watches: pd.DataFrame, movie: str = "movie_id") -> pd.DataFrame:
    """(user_id, quarter, <movie>, first_at, last_at): the first and last watch of each user and
    movie per quarter hour since 1970, the rows `watch_spans` keeps (ingestion adds to them)."""
    quarter = watches["time"].to_numpy().astype("datetime64[s]").astype(np.int64) // SPAN_SECONDS
    return (watches.assign(quarter=quarter).groupby(["user_id", "quarter", movie], observed=True)["time"]
            .agg(first_at="min", last_at="max").reset_index())


def items_of_requests():
    """The recommended movies joined to the request that listed them (for its user and time)."""
    return recommendation_items.join(recommendations, (recommendations.c.source_id == recommendation_items.c.source_id)
                                     & (recommendations.c.line == recommendation_items.c.line))


class day_of(FunctionElement):
    """The day since 1970-01-01 of a stored time, so that per-day aggregates do not depend on the
    window's length. Each engine says it its own way: SQLite stores microseconds, PostgreSQL and
    DuckDB a timestamp; Spark has no date arithmetic on `-`."""

    type = BigInteger()
    inherit_cache = True
    name = "day_of"


@compiles(day_of, "sqlite")
def _day_of_sqlite(element, compiler, **kw):
    time, = element.clauses
    return compiler.process(type_coerce(time, BigInteger) // _DAY_US, **kw)


@compiles(day_of)
def _day_of_timestamp(element, compiler, **kw):
    time, = element.clauses
    return compiler.process(cast(func.date_trunc("day", time), Date) - literal_column("DATE '1970-01-01'", Date),
                            **kw)


@compiles(day_of, "spark")
def _day_of_spark(element, compiler, **kw):
    time, = element.clauses
    return compiler.process(func.datediff(cast(time, Date), literal_column("DATE '1970-01-01'", Date)), **kw)


@dataclass
class Stored:
    """The aggregates of the store's activity in a window."""

    store: object

    def watch_sessions(self, since, until) -> pd.DataFrame:
        return watch_sessions(self.store, since, until)

    def recommended_counts(self, since, until) -> pd.DataFrame:
        return recommended_counts(self.store, since, until)

    def rated_counts(self, since, until) -> pd.DataFrame:
        return rated_counts(self.store, since, until)

    def recommended_counts_by_user(self, since, until) -> pd.DataFrame:
        return recommended_counts_by_user(self.store, since, until)


@dataclass
class Frames:
    """The same aggregates from frames shaped like the parser's (`recaudit.recsys.events`):
    requests and their items joined on (source_id, line), or on line alone for one parsed log;
    `users` as users.csv reads (without it, every user's attributes are missing)."""

    recommendations: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame
    watches: pd.DataFrame
    users: pd.DataFrame | None = None

    def watch_sessions(self, since, until) -> pd.DataFrame:
        return sessions_of(within(self.watches, since, until))

    def recommended_counts(self, since, until) -> pd.DataFrame:
        items = listed_items(within(self.recommendations, since, until), self.items)
        return items.groupby("movie_id", observed=True).size().rename("n").reset_index()

    def rated_counts(self, since, until) -> pd.DataFrame:
        ratings = within(self.ratings, since, until)
        return ratings.groupby("movie_id", observed=True).size().rename("n").reset_index()

    def recommended_counts_by_user(self, since, until) -> pd.DataFrame:
        items = listed_items(within(self.recommendations, since, until), self.items)
        attributes = ["age", "age_group", "gender"]
        users = (self.users if self.users is not None else pd.DataFrame(columns=["user_id", *attributes]))
        users = users.reindex(columns=["user_id", *attributes]).drop_duplicates("user_id", keep="last")
        items = items.merge(users.astype({"user_id": np.int64}), on="user_id", how="left")
        counts = items.groupby([*attributes, "movie_id"], observed=True, dropna=False).size().rename("n")
        return counts.reset_index().astype({"age": "Int64", "age_group": object, "gender": object, "n": np.int64})


def days_since_epoch(times: pd.Series) -> np.ndarray:
    """The day since 1970-01-01 of each time, as `day_of` gives it in the store."""
    return times.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)


def sessions_of(watches: pd.DataFrame) -> pd.DataFrame:
    """(user_id, day, movie_id, minutes): the minutes watched per user, day and movie, as
    `watch_sessions` reads them from the store."""
    day = pd.Series(days_since_epoch(watches["time"]), index=watches.index, name="day")
    sessions = watches.groupby([watches["user_id"], day, watches["movie_id"]], observed=True, sort=True).size()
    return sessions.rename("minutes").reset_index().astype({"user_id": np.int64, "day": np.int64,
                                                             "minutes": np.int64})


def listed_items(recommendations: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """(user_id, movie_id) of every movie listed by one of these requests."""
    key = request_key(recommendations)
    return items[[*key, "movie_id"]].merge(recommendations[[*key, "user_id"]], on=key)[["user_id", "movie_id"]]


def window(since, until, frames: Iterable[pd.DataFrame]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The window [since, until) an audit of frames reads: each end as given, or, when one is
    not, filled from the whole hours holding every event of the frames (from the hour of the
    first to the top of the hour after the last, like the window `recaudit audit` picks).

    None when an end is to be filled and the frames hold no event: there is no window to
    audit. An end that is not a timestamp, or a window that ends before it starts, is refused:
    it would otherwise select nothing and pass for a quiet service.
    """
    since, until = _timestamp("since", since), _timestamp("until", until)
    filled = [name for name, end in (("since", since), ("until", until)) if end is None]
    if filled:
        times = [f["time"] for f in frames if len(f)]
        if not times:
            return None
        first, last = min(t.min() for t in times), max(t.max() for t in times)
        since = first.floor("h") if since is None else since
        until = last.floor("h") + pd.Timedelta(hours=1) if until is None else until
    if since >= until:
        origin = f" ({' and '.join(filled)} from the frames' events)" if filled else ""
        raise ValueError(f"since ({since}) must be before until ({until}){origin}")
    return since, until


def _timestamp(name: str, value) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        parsed = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a timestamp: {value!r} does not parse as one ({exc})") from None
    if pd.isna(parsed):
        raise ValueError(f"{name} must be a timestamp, not {value!r}")
    return parsed


def event_frames(events, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The named frames of `events`: what `read_log` returns (ParsedEvents), or a mapping or
    namespace of frames shaped alike (such as ``Store.read``'s)."""
    found = {name: events.get(name) if isinstance(events, Mapping) else getattr(events, name, None)
             for name in names}
    missing = [name for name, frame in found.items() if frame is None]
    if missing:
        raise ValueError(f"the events have no {', '.join(map(repr, missing))} frame (needed: {', '.join(names)}): "
                         "pass what recaudit.read_log returns, or a mapping of those frames")
    return _data_frames(found)


def given_frames(audit: str, first, others: Mapping[str, pd.DataFrame | None]) -> dict[str, pd.DataFrame]:
    """The frames of an audit called either with separate frames (recommendations first, then
    `others` by name) or with what `read_log` returns (or a mapping of its frames) alone."""
    if isinstance(first, pd.DataFrame):
        missing = [name for name, frame in others.items() if frame is None]
        if missing:
            raise ValueError(f"{audit}() was given a recommendations frame without {', '.join(missing)}: pass "
                             "every frame, or what recaudit.read_log returns alone")
        return _data_frames({"recommendations": first, **others})
    extra = [name for name, frame in others.items() if frame is not None]
    if extra:
        raise ValueError(f"{audit}() takes either separate frames or what recaudit.read_log returns, not both: "
                         f"{type(first).__name__} was given with {', '.join(extra)}")
    return event_frames(first, ["recommendations", *others])


def _data_frames(frames: dict) -> dict[str, pd.DataFrame]:
    for name, frame in frames.items():
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a DataFrame, not {type(frame).__name__}")
    return frames


def require_columns(frames: Mapping[str, pd.DataFrame | None], columns: Mapping[str, Iterable[str]]) -> None:
    """Refuse, before any work, a frame without the columns an audit reads from it: by name,
    rather than as a KeyError from deep inside a merge. An optional frame not given (None)
    has nothing to check."""
    for name, needed in columns.items():
        frame = frames[name]
        missing = [] if frame is None else [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} has no column {', '.join(map(repr, missing))} "
                             f"(it has {', '.join(map(repr, frame.columns)) or 'none'})")


def request_key(requests: pd.DataFrame) -> list[str]:
    """What identifies a request and its items: (source_id, line) in the store, the line alone
    in one parsed log."""
    return ["source_id", "line"] if "source_id" in requests else ["line"]


def within(frame: pd.DataFrame, since, until) -> pd.DataFrame:
    """The rows of a frame of events in [since, until), as `between` selects them in the store."""
    time = frame["time"]
    return frame[(time >= pd.Timestamp(since)) & (time < pd.Timestamp(until))]
