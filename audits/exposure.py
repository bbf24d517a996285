"""Exposure fairness from the logs alone: does the recommender serve every group of users as
well, and show every group of movies as much as users watch them?

It reads only what any recommender's log holds (the served lists, their items and the watches)
with the users and movies tables: no model, so it audits whatever recommender wrote the log.

User side, for each fairness dimension (``fairness.dimensions``): per group of users, the
online success rate (a served list succeeds when its user watches one of its movies within
``online.success_horizon``, found as the online audit finds it) and the MRR of the served lists
(1/rank of the first listed movie watched within the horizon, 0 when none), both over requests.
The gap of a dimension is best − worst over the groups with enough requests and users, and a
finding needs the gap above its threshold and a permutation test of best − worst over all the
groups (`gaps`), at the level shared among the gaps the run tests, to pass: the accuracy gaps of
the fairness audit, for what was served.

Item side, for each movie grouping (``exposure.movie_groups``): genre (a movie is in each of its
genres), popularity tier (head, middle and tail of the previous window's viewing, as drift
draws them; "new" for movies it did not watch), release decade, or any stored movie attribute.
Per group: its exposure share (of the recommended slots of the window's served lists, the share
holding its movies), its watch share (of the window's viewings, the share of its movies) and
their ratio. A finding names a group whose viewing is enough to tell and whose ratio's
interval, adjusted for the groups of its grouping, lies entirely below ``exposure.min_ratio``.

Every interval comes from one bootstrap that resamples users (recaudit.audits.bootstrap) over
per-user sums, so all groups and both sides share the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from recaudit.audits import activity, bootstrap, gaps, groups, online
from recaudit.audits import config as configuration
from recaudit.audits.drift import popularity_tiers
from recaudit.audits.result import AuditResult, Finding, finite
from recaudit.audits.store import between, recommendation_items, recommendations

# The movie groupings drawn from the catalogue and the viewing itself (config.EXPOSURE_GROUPINGS),
# in words for findings and pages; any other name in exposure.movie_groups is a movie attribute.
GROUPING_WORDS = {"genre": "genre", "popularity": "popularity tier", "decade": "release decade"}
USER_METRICS = {"success_rate": "online success rate", "mrr": "MRR of the served lists"}


# ---------------------------------------------------------------------------------------------
# Per-user sums: one sparse matrix, one bootstrap.

@dataclass
class _Sums:
    """Per-user sums of every quantity the audit needs, as the columns of one users × columns
    matrix: one pass of the bootstrap resamples them all with the same draws of users."""

    users: int
    width: int = 0
    _cells: list = field(default_factory=list)

    def add(self, rows: np.ndarray, columns: np.ndarray, values: np.ndarray, width: int) -> slice:
        """Add a block of `width` columns (`columns` within the block); its slice of the matrix."""
        self._cells.append((rows, columns + self.width, np.asarray(values, dtype=float)))
        block = slice(self.width, self.width + width)
        self.width += width
        return block

    def matrix(self):
        from scipy import sparse

        rows, columns, values = (np.concatenate(parts) for parts in zip(*self._cells, strict=True))
        return sparse.csr_matrix((values, (rows.astype(np.int64), columns.astype(np.int64))),
                                 shape=(self.users, self.width))


@dataclass
class _Block:
    """One dimension's or grouping's columns: its parts (requests, successes, reciprocal ranks;
    or slots, viewings) one after another, each of one column per group."""

    labels: np.ndarray
    columns: slice
    members: np.ndarray  # distinct users per group (who requested, or who watched)
    users: gaps.UserSums | None = None  # the user side's per-user sums, for the permutation test

    def part(self, values: np.ndarray, i: int) -> np.ndarray:
        """The i-th part of the block's columns of `values` (totals, or resamples × columns)."""
        g = len(self.labels)
        return values[..., self.columns][..., i * g:(i + 1) * g]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


# ---------------------------------------------------------------------------------------------
# Who is in which group.

