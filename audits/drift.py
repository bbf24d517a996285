"""Drift: does the current window look like the reference one, on the signals that matter for a
recommender? Each signal is one column per window, built from aggregates of the window's events
(a SignalSource: frames, or the store, where the database does the grouping and a day of 8 M
events becomes at most a few hundred thousand values), and compared with an effect-size test
from evidently (Jensen-Shannon or normed Wasserstein distance), so that a large window does not
flag a trivial change the way p-values at millions of rows would.

Categorical signals are compared as exact frequencies; numerical ones are sampled (seeded)
beyond a bound, and the result says how much was sampled. A signal with too little data says
so instead of guessing. The evidently report of the comparison is saved beside the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recaudit.audits import config as configuration
from recaudit.audits import groups
from recaudit.audits.drift_sources import FrameSource, SignalSource, StoreSource
from recaudit.audits.files import write_atomic
from recaudit.audits.result import AuditResult, Finding

CATEGORICAL, NUMERICAL = "categorical", "numerical"


@dataclass
class Signal:
    name: str
    kind: str
    what: str  # in words, for findings: "rating", "watch minutes per session"
    build: Callable  # (SignalSource, Basis) -> values (categorical: counts by category)


@dataclass
class Column:
    """One signal in one window: a sample of values, and the size of what it stands for."""

    values: pd.Series
    population: int

    @property
    def sampled(self) -> bool:
        return len(self.values) < self.population


TIERS = (("head", 0.5), ("middle", 0.8), ("tail", 1.0))  # movies taking 50%, the next 30%, the last 20% of viewing


@dataclass
class Basis:
    """What both windows are read against: the settings, the model whose predictions are a
    signal (None: no trained model), and the reference window, whose viewing draws the
    popularity tiers (from half of its users: see `_watched_popularity`)."""

    config: dict
    reference: SignalSource
    model: object | None = None

    @cached_property
    def tiers(self) -> pd.Series:
        return popularity_tiers(self.reference.watchers_per_movie(half=0))


def _counts(values: pd.Series) -> pd.Series:
    return values.astype(str).value_counts()


def _labelled(counts: pd.Series) -> pd.Series:
    return pd.Series(counts.to_numpy(), index=counts.index.astype(str))


def _rating(src, basis):
    return _labelled(src.value_counts("ratings", "rating"))


def _status(src, basis):
    return _labelled(src.value_counts("recommendations", "status"))


def _ratings_per_user(src, basis):
    return src.ratings_per_user_day().astype(float)


def _minutes(src, basis):
    return src.sessions["minutes"].astype(float)


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


def _tier_counts(basis, counts: pd.Series) -> pd.Series:
    """How many of the counted items fall in each reference popularity tier (or are new)."""
    tier = basis.tiers.reindex(counts.index.astype(str)).fillna("new")
    return pd.Series(counts.to_numpy(), index=tier.to_numpy()).groupby(level=0).sum()


def _watched_popularity(src, basis):
    # In the reference window, the tiers were drawn from half of the users: the other half is
    # compared, or movies that were lucky in the draw would seem to lose viewers everywhere.
    return _tier_counts(basis, src.watchers_per_movie(half=1 if src is basis.reference else None))


def _recommended_popularity(src, basis):
    return _tier_counts(basis, src.recommended_counts())


def _genre(src, basis):
    watchers = src.watchers_per_movie()
    genres = src.genres().reindex(watchers.index).fillna("").str.split("|")
    exploded = pd.DataFrame({"genre": genres.to_numpy(), "n": watchers.to_numpy()}).explode("genre")
    exploded["genre"] = exploded["genre"].replace("", groups.UNKNOWN)
    return exploded.groupby("genre")["n"].sum()


def _age_group(src, basis):
    return _counts(groups.age_group(src.active, basis.config["groups"]["age"]))


def _sex(src, basis):
    return _counts(groups.sex(src.active))


def _occupation(src, basis):
    return _counts(groups.occupation(src.active))


def _attribute(name: str, src, basis):
    """Active user-days per group of a user attribute: its values, or its bins (groups.bins)."""
    counts = src.attribute_counts(name)
    labels = groups.attribute(pd.Series(counts.index, dtype=object), basis.config["groups"]["bins"].get(name))
    return pd.Series(counts.to_numpy(), index=labels.to_numpy()).groupby(level=0).sum()


def _latency(src, basis):
    c = src.value_counts("recommendations", "latency_ms", successful=True)
    return pd.DataFrame({"value": c.index.to_numpy(dtype=float), "weight": c.to_numpy(dtype=float)})


def _predicted_score(src, basis):
    """What the model predicts for the movies it was asked to recommend (prediction drift)."""
    if basis.model is None:
        return None
    pairs = src.recommended_pairs()
    if pairs.empty:
        return pd.Series(dtype=float)
    limit, seed = basis.config["drift"]["max_sample"], basis.config["drift"]["seed"]
    if len(pairs) > limit:  # drawn from the pairs in a fixed order: the same sample from any source
        pairs = (pairs.assign(movie_id=pairs["movie_id"].astype(str))
                 .sort_values(["user_id", "movie_id"], kind="stable", ignore_index=True)
                 .sample(limit, random_state=seed))
    predicted, _cold = basis.model.predict(pairs["user_id"].to_numpy(), pairs["movie_id"].astype(str).to_numpy())
    return pd.Series(predicted)


_BUILDERS = {  # name (configuration.DRIFT_SIGNALS): kind, what, build
    "rating": (CATEGORICAL, "rating", _rating),
    "ratings_per_user": (NUMERICAL, "ratings per rater per day", _ratings_per_user),
    "minutes_per_session": (NUMERICAL, "watch minutes per session", _minutes),
    "watched_popularity": (CATEGORICAL, "watched movies' popularity tier", _watched_popularity),
    "recommended_popularity": (CATEGORICAL, "recommended movies' popularity tier", _recommended_popularity),
    "genre": (CATEGORICAL, "genre of watched movies", _genre),
    "age_group": (CATEGORICAL, "age group of daily active users", _age_group),
    "sex": (CATEGORICAL, "sex of daily active users", _sex),
    "occupation": (CATEGORICAL, "occupation of daily active users", _occupation),
    "latency": (NUMERICAL, "recommendation latency (ms)", _latency),
    "status": (CATEGORICAL, "request status", _status),
    "predicted_score": (NUMERICAL, "predicted rating of recommended movies", _predicted_score),
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
        (Signal(name, CATEGORICAL, f"{name} of daily active users", partial(_attribute, name)), per)
        for name, per in settings["attributes"].items()]


def column(signal: Signal, raw, config: dict, salt: int) -> Column | None:
    """A comparable column from what a builder returned: categorical counts become exact
    frequencies over at most `max_sample` rows; numbers (weighted or not) a seeded sample.

    Values are taken in a fixed order (categories by label, numbers ascending) before they
    are sampled, so that a column depends only on the data, not on the order a source
    listed it in: frames and the store give the same column.
    """
    if raw is None:
        return None
    limit, seed = config["drift"]["max_sample"], config["drift"]["seed"]
    if signal.kind == CATEGORICAL:
        counts = raw[raw > 0]
        counts = counts.groupby(counts.index.astype(str)).sum()
        total = int(counts.sum())
        size = min(total, limit)
        if size == 0:
            return Column(pd.Series([], dtype=object), 0)
        share = counts.to_numpy(dtype=float) / total * size
        n = np.floor(share).astype(int)
        n[np.argsort(-(share - n), kind="stable")[: size - n.sum()]] += 1  # largest remainders
        return Column(pd.Series(np.repeat(counts.index.to_numpy(), n), dtype=object), total)
    rng = np.random.default_rng([seed, salt])
    if isinstance(raw, pd.DataFrame):  # values with weights
        raw = raw.sort_values("value", kind="stable")
        weights = raw["weight"].to_numpy(dtype=float)
        total = int(weights.sum())
        if total == 0:
            return Column(pd.Series([], dtype=float), 0)
        if total <= limit and np.allclose(weights, np.round(weights)):
            values = np.repeat(raw["value"].to_numpy(dtype=float), weights.astype(int))
        else:
            values = rng.choice(raw["value"].to_numpy(dtype=float), size=min(total, limit), p=weights / weights.sum())
        return Column(pd.Series(values), total)
    values = np.sort(raw.to_numpy(dtype=float))
    if len(values) > limit:
        values = rng.choice(values, size=limit, replace=False)
    return Column(pd.Series(values), len(raw))


PERMUTATIONS = 49  # chance alone exceeds the largest of 49 random splits one time in 50
FLOOR_SAMPLE = 20_000


def compare(signal: Signal, reference: Column, current: Column, settings: dict, seed: int = 0) -> dict:
    """One signal's verdict: evidently's test (score, threshold), and the noise floor.

    A distance between two finite samples is never zero: at 500 values per window the normed
    Wasserstein distance between samples of one distribution is about 0.1, at 100,000 about
    0.007. The floor is the largest score of PERMUTATIONS random splits of the pooled values
    (at most FLOOR_SAMPLE per window, which overstates the floor of larger samples). A signal
    drifts when evidently says so and its score is above the floor.
    """
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if signal.kind == CATEGORICAL else ColumnType.Numerical
    test = get_stattest(reference.values, current.values, kind, settings["method"])
    result = test(reference.values, current.values, kind, settings["threshold"])
    rng = np.random.default_rng(seed)
    ref = reference.values.sample(min(len(reference.values), FLOOR_SAMPLE), random_state=rng.integers(2**31))
    cur = current.values.sample(min(len(current.values), FLOOR_SAMPLE), random_state=rng.integers(2**31))
    pooled = pd.concat([ref, cur], ignore_index=True)
    labels = np.r_[np.ones(len(ref), dtype=bool), np.zeros(len(cur), dtype=bool)]
    splits = rng.permuted(np.tile(labels, (PERMUTATIONS, 1)), axis=1)  # True: drawn as reference
    floor = float(split_scores(test, kind, pooled, splits, settings["threshold"]).max())
    score = float(result.drift_score)
    return {"score": score, "threshold": float(result.actual_threshold), "noise_floor": floor,
            "drifted": bool(result.drifted) and score > floor, "method": test.display_name}


def split_scores(test, kind, pooled: pd.Series, splits: np.ndarray, threshold: float) -> np.ndarray:
    """The test's score for each split of the pooled values (a row of `splits` marks the values
    drawn as reference). Evidently's Jensen-Shannon (categorical) and normed Wasserstein
    distances are computed for all splits at once; any other test, one split at a time."""
    from evidently.legacy.core import ColumnType

    if test.name == "jensenshannon" and kind == ColumnType.Categorical:
        codes, _ = pd.factorize(pooled)
        ref = np.stack([np.bincount(codes[row], minlength=codes.max() + 1) for row in splits]).astype(float)
        cur = np.bincount(codes, minlength=codes.max() + 1)[None, :] - ref
        p, q = ref / ref.sum(axis=1, keepdims=True), cur / cur.sum(axis=1, keepdims=True)
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * np.log(p / m), 0) + np.where(q > 0, q * np.log(q / m), 0)
        return np.sqrt(kl.sum(axis=1) / 2)
    if test.name == "wasserstein" and kind == ColumnType.Numerical:
        values = pooled.to_numpy(dtype=float)
        order = np.argsort(values, kind="stable")
        x, member = values[order], splits[:, order]
        n_ref, n_cur = member.sum(axis=1, keepdims=True), (~member).sum(axis=1, keepdims=True)
        gaps = np.diff(x)
        cdf_gap = np.abs(np.cumsum(member, axis=1)[:, :-1] / n_ref - np.cumsum(~member, axis=1)[:, :-1] / n_cur)
        distance = (cdf_gap * gaps).sum(axis=1)
        mean = (member * x).sum(axis=1) / n_ref[:, 0]
        std = np.sqrt(np.maximum((member * x ** 2).sum(axis=1) / n_ref[:, 0] - mean ** 2, 0))
        return distance / np.maximum(std, 0.001)
    return np.array([test(pooled[row], pooled[~row], kind, threshold).drift_score for row in splits])


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
    return (f"the mean {signal.what} went from {r.mean():.3g} to {c.mean():.3g} "
            f"(median {r.median():.3g} to {c.median():.3g})")


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
        row.update({"reference_n": ref.population, "current_n": cur.population,
                    "reference_sample": len(ref.values), "current_sample": len(cur.values)})
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
                                    f"{change} ({verdict['method']} {verdict['score']:.2f} ≥ {verdict['threshold']:g})",
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
