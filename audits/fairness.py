"""Fairness: does the model serve every group of users equally well, beyond chance?

A single RMSE hides bad service for small groups, and small groups also produce large gaps by
chance. So each group's accuracy comes with a 95% interval from a bootstrap that resamples
users (one user's ratings are not independent), and a gap is reported only when it is above
its threshold and its interval excludes zero.

The gap of a dimension is worst − best over the groups with at least `min_group_size`
ratings. Its interval is that of the same two groups' difference across resamples: a
resampled max − min would be positive by construction and could never exclude zero.

`audit` (the CLI and the scheduler) builds the ratings frame from the store and a trained
model's predictions; `fairness` takes one made anywhere, with dimensions of its own. Both hand
it to `assess`. Ranking quality and online success per group need the model and the logs, and
stay with `audit`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recaudit.audits import config as configuration
from recaudit.audits import groups
from recaudit.audits.result import AuditResult, Finding

# The dimensions recaudit.toml may name for stored users, and the column of the evaluated ratings
# each is read from (the one `export` writes and `fairness` reads). A metric key names the dimension.
COLUMNS = {"sex": "sex", "age": "age_group", "occupation": "occupation"}
ACCURACY = ("rmse", "mae")
DIMENSION_WORDS = {"age": "age group", "age_group": "age group"}
# The columns of a ratings frame `fairness` reads as its inputs: a dimension of that name would
# overwrite them.
INPUTS = ("user_id", "rating", "prediction", "cold_start")
# Columns of a ratings frame that are never a dimension to compare users by.
NOT_DIMENSIONS = (*INPUTS, "movie_id", "time")


@dataclass
class Interval:
    low: float | None
    high: float | None


@dataclass
class GroupMetrics:
    """RMSE and MAE of one set of predictions, overall and per group of one dimension, in the
    manner of fairlearn's MetricFrame (`overall`, `by_group`, `difference()`), with bootstrap
    intervals over users."""

    error: np.ndarray  # prediction − rating, one per rating
    user: np.ndarray  # who gave each rating
    group: np.ndarray  # the user's group in this dimension
    min_group_size: int = 100  # ratings; smaller groups get no verdict
    min_group_users: int = 20  # and users: one user's ratings say little about a group
    resamples: int = 200
    seed: int = 0
    confidence: float = 0.95
    _boot: dict = field(default_factory=dict, repr=False)

    @cached_property
    def _users(self):
        """Per user: group code, number of ratings, sums of squared and absolute errors."""
        users, at = np.unique(self.user, return_inverse=True)
        labels, codes = np.unique(self.group.astype(str), return_inverse=True)
        n = np.bincount(at, minlength=len(users)).astype(float)
        sse = np.bincount(at, weights=self.error ** 2, minlength=len(users))
        sae = np.bincount(at, weights=np.abs(self.error), minlength=len(users))
        code = np.zeros(len(users), dtype=np.int64)
        code[at] = codes  # a user is in one group per dimension
        return labels, code, n, sse, sae

    @property
    def overall(self) -> dict:
        return _metrics(self.error) | {"n": len(self.error), "users": len(np.unique(self.user))}

    @cached_property
    def by_group(self) -> pd.DataFrame:
        """One row per group: n, users, rmse, mae, and whether it is big enough for a verdict."""
        labels, code, n, sse, sae = self._users
        sizes = np.bincount(code, weights=n, minlength=len(labels))
        table = pd.DataFrame({
            "n": sizes.astype(np.int64), "users": np.bincount(code, minlength=len(labels)),
            "rmse": np.sqrt(np.bincount(code, weights=sse, minlength=len(labels)) / sizes),
            "mae": np.bincount(code, weights=sae, minlength=len(labels)) / sizes,
        }, index=pd.Index(labels, name="group"))
        table["sufficient"] = (table["n"] >= self.min_group_size) & (table["users"] >= self.min_group_users)
        return table

    @cached_property
    def intervals(self) -> pd.DataFrame:
        """Per group, each metric's interval: rmse_low, rmse_high, mae_low, mae_high."""
        draws = self._draws()
        table = pd.DataFrame(index=self.by_group.index)
        for i, metric in enumerate(ACCURACY):
            table[f"{metric}_low"], table[f"{metric}_high"] = _percentiles(draws[:, :, i], self.confidence)
        return table

    def worst_and_best(self, metric: str = "rmse") -> tuple[str, str] | None:
        """The groups with the highest and lowest metric, among those with enough ratings."""
        eligible = self.by_group[self.by_group["sufficient"]]
        if len(eligible) < 2:
            return None
        return eligible[metric].idxmax(), eligible[metric].idxmin()

    def difference(self, metric: str = "rmse") -> float | None:
        pair = self.worst_and_best(metric)
        return None if pair is None else float(self.by_group.at[pair[0], metric] - self.by_group.at[pair[1], metric])

    def ratio(self, metric: str = "rmse") -> float | None:
        pair = self.worst_and_best(metric)
        if pair is None or self.by_group.at[pair[1], metric] == 0:
            return None
        return float(self.by_group.at[pair[0], metric] / self.by_group.at[pair[1], metric])

    @property
    def difference_confidence(self) -> float:
        """The gap's confidence, Bonferroni-adjusted for the pairs of groups it was picked from:
        with many groups the largest of many gaps looks significant by chance."""
        m = int(self.by_group["sufficient"].sum())
        return 1 - (1 - self.confidence) / max(1, m * (m - 1) // 2)

    def difference_interval(self, metric: str = "rmse") -> Interval:
        """The interval of worst − best, from the spread of the same two groups' difference over
        the resamples (gap ± z·sd: a few hundred resamples cannot place the far percentiles a
        Bonferroni-adjusted level asks for)."""
        pair = self.worst_and_best(metric)
        if pair is None:
            return Interval(None, None)
        at = list(self.by_group.index)
        i = ACCURACY.index(metric)
        draws = self._draws()
        spread = draws[:, at.index(pair[0]), i] - draws[:, at.index(pair[1]), i]
        spread = spread[np.isfinite(spread)]
        if len(spread) < 2:
            return Interval(None, None)
        from scipy.stats import norm

        half = norm.isf((1 - self.difference_confidence) / 2) * float(np.std(spread, ddof=1))
        gap = self.difference(metric)
        return Interval(gap - half, gap + half)

    def _draws(self) -> np.ndarray:
        """resamples × groups × (rmse, mae): the groups' metrics over resamples of users drawn
        with replacement from all users (a group may be absent from a draw: NaN)."""
        if "draws" not in self._boot:
            labels, code, n, sse, sae = self._users
            rng = np.random.default_rng(self.seed)
            draws = np.full((self.resamples, len(labels), 2), np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                for b in range(self.resamples):
                    weight = np.bincount(rng.integers(0, len(n), len(n)), minlength=len(n)).astype(float)
                    total = np.bincount(code, weights=weight * n, minlength=len(labels))
                    draws[b, :, 0] = np.sqrt(np.bincount(code, weights=weight * sse, minlength=len(labels)) / total)
                    draws[b, :, 1] = np.bincount(code, weights=weight * sae, minlength=len(labels)) / total
            self._boot["draws"] = draws
        return self._boot["draws"]


def _metrics(error: np.ndarray) -> dict:
    if len(error) == 0:
        return {"rmse": None, "mae": None}
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the central `confidence` interval of the draws, ignoring absent ones."""
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (a group never drawn): no interval
        return np.nanpercentile(draws, tail, axis=0), np.nanpercentile(draws, 100 - tail, axis=0)


def _float(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# ---------------------------------------------------------------------------------------------
# Metrics and findings: one computation for the scheduled audit and for `fairness`.

def group_metrics(evaluated: pd.DataFrame, column: str, settings: dict) -> GroupMetrics:
    return GroupMetrics((evaluated["prediction"] - evaluated["rating"]).to_numpy(dtype=float),
                        evaluated["user_id"].to_numpy(), evaluated[column].to_numpy(),
                        min_group_size=settings["min_group_size"], min_group_users=settings["min_group_users"],
                        resamples=settings["resamples"], seed=settings["seed"], confidence=settings["confidence"])


def assess(evaluated: pd.DataFrame, settings: dict, age_bins: dict, ranking: pd.DataFrame | None = None,
           online: pd.DataFrame | None = None,
           dimensions: dict[str, str] | None = None) -> tuple[dict, list[Finding], list[dict]]:
    """Metrics, findings and per-group rows for evaluated ratings (user_id, rating, prediction,
    cold_start and a column per dimension). `dimensions` maps each dimension's name, the one
    metric keys and findings use, to its column: by default the configured dimensions of stored
    users (`COLUMNS`). `ranking` (user_id, hit, ndcg) and `online` (user_id, success), with the
    same columns, add ranking quality and online success per group."""
    if dimensions is None:
        dimensions = {dim: COLUMNS[dim] for dim in settings["dimensions"]}
    metrics: dict[str, float | None] = {}
    findings: list[Finding] = []
    rows: list[dict] = []
    warm = evaluated[~evaluated["cold_start"]]
    for name, part in (("", evaluated), ("_warm", warm)):
        for metric, value in _metrics((part["prediction"] - part["rating"]).to_numpy(dtype=float)).items():
            metrics[f"fairness.{metric}{name}"] = value
    metrics["fairness.n"] = len(evaluated)
    metrics["fairness.cold_start_share"] = float(evaluated["cold_start"].mean())
    for dim, column in dimensions.items():
        frame = group_metrics(evaluated, column, settings)
        warm_frame = group_metrics(warm, column, settings).by_group if len(warm) else None
        table = frame.by_group.join(frame.intervals)
        cold = evaluated.groupby(column)["cold_start"].mean()
        extra = {key: _by(part, column, col) for key, part, col in
                 (("hit_rate", ranking, "hit"), ("ndcg", ranking, "ndcg"), ("success_rate", online, "success"))
                 if part is not None}
        for group, row in table.iterrows():
            out = {"dimension": dim, "group": group, "label": _label(dim, group, age_bins), "n": int(row["n"]),
                   "users": int(row["users"]), "sufficient": bool(row["sufficient"]),
                   "cold_start_share": float(cold.get(group, np.nan))}
            metrics[f"fairness.n.{dim}.{group}"] = out["n"]
            metrics[f"fairness.cold_start_share.{dim}.{group}"] = out["cold_start_share"]
            for metric in ACCURACY:
                value = float(row[metric]) if row["sufficient"] else None
                out[metric] = value
                out[f"{metric}_low"] = _float(row[f"{metric}_low"]) if row["sufficient"] else None
                out[f"{metric}_high"] = _float(row[f"{metric}_high"]) if row["sufficient"] else None
                w = warm_frame.loc[group] if warm_frame is not None and group in warm_frame.index else None
                out[f"{metric}_warm"] = float(w[metric]) if w is not None and w["sufficient"] else None
                metrics[f"fairness.{metric}.{dim}.{group}"] = value
                metrics[f"fairness.{metric}_low.{dim}.{group}"] = out[f"{metric}_low"]
                metrics[f"fairness.{metric}_high.{dim}.{group}"] = out[f"{metric}_high"]
                metrics[f"fairness.{metric}_warm.{dim}.{group}"] = out[f"{metric}_warm"]
            for key in ("hit_rate", "ndcg", "success_rate"):
                if key not in extra:
                    out[key], out[f"{key}_n"] = None, 0
                    continue
                count, mean = extra[key].get(group, (0, None))
                out[key], out[f"{key}_n"] = mean, count
                metrics[f"fairness.{key}.{dim}.{group}"] = mean
            rows.append(out)
        small = table[~table["sufficient"]]
        if len(small):
            listed = ", ".join(f"{_label(dim, g, age_bins)} ({r.n} ratings by {r.users} users)"
                               for g, r in small.iterrows())
            findings.append(Finding("fairness", f"fairness.n.{dim}", "info",
                                    f"too little data for a verdict on {len(small)} {DIMENSION_WORDS.get(dim, dim)} "
                                    f"group(s) (fewer than {settings['min_group_size']} ratings or "
                                    f"{settings['min_group_users']} users): {listed}", kind="insufficient_group"))
        for metric in ACCURACY:
            findings += _gap(frame, dim, metric, settings, metrics, age_bins)
    return metrics, findings, rows


def _gap(frame: GroupMetrics, dim: str, metric: str, settings: dict, metrics: dict, age_bins: dict) -> list[Finding]:
    gap, ratio, interval = frame.difference(metric), frame.ratio(metric), frame.difference_interval(metric)
    metrics[f"fairness.{metric}_gap.{dim}"] = gap
    metrics[f"fairness.{metric}_gap_low.{dim}"] = interval.low
    metrics[f"fairness.{metric}_gap_high.{dim}"] = interval.high
    metrics[f"fairness.{metric}_ratio.{dim}"] = ratio
    threshold = settings["gap_thresholds"][metric]
    if gap is None or gap <= threshold or interval.low is None or interval.low <= 0:
        return []
    worst, best = frame.worst_and_best(metric)
    table = frame.by_group
    w, b = table.loc[worst], table.loc[best]
    confidence = frame.difference_confidence
    adjusted = ("" if confidence == frame.confidence
                else f", adjusted for {len(frame.by_group[frame.by_group.sufficient])} groups")
    message = (f"{metric.upper()} is {w[metric]:.2f} for {_label(dim, worst, age_bins)} against {b[metric]:.2f} for "
               f"{_label(dim, best, age_bins)}: a gap of {gap:.2f} ({confidence:.1%} interval {interval.low:.2f} to "
               f"{interval.high:.2f}{adjusted}) above the threshold {threshold:g}; {int(w['n']):,} ratings by "
               f"{int(w['users']):,} users against {int(b['n']):,} by {int(b['users']):,}")
    return [Finding("fairness", f"fairness.{metric}_gap.{dim}", settings["severity"], message, gap, threshold,
                    kind="fairness_gap")]


def _by(part: pd.DataFrame, column: str, value: str) -> dict:
    grouped = part.groupby(column)[value].agg(["size", "mean"])
    return {g: (int(r["size"]), float(r["mean"])) for g, r in grouped.iterrows()}


def _label(dim: str, group: str, age_bins: dict) -> str:
    """A group in words for findings and tables: 'women', 'age group teen (13-17)', 'region south'."""
    if dim in ("age", "age_group"):
        return f"age group {groups.describe(age_bins, group)}"
    if dim == "sex":
        return {"F": "women", "M": "men"}.get(group, f"sex {group}")
    return f"{dim} {group}"


def _method(settings: dict) -> dict:
    """The settings a reader needs to judge the intervals and the groups left without a verdict."""
    return {key: settings[key] for key in ("resamples", "seed", "confidence", "min_group_size", "min_group_users")}


# ---------------------------------------------------------------------------------------------
# Predictions made anywhere: the function of the Python API.

def fairness(ratings: pd.DataFrame, dimensions: list[str] | None = None, config: dict | None = None) -> AuditResult:
    """Compare how well predictions serve each group of users, and report the gaps beyond chance.

    The scheduled audit's computation, for predictions made anywhere (a notebook, an offline
    evaluation of a new model): RMSE and MAE per group with bootstrap intervals that resample
    users, and for each dimension the gap between its worst and best group, a finding when the
    gap is above its threshold and its interval excludes zero. Groups too small for a verdict
    are reported as such, never dropped.

    Parameters
    ----------
    ratings : pandas.DataFrame
        One row per rating: ``user_id``, ``rating``, ``prediction``, optionally ``cold_start``
        (True or 1 where the model never saw the user or the movie, False or 0 where it did;
        missing values, and every rating without the column, count as warm) and one column
        per dimension, named as you like (``sex``, ``age_group``, ``region``, ...). Missing
        groups count as ``unknown``. Each user is in one group per dimension, since the
        intervals resample users.
    dimensions : str or list of str, optional
        The column, or columns, to compare groups by; by default every column but ``user_id``,
        ``rating``, ``prediction``, ``cold_start``, ``movie_id`` and ``time``. The first four
        are the inputs and cannot be dimensions. Metric keys are dot-separated, so neither a
        dimension's name nor a group (the column's values as text, ``1`` for ``1.0``) may
        hold a ".".
    config : dict, optional
        Settings in the shape of recaudit.toml over its defaults, e.g. ``{"fairness":
        {"resamples": 500, "seed": 1}}``; ``groups.age`` names the groups of an ``age_group``
        column in findings. ``fairness.dimensions`` names the stored users' dimensions and is
        not read here: pass `dimensions`.

    Returns
    -------
    AuditResult
        Metrics under the scheduled audit's keys (``fairness.rmse.<dimension>.<group>``,
        ``fairness.rmse_gap.<dimension>``, ...), a finding per gap beyond chance that names
        the groups and the numbers, and ``details["groups"]``, one row per group.

    Raises
    ------
    ValueError
        When a column is missing, a rating or prediction is not a number, cold_start is not
        True/False (or 1/0), a dimension is one of the inputs or would make an ambiguous metric
        key, a user is in two groups of one dimension, or `config` names an unknown setting or
        a value it refuses.

    Examples
    --------
    Sixty users rate ten movies each; the model is off by 0.6 more for the south:

    >>> import numpy as np, pandas as pd
    >>> import recaudit
    >>> rng = np.random.default_rng(0)
    >>> user = np.repeat(np.arange(60), 10)
    >>> rating = rng.integers(1, 6, user.size).astype(float)
    >>> region = np.where(user < 30, "north", "south")
    >>> prediction = rating + rng.normal(0, 0.3, user.size) + np.where(region == "south", 0.6, 0)
    >>> ratings = pd.DataFrame({"user_id": user, "rating": rating, "prediction": prediction,
    ...                         "region": region})
    >>> result = recaudit.fairness(ratings, config={"fairness": {"resamples": 100}})
    >>> print(result.findings[0].message)
    RMSE is 0.65 for region south against 0.29 for region north: a gap of 0.36 (95.0% interval
    0.32 to 0.40) above the threshold 0.2; 300 ratings by 30 users against 300 by 30
    >>> round(result.metrics["fairness.rmse_gap.region"], 2)
    0.36
    """
    cfg = configuration.resolve(config)
    if isinstance(dimensions, str):  # one column, not its letters
        dimensions = [dimensions]
    columns = [c for c in ratings.columns if c not in NOT_DIMENSIONS] if dimensions is None else list(dimensions)
    inputs = [c for c in columns if c in INPUTS]
    if inputs:
        raise ValueError(f"{', '.join(map(repr, inputs))} cannot be a dimension: fairness reads "
                         f"{', '.join(INPUTS)} as its inputs")
    dotted = [str(c) for c in columns if "." in str(c)]
    if dotted:
        raise ValueError(f"dimension {', '.join(map(repr, dotted))} has a '.' in its name: metric keys are "
                         "dot-separated (fairness.<metric>.<dimension>.<group>); rename the column")
    missing = [c for c in ("user_id", "rating", "prediction", *columns) if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings has no column {', '.join(map(repr, missing))} "
                         f"(it has {', '.join(map(repr, ratings.columns))})")
    if not columns:
        raise ValueError("no dimension to compare users by: add a column such as sex or region, or pass dimensions")
    evaluated = pd.DataFrame({"user_id": ratings["user_id"].to_numpy()})
    for column in ("rating", "prediction"):
        values = pd.to_numeric(ratings[column], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"{column} must be a number in every row ({int((~np.isfinite(values)).sum())} are not)")
        evaluated[column] = values
    evaluated["cold_start"] = _cold_start(ratings)
    for column in columns:
        evaluated[column] = _group_labels(ratings[column], column)
        split = evaluated.groupby("user_id")[column].nunique()
        if (split > 1).any():
            raise ValueError(f"user {split[split > 1].index[0]} is in more than one {column!r} group: the intervals "
                             "resample users, so each user is in one group per dimension")
    if evaluated.empty:
        return AuditResult("fairness", "insufficient_data", details={"reason": "no ratings to evaluate"})
    metrics, findings, rows = assess(evaluated, cfg["fairness"], cfg["groups"]["age"],
                                     dimensions={str(c): c for c in columns})
    return AuditResult("fairness", metrics=metrics, findings=findings,
                       details={"groups": rows, **_method(cfg["fairness"])})


def _cold_start(ratings: pd.DataFrame) -> np.ndarray:
    """The cold_start column as booleans, missing values False. Only booleans and 0/1 are
    read: any other value (the text "False", say) has no meaning that casting would not
    invent, and would count as cold."""
    if "cold_start" not in ratings:
        return np.zeros(len(ratings), dtype=bool)
    cold = ratings["cold_start"]
    given = cold.notna().to_numpy()
    values = cold[given]
    if pd.api.types.is_bool_dtype(values.dtype):
        valid = np.ones(len(values), dtype=bool)
    elif pd.api.types.is_numeric_dtype(values.dtype):
        valid = values.isin([0, 1]).to_numpy()
    else:
        valid = np.array([isinstance(v, (int, float, np.number, np.bool_)) and v in (0, 1) for v in values],
                         dtype=bool)
    if not valid.all():
        wrong = pd.unique(values[~valid].astype(object))
        raise ValueError(f"cold_start must be True/False (or 1/0) in every row: {int((~valid).sum())} are not, "
                         f"e.g. {', '.join(map(repr, wrong[:5]))}")
    out = np.zeros(len(cold), dtype=bool)
    out[given] = values.to_numpy().astype(bool)
    return out


def _group_labels(values: pd.Series, dimension) -> np.ndarray:
    """Each rating's group in a dimension as text, the way GroupMetrics and metric keys name
    it: missing values are unknown, and an integral float is its integer ("1", not "1.0": a
    column of integers with a missing value reads as floats), so that a group keeps one name.
    A label with a "." is refused: metric keys are dot-separated."""
    codes, uniques = pd.factorize(values)
    labels = [str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
              for v in uniques]
    dotted = [label for label in labels if "." in label]
    if dotted:
        raise ValueError(f"group {', '.join(map(repr, dotted[:5]))} of dimension {str(dimension)!r} has a '.': metric "
                         "keys are dot-separated (fairness.<metric>.<dimension>.<group>); relabel the groups")
    return np.array([*labels, groups.UNKNOWN], dtype=object)[codes]  # code -1, a missing value: the last


# ---------------------------------------------------------------------------------------------
# The scheduled audit: a stored model's predictions for the stored ratings and users.

def evaluate(model, ratings: pd.DataFrame, users: pd.DataFrame, age_bins: dict) -> pd.DataFrame:
    """Each rating with the model's prediction, served the way the model serves it (users or
    movies it never saw get its baseline, flagged cold_start), and the user's groups: the
    ratings frame `fairness` takes, with the columns of `COLUMNS`."""
    predicted, cold = model.predict(ratings["user_id"].to_numpy(), ratings["movie_id"].astype(str).to_numpy())
    out = pd.DataFrame({"user_id": ratings["user_id"].to_numpy(dtype=np.int64),
                        "movie_id": ratings["movie_id"].astype(str).to_numpy(),
                        "time": ratings["time"].to_numpy(), "rating": ratings["rating"].to_numpy(dtype=float),
                        "prediction": predicted, "cold_start": cold})
    return _with_groups(out, users, age_bins)


def _with_groups(df: pd.DataFrame, users: pd.DataFrame, age_bins: dict) -> pd.DataFrame:
    """Add sex, age_group and occupation; users missing from the users table are 'unknown'."""
    known = groups.of_users(users, age_bins).rename(columns=COLUMNS)
    out = df.merge(known, on="user_id", how="left")
    for column in COLUMNS.values():
        out[column] = out[column].fillna(groups.UNKNOWN)
    return out


def audit(ctx) -> AuditResult:
    from recaudit.recsys.recommender import Model, ranking_per_user

    settings = ctx.config["fairness"]
    age_bins = ctx.config["groups"]["age"]
    found = ctx.store.model_artifact(settings["model"] or None)
    if found is None:
        what = f"model {settings['model']!r}" if settings["model"] else "trained model"
        return AuditResult("fairness", "insufficient_data",
                           details={"reason": f"no {what} to evaluate (recaudit train)"})
    model_id, path = found
    model = Model.load(path)
    cutoff = pd.Timestamp(model.metadata["cutoff"])
    since = max(min(ctx.since, ctx.until - pd.Timedelta(settings["window"])), cutoff)
    details = {"model": model_id, "cutoff": cutoff.isoformat(), "evaluated": {"since": since.isoformat(),
                                                                              "until": ctx.until.isoformat()}}
    if since >= ctx.until:
        return AuditResult("fairness", "insufficient_data",
                           details={**details, "reason": "the window ends before the model's training cutoff"})
    ratings = ctx.store.read("ratings", since, ctx.until)
    users = ctx.store.read("users")
    evaluated = evaluate(model, ratings, users, age_bins)
    if settings["export_predictions"]:
        export(evaluated, settings["export_predictions"])
        details["exported"] = str(settings["export_predictions"])
    if evaluated.empty:
        return AuditResult("fairness", "insufficient_data",
                           details={**details, "reason": "no ratings after the model's training cutoff in the window"})
    ranking = _ranking(model, evaluated, settings, ranking_per_user)
    online = _online(ctx.store, since, ctx.until, users, age_bins, settings)
    metrics, findings, rows = assess(evaluated, settings, age_bins, ranking, online)
    details.update(groups=rows, **_method(settings), ranked_users=0 if ranking is None else len(ranking),
                   requests=0 if online is None else len(online))
    return AuditResult("fairness", metrics=metrics, findings=findings, details=details)


def _ranking(model, evaluated: pd.DataFrame, settings: dict, ranking_per_user) -> pd.DataFrame | None:
    """Hit and NDCG at k per user with liked held-out ratings (a seeded sample beyond the cap)."""
    liked = np.unique(evaluated.loc[evaluated["rating"] >= 4, "user_id"].to_numpy())
    if not len(liked):
        return None
    rng = np.random.default_rng(settings["seed"])
    users = np.sort(rng.choice(liked, size=min(settings["ranking_max_users"], len(liked)), replace=False))
    ids, _scores, _cold = model.recommend_many(users, settings["k"])
    per_user = ranking_per_user(dict(zip(users.tolist(), ids)), evaluated, settings["k"])
    return per_user.merge(evaluated.drop_duplicates("user_id")[["user_id", *COLUMNS.values()]], on="user_id")


def _online(store, since, until, users: pd.DataFrame, age_bins: dict, settings: dict) -> pd.DataFrame | None:
    from recaudit.audits import online

    requests = online.followed_requests(store, since, until, settings["success_horizon"])
    if requests.empty:
        return None
    return _with_groups(requests[["user_id", "success"]].astype({"success": float}), users, age_bins)


def export(evaluated: pd.DataFrame, path: str | Path) -> None:
    """One row per evaluated rating, so a reviewer can recompute every number."""
    columns = ["user_id", "movie_id", "time", "rating", "prediction", "cold_start", *COLUMNS.values()]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    evaluated[columns].to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
