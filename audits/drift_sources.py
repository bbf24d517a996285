"""Where the drift signals come from: one window's events, as frames or in the store.

The drift audit asks every window the same few questions (how often each rating was given,
how many minutes each viewer watched each movie per day, who was active on which day, ...).
`FrameSource` answers them from frames shaped like the log parser's, for data that never went
into a database; `StoreSource` answers them with SQLAlchemy Core selects, so that each database
does the grouping and only the counts travel (a day of 8 M events becomes a few hundred thousand
rows). Both give the same numbers for the same events: movie ids come back as text whichever way
they were stored, and days are counted since 1970-01-01 in UTC, so that per-day aggregates do
not depend on a window's length.

Every answer about users comes with the user it belongs to (a `user_id` column), because the
drift audit's noise floor permutes whole users (see `recaudit.audits.drift.compare`). When a
window holds more values than the audit compares, the users are sampled, not their values:
`sample_users` keeps the first users in the order of a seeded hash of their id (`user_keys`),
as many as fit in the bound. The hash is integer arithmetic that SQLite, PostgreSQL and numpy
compute alike, so the store reads only the sampled users' rows of the largest aggregates
(`StoreSource._sampled`) and still keeps exactly the users that frames keep.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, and_, cast, func, select, union

from recaudit.audits import activity
from recaudit.audits.activity import day_of, items_of_requests
from recaudit.audits.schema import user_attributes
from recaudit.audits.store import (
    between,
    movie_keys,
    movies,
    ratings,
    recommendation_items,
    recommendations,
    users,
    watch_hours,
    watches,
    whole_hours,
)
from recaudit.recsys.events import STATUS_OK
from recaudit.recsys.formats import attribute_columns

USER_COLUMNS = ["user_id", "age", "age_group", "gender", "occupation"]  # as Store.read("users") gives them

# The hash of a user id that orders users for sampling: a multiply-add, then two rounds of
# squaring (which mixes where a multiply-add alone would keep neighbouring ids evenly spaced),
# each modulo the prime 2^31 - 1. Every product stays below 2^62, so a 64-bit integer in SQLite,
# PostgreSQL or numpy never overflows, and `%` is only ever taken of a non-negative number.
PRIME = 2**31 - 1
MULTIPLIER = 916_132_832  # below 2^30: (id mod PRIME + PRIME) * MULTIPLIER < 2^62


def _salts(seed: int) -> list[int]:
    return np.random.default_rng([seed, 0x5EED]).integers(0, PRIME, 3).tolist()


def user_keys(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """Each user's place in the seeded order of `sample_users` (a hash of the id below PRIME)."""
    a, b, c = _salts(seed)
    x = np.fmod(np.asarray(user_ids, dtype=np.int64), PRIME) + PRIME  # as SQL's %: the dividend's sign
    h = (x * MULTIPLIER + a) % PRIME
    h = (h * h + b) % PRIME
    return (h * h + c) % PRIME


def user_key_sql(user_id, seed: int):
    """`user_keys` as a SQL expression of a user id column."""
    a, b, c = _salts(seed)
    h = ((cast(user_id, BigInteger) % PRIME + PRIME) * MULTIPLIER + a) % PRIME  # 64-bit, whatever the column
    h = (h * h + b) % PRIME
    return (h * h + c) % PRIME


def sample_users(counts: pd.DataFrame, limit: int, seed: int, unit: str = "user_id") -> pd.DataFrame:
    """The rows of the users a seeded sample of at most `limit` values keeps: every row when the
    counts (`n`) add up to no more, else the users taken in `user_keys` order (ties by id) while
    their values fit, and at least the first. A user's values all go, or none do.

    The rows' ``attrs["population"]`` is the number of values sampled from (the sum of `n`).
    """
    totals = counts.groupby(unit)["n"].sum()
    kept = counts
    if totals.sum() > limit:
        ids = totals.index.to_numpy(dtype=np.int64)
        order = np.lexsort((ids, user_keys(ids, seed)))
        fits = np.cumsum(totals.to_numpy()[order]) <= limit
        fits[0] = True
        kept = counts[counts[unit].isin(ids[order[fits]])].copy()
    kept.attrs["population"] = int(totals.sum())
    return kept


