"""Where the drift signals come from: one window's events, as frames or in the store.

The drift audit asks every window the same few questions (how often each rating was given,
how many minutes each viewer watched each movie per day, who was active on which day, ...).
`FrameSource` answers them from frames shaped like the log parser's, for data that never went
into a database; `StoreSource` answers them with SQLAlchemy Core selects, so that each database
does the grouping and only the counts travel (a day of 8 M events becomes a few hundred thousand
rows). Both give the same numbers for the same events: movie ids come back as text whichever way
they were stored, and days are counted since 1970-01-01 in UTC, so that per-day aggregates do
not depend on a window's length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, select, union

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
    def ratings_per_user_day(self) -> pd.Series:
        """The number of ratings of each user on each day they rated."""

    @abstractmethod
    def watch_sessions(self) -> pd.DataFrame:
        """(user_id, day, movie_id, minutes): minutes watched per user, day and movie."""

    @abstractmethod
    def active_user_days(self) -> pd.DataFrame:
        """(user_id, day, age, age_group, gender, occupation): every user active (any event) on
        a day, once per day, with the user's attributes (missing for users not known)."""

    @abstractmethod
    def attribute_names(self) -> list[str]:
        """The attributes users have (beyond USER_COLUMNS)."""

    @abstractmethod
    def attribute_counts(self, name: str) -> pd.Series:
        """Active user-days (as `active_user_days` counts them) per value of a user attribute,
        indexed by the value (None for users without it)."""

    @abstractmethod
    def recommended_counts(self) -> pd.Series:
        """How often each movie was recommended by the window's requests, by movie id."""

    @abstractmethod
    def genres(self) -> pd.Series:
        """Each known movie's genres ("Drama|Horror"), by movie id."""

    @abstractmethod
    def recommended_pairs(self) -> pd.DataFrame:
        """(user_id, movie_id): every movie recommended to a user by the window's requests."""

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

    def ratings_per_user_day(self):
        return self.ratings.groupby([self.ratings["user_id"], activity.days_since_epoch(self.ratings["time"])]).size()

    def watch_sessions(self):
        return activity.sessions_of(self.watches)

    def active_user_days(self):
        days = pd.concat([pd.DataFrame({"user_id": f["user_id"].to_numpy(dtype=np.int64),
                                        "day": activity.days_since_epoch(f["time"])})
                          for f in (self.watches, self.ratings, self.recommendations)]).drop_duplicates()
        return days.merge(self.users[USER_COLUMNS], on="user_id", how="left").sort_values(["user_id", "day"],
                                                                                         ignore_index=True)

    def attribute_names(self):
        return attribute_columns(self.users, "users")

    def attribute_counts(self, name):
        return self.active[["user_id"]].merge(self.users[["user_id", name]], on="user_id", how="left")[name] \
            .value_counts(dropna=False)

    def recommended_counts(self):
        counts = activity.listed_items(self.recommendations, self.items)["movie_id"].astype(str).value_counts()
        return counts.sort_index()

    def genres(self):
        if self.movies is None:
            return pd.Series(dtype=object)
        return pd.Series(self.movies["genres"].to_numpy(), index=self.movies["movie_id"].astype(str).to_numpy())

    def recommended_pairs(self):
        return activity.listed_items(self.recommendations, self.items)


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

    def ratings_per_user_day(self):
        day = day_of(ratings.c.time, self.store.dialect).label("day")
        query = (select(ratings.c.user_id, day, func.count().label("n"))
                 .where(*between(ratings.c.time, self.since, self.until)).group_by(ratings.c.user_id, day))
        return self.store.frame(query, fixed=True)["n"]

    def watch_sessions(self):
        return activity.watch_sessions(self.store, self.since, self.until)

    def _active(self):
        """(user_id, day) of every user active on a day of the window, once per day."""
        def days(table):
            return select(table.c.user_id, day_of(table.c.time, self.store.dialect).label("day")).where(
                *between(table.c.time, self.since, self.until))

        hours = whole_hours(self.since, self.until)
        watched = (select(watch_hours.c.user_id, (watch_hours.c.hour // 24).label("day"))
                   .where(watch_hours.c.hour >= hours[0], watch_hours.c.hour < hours[1])
                   if hours is not None else days(watches))
        return union(days(ratings), days(recommendations), watched).subquery()  # union: distinct

    def active_user_days(self):
        active = self._active()
        query = (select(active.c.user_id, active.c.day, *(users.c[c] for c in USER_COLUMNS[1:]))
                 .select_from(active.outerjoin(users, users.c.user_id == active.c.user_id))
                 .order_by(active.c.user_id, active.c.day))
        return self.store.frame(query).astype({"user_id": np.int64, "day": np.int64, "age_group": object,
                                               "gender": object, "occupation": object})

    def attribute_names(self):
        return self.store.attribute_names("users")

    def attribute_counts(self, name):
        active, a = self._active(), user_attributes.c
        query = (select(a.value, func.count().label("n"))
                 .select_from(active.outerjoin(user_attributes, and_(a.user_id == active.c.user_id, a.name == name)))
                 .group_by(a.value))
        df = self.store.frame(query)
        return pd.Series(df["n"].to_numpy(dtype=np.int64), index=pd.Index(df["value"].to_numpy(dtype=object)))

    def recommended_counts(self):
        counts = activity.recommended_counts(self.store, self.since, self.until)
        return pd.Series(counts["n"].to_numpy(), index=counts["movie_id"].astype(str).to_numpy())

    def genres(self):
        query = select(movie_keys.c.movie_id, movies.c.genres).join(movie_keys, movie_keys.c.key == movies.c.movie_key)
        df = self.store.frame(query)
        return pd.Series(df["genres"].to_numpy(), index=df["movie_id"].astype(str).to_numpy())

    def recommended_pairs(self):
        query = (select(recommendations.c.user_id, recommendation_items.c.movie_key)
                 .select_from(items_of_requests())
                 .where(*between(recommendations.c.time, self.since, self.until)))
        return self.store.with_movie_ids(self.store.frame(query, fixed=True))
