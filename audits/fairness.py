"""Fairness: does the model serve every group of users equally well, beyond chance?

A single RMSE hides bad service for small groups, and small groups also produce large gaps by
chance. So each group's accuracy comes with an interval from a bootstrap that resamples users
(one user's ratings are not independent), and the gap of a dimension, worst − best over the
groups with enough ratings and users, is a finding only when it is above its threshold and a
permutation test of max − min over all the groups (`gaps`) says chance does not explain it.

Ratings are judged three ways: all of them, warm ones (the model saw both the user and the
movie in training) and cold-start ones (predicted from fallbacks). On real data most
evaluated ratings can be cold starts, and a gap in the mix may be nothing but one group having
more of them; each part has its own groups, intervals, tests and findings, and a finding on the
mix says which part drives it. Each finding also says how much of it one user makes: a gap
that sinks below its threshold without one user is reported as info, naming the user. And for
each dimension the smallest gap the test finds 80% of the time at the present group sizes is
reported, so that no finding reads as "fair" or as "too little data to tell".

`audit` (the CLI and the scheduler) builds the ratings frame from the store and a trained
model's predictions; `fairness` takes one made anywhere, with dimensions of its own. Both hand
it to `assess`. Ranking quality per group needs recaudit's model, and stays with `audit`; what the
served lists do for each group, from the logs alone, is the exposure audit's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import case, func, select

from recaudit.audits import bootstrap, gaps, groups, schema
from recaudit.audits import config as configuration
from recaudit.audits.events import between
from recaudit.audits.result import AuditResult, Finding, finite
from recaudit.recsys.formats import InputError
from recaudit.recsys.predictions import MAX_PREDICTION

# The built-in dimensions of stored users, and the column of the evaluated ratings each is read from
# (the one `export` writes and `fairness` reads); any other dimension, a user attribute, is read from
# a column of its own name. A metric key names the dimension.
COLUMNS = {"sex": "sex", "age": "age_group", "occupation": "occupation"}
ACCURACY = ("rmse", "mae")
# The parts of the ratings judged apart, by the suffix their metric keys carry after the statistic
# (fairness.rmse_gap_warm.sex), and in words.
PARTS = {"": "all ratings", "_warm": "warm ratings", "_cold": "cold-start ratings"}
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
    intervals over users, and the permutation test of the gap; for all ratings (part "") and
    apart for warm ("_warm") and cold-start ("_cold") ones."""

    error: np.ndarray  # prediction − rating, one per rating
    user: np.ndarray  # who gave each rating
    group: np.ndarray  # the user's group in this dimension
    min_group_size: int = 100  # ratings; smaller groups get no verdict
    min_group_users: int = 20  # and users: one user's ratings say little about a group
    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95
    cold: np.ndarray | None = None  # per rating, whether it is a cold start (None: none is)
    permutations: int = 2000
    power: float = 0.8
    level: float | None = None  # of the test; None: 1 − confidence (one gap tested alone)
    _boot: dict = field(default_factory=dict, repr=False)

    @property
    def test_level(self) -> float:
        return 1 - self.confidence if self.level is None else self.level

    @cached_property
    def _users(self):
        """The users, their group codes, and per part each user's ratings, squared and
        absolute errors (zero where the user has none in the part)."""
        users, at = np.unique(self.user, return_inverse=True)
        labels, codes = np.unique(self.group.astype(str), return_inverse=True)
        code = np.zeros(len(users), dtype=np.int64)
        code[at] = codes  # a user is in one group per dimension
        cold = np.zeros(len(self.error), dtype=bool) if self.cold is None else np.asarray(self.cold, dtype=bool)
        sums = {}
        for part, keep in (("", None), ("_warm", ~cold), ("_cold", cold)):
            w = 1.0 if keep is None else keep.astype(float)
            sums[part] = tuple(np.bincount(at, weights=values * w, minlength=len(users))
                               for values in (np.ones(len(self.error)), self.error ** 2, np.abs(self.error)))
        return users, labels, code, sums

    @property
    def overall(self) -> dict:
        return _metrics(self.error) | {"n": len(self.error), "users": len(np.unique(self.user))}

    @property
    def by_group(self) -> pd.DataFrame:
        """One row per group: n, users, rmse, mae, and whether it is big enough for a verdict."""
        return self.table("")

    @cached_property
    def _tables(self) -> dict:
        return {}

    def table(self, part: str = "") -> pd.DataFrame:
        """`by_group` of one part: "" (all ratings), "_warm" or "_cold"."""
        if part not in self._tables:
            _users, labels, code, sums = self._users
            n, sse, sae = sums[part]
            k = len(labels)
            sizes = np.bincount(code, weights=n, minlength=k)
            with np.errstate(invalid="ignore", divide="ignore"):
                table = pd.DataFrame({
                    "n": sizes.astype(np.int64), "users": np.bincount(code[n > 0], minlength=k),
                    "rmse": np.sqrt(np.bincount(code, weights=sse, minlength=k) / sizes),
                    "mae": np.bincount(code, weights=sae, minlength=k) / sizes,
                }, index=pd.Index(labels, name="group"))
            table["sufficient"] = (table["n"] >= self.min_group_size) & (table["users"] >= self.min_group_users)
            self._tables[part] = table
        return self._tables[part]

    def intervals(self, part: str = "") -> pd.DataFrame:
        """Per group, each metric's percentile interval: rmse_low, rmse_high, mae_low, mae_high."""
        draws = self._draws()[part]
        table = pd.DataFrame(index=self.table(part).index)
        for i, metric in enumerate(ACCURACY):
            table[f"{metric}_low"], table[f"{metric}_high"] = bootstrap.percentiles(draws[:, :, i], self.confidence)
        return table

    def worst_and_best(self, metric: str = "rmse", part: str = "") -> tuple[str, str] | None:
        """The groups with the highest and lowest metric, among those with enough ratings."""
        table = self.table(part)
        eligible = table[table["sufficient"]]
        if len(eligible) < 2:
            return None
        return eligible[metric].idxmax(), eligible[metric].idxmin()

    def difference(self, metric: str = "rmse", part: str = "") -> float | None:
        pair = self.worst_and_best(metric, part)
        table = self.table(part)
        return None if pair is None else float(table.at[pair[0], metric] - table.at[pair[1], metric])

    def ratio(self, metric: str = "rmse", part: str = "") -> float | None:
        pair = self.worst_and_best(metric, part)
        table = self.table(part)
        if pair is None or table.at[pair[1], metric] == 0:
            return None
        return float(table.at[pair[0], metric] / table.at[pair[1], metric])

    def difference_interval(self, metric: str = "rmse", part: str = "") -> Interval:
        """The percentile interval of worst − best: the same two groups' difference over the
        resamples (a resampled max − min would be positive by construction). The interval
        describes the gap's size; whether chance explains it is the permutation test's."""
        pair = self.worst_and_best(metric, part)
        if pair is None:
            return Interval(None, None)
        at = list(self.table(part).index)
        draws = self._draws()[part][:, :, ACCURACY.index(metric)]
        spread = draws[:, at.index(pair[0])] - draws[:, at.index(pair[1])]
        spread = spread[np.isfinite(spread)]
        if len(spread) < 2:
            return Interval(None, None)
        low, high = bootstrap.percentiles(spread[:, None], self.confidence)
        return Interval(float(low[0]), float(high[0]))

    def _sums(self, part: str) -> tuple[gaps.UserSums, np.ndarray, np.ndarray]:
        """The users of the part's groups with a verdict, as gaps.UserSums (codes over those
        groups), with the users' ids and the groups' labels."""
        users, labels, code, sums = self._users
        n, sse, sae = sums[part]
        eligible = np.flatnonzero(self.table(part)["sufficient"].to_numpy())
        rated = n > 0
        chosen = np.isin(code[rated], eligible)
        return (gaps.among(gaps.UserSums(code[rated], n[rated], {"rmse": sse[rated], "mae": sae[rated]}, len(labels)),
                           eligible), users[rated][chosen], labels[eligible])

    def test(self, part: str = "") -> dict[str, gaps.GapTest] | None:
        """The permutation test of max − min of each metric over the groups with a verdict (None
        with fewer than two), at `test_level`."""
        key = ("test", part, self.test_level)
        if key not in self._boot:
            sums, _ids, labels = self._sums(part)
            self._boot[key] = (None if len(labels) < 2 else
                               gaps.permutation_tests(sums, gaps.shuffles(self.test_level, self.permutations),
                                                      self.seed, self.test_level))
        return self._boot[key]

    def detectable(self, metric: str = "rmse", part: str = "") -> pd.Series | None:
        """Per group with a verdict, the gap between it and the largest other group that the
        test finds with probability `power` at the present group sizes."""
        test = self.test(part)
        if test is None:
            return None
        _sums, _ids, labels = self._sums(part)
        users = self.table(part).loc[labels, "users"].to_numpy()
        return pd.Series(gaps.detectable(test[metric], users, self.power), index=labels)

    def influence(self, metric: str, part: str, threshold: float) -> dict | None:
        """The user whose removal lowers the gap most (their id, ratings and share of their
        group's error), the gap without them, and how many removals sink it to `threshold`."""
        sums, ids, labels = self._sums(part)
        if len(labels) < 2:
            return None
        found = gaps.influence(sums, metric, threshold, self.min_group_size, self.min_group_users)
        return {"user": ids[found.user].item(), "ratings": int(sums.den[found.user]),
                "group": str(labels[sums.code[found.user]]), "gap_without": found.gap_without,
                "share": found.share, "sinking": found.sinking}

    def _draws(self) -> dict[str, np.ndarray]:
        """Per part, resamples × groups × (rmse, mae): the groups' metrics over resamples of users
        drawn with replacement from all users (a user brings all their ratings, warm and cold;
        a group may be absent from a draw: NaN). One set of draws serves every part, and
        `draw_together` one set every dimension."""
        if "draws" not in self._boot:
            self._take_draws(bootstrap.resampled_sums(self._per_user(), self.resamples, self.seed))
        return self._boot["draws"]

    def _per_user(self):
        """users × (2 parts × 3 sums × k groups), sparse: each user's ratings, squared and
        absolute errors, warm then cold-start, in its group's columns. All ratings' sums are
        the two parts' added, so they need no columns of their own."""
        from scipy import sparse

        _users, labels, code, sums = self._users
        k, rows = len(labels), np.arange(len(code))
        per_user = sparse.hstack([sparse.csr_array((values, (rows, code)), shape=(len(code), k))
                                  for part in ("_warm", "_cold") for values in sums[part]]).tocsr()
        per_user.eliminate_zeros()  # a user without ratings in a part: nothing to multiply
        return per_user

    def _take_draws(self, resampled: np.ndarray) -> None:
        """The draws from resamples × columns of `_per_user`'s resampled sums."""
        k = len(self._users[1])
        blocks = [[resampled[:, (3 * i + j) * k:(3 * i + j + 1) * k] for j in range(3)] for i in range(2)]
        parts = {"": [warm + cold for warm, cold in zip(*blocks)], "_warm": blocks[0], "_cold": blocks[1]}
        draws = {}
        for part, (total, squared, absolute) in parts.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                draws[part] = np.stack([np.sqrt(squared / total), absolute / total], axis=2)
        self._boot["draws"] = draws