class SignalSource(ABC):
    """One window's events, as the drift signals read them.

    Sessions and active user-days are read once per window: several signals share them.
    `span` is the window, (since, until), for the audit's details.
    """

    span: tuple[pd.Timestamp | None, pd.Timestamp | None]

    @abstractmethod
    def value_counts(self, name: str, column: str, successful: bool = False) -> pd.Series:
        """How often each value of a column of `name` (ratings or recommendations) occurs,
        indexed by the value; `successful` counts only requests answered with status 200."""

    @abstractmethod
    def ratings_by_user(self, limit: int, seed: int) -> pd.DataFrame:
        """(user_id, rating, n): how often each user gave each rating, for the users that
        `sample_users(limit, seed)` keeps (``attrs["population"]``: all the window's ratings)."""

    @abstractmethod
    def ratings_per_user_day(self) -> pd.DataFrame:
        """(user_id, day, n): the number of ratings of each user on each day they rated."""

    @abstractmethod
    def watch_sessions(self) -> pd.DataFrame:
        """(user_id, day, movie_id, minutes): minutes watched per user, day and movie."""

    @abstractmethod
    def active_user_days(self) -> pd.DataFrame:
        """(user_id, days, age, age_group, gender, occupation): every user active (any event) in
        the window, once, with the number of days they were and their attributes (missing for
        users not known)."""

    @abstractmethod
    def attribute_names(self) -> list[str]:
        """The attributes users have (beyond USER_COLUMNS)."""

    @abstractmethod
    def attribute_counts(self, name: str) -> pd.DataFrame:
        """(user_id, value, n): each active user's active days (as `active_user_days` counts
        them) with their value of a user attribute (None for users without it)."""

    @abstractmethod
    def recommended_by_user(self, limit: int, seed: int) -> pd.DataFrame:
        """(user_id, movie_id, n): how often the window's requests recommended each movie to
        each user, for the users that `sample_users(limit, seed)` keeps (``attrs["population"]``:
        all the window's recommended movies)."""

    @abstractmethod
    def genres(self) -> pd.Series:
        """Each known movie's genres ("Drama|Horror"), by movie id."""

    @cached_property
    def sessions(self) -> pd.DataFrame:
        return self.watch_sessions()

    @cached_property
    def active(self) -> pd.DataFrame:
        return self.active_user_days()

    def watchers_per_movie(self, half: int | None = None) -> pd.Series:
        """Sessions (user-days) per movie id; `half` keeps one of two fixed halves of the users."""
        s = self.sessions
        if half is not None:
            s = s[_half(s["user_id"]) == half]
        counts = s.groupby("movie_id", observed=True).size()
        counts.index = counts.index.astype(str)
        return counts

    def watched_by_user(self, half: int | None = None) -> pd.DataFrame:
        """(user_id, movie_id, n): sessions (user-days) per user and movie; `half` as above."""
        s = self.sessions
        if half is not None:
            s = s[_half(s["user_id"]) == half]
        return s.groupby(["user_id", "movie_id"], observed=True).size().rename("n").reset_index()


