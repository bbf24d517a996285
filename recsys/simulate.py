"""A simulator of the streaming service: users, a catalogue, and a log of days of activity.

It exists so that the whole loop runs on a laptop and so that every detector can be tested
against a known answer. Users have a latent taste; what they watch, how long, and how they rate
follow from it, so a matrix-factorisation model learns something real. Each day active users
open the app, get 20 movies from the service's recommender policy, maybe watch one of them (or
something else), one log line per minute, and sometimes rate it.

Faults (`inject`) start on the middle day and change exactly what they name. Each takes a
strength s (`fairness:1.1`), so that a detector's power can be measured against the size of the
fault; FAULTS holds each one's default (the fault as it always was) and range:
- corrupt: malformed lines of every kind, out-of-range ratings, short and duplicate
  recommendation lists, unknown movie ids; s is the share of lines corrupted (0.03);
- drift: more young users, a different genre mix, inflated ratings; s is a multiple of the
  default drift (1): young users (13-24) are 1 + 3s times as active, the DRIFT_GENRES 1 + 2s
  times as likely to be picked outside recommendations, and every rating is 0.6s higher
  before rounding;
- fairness: ratings by women and by seniors (55+) become noisier; s is the standard deviation
  of their rating noise, in stars (1.4; everyone else's is NOISE, 0.5);
- feedback: the policy retrains daily on its own exposure, so exposure concentrates; s is a
  multiple of how fast (1): on the loop's d-th day the policy moves min(1, 0.1 s d) of the way
  from true popularity to yesterday's exposure, and its popularity boost grows by 0.1 s a day;
- starve: the policy stops showing movies of one genre (STARVED_GENRE), which users keep
  watching on their own; s is the share of that genre's movies starved (1: all), drawn by the
  seed.
At its neutral strength (0; for fairness 0.5, everyone's noise) a fault writes the very log of
the service without it.
Same arguments, same bytes: every random choice comes from the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from recaudit.recsys import formats

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
GENRE_WEIGHTS = np.array([8, 5, 3, 3, 10, 5, 2, 12, 3, 1, 4, 1, 3, 6, 4, 6, 2, 1], dtype=float)
DRIFT_GENRES = ("Horror", "Animation", "Sci-Fi")
STARVED_GENRE = "Romance"  # the genre the starve fault stops recommending
OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
               "customer service", "doctor/health care", "executive/managerial", "homemaker",
               "lawyer", "programmer", "sales/marketing", "scientist", "self-employed",
               "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
REGIONS, REGION_SHARES = ("north", "south", "east", "west"), (0.35, 0.3, 0.2, 0.15)  # users.csv's attribute
# Age bands and their shares of the population: child, teen, young adult, middle-aged, senior.
AGE_BANDS = [(6, 12, 0.03), (13, 17, 0.08), (18, 34, 0.45), (35, 54, 0.32), (55, 85, 0.12)]
HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 5, 5, 5, 6, 8, 10, 12, 12, 11, 8, 5],
                        dtype=float)
_ADJECTIVES = ("silent dark last broken golden hidden lost wild secret crimson frozen electric quiet "
               "burning endless little midnight savage gentle iron bitter distant hollow paper "
               "northern scarlet velvet wicked").split()
_NOUNS = ("river city dream road night heart garden storm kingdom mirror shadow island game summer "
          "letter machine house sea star forest winter promise stranger harbor circus empire "
          "ghost orchard signal bridge").split()
_NAMES = "jack mary max luna oscar rosa leo nina hugo ada felix iris".split()

FACTORS = 8
MEAN_RATING = 2.9
NOISE = 0.5  # rating noise; the fairness fault sets another for the injected groups
FAIR_NOISE = 1.4  # the fairness fault's default strength
K = 20  # movies per recommendation list
SLICE = 1_000_000  # lines formatted and written at a time


@dataclass(frozen=True)
class Fault:
    """What a fault's strength is (in a few words), its default (the fault as it always was), the
    strength at which it changes nothing, and the strengths allowed (low and high included)."""

    strength: str
    default: float
    neutral: float
    low: float
    high: float


FAULTS = {  # what each strength means in full: the module's docstring
    "corrupt": Fault("the share of log lines corrupted", 0.03, 0.0, 0.0, 1.0),
    "drift": Fault("a multiple of the default drift", 1.0, 0.0, 0.0, math.inf),
    "fairness": Fault("the rating noise of women and seniors (sd, in stars)", FAIR_NOISE, NOISE, 0.0, math.inf),
    "feedback": Fault("a multiple of how fast the policy leans on its own exposure", 1.0, 0.0, 0.0, math.inf),
    "starve": Fault(f"the share of {STARVED_GENRE} movies starved", 1.0, 0.0, 0.0, 1.0),
}
INJECTIONS = tuple(FAULTS)


def injections(faults) -> dict[str, float]:
    """Faults with their strengths, from fault names (each at its default strength), (name,
    strength) pairs, or a mapping of names to strengths (None: the default).

    Raises
    ------
    ValueError
        Naming the reason: an unknown fault, one named twice, a strength that is not a finite
        number or out of the fault's range.
    """
    pairs = faults.items() if isinstance(faults, dict) else [
        (f, None) if isinstance(f, str) else tuple(f) for f in faults]
    out: dict[str, float] = {}
    for name, strength in pairs:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (choose from {', '.join(INJECTIONS)})")
        if name in out:
            raise ValueError(f"{name} is named twice")
        fault = FAULTS[name]
        if strength is None:
            strength = fault.default
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"the strength of {name} must be a finite number (got {strength!r})")
        if not fault.low <= strength <= fault.high:
            upper = "" if math.isinf(fault.high) else f" and at most {fault.high:g}"
            raise ValueError(f"the strength of {name} is {fault.strength}: at least {fault.low:g}{upper} "
                             f"(got {strength:g})")
        out[name] = float(strength)
    return out


def parse_inject(text: str) -> dict[str, float]:
    """`injections` of a comma list of faults, each perhaps with a strength after a colon:
    "fairness:1.1,drift" (drift at its default)."""
    faults = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, colon, value = (s.strip() for s in item.partition(":"))
        if not colon:
            faults.append((name, None))
            continue
        try:
            faults.append((name, float(value)))
        except ValueError:
            raise ValueError(f"the strength of {name} must be a number (got {value!r})") from None
    return injections(faults)


@dataclass
class Config:
    """A simulated service. `inject` names the faults, as fault names, (name, strength) pairs or
    a mapping of name to strength (see `injections`); it is kept as {name: strength}."""

    users: int = 2000
    movies: int = 1000
    days: int = 14
    seed: int = 0
    start: date = date(2024, 1, 1)
    inject: dict[str, float] = field(default_factory=dict)
    servers: int = 2
    active_share: float = 0.11  # users active on a given day
    request_share: float = 0.8  # sessions that start with a recommendation request
    follow_share: float = 0.55  # served sessions that watch a recommended movie
    log_format: str = "text"  # the event log's form: "text" or "jsonl" (JSON Lines), the same events either way

    def __post_init__(self) -> None:
        self.inject = injections(self.inject)

    @property
    def injection_day(self) -> int:
        return self.days // 2

    def active(self, fault: str, day: int) -> bool:
        return fault in self.inject and day >= self.injection_day

    def strength(self, fault: str, day: int) -> float:
        """The fault's strength on `day`: its neutral one before it starts or when not injected."""
        return self.inject[fault] if self.active(fault, day) else FAULTS[fault].neutral