def draw_together(frames) -> None:
    """The bootstrap of several dimensions' GroupMetrics of the same ratings, made once.

    Each frame draws users by its seed over its users; frames of the same users, resamples and
    seed draw the very same resamples, so the draws and the products with them are made once
    for all (the cost of drawing grows with the users, and at hundreds of thousands of users it
    is most of an audit's time). Frames that differ keep their own draws.
    """
    pending = [f for f in frames if "draws" not in f._boot]
    if len(pending) < 2:
        return
    first = pending[0]
    if any(not np.array_equal(f._users[0], first._users[0]) or (f.resamples, f.seed) != (first.resamples, first.seed)
           for f in pending):
        return
    from scipy import sparse

    blocks = [f._per_user() for f in pending]
    resampled = bootstrap.resampled_sums(sparse.hstack(blocks).tocsr(), first.resamples, first.seed)
    at = 0
    for frame, block in zip(pending, blocks):
        frame._take_draws(resampled[:, at:at + block.shape[1]])
        at += block.shape[1]


def _metrics(error: np.ndarray) -> dict:
    if len(error) == 0:
        return {"rmse": None, "mae": None}
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


# ---------------------------------------------------------------------------------------------
# Metrics and findings: one computation for the scheduled audit and for `fairness`.

def group_metrics(evaluated: pd.DataFrame, column: str, settings: dict) -> GroupMetrics:
    return GroupMetrics((evaluated["prediction"] - evaluated["rating"]).to_numpy(dtype=float),
                        evaluated["user_id"].to_numpy(), evaluated[column].to_numpy(),
                        min_group_size=settings["min_group_size"], min_group_users=settings["min_group_users"],
                        resamples=settings["resamples"], seed=settings["seed"], confidence=settings["confidence"],
                        cold=evaluated["cold_start"].to_numpy(dtype=bool), permutations=settings["permutations"],
                        power=settings["power"])


