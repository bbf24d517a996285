"""Drift: does the current window look like the reference one, on the signals that matter for a
recommender? Each signal is one column per window, built from aggregates of the window's events
(a SignalSource: frames, or the store, where the database does the grouping and a day of 8 M
events becomes at most a few hundred thousand values), and compared with an effect-size test
from evidently (Jensen-Shannon or normed Wasserstein distance), so that a large window does not
flag a trivial change the way p-values at millions of rows would.

A score is judged against a noise floor: the scores of random splits of the two windows'
independent units. Values are clustered (a user's ratings share the user's bias, the 20 slots
of a request one list, a user's active days one user), so each signal declares its unit, the
user or the request, and a split moves whole units. Beyond a bound, signals are sampled by
whole units too (seeded), and the result says how much was sampled. A signal with too little
data says so instead of guessing. The evidently report of the comparison is saved beside the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recaudit.audits import config as configuration
from recaudit.audits import groups
from recaudit.audits.drift_sources import FrameSource, SignalSource, StoreSource, sample_users
from recaudit.audits.files import write_atomic
from recaudit.audits.result import AuditResult, Finding
from recaudit.audits.vocabulary import distinct

CATEGORICAL, NUMERICAL = "categorical", "numerical"
USER, REQUEST = "user", "request"  # the units a signal's values are independent by


@dataclass
class Signal:
    """A signal: its kind, the unit its values are independent by (USER: a user's values in a
    window travel together in the noise floor's splits and in sampling; REQUEST: every value
    is a request of its own), and how it is built from a window.

    `build` (SignalSource, Basis) returns counts, a frame of value and n (how often the value
    occurs), with a user_id column for a signal by USER; None when the signal cannot be built.
    """

    name: str
    kind: str
    unit: str
    what: str  # in words, for findings: "rating", "watch minutes per session"
    build: Callable


@dataclass
class Column:
    """One signal in one window: a sample of values, the unit of each (0, 1, ...: the sample's
    users in id order, or each value its own), and the number of values it stands for."""

    values: pd.Series
    units: np.ndarray
    population: int

    @property
    def sampled(self) -> bool:
        return len(self.values) < self.population

    @property
    def unit_count(self) -> int:
        return int(self.units.max()) + 1 if len(self.units) else 0


TIERS = (("head", 0.5), ("middle", 0.8), ("tail", 1.0))  # movies taking 50%, the next 30%, the last 20% of viewing


@dataclass
class Basis:
    """What both windows are read against: the settings, the model whose predictions are a
    signal (None: no trained model), and the reference window, whose viewing draws the
    popularity tiers (from half of its users: see `_watched_popularity`)."""

    config: dict
    reference: SignalSource
    model: object | None = None
    _recommended: dict = field(default_factory=dict, repr=False)

    @cached_property
    def tiers(self) -> pd.Series:
        return popularity_tiers(self.reference.watchers_per_movie(half=0))

    @property
    def sample(self) -> tuple[int, int]:
        """The bound and the seed of the users sampled from a window (`sample_users`)."""
        return self.config["drift"]["max_sample"], self.config["drift"]["seed"]

    def recommended(self, src: SignalSource) -> pd.DataFrame:
        """(user_id, movie_id, n) of a window's sampled users, read once for the two signals of
        what was recommended."""
        if src not in self._recommended:
            self._recommended[src] = src.recommended_by_user(*self.sample)
        return self._recommended[src]


def _by_user(user_ids, values, n=1, of: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counts by user and value. Made `of` a source's sample of users, they keep the number of
    values it was drawn from (``attrs["population"]``, which `column` reports)."""
    counts = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64), "value": values, "n": n})
    if of is not None and "population" in of.attrs:
        counts.attrs["population"] = of.attrs["population"]
    return counts


def _of_requests(counts: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"value": counts.index.to_numpy(), "n": counts.to_numpy(dtype=np.int64)})


