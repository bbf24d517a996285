"""Drift: does the current window look like the reference one, on the signals that matter for a
recommender? Each signal is one column per window, built from aggregates computed in the
database (a day of 8 M events becomes at most a few hundred thousand values), and compared with
an effect-size test from evidently (Jensen-Shannon or normed Wasserstein distance), so that a
large window does not flag a trivial change the way p-values at millions of rows would.

Categorical signals are compared as exact frequencies; numerical ones are sampled (seeded)
beyond a bound, and the result says how much was sampled. A signal with too little data says
so instead of guessing. The evidently report of the comparison is saved beside the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from recaudit.audits import groups
from recaudit.audits.files import write_atomic
from recaudit.audits.result import AuditResult, Finding

CATEGORICAL, NUMERICAL = "categorical", "numerical"


@dataclass
class Signal:
    name: str
    kind: str
    what: str  # in words, for findings: "rating", "watch minutes per session"
    build: Callable  # (SignalSource, since, until) -> values (categorical: counts by category)


@dataclass
class Column:
    """One signal in one window: a sample of values, and the size of what it stands for."""

    values: pd.Series
    population: int

    @property
    def sampled(self) -> bool:
        return len(self.values) < self.population


TIERS = (("head", 0.5), ("middle", 0.8), ("tail", 1.0))  # movies taking 50%, the next 30%, the last 20% of viewing


class SignalSource:
    """Reads what the signals need from the store, once per window; popularity tiers come from
    the reference window."""

    def __init__(self, store, config: dict, tiers: pd.Series | None = None, model=None, tier_window=None):
        self.store, self.config, self.tiers, self.model = store, config, tiers, model
        self.tier_window = tier_window  # the window the tiers were drawn from (its half 0)
        self._cache: dict = {}

    def cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def sessions(self, since, until) -> pd.DataFrame:
        return self.cached(("sessions", since, until), lambda: self.store.watch_sessions(since, until))

    def watchers_per_movie(self, since, until, half: int | None = None) -> pd.Series:
        """Sessions (user-days) per movie; `half` keeps one of two fixed halves of the users."""
        s = self.sessions(since, until)
        if half is not None:
            s = s[_half(s["user_id"]) == half]
        return s.groupby("movie_id", observed=True).size()

    def active(self, since, until) -> pd.DataFrame:
        """The attributes of every user active on each day (one row per user-day)."""
        return self.cached(("active", since, until), lambda: self.store.active_user_days(since, until))


def _half(user_ids: pd.Series) -> np.ndarray:
    """A fixed split of users in two (by a hash of the id)."""
    return ((user_ids.to_numpy(dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(int)


def _counts(values: pd.Series) -> pd.Series:
    return values.astype(str).value_counts()


def _rating(src, a, b):
    c = src.store.value_counts("ratings", "rating", a, b)
    return pd.Series(c["n"].to_numpy(), index=c["value"].astype(str))


def _status(src, a, b):
    c = src.store.value_counts("recommendations", "status", a, b)
    return pd.Series(c["n"].to_numpy(), index=c["value"].astype(str))


def _ratings_per_user(src, a, b):
    return src.store.per_user_day("ratings", a, b)["n"].astype(float)


def _minutes(src, a, b):
    return src.sessions(a, b)["minutes"].astype(float)


def popularity_tiers(watchers: pd.Series) -> pd.Series:
    """Each movie's tier in a window's viewing: head (the most watched movies, taking the first
    half of all sessions), middle (the next 30%), tail (the last 20%)."""
    ordered = watchers.sort_values(ascending=False, kind="stable")
    reach = ordered.cumsum() / max(ordered.sum(), 1)
    before = reach - ordered / max(ordered.sum(), 1)  # the share of viewing ahead of each movie
    labels = np.select([before < bound for _, bound in TIERS[:-1]], [name for name, _ in TIERS[:-1]], TIERS[-1][0])
    return pd.Series(labels, index=ordered.index.astype(str))


def _tier_counts(src, counts: pd.Series) -> pd.Series:
    """How many of the counted items fall in each reference popularity tier (or are new)."""
    tiers = src.tiers if src.tiers is not None else pd.Series(dtype=object)
    tier = tiers.reindex(counts.index.astype(str)).fillna("new")
    return pd.Series(counts.to_numpy(), index=tier.to_numpy()).groupby(level=0).sum()


def _watched_popularity(src, a, b):
    # In the reference window, the tiers were drawn from half of the users: the other half is
    # compared, or movies that were lucky in the draw would seem to lose viewers everywhere.
    return _tier_counts(src, src.watchers_per_movie(a, b, half=1 if (a, b) == src.tier_window else None))


def _recommended_popularity(src, a, b):
    rec = src.store.recommended_counts(a, b)
    return _tier_counts(src, pd.Series(rec["n"].to_numpy(), index=rec["movie_id"].astype(str)))


def _genre(src, a, b):
    movies = src.cached("movies", lambda: src.store.read("movies")).set_index("movie_id")["genres"]
    watchers = src.watchers_per_movie(a, b)
    genres = movies.reindex(watchers.index.astype(str)).fillna("").str.split("|")
    exploded = pd.DataFrame({"genre": genres.to_numpy(), "n": watchers.to_numpy()}).explode("genre")
    exploded["genre"] = exploded["genre"].replace("", groups.UNKNOWN)
    return exploded.groupby("genre")["n"].sum()


def _age_group(src, a, b):
    return _counts(groups.age_group(src.active(a, b), src.config["groups"]["age"]))


def _sex(src, a, b):
    return _counts(groups.sex(src.active(a, b)))


def _occupation(src, a, b):
    return _counts(groups.occupation(src.active(a, b)))


def _latency(src, a, b):
    c = src.store.value_counts("recommendations", "latency_ms", a, b, where="status = 200")
    return pd.DataFrame({"value": c["value"].astype(float), "weight": c["n"].astype(float)})


def _predicted_score(src, a, b):
    """What the model predicts for the movies it was asked to recommend (prediction drift)."""
    if src.model is None:
        return None
    items = src.store.read("items", a, b)
    if items.empty:
        return pd.Series(dtype=float)
    recs = src.store.read("recommendations", a, b)[["source_id", "line", "user_id"]]
    pairs = items.merge(recs, on=["source_id", "line"])
    limit = src.config["drift"]["max_sample"]
    if len(pairs) > limit:
        pairs = pairs.sample(limit, random_state=src.config["drift"]["seed"])
    predicted, _cold = src.model.predict(pairs["user_id"].to_numpy(), pairs["movie_id"].astype(str).to_numpy())
    return pd.Series(predicted)


SIGNALS = {s.name: s for s in (
    Signal("rating", CATEGORICAL, "rating", _rating),
    Signal("ratings_per_user", NUMERICAL, "ratings per rater per day", _ratings_per_user),
    Signal("minutes_per_session", NUMERICAL, "watch minutes per session", _minutes),
    Signal("watched_popularity", CATEGORICAL, "watched movies' popularity tier", _watched_popularity),
    Signal("recommended_popularity", CATEGORICAL, "recommended movies' popularity tier", _recommended_popularity),
    Signal("genre", CATEGORICAL, "genre of watched movies", _genre),
    Signal("age_group", CATEGORICAL, "age group of daily active users", _age_group),
    Signal("sex", CATEGORICAL, "sex of daily active users", _sex),
    Signal("occupation", CATEGORICAL, "occupation of daily active users", _occupation),
    Signal("latency", NUMERICAL, "recommendation latency (ms)", _latency),
    Signal("status", CATEGORICAL, "request status", _status),
    Signal("predicted_score", NUMERICAL, "predicted rating of recommended movies", _predicted_score),
)}


def column(signal: Signal, raw, config: dict, salt: int) -> Column | None:
    """A comparable column from what a builder returned: categorical counts become exact
    frequencies over at most `max_sample` rows; numbers (weighted or not) a seeded sample."""
    if raw is None:
        return None
    limit, seed = config["drift"]["max_sample"], config["drift"]["seed"]
    if signal.kind == CATEGORICAL:
        counts = raw[raw > 0]
        total = int(counts.sum())
        size = min(total, limit)
        if size == 0:
            return Column(pd.Series([], dtype=object), 0)
        share = counts.to_numpy(dtype=float) / total * size
        n = np.floor(share).astype(int)
        n[np.argsort(-(share - n), kind="stable")[: size - n.sum()]] += 1  # largest remainders
        return Column(pd.Series(np.repeat(counts.index.astype(str).to_numpy(), n), dtype=object), total)
    rng = np.random.default_rng([seed, salt])
    if isinstance(raw, pd.DataFrame):  # values with weights
        weights = raw["weight"].to_numpy(dtype=float)
        total = int(weights.sum())
        if total == 0:
            return Column(pd.Series([], dtype=float), 0)
        if total <= limit and np.allclose(weights, np.round(weights)):
            values = np.repeat(raw["value"].to_numpy(dtype=float), weights.astype(int))
        else:
            values = rng.choice(raw["value"].to_numpy(dtype=float), size=min(total, limit), p=weights / weights.sum())
        return Column(pd.Series(values), total)
    values = raw.to_numpy(dtype=float)
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
    """The registered audit: every configured signal, reference against current window."""
    config, settings = ctx.config, ctx.config["drift"]
    ref_since, ref_until = reference_window(ctx)
    src = SignalSource(ctx.store, config, model=_newest_model(ctx.store), tier_window=(ref_since, ref_until))
    src.tiers = popularity_tiers(src.watchers_per_movie(ref_since, ref_until, half=0))
    metrics, findings, rows, columns = {}, [], [], {}
    for i, (name, signal) in enumerate(SIGNALS.items()):
        per = settings["signals"][name]
        if not per["enabled"]:
            continue
        reference = column(signal, signal.build(src, ref_since, ref_until), config, 2 * i)
        current = column(signal, signal.build(src, ctx.since, ctx.until), config, 2 * i + 1)
        row = {"signal": name, "what": signal.what, "kind": signal.kind, "method": per["method"],
               "threshold": per["threshold"]}
        if reference is None:
            rows.append({**row, "status": "skipped", "note": "no trained model"})
            continue
        row.update({"reference_n": reference.population, "current_n": current.population,
                    "reference_sample": len(reference.values), "current_sample": len(current.values)})
        if min(len(reference.values), len(current.values)) < settings["min_sample"]:
            rows.append({**row, "status": "insufficient_data",
                         "note": f"needs {settings['min_sample']:,} values in each window"})
            continue
        verdict = compare(signal, reference, current, per, seed=settings["seed"] + i)
        change = describe_change(signal, reference, current, config)
        rows.append({**row, **verdict, "status": "drifted" if verdict["drifted"] else "stable", "change": change})
        metrics[f"drift.{name}.score"] = verdict["score"]
        metrics[f"drift.{name}.drifted"] = float(verdict["drifted"])
        columns[name] = (signal, reference, current, per)
        if verdict["drifted"]:
            findings.append(Finding("drift", f"drift.{name}.score", "warning",
                                    f"{change} ({verdict['method']} {verdict['score']:.2f} ≥ {verdict['threshold']:g})",
                                    value=verdict["score"], threshold=verdict["threshold"], kind="drift"))
    details = {"reference": {"since": ref_since.isoformat(), "until": ref_until.isoformat()},
               "current": {"since": ctx.since.isoformat(), "until": ctx.until.isoformat()},
               "signals": rows, "max_sample": settings["max_sample"], "seed": settings["seed"]}
    if not columns:
        return AuditResult("drift", status="insufficient_data", details=details)
    drifted = [name for name in columns if metrics[f"drift.{name}.drifted"]]
    share = len(drifted) / len(columns)
    metrics["drift.share_drifted"] = share
    metrics["drift.dataset_drift"] = float(share >= settings["share_threshold"])
    if share >= settings["share_threshold"]:
        names = ", ".join(SIGNALS[n].what for n in drifted)
        findings.append(Finding("drift", "drift.share_drifted", settings["dataset_severity"],
                                f"dataset drift: {len(drifted)} of {len(columns)} signals drifted "
                                f"({share:.0%} ≥ {settings['share_threshold']:.0%}): {names}",
                                value=share, threshold=settings["share_threshold"], kind="dataset_drift"))
    if settings["report"]:
        details["artifacts"] = _evidently_report(columns, settings, ctx.out_dir)
    return AuditResult("drift", metrics=metrics, findings=findings, details=details)


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