def assess(evaluated: pd.DataFrame, settings: dict, age_bins: dict, ranking: pd.DataFrame | None = None,
           dimensions: dict[str, str] | None = None, cold_known: bool = True) -> tuple[dict, list[Finding], list[dict]]:
    """Metrics, findings and per-group rows for evaluated ratings (user_id, rating, prediction,
    cold_start and a column per dimension). `dimensions` maps each dimension's name, the one
    metric keys and findings use, to its column: by default the configured dimensions of stored
    users, in the columns `column_of` names. `ranking` (user_id, hit, ndcg), with the same
    columns, adds ranking quality per group. Without `cold_known` (an outside model, whose
    training data are unknown) warm and cold-start ratings are not told apart, and every figure
    that would tell them apart is None."""
    if dimensions is None:
        dimensions = {dim: column_of(dim) for dim in settings["dimensions"]}
    parts = list(PARTS) if cold_known else [""]
    metrics: dict[str, float | None] = {}
    findings: list[Finding] = []
    rows: list[dict] = []
    gap_rows: list[dict] = []
    cold = evaluated["cold_start"].to_numpy(dtype=bool)
    counts = {}
    for part, keep in (("", None), ("_warm", ~cold), ("_cold", cold)):
        chosen = evaluated if keep is None else evaluated[keep]
        counts[part] = len(chosen)
        values = _metrics((chosen["prediction"] - chosen["rating"]).to_numpy(dtype=float))
        for metric, value in values.items():
            metrics[f"fairness.{metric}{part}"] = value if part in parts else None
    metrics["fairness.n"] = len(evaluated)
    metrics["fairness.cold_start_share"] = float(cold.mean()) if cold_known else None
    # A part holding every rating (no cold starts, or only cold starts) is the mix again: its
    # figures are shown, its findings would repeat the mix's.
    whole = [part for part in parts if part and counts[part] == len(evaluated)]
    frames = {dim: group_metrics(evaluated, column, settings) for dim, column in dimensions.items()}
    draw_together(frames.values())
    # Every gap of the run is tested at one shared level, so that a fair service stays quiet
    # however many dimensions, metrics and parts are looked at (Bonferroni).
    tests = len(ACCURACY) * sum(int(frame.table(part)["sufficient"].sum()) >= 2
                                for frame in frames.values() for part in parts if part not in whole)
    level = (1 - settings["confidence"]) / max(tests, 1)
    for dim, column in dimensions.items():
        frame = frames[dim]
        frame.level = level
        tables = {part: frame.table(part).join(frame.intervals(part)) for part in parts}
        share = evaluated.groupby(column)["cold_start"].mean()
        extra = {key: _by(part, column, col) for key, part, col in
                 (("hit_rate", ranking, "hit"), ("ndcg", ranking, "ndcg"))
                 if part is not None}
        for group in tables[""].index:
            out = {"dimension": dim, "group": group, "label": groups.label(dim, group, age_bins),
                   "cold_start_share": float(share.get(group, np.nan)) if cold_known else None}
            metrics[f"fairness.cold_start_share.{dim}.{group}"] = out["cold_start_share"]
            for part in PARTS:
                row = tables[part].loc[group] if part in parts else None
                sufficient = row is not None and bool(row["sufficient"])
                out[f"n{part}"] = int(row["n"]) if row is not None else None
                out[f"users{part}"] = int(row["users"]) if row is not None else None
                out[f"sufficient{part}"] = sufficient
                metrics[f"fairness.n{part}.{dim}.{group}"] = out[f"n{part}"]
                for metric in ACCURACY:
                    for stat in (metric, f"{metric}_low", f"{metric}_high"):
                        out[f"{stat}{part}"] = finite(row[stat]) if sufficient else None
                        metrics[f"fairness.{stat}{part}.{dim}.{group}"] = out[f"{stat}{part}"]
            for key in ("hit_rate", "ndcg"):
                if key not in extra:
                    out[key], out[f"{key}_n"] = None, 0
                    continue
                count, mean = extra[key].get(group, (0, None))
                out[key], out[f"{key}_n"] = mean, count
                metrics[f"fairness.{key}.{dim}.{group}"] = mean
            rows.append(out)
        small = tables[""][~tables[""]["sufficient"]]
        if len(small):
            listed = ", ".join(f"{groups.label(dim, g, age_bins)} ({r.n} ratings by {r.users} users)"
                               for g, r in small.iterrows())
            words = groups.DIMENSION_WORDS.get(dim, dim)
            findings.append(Finding("fairness", f"fairness.n.{dim}", "info",
                                    f"too little data for a verdict on {len(small)} {words} "
                                    f"group(s) (fewer than {settings['min_group_size']} ratings or "
                                    f"{settings['min_group_users']} users): {listed}", kind="insufficient_group"))
        for metric in ACCURACY:
            judged = {part: _gap(frame, dim, metric, part, settings, metrics, age_bins, tests) for part in parts}
            for part in parts:
                verdict = judged[part]
                gap_rows.append(verdict.row)
                if verdict.finding is None or part in whole:
                    continue
                if part == "" and cold_known and not whole:
                    verdict.finding.message += _driver(judged)
                findings.append(verdict.finding)
    return metrics, findings, rows, gap_rows