def _user_labels(users: pd.DataFrame, ids: np.ndarray, config: dict) -> pd.DataFrame:
    """Each of `ids` with its group per dimension; users missing from the users table are unknown."""
    dimensions = config["fairness"]["dimensions"]
    known = groups.user_groups(users, dimensions, config)
    out = pd.DataFrame({"user_id": ids}).merge(known.astype({"user_id": np.int64}), on="user_id", how="left")
    return out[dimensions].astype(object).fillna(groups.UNKNOWN).astype(str)


def movie_groups(movies: pd.DataFrame, grouping: str, basis: pd.Series) -> pd.DataFrame:
    """(movie_id, group): the group of each catalogue movie in `grouping`, a row per genre for
    genres, labelled as users' groups are (`groups.labels`: a "." shows as "_", blank is
    unknown). `basis` is the viewings per movie the popularity tiers are drawn from. Movies the
    log names but the catalogue does not have no row: `_item_side` files them under unknown."""
    ids = movies["movie_id"].astype(str).to_numpy()
    if grouping == "genre":
        out = pd.DataFrame({"movie_id": ids, "group": movies["genres"].fillna("").astype(str).str.split("|")
                            .to_numpy()}).explode("group")
        return out.assign(group=groups.labels(out["group"])).drop_duplicates()
    if grouping == "popularity":
        tiers = popularity_tiers(basis) if len(basis) else pd.Series(dtype=object)
        return pd.DataFrame({"movie_id": ids, "group": tiers.reindex(ids).fillna("new").to_numpy()})
    if grouping == "decade":
        year = movies["year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        decade = pd.Series(np.floor(year / 10) * 10).map(lambda y: f"{y:.0f}s", na_action="ignore")
        return pd.DataFrame({"movie_id": ids, "group": groups.labels(decade)})
    return pd.DataFrame({"movie_id": ids, "group": groups.labels(movies[grouping])})


# ---------------------------------------------------------------------------------------------
# The computation, one for the store and for frames.

def assess(follow: pd.DataFrame, slots: pd.DataFrame, viewings: pd.DataFrame, before: pd.DataFrame,
           users: pd.DataFrame, movies: pd.DataFrame, config: dict) -> AuditResult:
    """Metrics, findings and per-group rows of exposure fairness.

    Parameters
    ----------
    follow : DataFrame
        The answered requests whose horizon ends in the window (`online.judged_span`), as
        `online.followed_requests` gives them (user_id, success, first_rank).
    slots : DataFrame
        (user_id, movie_id, n): how many slots of the window's served lists held each movie,
        per user they were served to.
    viewings, before : DataFrame
        (user_id, movie_id), one row per viewing in the window and in the window of the same
        length before it, whose viewing draws the popularity tiers (none are drawn when that one
        has none). A viewing is a user watching a movie on a day, as `activity.watch_sessions`
        counts them.
    users, movies : DataFrame
        The users and movies tables, as `Store.read` returns them.
    config : dict
        The whole configuration.

    Returns
    -------
    AuditResult
    """
    settings = config["exposure"]
    if follow.empty and viewings.empty:
        return AuditResult("exposure", "insufficient_data",
                           details={"reason": "no served recommendation list and no viewing in the window"})
    ids = np.unique(np.concatenate([f["user_id"].to_numpy(dtype=np.int64) for f in (follow, slots, viewings)]))
    sums = _Sums(len(ids))
    user_blocks = _user_side(sums, ids, follow, users, config)
    totals = sums.add(np.concatenate([_rows(ids, slots), _rows(ids, viewings)]),
                      np.repeat([0, 1], [len(slots), len(viewings)]),
                      np.concatenate([slots["n"].to_numpy(dtype=float), np.ones(len(viewings))]), 2)
    # A viewing is one user watching one movie on one day, however long. Minutes would weigh
    # long movies and binge-watchers, and count a movie left after five minutes as little; a
    # slot is one chance to be picked, and a viewing one pick. Distinct user-movie pairs over
    # the window would drop the re-watches of later days, which slots (shown again) do count.
    # Tiers drawn from the window judged would be judged against themselves (its head is the
    # movies making half of its viewing, whatever was shown): without a window before, no tiers.
    tiers_from = "previous window" if len(before) else None
    basis = before.groupby(before["movie_id"].astype(str)).size()
    findings: list[Finding] = []
    movie_blocks = {}
    for grouping in settings["movie_groups"]:
        if grouping == "popularity" and tiers_from is None:
            findings.append(Finding("exposure", "exposure.movie_groups.popularity", "info",
                                    "popularity tiers are drawn from the viewing of the window before this one, "
                                    "which has none: not compared", kind="insufficient_group"))
            continue
        if grouping not in configuration.EXPOSURE_GROUPINGS and grouping not in movies.columns:
            stored = [c for c in movies.columns if c not in ("movie_id", "title", "year", "genres")]
            findings.append(Finding("exposure", f"exposure.movie_groups.{grouping}", "warning",
                                    f"exposure.movie_groups names {grouping!r}, which is no movie attribute stored "
                                    f"(stored: {', '.join(stored) or 'none'}): not compared",
                                    kind="unknown_grouping"))
            continue
        movie_blocks[grouping] = _item_side(sums, ids, slots, viewings,
                                            movie_groups(movies, grouping, basis), grouping == "popularity")
    matrix = sums.matrix()
    total = np.asarray(matrix.sum(axis=0)).ravel()
    draws = bootstrap.resampled_sums(matrix, settings["resamples"], settings["seed"])
    metrics: dict[str, float | None] = {
        "exposure.requests": float(len(follow)), "exposure.success_rate": finite(follow["success"].mean()),
        "exposure.mrr": finite((1 / follow["first_rank"]).fillna(0).mean()) if len(follow) else None,
        "exposure.slots": float(total[totals][0]), "exposure.viewings": float(total[totals][1])}
    # Each run tests every gap and every movie group: a finding must stand beyond chance for
    # the whole family of its side, or some clean run in a few would have one.
    # On the user side, a permutation test per gap accounts for picking the best and the worst
    # of a dimension's groups; the gaps are tested at the level shared among all of them.
    compared = sum(int(_served_enough(b, total, settings).sum()) >= 2 for b in user_blocks.values())
    user_tests = len(USER_METRICS) * compared
    movie_tests = sum(int(_watched_enough(b, total, settings).sum()) for b in movie_blocks.values())
    user_rows = []
    for dim, block in user_blocks.items():
        rows, found = _user_groups(dim, block, total, draws, user_tests, settings, config, metrics)
        user_rows += rows
        findings += found
    movie_rows = []
    for grouping, block in movie_blocks.items():
        rows, found = _movie_groups(grouping, block, total, draws, totals, movie_tests, settings, metrics)
        movie_rows += rows
        findings += found
    details = {"users": user_rows, "movies": movie_rows, "horizon": config["online"]["success_horizon"],
               "tiers_from": tiers_from, "users_resampled": len(ids),
               **{k: settings[k] for k in ("resamples", "seed", "confidence", "min_ratio", "min_group_requests",
                                           "min_group_users", "min_group_viewings", "min_group_viewers")}}
    return AuditResult("exposure", metrics=metrics, findings=findings, details=details)


def _rows(ids: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    return np.searchsorted(ids, frame["user_id"].to_numpy(dtype=np.int64))


def _user_side(sums: _Sums, ids: np.ndarray, follow: pd.DataFrame, users: pd.DataFrame,
               config: dict) -> dict[str, _Block]:
    """Per dimension, a block of requests, successes and reciprocal ranks per group."""
    per_user = pd.DataFrame({"user_id": follow["user_id"].to_numpy(dtype=np.int64),
                             "success": follow["success"].to_numpy(dtype=float),
                             "rr": (1 / follow["first_rank"].to_numpy(dtype=float))})
    per_user = per_user.fillna({"rr": 0.0}).groupby("user_id").agg(
        requests=("success", "size"), successes=("success", "sum"), rr=("rr", "sum"))
    rows = np.searchsorted(ids, per_user.index.to_numpy(dtype=np.int64))
    labels = _user_labels(users, per_user.index.to_numpy(dtype=np.int64), config)
    blocks = {}
    for dim in labels.columns:
        names, code = np.unique(labels[dim].to_numpy(dtype=str), return_inverse=True)
        g = len(names)
        columns = sums.add(np.tile(rows, 3), np.concatenate([code, code + g, code + 2 * g]),
                           np.concatenate([per_user[c].to_numpy(dtype=float) for c in ("requests", "successes",
                                                                                       "rr")]), 3 * g)
        blocks[dim] = _Block(names.astype(object), columns, np.bincount(code, minlength=g),
                             gaps.UserSums(code, per_user["requests"].to_numpy(dtype=float),
                                           {m: per_user[c].to_numpy(dtype=float)
                                            for m, c in (("success_rate", "successes"), ("mrr", "rr"))}, g))
    return blocks


def _item_side(sums: _Sums, ids: np.ndarray, slots: pd.DataFrame, viewings: pd.DataFrame,
               membership: pd.DataFrame, tiers: bool) -> _Block:
    """A block of slots and viewings per movie group of one grouping. Movies are joined to their
    groups once per distinct movie (the categories), and rows reach them by integer code: a day
    has a few thousand movies but hundreds of thousands of slots."""
    shown, watched = pd.Categorical(slots["movie_id"]), pd.Categorical(viewings["movie_id"])
    movies = pd.Index(shown.categories.astype(str)).union(pd.Index(watched.categories.astype(str)))
    pairs = pd.DataFrame({"movie_id": movies, "movie": np.arange(len(movies))}).merge(membership, on="movie_id",
                                                                                       how="left")
    # A movie outside the catalogue is unknown, or (for popularity tiers) a new movie.
    names, group = np.unique(pairs["group"].fillna("new" if tiers else groups.UNKNOWN).to_numpy(dtype=str),
                             return_inverse=True)
    pairs = pd.DataFrame({"movie": pairs["movie"].to_numpy(), "group": group})

    def grouped(frame: pd.DataFrame, movie: pd.Categorical, weight: np.ndarray) -> pd.DataFrame:
        at = movies.get_indexer(movie.categories.astype(str))[movie.codes]
        return pd.DataFrame({"row": _rows(ids, frame), "movie": at, "n": weight}).merge(pairs, on="movie")

    g = len(names)
    shown_rows = grouped(slots, shown, slots["n"].to_numpy(dtype=float))
    watched_rows = grouped(viewings, watched, np.ones(len(viewings)))
    columns = sums.add(np.concatenate([shown_rows["row"], watched_rows["row"]]),
                       np.concatenate([shown_rows["group"], watched_rows["group"] + g]),
                       np.concatenate([shown_rows["n"], watched_rows["n"]]), 2 * g)
    viewers = watched_rows[["group", "row"]].drop_duplicates()["group"].to_numpy()
    return _Block(names.astype(object), columns, np.bincount(viewers, minlength=g))


# ---------------------------------------------------------------------------------------------
# Verdicts.

def _served_enough(block: _Block, total: np.ndarray, settings: dict) -> np.ndarray:
    """Which groups of users have the requests and users for a verdict."""
    return (block.part(total, 0) >= settings["min_group_requests"]) & (block.members >= settings["min_group_users"])


def _watched_enough(block: _Block, total: np.ndarray, settings: dict) -> np.ndarray:
    """Which movie groups have the viewings and viewers for a verdict."""
    return (block.part(total, 1) >= settings["min_group_viewings"]) & (block.members >= settings["min_group_viewers"])


def _user_groups(dim: str, block: _Block, total: np.ndarray, draws: np.ndarray, tests: int, settings: dict,
                 config: dict, metrics: dict) -> tuple[list[dict], list[Finding]]:
    """The groups of users of one dimension, and the gap findings among them; `tests` is the
    number of gaps the run tests on the user side."""
    age_bins = config["groups"]["age"]
    requests, successes, rr = (block.part(total, i) for i in range(3))
    values = {"success_rate": _ratio(successes, requests), "mrr": _ratio(rr, requests)}
    resampled = {"success_rate": _ratio(block.part(draws, 1), block.part(draws, 0)),
                 "mrr": _ratio(block.part(draws, 2), block.part(draws, 0))}
    sufficient = _served_enough(block, total, settings)
    intervals = {m: bootstrap.percentiles(d, settings["confidence"]) for m, d in resampled.items()}
    rows = []
    for i, group in enumerate(block.labels):
        row = {"dimension": dim, "group": group, "label": groups.label(dim, group, age_bins),
               "requests": int(requests[i]), "users": int(block.members[i]), "sufficient": bool(sufficient[i])}
        metrics[f"exposure.requests.{dim}.{group}"] = row["requests"]
        for metric in USER_METRICS:
            shown = sufficient[i]
            row[metric] = finite(values[metric][i]) if shown else None
            row[f"{metric}_low"] = finite(intervals[metric][0][i]) if shown else None
            row[f"{metric}_high"] = finite(intervals[metric][1][i]) if shown else None
            for suffix in ("", "_low", "_high"):
                metrics[f"exposure.{metric}{suffix}.{dim}.{group}"] = row[f"{metric}{suffix}"]
        rows.append(row)
    findings = _too_little(dim, rows, f"{settings['min_group_requests']} requests or {settings['min_group_users']} "
                           "users", lambda r: f"{r['label']} ({r['requests']:,} requests by {r['users']:,} users)",
                           groups.DIMENSION_WORDS.get(dim, dim))
    eligible = np.flatnonzero(sufficient)
    level = (1 - settings["confidence"]) / max(tests, 1)
    test = (gaps.permutation_tests(gaps.among(block.users, eligible), gaps.shuffles(level, settings["permutations"]),
                                   settings["seed"], level) if len(eligible) >= 2 else None)
    for metric in USER_METRICS:
        findings += _gap(dim, metric, rows, values[metric], resampled[metric], sufficient,
                         None if test is None else test[metric], tests, settings, metrics)
    return rows, findings


def _gap(dim: str, metric: str, rows: list[dict], values: np.ndarray, resampled: np.ndarray,
         sufficient: np.ndarray, test: gaps.GapTest | None, tests: int, settings: dict, metrics: dict) -> list[Finding]:
    """best − worst of the sufficient groups, its percentile interval from the same two groups'
    difference over the resamples, its permutation test (`gaps`), and a finding when it is above
    its threshold and its p-value below the level shared by the run's `tests` gaps."""
    key = f"exposure.{metric}_gap.{dim}"
    eligible = np.flatnonzero(sufficient)
    for suffix in ("", "_low", "_high", "_p"):
        metrics[f"exposure.{metric}_gap{suffix}.{dim}"] = None
    if test is None:
        return []
    best = eligible[np.argmax(values[eligible])]
    worst = eligible[np.argmin(values[eligible])]
    gap = float(values[best] - values[worst])
    spread = resampled[:, best] - resampled[:, worst]
    spread = spread[np.isfinite(spread)]
    low, high = (float(v[0]) for v in bootstrap.percentiles(spread[:, None], settings["confidence"]))
    level = (1 - settings["confidence"]) / max(tests, 1)
    metrics.update({key: gap, f"exposure.{metric}_gap_low.{dim}": low, f"exposure.{metric}_gap_high.{dim}": high,
                    f"exposure.{metric}_gap_p.{dim}": test.p_value})
    threshold = settings["gap_thresholds"][metric]
    if gap <= threshold or test.p_value >= level:
        return []
    w, b = rows[worst], rows[best]
    points = (lambda v: f"{v * 100:.1f}%") if metric == "success_rate" else (lambda v: f"{v:.3f}")
    shared = "" if tests == 1 else f" for the {tests} gaps tested"
    message = (f"{USER_METRICS[metric]} is {points(w[metric])} for {w['label']} against {points(b[metric])} for "
               f"{b['label']}: a gap of {_gap_text(metric, gap)} ({settings['confidence']:.0%} interval "
               f"{_gap_text(metric, low)} to {_gap_text(metric, high)}) above the threshold "
               f"{_gap_text(metric, threshold)}, beyond chance over {len(eligible)} groups ({test.name} "
               f"{gaps.p_below(test.p_value, level)}{shared}); {w['requests']:,} requests by {w['users']:,} users "
               f"against {b['requests']:,} by {b['users']:,}")
    return [Finding("exposure", key, settings["severity"], message, gap, threshold, kind="exposure_gap")]


def _gap_text(metric: str, value: float) -> str:
    return f"{value * 100:.1f} points" if metric == "success_rate" else f"{value:.3f}"


def _movie_groups(grouping: str, block: _Block, total: np.ndarray, draws: np.ndarray, totals: slice, tests: int,
                  settings: dict, metrics: dict) -> tuple[list[dict], list[Finding]]:
    slots, viewings = block.part(total, 0), block.part(total, 1)
    all_slots, all_viewings = total[totals]
    exposure_share, watch_share = _ratio(slots, np.array(all_slots)), _ratio(viewings, np.array(all_viewings))
    ratio = _ratio(exposure_share, watch_share)
    resampled = _ratio(_ratio(block.part(draws, 0), draws[:, totals][:, :1]),
                       _ratio(block.part(draws, 1), draws[:, totals][:, 1:]))
    low, high = bootstrap.percentiles(resampled, settings["confidence"])
    sufficient = _watched_enough(block, total, settings)
    confidence = bootstrap.adjusted(settings["confidence"], tests)
    words = GROUPING_WORDS.get(grouping, grouping)
    rows, findings = [], []
    for i, group in enumerate(block.labels):
        row = {"grouping": grouping, "group": group, "label": f"{words} {group}", "slots": int(slots[i]),
               "viewings": int(viewings[i]), "viewers": int(block.members[i]), "sufficient": bool(sufficient[i]),
               "exposure_share": finite(exposure_share[i]), "watch_share": finite(watch_share[i]),
               "ratio": finite(ratio[i]) if sufficient[i] else None,
               "ratio_low": finite(low[i]) if sufficient[i] else None,
               "ratio_high": finite(high[i]) if sufficient[i] else None}
        for name in ("slots", "viewings", "exposure_share", "watch_share", "ratio", "ratio_low", "ratio_high"):
            metrics[f"exposure.{name}.{grouping}.{group}"] = row[name]
        rows.append(row)
        if not sufficient[i]:
            continue
        interval = bootstrap.normal_interval(float(ratio[i]), resampled[:, i], confidence)
        if interval is not None and interval[1] < settings["min_ratio"]:
            findings.append(Finding(
                "exposure", f"exposure.ratio.{grouping}.{group}", settings["severity"],
                f"movies of {row['label']} fill {exposure_share[i]:.1%} of the recommended slots but make "
                f"{watch_share[i]:.1%} of what users watch ({row['viewings']:,} viewings by {row['viewers']:,} "
                f"users): an exposure-to-watch ratio of {_share(ratio[i])} (at most {_share(max(interval[1], 0))} "
                f"with {confidence:.1%} confidence, adjusted for {tests} movie groups), below "
                f"{settings['min_ratio']:g}", float(ratio[i]), settings["min_ratio"], kind="underexposed"))
    shown = ratio[sufficient]
    metrics[f"exposure.lowest_ratio.{grouping}"] = finite(shown.min()) if len(shown) else None
    findings += _too_little(grouping, rows, f"{settings['min_group_viewings']} viewings or "
                            f"{settings['min_group_viewers']} viewers",
                            lambda r: f"{r['group']} ({r['viewings']:,} viewings by {r['viewers']:,} users)", words)
    return rows, findings


def _share(value: float) -> str:
    """A ratio in two decimals, or two significant digits when smaller than 0.1 (0.0012)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _too_little(name: str, rows: list[dict], bounds: str, describe, words: str) -> list[Finding]:
    small = [r for r in rows if not r["sufficient"]]
    if not small:
        return []
    return [Finding("exposure", f"exposure.insufficient.{name}", "info",
                    f"too little data for a verdict on {len(small)} {words} group(s) (fewer than {bounds}): "
                    + ", ".join(describe(r) for r in small), kind="insufficient_group")]


# ---------------------------------------------------------------------------------------------
# The scheduled audit, and the same over a notebook's frames.

def slots_by_user(store, since, until) -> pd.DataFrame:
    """(user_id, movie_id, n): the slots of the window's served lists holding each movie, per
    user they were served to, counted in the database."""
    user, movie = recommendations.c.user_id, recommendation_items.c.movie_key
    query = (select(user, movie, func.count().label("n")).select_from(activity.items_of_requests())
             .where(*between(recommendations.c.time, since, until)).group_by(user, movie).order_by(user, movie))
    return store.with_movie_ids(store.frame(query, fixed=True))


def audit(ctx) -> AuditResult:
    """The registered audit over the store's window."""
    store, since, until = ctx.store, ctx.since, ctx.until
    horizon = ctx.config["online"]["success_horizon"]
    # The users grouped are those of the requests judged, read from the database by that span;
    # the latest event is read once, so that an ingest meanwhile cannot widen the one span only.
    latest = store.latest_event_time()
    judged = online.judged_span(since, until, latest, horizon)
    return assess(online.followed_requests(store, since, until, horizon, latest=latest),
                  slots_by_user(store, since, until), activity.watch_sessions(store, since, until),
                  activity.watch_sessions(store, since - (until - since), since),
                  store.users_of(*judged, recommendations), store.read("movies"), ctx.config)


def exposure(recommendations, items: pd.DataFrame | None = None, watches: pd.DataFrame | None = None, *,
             users: pd.DataFrame | None = None, movies: pd.DataFrame | None = None, since=None, until=None,
             config: dict | None = None) -> AuditResult:
    """Exposure fairness over a notebook's own frames: what the recommender serves each group of
    users and shows of each group of movies, with the metrics and findings of
    `recaudit audit --only exposure` over the same events.

    No model is needed: the served lists and the watches say it all. Per group of users (each
    of ``fairness.dimensions``), the online success rate and the MRR of the served lists, and
    the gap between the best and worst group; per group of movies (genre, popularity tier,
    release decade, or a column of `movies`: ``exposure.movie_groups``), the exposure share,
    the watch share and their ratio. Every interval resamples users.

    Parameters
    ----------
    recommendations : ParsedEvents, mapping or DataFrame
        The events: what `recaudit.read_log` returns (ParsedEvents), or a mapping or namespace
        with its recommendations, items and watches frames; or the recommendations frame
        alone, with `items` and `watches` given beside it. The frames are shaped as
        `recaudit.recsys.events` parses them, or as `Store.read` returns them. Watches before
        `since` draw the popularity tiers (the window of the same length before). Success is
        judged as the online audit judges it: for the served lists whose horizon ends in the
        window (made from `since` − horizon to `until` − horizon); those of its last horizon
        are judged by the next window.
    users : DataFrame, optional
        users.csv as `recaudit.recsys.formats.read_users_csv` reads it; without it every user
        is in the "unknown" group of each dimension.
    movies : DataFrame, optional
        The catalogue (movie_id, title, year, genres, and any attribute column); without it
        every movie is in the "unknown" genre and decade.
    since, until : timestamp, optional
        The window [since, until) audited, anything `pandas.Timestamp` reads; an end not given
        is filled from the whole hours holding every event.
    config : dict, optional
        Settings in the shape of recaudit.toml (``{"exposure": {"min_ratio": 0.4}}``), over
        the defaults; ``online.success_horizon`` is the horizon of a success.

    Returns
    -------
    AuditResult
        ``exposure.*`` metrics (``exposure.success_rate.<dimension>.<group>``,
        ``exposure.ratio.<grouping>.<group>``, ...), the gap and under-exposure findings, and
        ``details["users"]`` and ``details["movies"]``, one row per group.

    Raises
    ------
    ValueError
        When a frame or one of its columns is missing, `since` or `until` is not a timestamp,
        or `since` is not before `until`.

    Examples
    --------
    Four users are each served a list of a comedy and a drama, and each watches the drama;
    the comedy, never watched, is shown as much. A fifth user's viewing half an hour later
    shows that the log goes on past every list's 15 minutes:

    >>> import pandas as pd
    >>> import recaudit
    >>> lines = []
    >>> for user in range(1, 5):
    ...     lines += [f"2024-01-01T10:00:00,{user},recommendation request a, status 200, result: "
    ...               f"joke+2001, tears+2002, 80 ms",
    ...               f"2024-01-01T10:05:00,{user},GET /data/m/tears+2002/0.mpg"]
    >>> lines.append("2024-01-01T10:30:00,5,GET /data/m/tears+2002/0.mpg")
    >>> from recaudit.recsys import events
    >>> log = events.parse_bytes("\\n".join(lines).encode() + b"\\n")
    >>> movies = pd.DataFrame({"movie_id": ["joke+2001", "tears+2002"], "title": ["Joke", "Tears"],
    ...                        "year": [2001, 2002], "genres": ["Comedy", "Drama"]})
    >>> result = recaudit.exposure(log, movies=movies, until="2024-01-01T11:00")
    >>> result.metrics["exposure.success_rate"], result.metrics["exposure.mrr"]
    (1.0, 0.5)
    >>> result.metrics["exposure.exposure_share.genre.Drama"], result.metrics["exposure.watch_share.genre.Drama"]
    (0.5, 1.0)
    """
    frames = activity.given_frames("exposure", recommendations, {"items": items, "watches": watches})
    recommendations, items, watches = frames["recommendations"], frames["items"], frames["watches"]
    activity.require_columns({**frames, "users": users, "movies": movies}, {
        "recommendations": ("line", "time", "user_id", "server", "status", "latency_ms", "n_items"),
        "items": (*activity.request_key(recommendations), "rank", "movie_id"),
        "watches": ("time", "user_id", "movie_id"), "users": ("user_id",),
        "movies": ("movie_id", "title", "year", "genres")})
    found = activity.window(since, until, (recommendations, watches))
    if found is None:
        return AuditResult("exposure", "insufficient_data", details={"reason": "no events in the frames"})
    since, until = found
    config = configuration.resolve(config)
    follow = online.followed_requests_of_frames(recommendations, items, watches, since, until,
                                                config["online"]["success_horizon"])
    slots = (activity.listed_items(activity.within(recommendations, since, until), items)
             .groupby(["user_id", "movie_id"], observed=True).size().rename("n").reset_index())
    if users is None:
        users = pd.DataFrame({c: pd.Series(dtype=object) for c in ("user_id", "age", "age_group", "gender",
                                                                     "occupation")})
    if movies is None:
        movies = pd.DataFrame({c: pd.Series(dtype=object) for c in ("movie_id", "title", "year", "genres")})
    return assess(follow, slots, activity.sessions_of(activity.within(watches, since, until)),
                  activity.sessions_of(activity.within(watches, since - (until - since), since)), users, movies, config)