# Each builder's unit (the _BUILDERS table) is the one its values are independent by. A user's
# values are not: the ratings of one user share the user's bias (in the simulator a bias of SD
# 0.3 against rating noise of SD 0.5); the sessions and active days of one user, their taste, age
# and sex; the 20 predicted scores of a request its user's bias, and a user's requests in one
# window that same bias and mostly the same candidates. Permuting requests rather than users
# still flagged predicted_score in a clean window (score 0.109: request-level floor 0.102, p 0.015;
# user-level floor 0.162, p 0.15). Latency and status are the service's answer to each request,
# not the user's: every request is a unit of its own, and a split of requests is a split of values.

def _rating(src, basis):
    counts = src.ratings_by_user(*basis.sample)
    return _by_user(counts["user_id"], counts["rating"].astype(str), counts["n"], of=counts)


def _status(src, basis):
    return _of_requests(src.value_counts("recommendations", "status"))


def _ratings_per_user(src, basis):
    days = src.ratings_per_user_day()
    return _by_user(days["user_id"], days["n"].astype(float))


def _minutes(src, basis):
    return _by_user(src.sessions["user_id"], src.sessions["minutes"].astype(float))


def popularity_tiers(watchers: pd.Series) -> pd.Series:
    """Each movie's tier in a window's viewing: head (the most watched movies, taking the first
    half of all sessions), middle (the next 30%), tail (the last 20%). Movies watched equally
    often are ordered by id, so that the tiers do not depend on the order they were listed in."""
    watchers = pd.Series(watchers.to_numpy(), index=watchers.index.astype(str))
    ordered = watchers.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    reach = ordered.cumsum() / max(ordered.sum(), 1)
    before = reach - ordered / max(ordered.sum(), 1)  # the share of viewing ahead of each movie
    labels = np.select([before < bound for _, bound in TIERS[:-1]], [name for name, _ in TIERS[:-1]], TIERS[-1][0])
    return pd.Series(labels, index=ordered.index)


def _tiers_by_user(basis, counts: pd.DataFrame) -> pd.DataFrame:
    """(user_id, value, n): each user's counted movies (user_id, movie_id, n) by their
    reference popularity tier (or new)."""
    tier = basis.tiers.reindex(counts["movie_id"].astype(str)).fillna("new")
    return _by_user(counts["user_id"], tier.to_numpy(), counts["n"].to_numpy(), of=counts)


def _watched_popularity(src, basis):
    # In the reference window, the tiers were drawn from half of the users: the other half is
    # compared, or movies that were lucky in the draw would seem to lose viewers everywhere.
    return _tiers_by_user(basis, src.watched_by_user(half=1 if src is basis.reference else None))


def _recommended_popularity(src, basis):
    return _tiers_by_user(basis, basis.recommended(src))


def _genre(src, basis):
    watched = src.watched_by_user().astype({"movie_id": str})
    movies = watched["movie_id"].drop_duplicates()
    genres = (pd.DataFrame({"movie_id": movies.to_numpy(),  # split once per movie, not once per viewer
                            "value": src.genres().reindex(movies).fillna("").str.split("|").to_numpy()})
              .explode("value").replace({"value": {"": groups.UNKNOWN}}))
    return watched.merge(genres, on="movie_id")[["user_id", "value", "n"]]


def _age_group(src, basis):
    return _by_user(src.active["user_id"], groups.age_group(src.active, basis.config["groups"]["age"]).to_numpy(),
                    src.active["days"].to_numpy())


def _sex(src, basis):
    return _by_user(src.active["user_id"], groups.sex(src.active).to_numpy(), src.active["days"].to_numpy())


def _occupation(src, basis):
    return _by_user(src.active["user_id"], groups.occupation(src.active).to_numpy(), src.active["days"].to_numpy())


def _attribute(name: str, src, basis):
    """Active user-days per group of a user attribute: its values, or its bins (groups.bins)."""
    counts = src.attribute_counts(name)
    labels = groups.attribute(counts["value"].astype(object), basis.config["groups"]["bins"].get(name))
    return _by_user(counts["user_id"], labels.to_numpy(), counts["n"].to_numpy())