@dataclass
class Summary:
    config: dict
    files: dict[str, str]
    injection_start: str | None
    lines_per_day: list[int] = field(default_factory=list)
    lines: int = 0


# ---------------------------------------------------------------------------------------------
# The world: users and movies with their latent tastes.

@dataclass
class World:
    users: pd.DataFrame
    movies: pd.DataFrame
    taste: np.ndarray  # users × FACTORS
    user_bias: np.ndarray
    activity: np.ndarray  # relative chance of being active on a day
    young: np.ndarray  # aged 13-24: the population the drift fault brings in
    noisy: np.ndarray  # women and seniors: whose ratings the fairness fault makes noisier
    factors: np.ndarray  # movies × FACTORS
    movie_bias: np.ndarray
    popularity: np.ndarray  # probability of being picked outside recommendations
    runtime: np.ndarray
    drift_genre: np.ndarray  # movie has one of DRIFT_GENRES


def make_world(cfg: Config) -> World:
    rng = np.random.default_rng([cfg.seed, 0])
    n, m = cfg.users, cfg.movies

    band = rng.choice(len(AGE_BANDS), size=n, p=[b[2] for b in AGE_BANDS])
    lo, hi = np.array([b[0] for b in AGE_BANDS]), np.array([b[1] for b in AGE_BANDS])
    age = rng.integers(lo[band], hi[band] + 1)
    gender = np.where(rng.random(n) < 0.35, "F", "M")
    occupation = np.array(OCCUPATIONS, dtype=object)[rng.integers(0, len(OCCUPATIONS), n)]
    occupation[age < 18] = "K-12 student"
    occupation[(age >= 18) & (age < 23) & (rng.random(n) < 0.6)] = "college/grad student"
    occupation[(age >= 65) & (rng.random(n) < 0.8)] = "retired"
    # Drawn from a stream of their own, so that every other draw of a world is as it was before
    # users had a region.
    region = np.array(REGIONS, dtype=object)[np.random.default_rng([cfg.seed, 3]).choice(
        len(REGIONS), size=n, p=REGION_SHARES)]
    users = pd.DataFrame({"user_id": np.arange(1, n + 1), "age": age, "gender": gender,
                          "occupation": occupation, "region": region})

    genre_vectors = rng.normal(0, 0.55, (len(GENRES), FACTORS))
    n_genres = rng.choice([1, 2, 3], size=m, p=[0.4, 0.4, 0.2])
    genre_p = GENRE_WEIGHTS / GENRE_WEIGHTS.sum()
    has_genre = np.zeros((m, len(GENRES)), dtype=bool)
    for i in range(m):
        has_genre[i, rng.choice(len(GENRES), size=n_genres[i], replace=False, p=genre_p)] = True
    factors = (has_genre @ genre_vectors) / n_genres[:, None] + rng.normal(0, 0.25, (m, FACTORS))
    rank = rng.permutation(m)
    popularity = 1.0 / (rank + 10.0)
    popularity /= popularity.sum()
    movie_bias = rng.normal(0, 0.35, m) + 0.15 * (rank < m // 10)
    titles, years = _titles(rng, m)
    movies = pd.DataFrame({
        "movie_id": [_slug(t, y) for t, y in zip(titles, years)],
        "title": titles, "year": pd.array(years, dtype="Int64"),
        "genres": ["|".join(np.array(GENRES)[row]) for row in has_genre],
    })
    drift_genre = has_genre[:, [GENRES.index(g) for g in DRIFT_GENRES]].any(axis=1)
    return World(
        users=users, movies=movies,
        taste=rng.normal(0, 0.45, (n, FACTORS)), user_bias=rng.normal(0, 0.3, n),
        activity=rng.lognormal(0, 0.8, n), young=(age >= 13) & (age <= 24),
        noisy=(gender == "F") | (age >= 55),
        factors=factors, movie_bias=movie_bias, popularity=popularity,
        runtime=np.clip(rng.normal(110, 20, m), 70, 200).astype(np.int64), drift_genre=drift_genre,
    )


def _titles(rng: np.random.Generator, m: int) -> tuple[list[str], list[int | None]]:
    """Believable, unique titles: the slug (title + year) must identify the movie."""
    titles, years, seen = [], [], set()
    for i in range(m):
        pattern = rng.integers(0, 8)
        a, b = _ADJECTIVES[rng.integers(len(_ADJECTIVES))], _NOUNS[rng.integers(len(_NOUNS))]
        c, name = _NOUNS[rng.integers(len(_NOUNS))], _NAMES[rng.integers(len(_NAMES))]
        title = [f"The {a.title()} {b.title()}", f"{b.title()} of {c.title()}s", f"{name.title()}'s {b.title()}",
                 f"{a.title()} {b.title()}s", f"{b.title()}, {c.title()} & {name.title()}",
                 f"The {b.title()} - Part {rng.integers(1, 4)}", f"Dr. {name.title()}'s {b.title()}",
                 f"Mr. {name.title()}"][pattern]
        year = None if rng.random() < 0.02 else int(np.clip(rng.normal(2005, 15), 1930, 2024))
        base, k = title, 2
        while _slug(title, year) in seen:
            title, k = f"{base} {k}", k + 1
        seen.add(_slug(title, year))
        titles.append(title)
        years.append(year)
    return titles, years


def _slug(title: str, year: int | None) -> str:
    """The log's movie id: lowercased title, commas as _, spaces as +, then the year (or +)."""
    words = title.lower().replace(",", "_").split(" ")
    return "+".join(words + [str(year) if year is not None else ""])


# ---------------------------------------------------------------------------------------------
# One day of activity, as numbers.

@dataclass
class Day:
    """A day's events before formatting. Watches and ratings share one table; recommendations
    carry their lists."""

    time: np.ndarray  # ns since epoch
    kind: np.ndarray  # 0 watch, 1 rate, 2 recommendation
    user: np.ndarray  # index into users
    movie: np.ndarray  # index into movies (watch, rate)
    value: np.ndarray  # minute (watch), rating (rate), index into the lists (recommendation)
    lists: np.ndarray  # recommendations × K movie indices
    status: np.ndarray
    latency: np.ndarray
    server: np.ndarray


class Policy:
    """The service's recommender: personal taste plus popularity, from a candidate pool.

    Under the feedback fault it retrains each day on its own exposure: yesterday's most
    recommended movies become today's most likely candidates and get a popularity boost. Under
    the starve fault it ranks the starved movies (the starve strength's share of STARVED_GENRE,
    drawn by the seed) below every other candidate, so they are listed only when fewer than K
    others are at hand.
    """

    def __init__(self, world: World, cfg: Config):
        self.world = world
        self.exposure = np.zeros(len(world.movies))
        genre = np.flatnonzero(world.movies["genres"].str.split("|").map(lambda g: STARVED_GENRE in g).to_numpy())
        # A stream of its own, so that every other draw is the same whatever the strength.
        chosen = np.random.default_rng([cfg.seed, 4]).permutation(genre)
        share = cfg.inject.get("starve", FAULTS["starve"].default)
        self.starved = np.zeros(len(world.movies), dtype=bool)
        self.starved[chosen[:round(share * len(genre))]] = True

    def weights(self, days_of_feedback: float) -> np.ndarray:
        """Candidate weights: true popularity, or (under feedback) yesterday's exposure, leaned
        on harder each day the loop runs (`days_of_feedback`: the days it ran, this one
        included, times its strength)."""
        w = np.sqrt(self.world.popularity)
        if days_of_feedback:
            lean = min(1.0, 0.1 * days_of_feedback)
            share = self.exposure / max(self.exposure.sum(), 1.0) + 1e-6
            w = w ** (1 - lean) * share ** (1.5 * lean)
        return w / w.sum()

    def recommend(self, rng: np.random.Generator, users: np.ndarray, days_of_feedback: float,
                  starve: bool = False) -> np.ndarray:
        """K distinct movies for each user (users may repeat); none of STARVED_GENRE while
        `starve`, unless too few other candidates are drawn."""
        world, m = self.world, len(self.world.movies)
        weights = self.weights(days_of_feedback)
        boost = 0.5 + 0.1 * days_of_feedback
        log_w = np.log(weights * m + 1e-12)
        out = np.empty((len(users), K), dtype=np.int64)
        for b0 in range(0, len(users), 20_000):
            u = users[b0:b0 + 20_000]
            cands = np.concatenate([_sample(rng, weights, (len(u), 80)), rng.integers(0, m, (len(u), 60))], axis=1)
            score = np.einsum("bk,bck->bc", world.taste[u], world.factors[cands]) + world.movie_bias[cands]
            score += boost * log_w[cands] + rng.gumbel(0, 0.3, cands.shape)
            score[:, 80:] -= 10.0  # uniform candidates only fill lists the policy cannot
            if starve:  # below even those; the draws stay those of a clean day
                score -= 100.0 * self.starved[cands]
            order = np.argsort(cands, axis=1, kind="stable")
            sorted_c = np.take_along_axis(cands, order, axis=1)
            dup = np.zeros_like(cands, dtype=bool)
            dup[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
            np.put_along_axis(score, order, np.where(dup, -np.inf, np.take_along_axis(score, order, axis=1)), axis=1)
            top = np.argpartition(-score, K, axis=1)[:, :K]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1), axis=1)
            lists = np.take_along_axis(cands, top, axis=1)
            short = np.flatnonzero(np.isinf(np.take_along_axis(score, top, axis=1)).any(axis=1))
            for r in short:  # fewer than K distinct candidates: top up at random
                have = list(dict.fromkeys(lists[r][~np.isinf(score[r, top[r]])]))
                rest = [x for x in rng.permutation(m) if x not in set(have)]
                lists[r] = (have + rest)[:K]
            out[b0:b0 + len(u)] = lists
        return out


