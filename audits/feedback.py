"""Feedback loops: is the recommender narrowing what people see onto what it already showed?

A loop shows in the logs alone: exposure concentrates on fewer movies run after run, and what
gets rated follows what gets recommended. Each run measures both over the window; the trend
comes from the metrics of earlier runs in the store.

`audit` (the CLI and the scheduler) and `feedback` (a notebook's frames) both hand `measure`
the same aggregates, read from the store or counted from the frames.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from recaudit.audits import activity, groups
from recaudit.audits import config as configuration
from recaudit.audits.result import AuditResult, Finding

LORENZ_POINTS = 101
CONCENTRATION = ("gini", "top1pct_share", "top10_share", "coverage", "entropy", "hhi")


def concentration(exposure: np.ndarray) -> dict:
    """How unequally exposure falls over a catalogue; `exposure` has one count per catalogue
    movie, zeros included (a movie never recommended is part of the inequality)."""
    x = np.sort(np.asarray(exposure, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return dict.fromkeys(CONCENTRATION)
    p = x / total
    nonzero = p[p > 0]
    return {
        "gini": float(2 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n),
        "top1pct_share": float(x[-max(1, math.ceil(0.01 * n)):].sum() / total),
        "top10_share": float(x[-10:].sum() / total),
        "coverage": float(np.count_nonzero(x) / n),
        "entropy": float(-np.sum(nonzero * np.log(nonzero)) / np.log(n)) if n > 1 else 0.0,
        "hhi": float(np.sum(p ** 2)),
    }


def lorenz(exposure: np.ndarray, points: int = LORENZ_POINTS) -> list[list[float]]:
    """[share of movies, share of exposure] from the least exposed up, at `points` places."""
    x = np.sort(np.asarray(exposure, dtype=float))
    if len(x) == 0 or x.sum() == 0:
        return []
    curve = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
    at = np.linspace(0, len(x), points)
    return [[round(float(a / len(x)), 4), round(float(np.interp(a, np.arange(len(x) + 1), curve)), 4)] for a in at]


def correlation(a: np.ndarray, b: np.ndarray) -> dict:
    """Pearson and Spearman between two per-movie counts, with p-values and n."""
    from scipy import stats

    n = len(a)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None, "n": n}
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {"pearson": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman": float(spearman.statistic), "spearman_p": float(spearman.pvalue), "n": n}


def rating_recommendation(rated: pd.Series, recommended: pd.Series) -> dict:
    """The correlation over the movies rated or recommended, each count zero-filled."""
    movies = rated.index.union(recommended.index)
    return correlation(rated.reindex(movies, fill_value=0).to_numpy(dtype=float),
                       recommended.reindex(movies, fill_value=0).to_numpy(dtype=float))


def popularity_bias(exposure: pd.Series, sessions: pd.DataFrame, head_share: float) -> dict:
    """ARP of the recommendations against that of what users watched, and the long-tail shares.

    A movie's popularity is the share of the window's viewers who watched it. The head is
    the most watched movies that together make `head_share` of the viewing; the long tail is
    every other movie, never watched ones included.
    """
    if sessions.empty or exposure.sum() == 0:
        return {"arp": None, "arp_watched": None, "popularity_lift": None, "long_tail_share": None,
                "long_tail_share_watched": None}
    viewers = sessions.groupby("movie_id", observed=True)["user_id"].nunique()
    popularity = viewers / sessions["user_id"].nunique()
    arp = float((exposure * popularity.reindex(exposure.index, fill_value=0)).sum() / exposure.sum())
    watched = sessions.groupby("movie_id", observed=True).size().sort_values(ascending=False, kind="stable")
    head = watched.index[: int(np.searchsorted(watched.cumsum().to_numpy() / watched.sum(), head_share) + 1)]
    arp_watched = float(popularity.reindex(sessions["movie_id"].astype(str)).mean())
    return {"arp": arp, "arp_watched": arp_watched, "popularity_lift": arp / arp_watched if arp_watched else None,
            "long_tail_share": float(exposure[~exposure.index.isin(head)].sum() / exposure.sum()),
            "long_tail_share_watched": float(watched[~watched.index.isin(head)].sum() / watched.sum())}


def slope(values: list[float]) -> float | None:
    """Least-squares change per run."""
    y = np.asarray([v for v in values if v is not None], dtype=float)
    if len(y) < 2:
        return None
    return float(np.polyfit(np.arange(len(y)), y, 1)[0])


def loop_finding(history: pd.DataFrame, settings: dict) -> Finding | None:
    """The "feedback loop suspected" finding from the last runs (oldest first, this run last):
    columns gini, top10_share and correlation. It fires when the Gini rises by more than the
    threshold per run over at least `min_runs` runs while the correlation stays above its
    threshold in every one of them."""
    if len(history) < settings["min_runs"]:
        return None
    rise = slope(history["gini"].tolist())
    corr = history["correlation"]
    if rise is None or rise <= settings["gini_slope_threshold"] or corr.isna().any() or \
            (corr < settings["correlation_threshold"]).any():
        return None
    first, last = history.iloc[0], history.iloc[-1]
    top = (f"; the top 10 movies' share of recommendations went from {first.top10_share:.0%} to "
           f"{last.top10_share:.0%}") if pd.notna(first.top10_share) and pd.notna(last.top10_share) else ""
    message = (f"feedback loop suspected: the Gini of recommendation exposure rose from {first.gini:.3f} to "
               f"{last.gini:.3f} over the last {len(history)} runs (+{rise:.3f} per run > "
               f"{settings['gini_slope_threshold']:g}){top}, while the correlation of how often a movie is rated "
               f"with how often it is recommended stayed at or above {settings['correlation_threshold']:g} "
               f"(now {last.correlation:.2f})")
    return Finding("feedback", "feedback.gini_slope", settings["severity"], message, rise,
                   settings["gini_slope_threshold"], kind="feedback_loop")


def _counts(counts: pd.DataFrame) -> pd.Series:
    """A (movie_id, n) frame as n by movie id."""
    return counts.set_index(counts["movie_id"].astype(str))["n"]


def feedback(recommendations, items: pd.DataFrame | None = None, ratings: pd.DataFrame | None = None,
             watches: pd.DataFrame | None = None, *, users: pd.DataFrame | None = None,
             movies: pd.DataFrame | None = None, since=None, until=None,
             history: Sequence[Mapping[str, float | None]] = (), config: dict | None = None) -> AuditResult:
    """The feedback audit over a notebook's own frames, with the metrics and findings of
    `recaudit audit --only feedback` over the same events.

    Parameters
    ----------
    recommendations : ParsedEvents, mapping or DataFrame
        The events: what `recaudit.read_log` returns (ParsedEvents), or a mapping or namespace
        with its recommendations, items, ratings and watches frames; or the recommendations
        frame alone, with `items`, `ratings` and `watches` given beside it.
    items, ratings, watches : DataFrame, optional
        With a recommendations frame: its items, the ratings and the watches. The frames are
        shaped as `recaudit.recsys.events` parses them, or as `Store.read` returns them:
        recommendations need line, time and user_id; items line and movie_id (and source_id
        when recommendations have one); ratings time and movie_id; watches time, user_id and
        movie_id. They may reach back before `since`: the correlation is taken over
        `feedback.correlation_window` and its lagged twin over the span before.
    users : DataFrame, optional
        users.csv as `recaudit.recsys.formats.read_users_csv` reads it (user_id, and age,
        age_group or gender where known); without it every user is in the "unknown" sex and
        age groups.
    movies : DataFrame, optional
        The catalogue (movie_id, title): movies never recommended count in the concentration.
        Without it the catalogue is the movies recommended.
    since, until : timestamp, optional
        The window [since, until) audited, anything `pandas.Timestamp` reads; an end not given
        is filled from the whole hours holding every event.
    history : sequence of mappings, optional
        The metrics of earlier runs, oldest first (e.g. ``[r.metrics for r in earlier]``):
        the trend is fitted over the last ``feedback.trend_runs - 1`` of them and this one.
        Without them the trend has this run alone: too few for a verdict, as
        ``details["trend_note"]`` says.
    config : dict, optional
        Settings in the shape of recaudit.toml (``{"feedback": {"min_runs": 2}}``), over the
        defaults.

    Returns
    -------
    AuditResult
        ``feedback.*`` metrics, the feedback-loop finding, and details for the report;
        ``insufficient_data`` when there is no recommendation to audit.

    Raises
    ------
    ValueError
        When a frame or one of its columns is missing, `since` or `until` is not a timestamp,
        or `since` is not before `until`.

    Examples
    --------
    >>> import pandas as pd
    >>> from recaudit.recsys import events
    >>> log = events.parse_bytes(
    ...     b"2024-01-01T10:00:00,1,recommendation request a, status 200, result: x+1, y+2, 80 ms\\n"
    ...     b"2024-01-01T10:05:00,1,GET /data/m/x+1/0.mpg\\n"
    ...     b"2024-01-01T11:00:00,1,GET /rate/x+1=5\\n")
    >>> result = feedback(log)
    >>> result.metrics["feedback.recommendations"], result.metrics["feedback.coverage"]
    (2.0, 1.0)
    >>> result.details["trend_note"]
    'too few runs for a verdict on the trend: 1, fewer than feedback.min_runs (3)'
    >>> feedback(log.recommendations, log.items, log.ratings, log.watches).metrics == result.metrics
    True
    """
    given = activity.given_frames("feedback", recommendations,
                                  {"items": items, "ratings": ratings, "watches": watches})
    activity.require_columns({**given, "users": users, "movies": movies}, {
        "recommendations": ("line", "time", "user_id"),
        "items": (*activity.request_key(given["recommendations"]), "movie_id"),
        "ratings": ("time", "movie_id"), "watches": ("time", "user_id", "movie_id"),
        "users": ("user_id",), "movies": ("movie_id", "title")})
    frames = activity.Frames(**given, users=users)
    found = activity.window(since, until, (frames.recommendations, frames.ratings, frames.watches))
    if found is None:
        return AuditResult("feedback", "insufficient_data", details={"reason": "no events in the frames"})
    since, until = found
    config = configuration.resolve(config)
    catalogue = movies if movies is not None else pd.DataFrame({"movie_id": pd.Series(dtype=object),
                                                                "title": pd.Series(dtype=object)})
    runs = config["feedback"]["trend_runs"] - 1
    past = [{"until": None, **run} for run in list(history)[-runs:]] if runs > 0 else []
    return measure(frames, catalogue, since, until, past, config)


def audit(ctx) -> AuditResult:
    """The registered audit: `measure` over the store's window, the trend from the store's runs."""
    settings = ctx.config["feedback"]
    history = ctx.store.metric_history(list(_trend_keys(settings)), ctx.until, settings["trend_runs"] - 1)
    past = [{"until": end, **dict(zip(run["key"], run["value"]))}
            for (end, _id), run in history.groupby(["until", "run_id"])]
    return measure(activity.Stored(ctx.store), ctx.store.read("movies"), ctx.since, ctx.until, past, ctx.config)


def _trend_keys(settings: dict) -> dict[str, str]:
    """The metrics the trend follows, by the name of their column in the trend."""
    return {"feedback.gini": "gini", "feedback.top10_share": "top10_share",
            f"feedback.rating_rec_corr.{settings['correlation_method']}": "correlation"}


def measure(source, movies: pd.DataFrame, since: pd.Timestamp, until: pd.Timestamp, past: list[dict],
            config: dict) -> AuditResult:
    """The audit's metrics and findings from the aggregates of `source` (`activity.Stored` or
    `activity.Frames`): whichever holds the events, the same numbers. `past` is the earlier
    runs of the trend, oldest first: their `until` (or None) and metrics."""
    settings = config["feedback"]
    by_user = source.recommended_counts_by_user(since, until)  # (user attributes, movie, n)
    if by_user.empty:
        return AuditResult("feedback", "insufficient_data", details={"reason": "no recommendations in the window"})
    ids = by_user["movie_id"].astype(str).to_numpy()
    catalogue = pd.Index(movies["movie_id"].astype(str)).union(pd.Index(pd.unique(ids)))
    at, n = catalogue.get_indexer(ids), by_user["n"].to_numpy(dtype=float)
    exposure = pd.Series(np.bincount(at, weights=n, minlength=len(catalogue)), index=catalogue)
    metrics: dict[str, float | None] = {"feedback.recommendations": float(exposure.sum()),
                                        "feedback.catalogue": float(len(catalogue))}
    metrics.update({f"feedback.{k}": v for k, v in concentration(exposure.to_numpy()).items()})
    details: dict = {"lorenz": lorenz(exposure.to_numpy()), "groups": []}

    labelled = {"sex": groups.sex(by_user), "age": groups.age_group(by_user, config["groups"]["age"])}
    for dim, label in labelled.items():
        label = label.to_numpy()
        for group in sorted(set(label)):
            mine = label == group
            counts = np.bincount(at[mine], weights=n[mine], minlength=len(catalogue))
            values = concentration(counts)
            details["groups"].append({"dimension": dim, "group": group, "recommendations": int(counts.sum()), **values})
            for key in ("gini", "top10_share", "coverage"):
                metrics[f"feedback.{key}.{dim}.{group}"] = values[key]

    # Daily counts of a small service are too sparse for a stable correlation: it is taken over
    # at least `correlation_window`, and the lagged one against the span just before that.
    start = min(since, until - pd.Timedelta(settings["correlation_window"]))
    rated = _counts(source.rated_counts(start, until))
    shown = exposure[exposure > 0] if start == since else _counts(source.recommended_counts(start, until))
    now = rating_recommendation(rated, shown)
    before = _counts(source.recommended_counts(start - (until - start), start))
    lagged = rating_recommendation(rated, before) if len(before) else None
    for name, values in (("rating_rec_corr", now), ("rating_rec_corr_lagged", lagged)):
        for key in ("pearson", "pearson_p", "spearman", "spearman_p", "n"):
            metrics[f"feedback.{name}.{key}"] = None if values is None else values[key]
    details["scatter"] = _scatter(rated, shown)
    titles = movies.set_index(movies["movie_id"].astype(str))["title"]
    titles = titles.where(titles.map(lambda t: isinstance(t, str)), None)
    details["top"] = [{"movie_id": m, "title": titles.get(m), "recommended": int(n), "share": n / exposure.sum(),
                       "rated": int(rated.get(m, 0))} for m, n in exposure.nlargest(10).items()]

    # Movie ids as text: ties in how often movies were watched fall in the same order whichever
    # source numbered the movies.
    sessions = source.watch_sessions(since, until)
    sessions = sessions.assign(movie_id=sessions["movie_id"].astype(str))
    metrics.update({f"feedback.{k}": v for k, v in popularity_bias(exposure, sessions, settings["head_share"]).items()})

    keys = _trend_keys(settings)
    rows = [*past, {"until": until, **{key: metrics[key] for key in keys}}]
    history = pd.DataFrame(rows).reindex(columns=["until", *keys]).rename(columns=keys)
    history[list(keys.values())] = history[list(keys.values())].astype(float)
    metrics["feedback.gini_slope"] = slope(history["gini"].tolist())
    metrics["feedback.top10_share_slope"] = slope(history["top10_share"].tolist())
    metrics["feedback.trend_runs"] = float(len(history))
    details["trend"] = [{"until": None if pd.isna(r.until) else pd.Timestamp(r.until).isoformat(), "gini": r.gini,
                         "top10_share": r.top10_share, "correlation": None if pd.isna(r.correlation) else r.correlation}
                        for r in history.itertuples()]
    if len(history) < settings["min_runs"]:
        details["trend_note"] = (f"too few runs for a verdict on the trend: {len(history)}, fewer than "
                                 f"feedback.min_runs ({settings['min_runs']})")
    finding = loop_finding(history, settings)
    return AuditResult("feedback", metrics=metrics, findings=[finding] if finding else [], details=details)


def _scatter(rated: pd.Series, shown: pd.Series, limit: int = 2000) -> list[list[int]]:
    """[times recommended, times rated] per movie for the report, the most recommended first."""
    movies = rated.index.union(shown.index)
    both = pd.DataFrame({"rec": shown.reindex(movies, fill_value=0), "rated": rated.reindex(movies, fill_value=0)})
    both = both.sort_values(["rec", "rated"], ascending=False, kind="stable").head(limit)
    return both.astype(int).to_numpy().tolist()