def _latency(src, basis):
    return _of_requests(src.value_counts("recommendations", "latency_ms", successful=True))


def _predicted_score(src, basis):
    """What the model predicts for the movies it recommended to the window's (sampled) users
    (prediction drift)."""
    if basis.model is None:
        return None
    pairs = basis.recommended(src)
    if pairs.empty:
        return _by_user([], [], [], of=pairs)
    predicted, _cold = basis.model.predict(pairs["user_id"].to_numpy(), pairs["movie_id"].astype(str).to_numpy())
    return _by_user(pairs["user_id"], predicted, pairs["n"].to_numpy(), of=pairs)


_BUILDERS = {  # name (configuration.DRIFT_SIGNALS): kind, unit, what, build
    "rating": (CATEGORICAL, USER, "rating", _rating),
    "ratings_per_user": (NUMERICAL, USER, "ratings per rater per day", _ratings_per_user),
    "minutes_per_session": (NUMERICAL, USER, "watch minutes per session", _minutes),
    "watched_popularity": (CATEGORICAL, USER, "watched movies' popularity tier", _watched_popularity),
    "recommended_popularity": (CATEGORICAL, USER, "recommended movies' popularity tier", _recommended_popularity),
    "genre": (CATEGORICAL, USER, "genre of watched movies", _genre),
    "age_group": (CATEGORICAL, USER, "age group of daily active users", _age_group),
    "sex": (CATEGORICAL, USER, "sex of daily active users", _sex),
    "occupation": (CATEGORICAL, USER, "occupation of daily active users", _occupation),
    "latency": (NUMERICAL, REQUEST, "recommendation latency (ms)", _latency),
    "status": (CATEGORICAL, REQUEST, "request status", _status),
    "predicted_score": (NUMERICAL, USER, "predicted rating of recommended movies", _predicted_score),
}
if set(_BUILDERS) != set(configuration.DRIFT_SIGNALS):
    raise ImportError(f"drift builds the signals {sorted(_BUILDERS)}, but the configuration names "
                      f"{sorted(configuration.DRIFT_SIGNALS)} (config.DRIFT_SIGNALS)")
SIGNALS = {name: Signal(name, *_BUILDERS[name]) for name in configuration.DRIFT_SIGNALS}  # in the configuration's order


def signals(config: dict) -> list[tuple[Signal, dict]]:
    """Every signal with its settings: the built-in ones in the configuration's order, then the
    share of daily active users by each attribute of drift.attributes (as sex's share is watched),
    in the attribute's groups (its bins when groups.bins has some, as ages are binned)."""
    settings = config["drift"]
    return [(signal, settings["signals"][name]) for name, signal in SIGNALS.items()] + [
        (Signal(name, CATEGORICAL, USER, f"{name} of daily active users", partial(_attribute, name)), per)
        for name, per in settings["attributes"].items()]


def column(signal: Signal, raw: pd.DataFrame | None, config: dict, salt: int) -> Column | None:
    """A comparable column from the counts a builder returned (value, n, and user_id for a
    signal by user): every value when there are at most `max_sample`, else a seeded sample of
    whole units. Users are sampled by `sample_users` (the same users from any source); requests,
    each one value, without replacement (seed and `salt`).

    Values are taken in a fixed order (by user, then label or number), so that a column depends
    only on the data, not on the order a source listed it in: frames and the store give the same
    column.
    """
    if raw is None:
        return None
    limit, seed = config["drift"]["max_sample"], config["drift"]["seed"]
    value = raw["value"].astype(str) if signal.kind == CATEGORICAL else raw["value"].astype(float)
    by = ["user_id", "value"] if signal.unit == USER else ["value"]
    counts = (raw[by[:-1]].assign(value=value.to_numpy(), n=raw["n"].to_numpy(dtype=np.int64))
              .query("n > 0").groupby(by)["n"].sum().reset_index())
    population = int(raw.attrs.get("population", counts["n"].sum()))  # a source's sample: what it was drawn from
    if signal.unit == USER:
        counts = sample_users(counts, limit, seed)
        units = np.repeat(pd.factorize(counts["user_id"], sort=True)[0], counts["n"])
    elif population > limit:
        rng = np.random.default_rng([seed, salt])
        counts = counts.assign(n=rng.multivariate_hypergeometric(counts["n"].to_numpy(), limit))
    values = np.repeat(counts["value"].to_numpy(), counts["n"].to_numpy())
    if signal.unit != USER:
        units = np.arange(len(values))
    return Column(pd.Series(values, dtype=object if signal.kind == CATEGORICAL else float), units, population)