@dataclass
class Verdict:
    """One gap judged: its row of the report's gap table, and its finding (None: no finding)."""

    row: dict
    finding: Finding | None


def _gap(frame: GroupMetrics, dim: str, metric: str, part: str, settings: dict, metrics: dict,
         age_bins: dict, tests: int = 1) -> Verdict:
    """The gap of `metric` among the `part` ratings of one dimension: its metrics, its row of the
    gap table, and a finding when it is above its threshold and beyond chance at the frame's
    test level, shared among the run's `tests` gaps."""
    gap, ratio, interval = frame.difference(metric, part), frame.ratio(metric, part), frame.difference_interval(
        metric, part)
    test, detectable = frame.test(part), frame.detectable(metric, part)
    p = test[metric].p_value if test is not None else None
    smallest = float(detectable.max()) if detectable is not None else None
    name = f"{metric}_gap{part}"
    metrics[f"fairness.{name}.{dim}"] = gap
    metrics[f"fairness.{metric}_gap_low{part}.{dim}"] = interval.low
    metrics[f"fairness.{metric}_gap_high{part}.{dim}"] = interval.high
    metrics[f"fairness.{metric}_ratio{part}.{dim}"] = ratio
    metrics[f"fairness.{metric}_gap_p{part}.{dim}"] = p
    metrics[f"fairness.{metric}_mde{part}.{dim}"] = smallest
    threshold, alpha = settings["gap_thresholds"][metric], frame.test_level
    pair = frame.worst_and_best(metric, part)
    row = {"dimension": dim, "part": part, "ratings": PARTS[part], "metric": metric, "gap": gap,
           "low": interval.low, "high": interval.high, "p": p, "alpha": alpha, "threshold": threshold,
           "detectable": smallest, "power": settings["power"], "test": None if test is None else test[metric].method,
           "detectable_by_group": {} if detectable is None else
           {groups.label(dim, g, age_bins): float(v) for g, v in detectable.items()},
           "worst": None if pair is None else groups.label(dim, pair[0], age_bins),
           "best": None if pair is None else groups.label(dim, pair[1], age_bins), "influence": None}
    if gap is None:
        row["verdict"] = "no verdict: fewer than two groups with enough data"
        return Verdict(row, None)
    if not (gap > threshold and p < alpha):
        row["verdict"] = (f"within chance (p = {p:.2g})" if gap > threshold else
                          f"no gap above {threshold:g}: one of {threshold:g} would be found {settings['power']:.0%} "
                          "of the time" if smallest <= threshold else
                          f"too little data to tell: only a gap above {smallest:.2f} is found "
                          f"{settings['power']:.0%} of the time")
        return Verdict(row, None)
    influence = frame.influence(metric, part, threshold)
    row["influence"] = influence
    metrics[f"fairness.{metric}_gap_without_user{part}.{dim}"] = influence["gap_without"]
    metrics[f"fairness.{metric}_gap_sinking_users{part}.{dim}"] = influence["sinking"]
    fragile = influence["gap_without"] is None or influence["gap_without"] <= threshold
    worst, best = pair
    table = frame.table(part)
    w, b = table.loc[worst], table.loc[best]
    among = "" if part == "" else f" on {PARTS[part]}"
    m = int(table["sufficient"].sum())
    error = "squared error" if metric == "rmse" else "absolute error"
    message = (f"{metric.upper()}{among} is {w[metric]:.2f} for {groups.label(dim, worst, age_bins)} against "
               f"{b[metric]:.2f} for {groups.label(dim, best, age_bins)}: a gap of {gap:.2f} "
               f"({settings['confidence']:.0%} interval {interval.low:.2f} to {interval.high:.2f}) above the threshold "
               f"{threshold:g}, beyond chance over {m} groups ({test[metric].name} {gaps.p_below(p, alpha)}"
               f"{'' if tests == 1 else f' for the {tests} gaps tested'}); {int(w['n']):,} ratings "
               f"by {int(w['users']):,} users against {int(b['n']):,} by {int(b['users']):,}")
    without = ("no gap left to compare" if influence["gap_without"] is None
               else f"the gap is {influence['gap_without']:.2f}")
    ratings = influence["ratings"]
    plural = "" if ratings == 1 else "s"
    who = (f"user {influence['user']} ({ratings:,} rating{plural}, {influence['share']:.0%} of the "
           f"{error} of {groups.label(dim, influence['group'], age_bins)})")
    if fragile:
        message += f"; but without {who} {without}, not above the threshold: one user makes this gap"
        row["verdict"] = "made by one user: reported as info"
    else:
        sinking = (f"{influence['sinking']:,} users' removal" if influence["sinking"] is not None
                   else f"the removal of more than {gaps.SINKING_CAP} users")
        message += f"; without its most influential user, {who}, {without}, and it takes {sinking} to sink it"
        row["verdict"] = "gap beyond chance"
    return Verdict(row, Finding("fairness", f"fairness.{name}.{dim}", "info" if fragile else settings["severity"],
                                message, gap, threshold, kind="fairness_gap"))