def _half(user_ids: pd.Series) -> np.ndarray:
    """A fixed split of users in two (by a hash of the id)."""
    return ((user_ids.to_numpy(dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(int)


class FrameSource(SignalSource):
    """A window given as frames: `events` has watches, ratings, recommendations and items (the
    parser's ParsedEvents, or a mapping or namespace of frames shaped alike, such as
    Store.read's); `users` and `movies` are shaped as Store.read gives them.

    The users' columns beyond USER_COLUMNS are their attributes. Every event in the frames is
    in the window, whose span is its first and last event. An
    item belongs to the window when its request does: items are matched to requests by
    (source_id, line) when both frames have a source_id, else by line.
    """

    def __init__(self, events, users: pd.DataFrame | None = None, movies: pd.DataFrame | None = None):
        frames = activity.event_frames(events, ["watches", "ratings", "recommendations", "items"])
        activity.require_columns({**frames, "users": users, "movies": movies}, {
            "watches": ("time", "user_id", "movie_id"), "ratings": ("time", "user_id", "rating"),
            "recommendations": ("line", "time", "user_id", "status", "latency_ms"),
            "items": (*activity.request_key(frames["recommendations"]), "movie_id"),
            "users": USER_COLUMNS, "movies": ("movie_id", "genres")})
        self.watches, self.ratings = frames["watches"], frames["ratings"]
        self.recommendations, self.items = frames["recommendations"], frames["items"]
        self.users = pd.DataFrame(columns=USER_COLUMNS) if users is None else users
        self.movies = movies
        times = pd.concat([f["time"] for f in (self.watches, self.ratings, self.recommendations)])
        self.span = (times.min(), times.max()) if len(times) else (None, None)

    def _frame(self, name: str) -> pd.DataFrame:
        return {"ratings": self.ratings, "recommendations": self.recommendations}[name]

    def value_counts(self, name, column, successful=False):
        df = self._frame(name)
        if successful:
            df = df[df["status"] == STATUS_OK]
        return df[column].value_counts().sort_index()

    def ratings_by_user(self, limit, seed):
        counts = self.ratings.groupby(["user_id", "rating"]).size().rename("n").reset_index()
        return sample_users(counts.astype({"user_id": np.int64, "n": np.int64}), limit, seed)

    def ratings_per_user_day(self):
        day = pd.Series(activity.days_since_epoch(self.ratings["time"]), index=self.ratings.index, name="day")
        return self.ratings.groupby([self.ratings["user_id"], day]).size().rename("n").reset_index()

    def watch_sessions(self):
        return activity.sessions_of(self.watches)

    def active_user_days(self):
        days = pd.concat([pd.DataFrame({"user_id": f["user_id"].to_numpy(dtype=np.int64),
                                        "day": activity.days_since_epoch(f["time"])})
                          for f in (self.watches, self.ratings, self.recommendations)]).drop_duplicates()
        per_user = days.groupby("user_id").size().rename("days").reset_index()
        return per_user.merge(self.users[USER_COLUMNS], on="user_id", how="left")

    def attribute_names(self):
        return attribute_columns(self.users, "users")

    def attribute_counts(self, name):
        days = self.active[["user_id", "days"]].rename(columns={"days": "n"})
        values = self.users[["user_id", name]].rename(columns={name: "value"}).astype({"user_id": np.int64})
        return days.merge(values, on="user_id", how="left")[["user_id", "value", "n"]]

    def recommended_by_user(self, limit, seed):
        items = activity.listed_items(self.recommendations, self.items)
        counts = items.groupby(["user_id", "movie_id"], observed=True).size().rename("n").reset_index()
        return sample_users(counts.astype({"user_id": np.int64, "n": np.int64}), limit, seed)

    def genres(self):
        if self.movies is None:
            return pd.Series(dtype=object)
        return pd.Series(self.movies["genres"].to_numpy(), index=self.movies["movie_id"].astype(str).to_numpy())


class StoreSource(SignalSource):
    """The window [since, until) of a store, aggregated in its database. A window of whole
    hours reads watches from the hourly rollup, any other window the watches themselves."""

    def __init__(self, store, since, until):
        self.store, self.since, self.until = store, pd.Timestamp(since), pd.Timestamp(until)
        self.span = (self.since, self.until)

    def value_counts(self, name, column, successful=False):
        table = {"ratings": ratings, "recommendations": recommendations}[name]
        value = table.c[column]
        only = [table.c.status == STATUS_OK] if successful else []
        query = (select(value.label("value"), func.count().label("n"))
                 .where(*between(table.c.time, self.since, self.until), *only).group_by(value).order_by(value))
        df = self.store.frame(query, fixed=True)
        return pd.Series(df["n"].to_numpy(dtype=np.int64), index=df["value"].to_numpy(dtype=np.int64))

    def _sampled(self, user, columns: list, source, where: list, limit: int, seed: int) -> pd.DataFrame:
        """(user_id, *columns, n): the rows of `source` matching `where`, counted by user and
        `columns`, for the users `sample_users(limit, seed)` keeps.

        A window with more than `limit` rows is read for a share of its users: those whose key
        (`user_key_sql`) is below a bound, expected to hold twice the sample. The users the
        sample keeps come first in key order, so they are all among them once those users hold
        `limit` values; the share doubles until they do. Only the sampled users' rows travel.
        """
        total = self.store.frame(select(func.count().label("n")).select_from(source).where(*where))["n"].iloc[0]
        share = 2 * limit / total if total > limit else 1.0
        keys = ["user_id", *(c.name for c in columns)]
        while True:
            some = [] if share >= 1 else [user_key_sql(user, seed) < math.ceil(share * PRIME)]
            query = (select(user.label("user_id"), *columns, func.count().label("n")).select_from(source)
                     .where(*where, *some).group_by(user, *columns).order_by(user, *columns))
            counts = self.store.frame(query, fixed=True)
            if share >= 1 or counts["n"].sum() >= limit:
                kept = sample_users(counts, limit, seed)[keys + ["n"]].reset_index(drop=True)
                kept.attrs["population"] = int(total)  # the window's, not only the users read
                return kept
            share *= 2

    def ratings_by_user(self, limit, seed):
        return self._sampled(ratings.c.user_id, [ratings.c.rating], ratings,
                             between(ratings.c.time, self.since, self.until), limit, seed)

    def ratings_per_user_day(self):
        day = day_of(ratings.c.time).label("day")
        query = (select(ratings.c.user_id, day, func.count().label("n"))
                 .where(*between(ratings.c.time, self.since, self.until)).group_by(ratings.c.user_id, day))
        return self.store.frame(query, fixed=True)

    def watch_sessions(self):
        return activity.watch_sessions(self.store, self.since, self.until)

    def _active(self):
        """(user_id, day) of every user active on a day of the window, once per day."""
        def days(table):
            return select(table.c.user_id, day_of(table.c.time).label("day")).where(
                *between(table.c.time, self.since, self.until))

        hours = whole_hours(self.since, self.until)
        watched = (select(watch_hours.c.user_id, (watch_hours.c.hour // 24).label("day"))
                   .where(watch_hours.c.hour >= hours[0], watch_hours.c.hour < hours[1])
                   if hours is not None else days(watches))
        return union(days(ratings), days(recommendations), watched).subquery()  # union: distinct

    def active_user_days(self):
        active, known = self._active(), [users.c[c] for c in USER_COLUMNS[1:]]
        # Counted per user in the database: a window of days comes back as one row per user.
        query = (select(active.c.user_id, func.count().label("days"), *known)
                 .select_from(active.outerjoin(users, users.c.user_id == active.c.user_id))
                 .group_by(active.c.user_id, *known).order_by(active.c.user_id))
        return self.store.frame(query).astype({"user_id": np.int64, "days": np.int64, "age_group": object,
                                               "gender": object, "occupation": object})

    def attribute_names(self):
        return self.store.attribute_names("users")

    def attribute_counts(self, name):
        active, a = self._active(), user_attributes.c
        query = (select(active.c.user_id, a.value, func.count().label("n"))
                 .select_from(active.outerjoin(user_attributes, and_(a.user_id == active.c.user_id, a.name == name)))
                 .group_by(active.c.user_id, a.value))
        return self.store.frame(query).astype({"user_id": np.int64, "value": object, "n": np.int64})

    def recommended_by_user(self, limit, seed):
        counts = self._sampled(recommendations.c.user_id, [recommendation_items.c.movie_key], items_of_requests(),
                               between(recommendations.c.time, self.since, self.until), limit, seed)
        return self.store.with_movie_ids(counts)

    def genres(self):
        query = select(movie_keys.c.movie_id, movies.c.genres).join(movie_keys, movie_keys.c.key == movies.c.movie_key)
        df = self.store.frame(query)
        return pd.Series(df["genres"].to_numpy(), index=df["movie_id"].astype(str).to_numpy())