PERMUTATIONS = 49  # chance alone exceeds the largest of 49 random splits one time in 50


def compare(signal: Signal, reference: Column, current: Column, settings: dict, seed: int = 0) -> dict:
    """One signal's verdict: evidently's test (score, threshold), and the noise floor.

    A distance between two finite samples is never zero: at 500 values per window the normed
    Wasserstein distance between samples of one distribution is about 0.1, at 100,000 about
    0.007, and much more when the values come in clusters. The floor is the largest score of
    PERMUTATIONS random splits of the two windows' units (each keeping all its values; as many
    units drawn as reference as the reference has). A user seen in both windows is two units,
    one per window: the user's values within a window travel together, which is the standard
    cluster permutation (values of one unit are exchangeable only as a whole). A signal drifts
    when evidently says so and its score is above the floor.
    """
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if signal.kind == CATEGORICAL else ColumnType.Numerical
    test = get_stattest(reference.values, current.values, kind, settings["method"])
    result = test(reference.values, current.values, kind, settings["threshold"])
    pooled = pd.concat([reference.values, current.values], ignore_index=True)
    units = np.r_[reference.units, current.units + reference.unit_count]
    rng = np.random.default_rng(seed)
    floor = float(floor_scores(test, kind, pooled, units, reference.unit_count, rng, settings["threshold"]).max())
    score = float(result.drift_score)
    return {"score": score, "threshold": float(result.actual_threshold), "noise_floor": floor, "unit": signal.unit,
            "drifted": bool(result.drifted) and score > floor, "method": test.display_name}


def floor_scores(test, kind, pooled: pd.Series, units: np.ndarray, n_reference: int, rng,
                 threshold: float) -> np.ndarray:
    """The test's score for each of PERMUTATIONS random splits of the units (0, 1, ...: `units`
    gives each pooled value's), `n_reference` of them drawn as reference each time.

    Units whose histograms are equal are interchangeable: a split then only decides how many
    units of each kind go to the reference. Those numbers follow the multivariate
    hypergeometric distribution, the permutation's own, and are drawn as such: a few draws per
    kind instead of a shuffle of every unit, where there are few kinds (users active on one day,
    of one age group; requests, each one value).
    """
    n_units = int(units.max()) + 1
    histograms = _unit_histograms(test, kind, pooled, units, n_units)
    kinds = None if histograms is None else _alike(histograms[0])
    if kinds is not None:
        per_kind, sizes = kinds
        drawn = rng.multivariate_hypergeometric(sizes, n_reference, size=PERMUTATIONS)
        return _split_scores(per_kind, drawn, histograms[1], sizes)
    labels = np.r_[np.ones(n_reference, dtype=bool), np.zeros(n_units - n_reference, dtype=bool)]
    splits = rng.permuted(np.tile(labels, (PERMUTATIONS, 1)), axis=1)  # True: drawn as reference
    return split_scores(test, kind, pooled, units, splits, threshold)