def _driver(judged: dict[str, Verdict]) -> str:
    """What a finding on all ratings owes to warm and to cold-start ratings, in words."""
    said = []
    for part in ("_warm", "_cold"):
        row = judged[part].row
        said.append(f"{PARTS[part]}: " + ("no gap to compare" if row["gap"] is None else
                                          f"gap {row['gap']:.2f}, p = {row['p']:.2g}"))
    firing = [PARTS[part] for part in ("_warm", "_cold")
              if judged[part].finding is not None and judged[part].finding.severity != "info"]
    driver = (f"driven by {' and '.join(firing)}" if firing else
              "neither part alone has a gap above its threshold beyond chance")
    return f" ({'; '.join(said)}): {driver}"


def _by(part: pd.DataFrame, column: str, value: str) -> dict:
    grouped = part.groupby(column)[value].agg(["size", "mean"])
    return {g: (int(r["size"]), float(r["mean"])) for g, r in grouped.iterrows()}


def _method(settings: dict) -> dict:
    """The settings a reader needs to judge the intervals and the groups left without a verdict."""
    return {**{key: settings[key] for key in ("resamples", "permutations", "power", "seed", "confidence",
                                              "min_group_size", "min_group_users")},
            "normal_min_users": gaps.NORMAL_MIN_USERS}


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
    RMSE is 0.65 for region south against 0.29 for region north: a gap of 0.36 (95% interval
    0.32 to 0.40) above the threshold 0.2, beyond chance over 2 groups (permutation test p =
    0.0005, below 0.025 for the 2 gaps tested); 300 ratings by 30 users against 300 by 30;
    without its most influential user, user 46 (10 ratings, 6% of the squared error of region
    south), the gap is 0.35, and it takes 11 users' removal to sink it
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
    metrics, findings, rows, gap_rows = assess(evaluated, cfg["fairness"], cfg["groups"]["age"],
                                               dimensions={str(c): c for c in columns},
                                               cold_known="cold_start" in ratings.columns)
    return AuditResult("fairness", metrics=metrics, findings=findings,
                       details={"groups": rows, "gaps": gap_rows, **_method(cfg["fairness"])})


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
    labels = [groups.as_text(v) for v in uniques]
    dotted = [label for label in labels if "." in label]
    if dotted:
        raise ValueError(f"group {', '.join(map(repr, dotted[:5]))} of dimension {str(dimension)!r} has a '.': metric "
                         "keys are dot-separated (fairness.<metric>.<dimension>.<group>); relabel the groups")
    return np.array([*labels, groups.UNKNOWN], dtype=object)[codes]  # code -1, a missing value: the last