def _sample(rng: np.random.Generator, p: np.ndarray, size) -> np.ndarray:
    cdf = np.cumsum(p)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), len(p) - 1)


def simulate_day(world: World, cfg: Config, policy: Policy, day: int) -> Day:
    rng = np.random.default_rng([cfg.seed, 1, day])
    n = len(world.users)
    day_start = np.datetime64(cfg.start, "ns").astype(np.int64) + day * 86_400 * 10**9
    drift = cfg.strength("drift", day)
    days_of_feedback = (day - cfg.injection_day + 1) * cfg.strength("feedback", day)

    activity = world.activity * np.where(world.young, 1 + 3 * drift, 1.0)
    p_active = np.minimum(1.0, cfg.active_share * activity / world.activity.mean())
    active = np.flatnonzero(rng.random(n) < p_active)
    sessions = np.repeat(active, 1 + rng.poisson(0.3, len(active)))
    s = len(sessions)
    hour = rng.choice(24, size=s, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    t0 = day_start + (hour * 3600 + rng.integers(0, 3600, s)) * 10**9 + rng.integers(0, 10**9, s)

    # A recommendation request opens most sessions.
    asked = rng.random(s) < cfg.request_share
    req = np.flatnonzero(asked)
    lists = policy.recommend(rng, sessions[req], days_of_feedback, cfg.active("starve", day))
    policy.exposure = np.bincount(lists.ravel(), minlength=len(world.movies)).astype(float)
    server = rng.integers(0, cfg.servers, len(req))
    failed = rng.random(len(req)) < 0.015
    status = np.where(failed, np.where(rng.random(len(req)) < 0.7, 0, 500), 200)
    latency = np.where(status == 0, rng.integers(800, 850, len(req)),
                       np.clip(rng.lognormal(np.log(120), 0.35, len(req)), 5, 5000)).astype(np.int64)

    # What each session watches: a recommended movie (rank and taste matter) or something else.
    u = sessions
    movie = np.empty(s, dtype=np.int64)
    start = t0 + rng.integers(2, 60, s) * 10**9
    follow = np.zeros(s, dtype=bool)
    ok = req[status == 200]
    follow[ok] = rng.random(len(ok)) < cfg.follow_share
    fl = np.flatnonzero(follow)
    if len(fl):
        ok_lists = lists[np.searchsorted(req, fl)]
        affinity = np.einsum("bk,bck->bc", world.taste[u[fl]], world.factors[ok_lists])
        pick = np.argmax(2.0 * affinity - 0.8 * np.log1p(np.arange(K)) + rng.gumbel(0, 1, ok_lists.shape), axis=1)
        movie[fl] = ok_lists[np.arange(len(fl)), pick]
        start[fl] = t0[fl] + (rng.exponential(180, len(fl)) + 5).astype(np.int64) * 10**9
    other = np.flatnonzero(~follow)
    if len(other):
        popularity = world.popularity * np.where(world.drift_genre, 1 + 2 * drift, 1.0)
        cands = _sample(rng, popularity / popularity.sum(), (len(other), 10))
        affinity = np.einsum("bk,bck->bc", world.taste[u[other]], world.factors[cands])
        movie[other] = cands[np.arange(len(other)), np.argmax(2.0 * affinity + rng.gumbel(0, 1, cands.shape), axis=1)]
        start[other] = t0[other] + (rng.exponential(600, len(other)) + 30).astype(np.int64) * 10**9

    # How long, and how it is rated: both follow the user's true opinion of the movie.
    truth = (MEAN_RATING + world.user_bias[u] + world.movie_bias[movie]
             + np.einsum("bk,bk->b", world.taste[u], world.factors[movie]) + 0.6 * drift)
    share = np.clip(0.45 + 0.25 * (truth - MEAN_RATING - 0.6) + rng.normal(0, 0.2, s), 0.03, 1.0)
    minutes = np.maximum(1, np.round(share * world.runtime[movie])).astype(np.int64)
    rated = rng.random(s) < 0.1 + 0.4 * share
    t0, start = _one_after_another(u, t0, start, minutes)
    noise = np.where(world.noisy[u], cfg.strength("fairness", day), NOISE)
    rating = np.clip(np.round(truth + rng.normal(0, 1, s) * noise), 1, 5).astype(np.int64)

    w_session = np.repeat(np.arange(s), minutes)
    w_minute = np.arange(len(w_session)) - np.repeat(np.cumsum(minutes) - minutes, minutes)
    w_time = start[w_session] + w_minute * 60 * 10**9 + rng.integers(0, 2 * 10**9, len(w_session))
    r_idx = np.flatnonzero(rated)
    r_time = start[r_idx] + minutes[r_idx] * 60 * 10**9 + rng.integers(5, 600, len(r_idx)) * 10**9

    # Times at the precision the log prints (seconds; microseconds for requests), so that the
    # written log is in time order as a reader parses it.
    second, micro = 10**9, 10**3
    return Day(
        time=np.concatenate([w_time // second * second, r_time // second * second, t0[req] // micro * micro]),
        kind=np.concatenate([np.zeros(len(w_time), np.int8), np.ones(len(r_idx), np.int8),
                             np.full(len(req), 2, np.int8)]),
        user=np.concatenate([u[w_session], u[r_idx], u[req]]),
        movie=np.concatenate([movie[w_session], movie[r_idx], np.zeros(len(req), np.int64)]),
        value=np.concatenate([w_minute, rating[r_idx], np.arange(len(req))]),
        lists=lists, status=status, latency=latency, server=server,
    )


def _one_after_another(user: np.ndarray, t0: np.ndarray, start: np.ndarray, minutes: np.ndarray):
    """Shift a user's later sessions of the day to begin after the previous one ends (a person
    watches one thing at a time)."""
    order = np.lexsort((t0, user))
    u, t, w, m = user[order], t0[order].copy(), start[order].copy(), minutes[order]
    first = np.ones(len(u), dtype=bool)
    first[1:] = u[1:] != u[:-1]
    rank = np.arange(len(u)) - np.maximum.accumulate(np.where(first, np.arange(len(u)), 0))
    for r in range(1, int(rank.max(initial=0)) + 1):
        i = np.flatnonzero(rank == r)
        free = w[i - 1] + m[i - 1] * 60 * 10**9 + 60 * 10**9  # a minute after the previous one ends
        shift = np.maximum(0, free - t[i])
        t[i] += shift
        w[i] += shift
    t0, start = t0.copy(), start.copy()
    t0[order], start[order] = t, w
    return t0, start


# ---------------------------------------------------------------------------------------------
# Formatting: lines built by Arrow from tables of pre-formatted pieces.

# The log's two forms (recsys.events reads both): each line kind as its pieces in order, the
# named ones filled per event (quoted as JSON strings in JSON Lines) and the rest written as is.
LINE_TEMPLATES = {
    "text": {
        0: ("time", b",", "user", b",GET /data/m/", "movie", b"/", "value", b".mpg\n"),
        1: ("time", b",", "user", b",GET /rate/", "movie", b"=", "value", b"\n"),
        2: ("time", b",", "user", b",recommendation request ", "server", b", status ", "status", b", result: ",
            "result", b", ", "latency", b" ms\n"),
    },
    "jsonl": {
        0: (b'{"time": "', "time", b'", "user_id": ', "user", b', "event": "watch", "movie_id": ', "movie",
            b', "minute": ', "value", b"}\n"),
        1: (b'{"time": "', "time", b'", "user_id": ', "user", b', "event": "rate", "movie_id": ', "movie",
            b', "rating": ', "value", b"}\n"),
        2: (b'{"time": "', "time", b'", "user_id": ', "user", b', "event": "recommend", "server": ', "server",
            b', "status": ', "status", b', "result": ', "result", b', "latency_ms": ', "latency", b"}\n"),
    },
}
LOG_FILES = {"text": "events.log", "jsonl": "events.jsonl"}


class _Pieces:
    def __init__(self, world: World, cfg: Config):
        import pyarrow as pa

        self.pa = pa
        self.templates = LINE_TEMPLATES[cfg.log_format]
        json_lines = cfg.log_format == "jsonl"
        strings = lambda values: pa.array([json.dumps(v) if json_lines else v for v in values],  # noqa: E731
                                          pa.large_binary())
        self.list_ends = (b"[", b"]") if json_lines else (b"", b"")
        self.users = pa.array(world.users["user_id"].astype(str).tolist(), pa.large_binary())
        self.slugs = strings(world.movies["movie_id"].tolist())
        self.numbers = pa.array([str(i) for i in range(10_000)], pa.large_binary())
        self.clock = pa.array([f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)],
                              pa.large_binary())
        self.micros = pa.array([f"{i:06d}" for i in range(1_000_000)], pa.large_binary())
        self.servers = [f"recs-{chr(97 + i)}.example.org:8082" for i in range(cfg.servers)]
        self.server_names = strings(self.servers)
        self.errors = strings([f"java.util.concurrent.TimeoutException: Request timeout to {name.split(':')[0]}"
                               f"/10.0.0.{i + 1}:8082 after 800 ms" for i, name in enumerate(self.servers)]
                              + ["500 Internal Server Error: model unavailable"])

    def take(self, table, idx):
        return table.take(self.pa.array(np.asarray(idx, dtype=np.int64)))

    def join(self, *parts):
        """Concatenate arrays and byte strings element-wise."""
        import pyarrow.compute as pc

        scalar = lambda p: self.pa.scalar(p, self.pa.large_binary()) if isinstance(p, bytes) else p  # noqa: E731
        return pc.binary_join_element_wise(*map(scalar, parts), scalar(b""))

    def times(self, ns: np.ndarray, fraction: bool):
        """ISO-8601 timestamps (microseconds when `fraction`)."""
        seconds = ns // 10**9
        days = seconds // 86_400
        unique_days, inverse = np.unique(days, return_inverse=True)
        dates = self.pa.array([(date(1970, 1, 1) + timedelta(days=int(d))).isoformat() + "T" for d in unique_days],
                              self.pa.large_binary())
        parts = [self.take(dates, inverse), self.take(self.clock, seconds - days * 86_400)]
        if fraction:
            parts += [b".", self.take(self.micros, (ns // 1000) % 1_000_000)]
        return self.join(*parts)

    def lines(self, day: Day, rows: np.ndarray):
        """The log lines of `rows` (indices into the day's events, in time order)."""
        import pyarrow.compute as pc

        pa = self.pa
        kind = day.kind[rows]
        parts = []
        for k in (0, 1, 2):
            r = rows[kind == k]
            fields = {"time": self.times(day.time[r], fraction=k == 2), "user": self.take(self.users, day.user[r])}
            if k < 2:
                fields["movie"] = self.take(self.slugs, day.movie[r])
                fields["value"] = self.take(self.numbers, day.value[r])
            else:
                rec = day.value[r]
                status, server = day.status[rec], day.server[rec]
                flat = self.take(self.slugs, day.lists[rec].ravel())
                offsets = pa.array(np.arange(0, K * len(rec) + 1, K, dtype=np.int64))
                listed = pc.binary_join(pa.LargeListArray.from_arrays(offsets, flat),
                                        pa.scalar(b", ", pa.large_binary()))
                error = self.take(self.errors, np.where(status == 0, server, len(self.servers)))
                fields["result"] = pc.if_else(pa.array(status == 200), self.join(self.list_ends[0], listed,
                                                                                  self.list_ends[1]), error)
                fields["server"] = self.take(self.server_names, server)
                fields["status"] = self.take(self.numbers, status)
                fields["latency"] = self.take(self.numbers, day.latency[rec])
            parts.append(self.join(*(fields[p] if isinstance(p, str) else p for p in self.templates[k])))
        grouped = pa.concat_arrays(parts)
        # Rows were grouped by kind; put them back in time order.
        order = np.argsort(kind, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return grouped.take(pa.array(inverse))


def _write(out, lines) -> None:
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset: lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    out.write(memoryview(data)[offsets[0]:offsets[-1]])


# ---------------------------------------------------------------------------------------------
# Corruption: every malformed shape of the log format, and valid-but-wrong data.
#
# A fault is drawn the same way in either form of the log and changes the same event, so that
# both forms of one world quarantine the same lines. Three act on the line's bytes; the others
# on the event's fields, read from the line and written back in its form.

LINE_FAULTS = ("garbage", "missing rating", "truncated", "space in timestamp", "not UTF-8", "bad user id",
               "rating out of range", "unknown movie")
LIST_FAULTS = ("short list", "duplicate list")
REC_PREFIX = "recommendation request "


def _text_event(line: bytes) -> dict:
    """The fields of a line of the text form, as JSON Lines names them (times kept as written)."""
    ts, user, rest = line.rstrip(b"\n").decode().split(",", 2)
    event: dict = {"time": ts, "user_id": int(user)}
    if rest.startswith("GET /data/m/"):
        movie, minute = rest.removeprefix("GET /data/m/").removesuffix(".mpg").rsplit("/", 1)
        return {**event, "event": "watch", "movie_id": movie, "minute": int(minute)}
    if rest.startswith("GET /rate/"):
        movie, rating = rest.removeprefix("GET /rate/").rsplit("=", 1)
        return {**event, "event": "rate", "movie_id": movie, "rating": int(rating)}
    head, tail = rest.removeprefix(REC_PREFIX).split(", result: ", 1)
    server, status = head.split(", status ")
    result, latency = tail.rsplit(", ", 1)
    status = int(status)
    return {**event, "event": "recommend", "server": server, "status": status,
            "result": result.split(", ") if status == 200 else result, "latency_ms": int(latency.removesuffix(" ms"))}


def _text_line(event: dict) -> bytes:
    """A text line of an event's fields (a rating may be missing, a user id not a number)."""
    head = f"{event['time']},{event['user_id']},"
    if event["event"] == "watch":
        body = f"GET /data/m/{event['movie_id']}/{event['minute']}.mpg"
    elif event["event"] == "rate":
        body = f"GET /rate/{event['movie_id']}" + (f"={event['rating']}" if "rating" in event else "")
    else:
        result = ", ".join(event["result"]) if isinstance(event["result"], list) else event["result"]
        body = f"{REC_PREFIX}{event['server']}, status {event['status']}, result: {result}, {event['latency_ms']} ms"
    return (head + body + "\n").encode()


_EVENT_CODECS = {"text": (_text_event, _text_line),
                 "jsonl": (json.loads, lambda event: (json.dumps(event) + "\n").encode())}


def _corrupt(line: bytes, how: str, rng: np.random.Generator, log_format: str) -> bytes:
    """`line` (of the form `log_format`) with the fault `how`."""
    if how == "garbage":
        return b"test, data\n"
    if how == "truncated":
        body = line.rstrip(b"\n")
        return body[: max(5, int(len(body) * rng.uniform(0.3, 0.9)))] + b"\n"
    if how == "not UTF-8":  # in a movie id: the line's first "+" (times, user ids and keys have none)
        return line.replace(b"+", b"+\xe9\xff", 1)
    read, write = _EVENT_CODECS[log_format]
    event = read(line)
    kind, common = event["event"], {"time": event["time"], "user_id": event["user_id"]}
    if how == "missing rating":
        movie = event["movie_id"] if kind == "watch" else "audition+1999"
        event = {**common, "event": "rate", "movie_id": movie}
    elif how == "space in timestamp":
        event["time"] = event["time"].replace("T", " ")
    elif how == "bad user id":
        event["user_id"] = f"user{event['user_id']}"
    elif how == "rating out of range":
        value = [8, 0, 4.5, ""][rng.integers(4)]
        event = {**common, "event": "rate", "movie_id": event["movie_id"] if kind == "rate" else "audition+1999",
                 "rating": value}
    elif how in ("short list", "duplicate list"):
        if kind != "recommend" or event["status"] != 200:
            return line
        items = event["result"]
        event["result"] = items[: [2, 19][rng.integers(2)]] if how == "short list" else items[:-1] + [items[0]]
    else:  # unknown movie
        fake = "unknown+feature+%d+1999" % rng.integers(1000)
        if kind == "recommend":
            if event["status"] != 200:
                return line
            event["result"] = [fake] + event["result"][:-1]  # keep 20 items: drop the last one
        else:
            event["movie_id"] = fake
    return write(event)


def _apply_corruption(lines, kind: np.ndarray, rng: np.random.Generator, log_format: str, share: float):
    """Replace a share of lines by corrupted ones, cycling through every kind of fault."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = np.flatnonzero(rng.random(len(lines)) < share)
    if not len(chosen):
        return lines
    # Faults on recommendation lists need recommendation lines: draw those among them.
    recs = np.flatnonzero(kind == 2)
    list_faults = rng.choice(recs, size=min(len(recs), max(1, len(chosen) // 5)), replace=False) if len(recs) else []
    replaced = {}
    for i, row in enumerate(chosen):
        replaced[int(row)] = _corrupt(lines[int(row)].as_py(), LINE_FAULTS[i % len(LINE_FAULTS)], rng, log_format)
    for j, row in enumerate(list_faults):
        replaced[int(row)] = _corrupt(lines[int(row)].as_py(), LIST_FAULTS[j % len(LIST_FAULTS)], rng, log_format)
    rows = np.array(sorted(replaced))
    mask = np.zeros(len(lines), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(lines, pa.array(mask), pa.array([replaced[r] for r in rows], pa.large_binary()))


# ---------------------------------------------------------------------------------------------

def simulate(out_dir: str | Path, cfg: Config) -> Summary:
    """Write users.csv, movies.csv and the event log (time-ordered; events.log, or events.jsonl
    in JSON Lines) for `cfg` into `out_dir`."""
    if cfg.log_format not in LOG_FILES:
        raise ValueError(f"unknown log format {cfg.log_format!r} (choose from {', '.join(LOG_FILES)})")
    log_file = LOG_FILES[cfg.log_format]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(cfg)
    formats.write_users_csv(world.users, out / "users.csv")
    formats.write_movies_csv(world.movies, out / "movies.csv")
    pieces = _Pieces(world, cfg)
    policy = Policy(world, cfg)
    summary = Summary(
        config={**asdict(cfg), "start": cfg.start.isoformat()},  # inject: each fault with its strength
        files={"users": "users.csv", "movies": "movies.csv", "events": log_file},
        injection_start=(datetime.combine(cfg.start, datetime.min.time())
                         + timedelta(days=cfg.injection_day)).isoformat() if cfg.inject else None,
    )
    carry: Day | None = None
    with open(out / log_file, "wb") as f:
        for d in range(cfg.days):
            day = simulate_day(world, cfg, policy, d)
            if carry is not None:
                day = _merge(carry, day)
            order = np.argsort(day.time, kind="stable")
            next_day = np.datetime64(cfg.start, "ns").astype(np.int64) + (d + 1) * 86_400 * 10**9
            cut = len(order) if d == cfg.days - 1 else int(np.searchsorted(day.time[order], next_day))
            carry = _subset(day, order[cut:])
            rng = np.random.default_rng([cfg.seed, 2, d])
            written = 0
            for a in range(0, cut, SLICE):
                rows = order[a:min(a + SLICE, cut)]
                lines = pieces.lines(day, rows)
                if cfg.active("corrupt", d):
                    lines = _apply_corruption(lines, day.kind[rows], rng, cfg.log_format, cfg.inject["corrupt"])
                _write(f, lines)
                written += len(rows)
            summary.lines_per_day.append(written)
    summary.lines = sum(summary.lines_per_day)
    (out / "simulation.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _subset(day: Day, rows: np.ndarray) -> Day:
    """The events `rows` of a day (what spills past midnight), requests with their lists."""
    kind, value = day.kind[rows], day.value[rows].copy()
    recs = value[kind == 2]
    value[kind == 2] = np.arange(len(recs))
    return Day(day.time[rows], kind, day.user[rows], day.movie[rows], value,
               day.lists[recs], day.status[recs], day.latency[recs], day.server[recs])


def _merge(carry: Day, day: Day) -> Day:
    """Yesterday's spill-over before today's events; today's requests index after its lists."""
    value = np.where(day.kind == 2, day.value + len(carry.lists), day.value)
    cat = np.concatenate
    return Day(cat([carry.time, day.time]), cat([carry.kind, day.kind]), cat([carry.user, day.user]),
               cat([carry.movie, day.movie]), cat([carry.value, value]), cat([carry.lists, day.lists]),
               cat([carry.status, day.status]), cat([carry.latency, day.latency]), cat([carry.server, day.server]))