def split_scores(test, kind, pooled: pd.Series, units: np.ndarray, splits: np.ndarray, threshold: float) -> np.ndarray:
    """The test's score for each split of the pooled values: `units` gives each value's unit
    (0, 1, ...) and a row of `splits` marks the units drawn as reference.

    Evidently's Jensen-Shannon (categorical) and normed Wasserstein distances are computed for
    all splits at once: each unit's histogram (its count of each category, or of each distinct
    number) is a column of a sparse matrix, so a split's reference histogram is a matrix
    product. Any other test is run one split at a time.
    """
    histograms = _unit_histograms(test, kind, pooled, units, splits.shape[1])
    if histograms is None:
        members = splits[:, units]
        return np.array([test(pooled[row], pooled[~row], kind, threshold).drift_score for row in members])
    return _split_scores(*histograms[:1], splits, histograms[1])


def _unit_histograms(test, kind, pooled: pd.Series, units: np.ndarray, n_units: int):
    """(bins × units sparse counts, the sorted numbers of the bins or None for categories), or
    None for a test not computed from histograms."""
    from evidently.legacy.core import ColumnType
    from scipy import sparse

    if test.name == "jensenshannon" and kind == ColumnType.Categorical:
        bins, x = pd.factorize(pooled)[0], None
    elif test.name == "wasserstein" and kind == ColumnType.Numerical:
        x, bins = np.unique(pooled.to_numpy(dtype=float), return_inverse=True)
    else:
        return None
    return sparse.csc_matrix((np.ones(len(bins)), (bins, units)), shape=(bins.max() + 1, n_units)), x


def _alike(per_unit):
    """(bins × kinds histograms, units of each kind) of the units' distinct histograms, or None
    when there are too many kinds for drawing by kind to pay (more than a quarter of the units)
    or too many bins to compare them cheaply."""
    from scipy import sparse

    n_bins, n_units = per_unit.shape
    if per_unit.nnz == n_units and (per_unit.data == 1).all():  # one value each: a unit's kind is its bin
        sizes = np.bincount(per_unit.indices, minlength=n_bins)
        per_kind, sizes = sparse.identity(n_bins, format="csc")[:, sizes > 0], sizes[sizes > 0]
    elif n_bins * n_units <= 5_000_000:  # each unit's histogram as one row of bytes, hashed
        rows = np.ascontiguousarray(per_unit.T.toarray(), dtype=np.int64)
        codes = pd.factorize(rows.view(np.dtype((np.void, rows.itemsize * n_bins))).ravel())[0]
        per_kind = sparse.csc_matrix(rows[np.unique(codes, return_index=True)[1]].T.astype(float))
        sizes = np.bincount(codes)
    else:
        return None
    return (per_kind, sizes) if len(sizes) <= n_units // 4 else None


def _split_scores(per_unit, drawn: np.ndarray, x, sizes: np.ndarray | None = None) -> np.ndarray:
    """The score of each split whose row of `drawn` says how many of each column of `per_unit`
    (bins × units, or kinds of unit with `sizes` units each) go to the reference: Jensen-Shannon
    of categories (`x` None), else normed Wasserstein of the sorted numbers `x`."""
    total = per_unit @ (np.ones(per_unit.shape[1]) if sizes is None else sizes.astype(float))
    step = max(1, 2_000_000 // len(total))  # splits per product: at most 2 M bins of 8 bytes at once
    scores = []
    for at in range(0, len(drawn), step):
        chunk = np.ascontiguousarray(drawn[at:at + step].T, dtype=float)  # units × splits, as scipy reads it
        ref = (per_unit @ chunk).T  # splits × bins: each split's reference counts
        scores.append(_jensenshannon(ref, total - ref) if x is None else _wasserstein(ref, total - ref, x))
    return np.concatenate(scores)


def _jensenshannon(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Evidently's Jensen-Shannon distance (scipy's, natural log) of each row's frequencies."""
    p, q = ref / ref.sum(axis=1, keepdims=True), cur / cur.sum(axis=1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / m), 0) + np.where(q > 0, q * np.log(q / m), 0)
    return np.sqrt(kl.sum(axis=1) / 2)