# ---------------------------------------------------------------------------------------------
# The scheduled audit: a stored model's predictions for the stored ratings and users.

def evaluate(model, ratings: pd.DataFrame, users: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Each rating with the model's prediction, served the way the model serves it (users or
    movies it never saw get its baseline, flagged cold_start), and the user's groups: the
    ratings frame `fairness` takes, with a column per dimension of fairness.dimensions (`column_of`);
    `config` is the configuration (`config.load`)."""
    predicted, cold = model.predict(ratings["user_id"].to_numpy(), ratings["movie_id"].astype(str).to_numpy())
    return _with_groups(_predicted(ratings, predicted, cold), users, config)


def _predicted(ratings: pd.DataFrame, prediction: np.ndarray, cold: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"user_id": ratings["user_id"].to_numpy(dtype=np.int64),
                         "movie_id": ratings["movie_id"].astype(str).to_numpy(),
                         "time": ratings["time"].to_numpy(), "rating": ratings["rating"].to_numpy(dtype=float),
                         "prediction": prediction, "cold_start": cold})


def column_of(dimension: str) -> str:
    """The column of the evaluated ratings that holds a dimension of stored users."""
    return COLUMNS.get(dimension, dimension)


def _with_groups(df: pd.DataFrame, users: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Add each user's group in every dimension of fairness.dimensions, in the columns `column`
    names; users missing from the users table are 'unknown'."""
    dimensions = config["fairness"]["dimensions"]
    known = groups.user_groups(users, dimensions, config).rename(columns=COLUMNS)
    out = df.merge(known, on="user_id", how="left")
    for dim in dimensions:
        out[column_of(dim)] = out[column_of(dim)].fillna(groups.UNKNOWN)
    return out


# Where the audited model's predictions come from, as results and pages say it.
SOURCES = {"predictions": "stored predictions", "scorer": "scorer", "reference": "reference model"}
RANKING_SKIPPED = "hit rate and NDCG need recaudit's model to rank the catalogue: not computed for an outside model"
COLD_START_UNKNOWN = "unknown for an outside model: which users and movies it was trained on is not known"


@dataclass
class Audited:
    """The model under audit: its name, and where its predictions come from (a key of SOURCES)."""

    name: str
    source: str


def audit(ctx) -> AuditResult:
    """The scheduled audit: the model under audit (`audited_model`) on the ratings of the window."""
    settings = ctx.config["fairness"]
    # At least `window` back from the window's end; a trained model's ratings start after its cutoff.
    since = min(ctx.since, ctx.until - pd.Timedelta(settings["window"]))
    audited = audited_model(ctx.store, settings, since, ctx.until)
    if audited is None:
        what = (f"model {settings['model']!r} (neither a model in the stored predictions nor a trained model)"
                if settings["model"] else "stored predictions or trained model")
        return AuditResult("fairness", "insufficient_data", details={
            "reason": f"no {what} to evaluate (ingest a predictions file, set fairness.scorer, or recaudit train)"})
    if audited.source == "reference":
        return _audit_reference(ctx, settings, audited.name, since)
    details = {"model": audited.name, "source": SOURCES[audited.source],
               "evaluated": {"since": since.isoformat(), "until": ctx.until.isoformat()},
               "ranking": RANKING_SKIPPED, "cold_start": COLD_START_UNKNOWN}
    if audited.source == "predictions":
        ratings = stored_predictions(ctx.store, audited.name, since, ctx.until)
    else:
        ratings = ctx.store.read("ratings", since, ctx.until)
        ratings["prediction"] = score(load_scorer(settings), settings, ratings)
    scored = ratings["prediction"].notna().to_numpy()
    coverage = {"fairness.scored_share": float(scored.mean()) if len(ratings) else None,
                "fairness.unscored": int((~scored).sum())}
    details.update(ratings=len(ratings), scored=int(scored.sum()), unscored=coverage["fairness.unscored"])
    users = ctx.store.users_of(since, ctx.until, schema.ratings)
    age_bins = ctx.config["groups"]["age"]
    # Warm and cold cannot be told apart for an outside model: `assess` is told so.
    part = ratings[scored]
    evaluated = _with_groups(_predicted(part, part["prediction"].to_numpy(dtype=float), np.zeros(len(part), bool)),
                             users, ctx.config)
    if settings["export_predictions"]:
        export(evaluated.assign(cold_start=None), settings["export_predictions"])
        details["exported"] = str(settings["export_predictions"])
    if evaluated.empty:
        reason = (f"none of the {len(ratings):,} ratings in the window has a prediction by {audited.name!r} made "
                  "before it" if len(ratings) else "no ratings in the window")
        return AuditResult("fairness", "insufficient_data", metrics=coverage, details={**details, "reason": reason})
    metrics, findings, rows, gap_rows = assess(evaluated, settings, age_bins, cold_known=False)
    details.update(groups=rows, gaps=gap_rows, **_method(settings), ranked_users=0)
    return AuditResult("fairness", metrics={**metrics, **coverage}, findings=findings, details=details)