def _wasserstein(ref: np.ndarray, cur: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evidently's normed Wasserstein distance of each row's counts of the sorted values `x`:
    the area between the two distribution functions over the reference's standard deviation."""
    n_ref, n_cur = ref.sum(axis=1, keepdims=True), cur.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(ref, axis=1)[:, :-1] / n_ref - np.cumsum(cur, axis=1)[:, :-1] / n_cur)
    distance = gap @ np.diff(x)
    mean = ref @ x / n_ref[:, 0]
    std = np.sqrt(np.maximum(ref @ x ** 2 / n_ref[:, 0] - mean ** 2, 0))
    return distance / np.maximum(std, 0.001)


def describe_change(signal: Signal, reference: Column, current: Column, config: dict) -> str:
    """The change in plain words: the category whose share moved most, or the mean and median."""
    if signal.kind == CATEGORICAL:
        ref, cur = reference.values.value_counts(normalize=True), current.values.value_counts(normalize=True)
        both = pd.concat([ref, cur], axis=1).fillna(0)
        both.columns = ["ref", "cur"]
        top = (both["cur"] - both["ref"]).abs().idxmax()
        label = groups.describe(config["groups"]["age"], top) if signal.name == "age_group" else top
        return (f"the share of {signal.what} = {label} went from {both.loc[top, 'ref']:.0%} "
                f"to {both.loc[top, 'cur']:.0%}")
    r, c = reference.values, current.values
    means, medians, spreads = (distinct(f(r), f(c), 3) for f in (pd.Series.mean, pd.Series.median, pd.Series.std))
    return (f"the mean {signal.what} went from {means[0]} to {means[1]} (median {medians[0]} to {medians[1]}, "
            f"standard deviation {spreads[0]} to {spreads[1]})")


def reference_window(ctx) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Given bounds, the newest model's training window, or the `reference` span before."""
    settings = ctx.config["drift"]
    if ctx.reference is not None:
        return ctx.reference
    if settings["reference"] == "training":
        meta = ctx.store.model_metadata()
        if meta is not None:
            return pd.Timestamp(meta["train"]["since"]), pd.Timestamp(meta["cutoff"])
    span = pd.Timedelta(settings["reference_window"])
    return ctx.since - span, ctx.since


def audit(ctx) -> AuditResult:
    """The registered audit: every configured signal, the stored reference window against the
    run's window, aggregated in the database."""
    ref_since, ref_until = reference_window(ctx)
    return compare_windows(StoreSource(ctx.store, ref_since, ref_until), StoreSource(ctx.store, ctx.since, ctx.until),
                           ctx.config, _newest_model(ctx.store), ctx.out_dir)


def drift(reference, current, users: pd.DataFrame | None = None, movies: pd.DataFrame | None = None,
          config: dict | None = None, *, model=None, out_dir=None) -> AuditResult:
    """Compare two windows of events given as frames, as the drift audit compares stored ones.

    Data that was never ingested (a log parsed in a notebook, an export, a test's frames) gets
    the same verdicts, metrics and findings as the same events would get from the store.

    Parameters
    ----------
    reference, current : ParsedEvents or mapping
        The two windows: what `recaudit.read_log` returns (ParsedEvents), or a mapping or
        namespace with its watches, ratings, recommendations and items frames. Every event
        given is in the window; an item counts with its request.
    users : DataFrame, optional
        user_id, age, age_group, gender, occupation, and any other columns as the users'
        attributes (as ``Store.read("users")`` gives them). Without it, every active user's
        groups are unknown.
    movies : DataFrame, optional
        movie_id and genres (as ``Store.read("movies")`` gives them). Without it, every
        watched movie's genre is unknown.
    config : dict, optional
        Settings in the shape of recaudit.toml, over the defaults: ``{"drift": {"seed": 1}}``.
    model : Model, optional
        The recommender whose predicted ratings of the recommended movies are a signal; without
        one, that signal is skipped.
    out_dir : path, optional
        Where evidently's report of the comparison (drift.html, drift.json) is written, when
        the ``drift.report`` setting is on; none is written without it.

    Returns
    -------
    AuditResult
        Metrics ``drift.<signal>.score`` and ``drift.<signal>.drifted`` for every signal with
        enough values in both windows, ``drift.share_drifted`` and ``drift.dataset_drift``;
        a finding per drifted signal, and one for dataset drift.

    Raises
    ------
    ValueError
        When a window lacks one of its frames, or a frame (users and movies included) a
        column a signal reads: the frame and the columns are named.
    InputError
        When ``drift.attributes`` names an attribute that `users` has no column for.

    Examples
    --------
    Two days of a tiny log: too few values for any verdict, which the result says rather than
    guessing (``drift.min_sample`` values are needed in each window).

    >>> from recaudit.recsys.events import parse_bytes
    >>> day1 = parse_bytes(b"2024-01-01T10:00:00,1,GET /rate/a+2001=4\\n"
    ...                    b"2024-01-01T10:01:00,1,GET /data/m/a+2001/0.mpg\\n")
    >>> day2 = parse_bytes(b"2024-01-02T10:00:00,2,GET /rate/a+2001=1\\n")
    >>> result = drift(day1, day2)
    >>> result.status, result.metrics
    ('insufficient_data', {})
    >>> [(s["signal"], s["status"], s.get("reference_n"), s.get("current_n")) for s in result.details["signals"]][:2]
    [('rating', 'insufficient_data', 1, 1), ('ratings_per_user', 'insufficient_data', 1, 1)]
    """
    config = configuration.resolve(config)
    return compare_windows(FrameSource(reference, users, movies), FrameSource(current, users, movies),
                           config, model, out_dir)


def compare_windows(reference: SignalSource, current: SignalSource, config: dict, model=None,
                    out_dir=None) -> AuditResult:
    """Every enabled signal, reference against current window: the one computation behind the
    store-backed audit and `drift` on frames. Evidently's report is written into `out_dir`
    when one is given and the ``drift.report`` setting is on."""
    settings = config["drift"]
    for source in (reference, current) if settings["attributes"] else ():
        groups.require_attributes(source.attribute_names(), list(settings["attributes"]), "drift.attributes")
    basis = Basis(config, reference, model)
    metrics, findings, rows, columns = {}, [], [], {}
    for i, (signal, per) in enumerate(signals(config)):
        name = signal.name
        if not per["enabled"]:
            continue
        ref = column(signal, signal.build(reference, basis), config, 2 * i)
        cur = column(signal, signal.build(current, basis), config, 2 * i + 1)
        row = {"signal": name, "what": signal.what, "kind": signal.kind, "method": per["method"],
               "threshold": per["threshold"]}
        if ref is None:
            rows.append({**row, "status": "skipped", "note": "no trained model"})
            continue
        row.update({"unit": signal.unit, "reference_n": ref.population, "current_n": cur.population,
                    "reference_sample": len(ref.values), "current_sample": len(cur.values),
                    "reference_units": ref.unit_count, "current_units": cur.unit_count})
        if min(len(ref.values), len(cur.values)) < settings["min_sample"]:
            rows.append({**row, "status": "insufficient_data",
                         "note": f"needs {settings['min_sample']:,} values in each window"})
            continue
        verdict = compare(signal, ref, cur, per, seed=settings["seed"] + i)
        change = describe_change(signal, ref, cur, config)
        rows.append({**row, **verdict, "status": "drifted" if verdict["drifted"] else "stable", "change": change})
        metrics[f"drift.{name}.score"] = verdict["score"]
        metrics[f"drift.{name}.drifted"] = float(verdict["drifted"])
        columns[name] = (signal, ref, cur, per)
        if verdict["drifted"]:
            findings.append(Finding("drift", f"drift.{name}.score", "warning",
                                    f"{change} ({verdict['method']} {verdict['score']:.2f} ≥ {verdict['threshold']:g}; "
                                    f"noise floor {verdict['noise_floor']:.2f}, {signal.unit}s permuted)",
                                    value=verdict["score"], threshold=verdict["threshold"], kind="drift"))
    details = {"reference": _span(reference), "current": _span(current),
               "signals": rows, "max_sample": settings["max_sample"], "seed": settings["seed"]}
    if not columns:
        return AuditResult("drift", status="insufficient_data", details=details)
    drifted = [name for name in columns if metrics[f"drift.{name}.drifted"]]
    share = len(drifted) / len(columns)
    metrics["drift.share_drifted"] = share
    metrics["drift.dataset_drift"] = float(share >= settings["share_threshold"])
    if share >= settings["share_threshold"]:
        names = ", ".join(columns[n][0].what for n in drifted)
        findings.append(Finding("drift", "drift.share_drifted", settings["dataset_severity"],
                                f"dataset drift: {len(drifted)} of {len(columns)} signals drifted "
                                f"({share:.0%} ≥ {settings['share_threshold']:.0%}): {names}",
                                value=share, threshold=settings["share_threshold"], kind="dataset_drift"))
    if settings["report"] and out_dir is not None:
        details["artifacts"] = _evidently_report(columns, settings, Path(out_dir))
    return AuditResult("drift", metrics=metrics, findings=findings, details=details)