def _audit_reference(ctx, settings: dict, model_id: str, since: pd.Timestamp) -> AuditResult:
    """recaudit's reference model, trained by `recaudit train`, on the ratings after its cutoff."""
    from recaudit.recsys.recommender import Model, ranking_per_user

    age_bins = ctx.config["groups"]["age"]
    model = Model.load(ctx.store.model_artifact(model_id)[1])
    cutoff = pd.Timestamp(model.metadata["cutoff"])
    since = max(since, cutoff)
    details = {"model": model_id, "source": SOURCES["reference"], "cutoff": cutoff.isoformat(),
               "evaluated": {"since": since.isoformat(), "until": ctx.until.isoformat()}}
    if since >= ctx.until:
        return AuditResult("fairness", "insufficient_data",
                           details={**details, "reason": "the window ends before the model's training cutoff"})
    ratings = ctx.store.read("ratings", since, ctx.until)
    users = ctx.store.users_of(since, ctx.until, schema.ratings)  # the raters only
    evaluated = evaluate(model, ratings, users, ctx.config)
    if settings["export_predictions"]:
        export(evaluated, settings["export_predictions"])
        details["exported"] = str(settings["export_predictions"])
    if evaluated.empty:
        return AuditResult("fairness", "insufficient_data",
                           details={**details, "reason": "no ratings after the model's training cutoff in the window"})
    ranking = _ranking(model, evaluated, settings, ranking_per_user)
    metrics, findings, rows, gap_rows = assess(evaluated, settings, age_bins, ranking)
    metrics.update({"fairness.scored_share": 1.0, "fairness.unscored": 0})  # it predicts every rating
    details.update(groups=rows, gaps=gap_rows, **_method(settings), ranked_users=0 if ranking is None else len(ranking),
                   ratings=len(evaluated), scored=len(evaluated),
                   unscored=0)
    return AuditResult("fairness", metrics=metrics, findings=findings, details=details)


def audited_model(store, settings: dict, since: pd.Timestamp, until: pd.Timestamp) -> Audited | None:
    """The model the audit evaluates: the one `fairness.model` names, a model of the stored
    predictions or a trained model's id; else the scorer, when one is set; else the model with
    the most predictions in [since, until) (then before `until`, then by name); else, when no
    predictions were made before `until`, the newest trained model. None when there is none."""
    named, scorer = settings["model"], settings["scorer_name"] or settings["scorer"]
    if settings["scorer"] and named in ("", scorer):
        return Audited(scorer, "scorer")
    if named:
        stored, trained = _has_predictions(store, named), store.model_artifact(named) is not None
        if stored and trained:
            raise InputError("fairness.model", f"{named!r} names both a model of the stored predictions and a trained "
                                               "model: rename the predictions' model (--model-name)")
        return Audited(named, "predictions") if stored else Audited(named, "reference") if trained else None
    p = schema.predictions.c
    in_window = func.sum(case((p.time >= pd.Timestamp(since), 1), else_=0))
    most = store.frame(select(p.model).where(*between(p.time, None, until)).group_by(p.model)
                       .order_by(in_window.desc(), func.count().desc(), p.model).limit(1))
    if len(most):
        return Audited(str(most["model"].iloc[0]), "predictions")
    newest = store.model_artifact(None)
    return None if newest is None else Audited(newest[0], "reference")


def is_model(store, name: str) -> bool:
    """Whether `name` is a model the audit can evaluate: one of the stored predictions, or trained."""
    return _has_predictions(store, name) or store.model_artifact(name) is not None


def _has_predictions(store, model: str) -> bool:
    p = schema.predictions.c
    return len(store.frame(select(p.model).where(p.model == model).limit(1))) > 0