def _span(source: SignalSource) -> dict:
    """A window's bounds for the details (a window of frames: its first and last event)."""
    return {end: None if t is None else t.isoformat() for end, t in zip(("since", "until"), source.span)}


def _newest_model(store):
    from recaudit.recsys.recommender import Model

    found = store.model_artifact()
    return Model.load(found[1]) if found else None


# Evidently's page embeds every value raw in an inline <script> (a genre "</script><script>…"
# would end it and run what follows) and draws labels with plotly, which reads some markup in
# them (<b>, <br>, <a href>). The categories it is given (genres, occupations: data) show <, >
# and & in their fullwidth forms instead, which read alike and are markup to no parser. The
# column names are the signals' own, never data.
FULLWIDTH = str.maketrans({"<": "\uff1c", ">": "\uff1e", "&": "\uff06"})


def _evidently_report(columns: dict, settings: dict, out_dir) -> dict:
    """The comparison as evidently renders it, as its own HTML and JSON beside the run. The
    run's page shows the HTML in a sandboxed frame; its labels are made inert (FULLWIDTH)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    length = max(max(len(r.values), len(c.values)) for _, r, c, _ in columns.values())

    def shown(signal: Signal, window: Column) -> pd.Series:
        """A window's values as evidently gets them: labels inert, padded to the longest."""
        values = window.values.str.translate(FULLWIDTH) if signal.kind == CATEGORICAL else window.values
        return pd.Series(values.to_numpy()).reindex(range(length))

    def frame(which: int) -> pd.DataFrame:  # 1: the reference window, 2: the current one
        return pd.DataFrame({name: shown(parts[0], parts[which]) for name, parts in columns.items()})

    definition = DataDefinition(
        numerical_columns=[n for n, (s, *_rest) in columns.items() if s.kind == NUMERICAL],
        categorical_columns=[n for n, (s, *_rest) in columns.items() if s.kind == CATEGORICAL])
    preset = DataDriftPreset(drift_share=settings["share_threshold"],
                             per_column_method={n: p["method"] for n, (*_x, p) in columns.items()},
                             per_column_threshold={n: p["threshold"] for n, (*_x, p) in columns.items()})
    snapshot = Report([preset]).run(Dataset.from_pandas(frame(2), data_definition=definition),
                                    Dataset.from_pandas(frame(1), data_definition=definition))
    write_atomic(out_dir / "drift.html", snapshot.get_html_str(as_iframe=False))
    write_atomic(out_dir / "drift.json", json.dumps(snapshot.dict(), indent=2, default=str) + "\n")
    return {"html": "drift.html", "json": "drift.json"}