def stored_predictions(store, model: str, since, until) -> pd.DataFrame:
    """The ratings of [since, until) (time, user_id, movie_id, rating) with the latest stored
    prediction of `model` for the same user and movie made strictly before each (NaN when
    there is none), found in the database by the predictions' index; equal times go to the
    prediction stored last."""
    r, p = schema.ratings.c, schema.predictions.c
    latest = (select(p.prediction)
              .where(p.model == model, p.user_id == r.user_id, p.movie_key == r.movie_key, p.time < r.time)
              .order_by(p.time.desc(), p.source_id.desc(), p.line.desc()).limit(1)
              .correlate(schema.ratings).scalar_subquery())
    query = (select(r.time, r.user_id, r.movie_key, r.rating, latest.label("prediction"))
             .where(*between(r.time, since, until)).order_by(r.time, r.source_id, r.line))
    df = store.with_movie_ids(store.frame(query))
    df["prediction"] = df["prediction"].astype(float)
    return df


def load_scorer(settings: dict):
    """The callable `fairness.scorer` names ("package.module:function", the function perhaps an
    attribute path such as "team.model:MODEL.predict"), imported from PYTHONPATH or from the
    current directory (where a scheduled service is started beside the team's code)."""
    import importlib
    import os
    import sys

    path = settings["scorer"]
    module_name, attribute = path.split(":")
    here = os.getcwd()
    added = here not in sys.path
    if added:  # after everything installed: the directory must not shadow an installed module
        sys.path.append(here)
    try:
        found = importlib.import_module(module_name)
    except Exception as exc:  # the team's module failing as it loads is theirs to fix, named in one line
        raise InputError("fairness.scorer", f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    finally:
        if added:
            sys.path.remove(here)
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise InputError("fairness.scorer", f"{module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise InputError("fairness.scorer", f"{path!r} is not callable")
    return found


def score(scorer, settings: dict, ratings: pd.DataFrame) -> np.ndarray:
    """The scorer's predictions for the ratings, asked for in chunks of at most
    `fairness.scorer_batch`: arrays of user ids (int64) and movie ids (str) in, one finite
    number per pair out."""
    path, batch = settings["scorer"], settings["scorer_batch"]
    users = ratings["user_id"].to_numpy(dtype=np.int64)
    movies = ratings["movie_id"].astype(str).to_numpy(dtype=object)
    out = np.empty(len(ratings))
    for start in range(0, len(ratings), batch):
        chunk = slice(start, start + batch)
        try:
            answer = scorer(users[chunk], movies[chunk])
        except Exception as exc:  # the team's code failed: its traceback is kept, chained to this
            raise RuntimeError(f"fairness.scorer {path} raised {type(exc).__name__}: {exc}") from exc
        try:
            if answer is None:
                raise TypeError("None")
            values = np.asarray(answer, dtype=float)
        except (TypeError, ValueError):
            raise InputError("fairness.scorer", f"{path} returned {type(answer).__name__}, not numbers") from None
        n = len(users[chunk])
        if values.shape != (n,):
            raise InputError("fairness.scorer", f"{path} returned an array of shape {values.shape} for {n} "
                                                "(user, movie) pairs: one prediction per pair is expected")
        bad = np.flatnonzero(~(np.abs(values) <= MAX_PREDICTION))  # NaN, infinities and beyond any scale
        if len(bad):
            raise InputError("fairness.scorer", f"{path} returned {len(bad)} values that are not finite numbers "
                                                f"of at most {MAX_PREDICTION:g} in magnitude, "
                                                f"e.g. {values[bad[0]]} for user {users[chunk][bad[0]]} and movie "
                                                f"{movies[chunk][bad[0]]!r}")
        out[chunk] = values
    return out


def _ranking(model, evaluated: pd.DataFrame, settings: dict, ranking_per_user) -> pd.DataFrame | None:
    """Hit and NDCG at k per user with liked held-out ratings (a seeded sample beyond the cap)."""
    liked = np.unique(evaluated.loc[evaluated["rating"] >= 4, "user_id"].to_numpy())
    if not len(liked):
        return None
    rng = np.random.default_rng(settings["seed"])
    users = np.sort(rng.choice(liked, size=min(settings["ranking_max_users"], len(liked)), replace=False))
    ids, _scores, _cold = model.recommend_many(users, settings["k"])
    per_user = ranking_per_user(dict(zip(users.tolist(), ids)), evaluated, settings["k"])
    columns = ["user_id", *(column_of(dim) for dim in settings["dimensions"])]
    return per_user.merge(evaluated.drop_duplicates("user_id")[columns], on="user_id")


def export(evaluated: pd.DataFrame, path: str | Path) -> None:
    """One row per evaluated rating with its groups, so a reviewer can recompute every number."""
    fixed = ["user_id", "movie_id", "time", "rating", "prediction", "cold_start"]
    columns = fixed + [c for c in evaluated.columns if c not in fixed]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    evaluated[columns].to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
