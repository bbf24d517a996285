"""Online quality from the logs alone: did users watch what they were recommended?

A recommendation to user u at time t succeeds when u watches any of its movies in
(t, t + horizon] (15 minutes by default). The join is a sorted as-of merge per
(user, movie) pair, never a loop per recommendation.

`audit` (the CLI and the scheduler) and `online` (a notebook's frames) find the follow-ups the
same way, from the stored watch spans or from the spans the frames' watches make, and hand them
to `measure`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import select

from recaudit.audits import activity
from recaudit.audits import config as configuration
from recaudit.audits import store as st
from recaudit.audits.result import AuditResult, Finding

HORIZON = "15min"


def follow_ups(recommendations: pd.DataFrame, items: pd.DataFrame, watches: pd.DataFrame,
               horizon: str = HORIZON) -> pd.DataFrame:
    """One row per successful request (status 200 with a list): source_id, line, time, user_id,
    server, success, and the rank of the first recommended movie watched in the span (the
    earliest watch; the better rank on a tie; NaN when none)."""
    out = _answered(recommendations)
    if out.empty or watches.empty:
        return out
    key = activity.request_key(out)
    listed = items.merge(out[[*key, "time", "user_id"]].reset_index(names="request"),
                         on=key)[["request", "time", "user_id", "movie_id", "rank"]]
    pair = _pair_codes(listed, watches)
    watched = pd.DataFrame({"pair": pair[1], "watch_time": watches["time"].to_numpy()})
    listed = listed.assign(pair=pair[0])
    # pairs never watched cannot succeed
    listed = listed[np.isin(listed["pair"].to_numpy(), watched["pair"].to_numpy())]
    if listed.empty:
        return out
    hit = pd.merge_asof(listed.sort_values("time", kind="stable"),
                        watched[watched["pair"].isin(listed["pair"])].sort_values("watch_time", kind="stable"),
                        left_on="time", right_on="watch_time", by="pair", direction="forward",
                        allow_exact_matches=False, tolerance=pd.Timedelta(horizon))
    first = (hit[hit["watch_time"].notna()].sort_values(["request", "watch_time", "rank"], kind="stable")
             .drop_duplicates("request").set_index("request")["rank"])
    out.loc[first.index, "success"] = True
    out.loc[first.index, "first_rank"] = first.to_numpy(dtype=float)
    return out


def follow_ups_from_spans(recommendations: pd.DataFrame, followed: pd.DataFrame,
                          horizon: str = HORIZON) -> pd.DataFrame:
    """`follow_ups` from watch spans (`followed_items`) instead of every watch.

    A span holds the first and last watch of a user and movie in a quarter hour. With a
    horizon of at least that, a watch in (t, t + horizon] exists exactly when one of a span's
    ends is in it. The first one watched is ordered by that end: the same as by every watch
    unless a user alternates between two listed movies within one quarter hour.
    """
    out = _answered(recommendations)
    if out.empty or followed.empty:
        return out
    t = followed["time"].to_numpy()
    end = t + np.timedelta64(pd.Timedelta(horizon))
    first, last = followed["first_at"].to_numpy(), followed["last_at"].to_numpy()
    inside_first, inside_last = (first > t) & (first <= end), (last > t) & (last <= end)
    seen = followed.assign(watch_time=np.where(inside_first, first, last))[inside_first | inside_last]
    key = activity.request_key(out)
    at = pd.MultiIndex.from_frame(out[key])
    seen = seen.assign(request=at.get_indexer(pd.MultiIndex.from_frame(seen[key])))
    seen = seen[seen["request"] >= 0]  # a request left out of `recommendations` (not answered, or not yet due)
    first_seen = (seen.sort_values(["request", "watch_time", "rank"], kind="stable")
                  .drop_duplicates("request").set_index("request")["rank"])
    out.loc[first_seen.index, "success"] = True
    out.loc[first_seen.index, "first_rank"] = first_seen.to_numpy(dtype=float)
    return out


def followed_items(store, since, until, horizon: pd.Timedelta) -> pd.DataFrame:
    """(source_id, line, rank, time, first_at, last_at): each recommended movie of a stored
    request in [since, until) that its user watched around then, with the watch spans of that
    user and movie in the quarter hours from `since` to `until` + `horizon`. Movies never
    watched are not returned: they cannot make a request succeed."""
    i, r, s = st.recommendation_items, st.recommendations, st.watch_spans
    first, last = _quarters(since, until, horizon)
    spans = i.join(r, (r.c.source_id == i.c.source_id) & (r.c.line == i.c.line)).join(
        s, (s.c.user_id == r.c.user_id) & (s.c.movie_key == i.c.movie_key) & (s.c.quarter >= first)
        & (s.c.quarter < last))
    query = (select(i.c.source_id, i.c.line, i.c.rank, r.c.time, s.c.first_at, s.c.last_at).select_from(spans)
             .where(*st.between(r.c.time, since, until)))
    return store.frame(query, fixed=True)


def followed_items_of_frames(recommendations: pd.DataFrame, items: pd.DataFrame, watches: pd.DataFrame,
                             since, until, horizon: pd.Timedelta) -> pd.DataFrame:
    """`followed_items` of frames shaped like the parser's, from the spans their watches make."""
    first, last = _quarters(since, until, horizon)
    spans = activity.quarter_spans(watches)
    spans = spans[(spans["quarter"] >= first) & (spans["quarter"] < last)]
    key = activity.request_key(recommendations)
    requests = activity.within(recommendations, since, until)[[*key, "time", "user_id"]]
    listed = items[[*key, "rank", "movie_id"]].merge(requests, on=key)
    followed = listed.merge(spans, on=["user_id", "movie_id"])
    return followed[[*key, "rank", "time", "first_at", "last_at"]]


def _quarters(since, until, horizon: pd.Timedelta) -> tuple[int, int]:
    """[first, last) quarter hours whose spans can hold a follow-up of a request in the window."""
    first = int(pd.Timestamp(since).value // 10**9 // st.SPAN_SECONDS)
    last = -(-int((pd.Timestamp(until) + horizon).value // 10**9) // st.SPAN_SECONDS)
    return first, last


def followed_requests(store, since, until, horizon: str = HORIZON) -> pd.DataFrame:
    """`follow_ups` of the stored requests in [since, until) whose horizon has passed by the
    latest stored event (a request of the last minutes has not had its chance yet): from the
    watch spans when the horizon allows (a few rows per watched movie), else from every watch."""
    recommendations = _due(store.read("recommendations", since, until), store.latest_event_time(), horizon)
    if _spans_suffice(horizon):
        return follow_ups_from_spans(recommendations, followed_items(store, since, until, pd.Timedelta(horizon)),
                                     horizon)
    return follow_ups(recommendations, store.read("items", since, until),
                      store.read("watches", since, pd.Timestamp(until) + pd.Timedelta(horizon)), horizon)


def followed_requests_of_frames(recommendations: pd.DataFrame, items: pd.DataFrame, watches: pd.DataFrame,
                                since, until, horizon: str = HORIZON) -> pd.DataFrame:
    """`followed_requests` of frames: the latest event is the latest of these frames, and the
    spans are those their watches make, so that the answer is the store's for the same events."""
    latest = max([f["time"].max() for f in (recommendations, watches) if len(f)], default=None)
    due = _due(activity.within(recommendations, since, until), latest, horizon)
    if _spans_suffice(horizon):
        followed = followed_items_of_frames(recommendations, items, watches, since, until, pd.Timedelta(horizon))
        return follow_ups_from_spans(due, followed, horizon)
    return follow_ups(due, items, activity.within(watches, since, pd.Timestamp(until) + pd.Timedelta(horizon)), horizon)


def _due(recommendations: pd.DataFrame, latest, horizon: str) -> pd.DataFrame:
    """The requests whose horizon has passed by `latest` (every one when nothing says how far
    the log goes)."""
    if latest is None:
        return recommendations
    return recommendations[recommendations["time"] + pd.Timedelta(horizon) <= latest]


def _spans_suffice(horizon: str) -> bool:
    """Whether the quarter-hour spans answer for every watch: a horizon at least that long."""
    return pd.Timedelta(horizon) >= pd.Timedelta(seconds=st.SPAN_SECONDS)


def _answered(recommendations: pd.DataFrame) -> pd.DataFrame:
    """The requests that got a list, not yet followed."""
    answered = (recommendations["status"] == 200) & (recommendations["n_items"] > 0)
    columns = [*activity.request_key(recommendations), "time", "user_id", "server"]
    ok = recommendations.loc[answered, columns].reset_index(drop=True)
    return ok.assign(success=False, first_rank=np.nan)


def _pair_codes(listed: pd.DataFrame, watches: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One int64 code per (user, movie) pair, shared by both frames."""
    movies = pd.Index(pd.unique(np.concatenate([_ids(listed["movie_id"]), _ids(watches["movie_id"])])))
    codes = [df["user_id"].to_numpy(dtype=np.int64) * len(movies) + _codes(df["movie_id"], movies)
             for df in (listed, watches)]
    return codes[0], codes[1]


def _ids(movie_id: pd.Series) -> np.ndarray:
    if isinstance(movie_id.dtype, pd.CategoricalDtype):
        return movie_id.cat.categories.astype(str).to_numpy()
    return pd.unique(movie_id.astype(str).to_numpy())


def _codes(movie_id: pd.Series, movies: pd.Index) -> np.ndarray:
    """Positions in `movies`, through the categories when there are (millions of rows, few movies)."""
    if isinstance(movie_id.dtype, pd.CategoricalDtype):
        return movies.get_indexer(movie_id.cat.categories.astype(str))[movie_id.cat.codes.to_numpy()]
    return movies.get_indexer(movie_id.astype(str))


# ---------------------------------------------------------------------------------------------
# The audit.

def quality(recommendations: pd.DataFrame, follow: pd.DataFrame) -> dict:
    """Availability and latency over requests; success rate and MRR over answered ones."""
    ok = recommendations[recommendations["status"] == 200]
    latency = ok["latency_ms"].to_numpy(dtype=float)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99]) if len(latency) else (None, None, None)
    answered = len(follow)
    return {"requests": float(len(recommendations)),
            "availability": float(len(ok) / len(recommendations)) if len(recommendations) else None,
            "success_rate": float(follow["success"].mean()) if answered else None,
            "mrr": float((1 / follow["first_rank"]).fillna(0).mean()) if answered else None,
            "latency_p50": _opt(p50), "latency_p95": _opt(p95), "latency_p99": _opt(p99)}


def two_proportions(successes_a: int, n_a: int, successes_b: int, n_b: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test."""
    from scipy import stats

    if not n_a or not n_b:
        return None
    pooled = (successes_a + successes_b) / (n_a + n_b)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 1.0
    z = (successes_a / n_a - successes_b / n_b) / spread
    return float(2 * stats.norm.sf(abs(z)))


def wilson_upper(successes: int, n: int, alpha: float) -> float:
    """Upper bound of the one-sided Wilson score interval of a proportion."""
    from scipy import stats

    z = stats.norm.isf(alpha)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + spread) / (1 + z * z / n)))


def _opt(value) -> float | None:
    return None if value is None else float(value)


def online(recommendations, items: pd.DataFrame | None = None, watches: pd.DataFrame | None = None, *,
           since=None, until=None, config: dict | None = None) -> AuditResult:
    """The online audit over a notebook's own frames, with the metrics and findings of
    `recaudit audit --only online` over the same events.

    Parameters
    ----------
    recommendations : ParsedEvents, mapping or DataFrame
        The events: what `recaudit.read_log` returns (ParsedEvents), or a mapping or namespace
        with its recommendations, items and watches frames; or the recommendations frame
        alone, with `items` and `watches` given beside it.
    items, watches : DataFrame, optional
        With a recommendations frame: its items and the watches. The frames are shaped as
        `recaudit.recsys.events` parses them, or as `Store.read` returns them: recommendations
        need line, time, user_id, server, status, latency_ms and n_items; items line, rank
        and movie_id (and source_id when recommendations have one); watches time, user_id and
        movie_id. Watches after `until` count as the follow-ups of the window's last requests;
        a request whose horizon reaches past the latest event given is not judged yet
        (``details["awaiting_follow_up"]``).
    since, until : timestamp, optional
        The window [since, until) of requests audited, anything `pandas.Timestamp` reads; an
        end not given is filled from the whole hours holding every event.
    config : dict, optional
        Settings in the shape of recaudit.toml (``{"online": {"success_horizon": "30min"}}``),
        over the defaults.

    Returns
    -------
    AuditResult
        ``online.*`` metrics overall and per server, and the availability, latency and
        server-difference findings; ``insufficient_data`` when there is no request to audit.

    Raises
    ------
    ValueError
        When a frame or one of its columns is missing, `since` or `until` is not a timestamp,
        or `since` is not before `until`.

    Examples
    --------
    >>> from recaudit.recsys import events
    >>> log = events.parse_bytes(
    ...     b"2024-01-01T10:00:00,1,recommendation request a, status 200, result: x+1, y+2, 80 ms\\n"
    ...     b"2024-01-01T10:05:00,1,GET /data/m/y+2/0.mpg\\n"
    ...     b"2024-01-01T11:00:00,2,GET /data/m/x+1/0.mpg\\n")
    >>> result = online(log)
    >>> result.metrics["online.success_rate"], result.metrics["online.mrr"]
    (1.0, 0.5)
    >>> online(log.recommendations, log.items, log.watches).metrics == result.metrics
    True
    """
    frames = activity.given_frames("online", recommendations, {"items": items, "watches": watches})
    recommendations, items, watches = frames["recommendations"], frames["items"], frames["watches"]
    activity.require_columns(frames, {
        "recommendations": ("line", "time", "user_id", "server", "status", "latency_ms", "n_items"),
        "items": (*activity.request_key(recommendations), "rank", "movie_id"),
        "watches": ("time", "user_id", "movie_id")})
    found = activity.window(since, until, (recommendations, watches))
    if found is None:
        return AuditResult("online", "insufficient_data", details={"reason": "no events in the frames"})
    since, until = found
    config = configuration.resolve(config)
    horizon = config["online"]["success_horizon"]
    follow = followed_requests_of_frames(recommendations, items, watches, since, until, horizon)
    return measure(activity.within(recommendations, since, until), follow, config["online"])


def audit(ctx) -> AuditResult:
    """The registered audit: `measure` over the store's window."""
    settings = ctx.config["online"]
    recommendations = ctx.store.read("recommendations", ctx.since, ctx.until)
    follow = (followed_requests(ctx.store, ctx.since, ctx.until, settings["success_horizon"])
              if len(recommendations) else None)
    return measure(recommendations, follow, settings)


def measure(recommendations: pd.DataFrame, follow: pd.DataFrame | None, settings: dict) -> AuditResult:
    """The audit's metrics and findings from the window's requests and the follow-ups of those
    due (`followed_requests`, from the store or from frames: the same numbers)."""
    if recommendations.empty:
        return AuditResult("online", "insufficient_data",
                           details={"reason": "no recommendation requests in the window"})
    metrics = {f"online.{k}": v for k, v in quality(recommendations, follow).items()}
    waiting = int(((recommendations["status"] == 200) & (recommendations["n_items"] > 0)).sum()) - len(follow)
    servers = []
    for server, part in recommendations.groupby(recommendations["server"].astype(str)):  # by name, whoever parsed
        values = quality(part, follow[follow["server"] == server])
        servers.append({"server": str(server), **values, "successes": int(follow.loc[follow["server"] == server,
                                                                                      "success"].sum()),
                        "answered": int((follow["server"] == server).sum())})
        metrics.update({f"online.{k}.server.{server}": v for k, v in values.items()})
    findings = _findings(metrics, servers, settings)
    return AuditResult("online", metrics=metrics, findings=findings,
                       details={"servers": servers, "horizon": settings["success_horizon"],
                                "awaiting_follow_up": waiting})


def _findings(metrics: dict, servers: list[dict], settings: dict) -> list[Finding]:
    found = []
    severity = settings["severity"]
    availability, requests = metrics["online.availability"], int(metrics["online.requests"])
    if availability is not None:
        upper = wilson_upper(round(availability * requests), requests, settings["alpha"])
        if upper < settings["min_availability"]:  # below the target beyond chance, not by a few unlucky requests
            found.append(Finding("online", "online.availability", severity,
                                 f"only {availability:.1%} of {requests:,} recommendation requests succeeded (status "
                                 f"200), below {settings['min_availability']:.1%} (at most {upper:.1%} with "
                                 f"{1 - settings['alpha']:.0%} confidence)",
                                 availability, settings["min_availability"], kind="availability"))
    p99 = metrics["online.latency_p99"]
    if p99 is not None and p99 > settings["max_latency_p99"]:
        found.append(Finding("online", "online.latency_p99", severity,
                             f"99th percentile latency of successful requests is {p99:,.0f} ms, above "
                             f"{settings['max_latency_p99']:,.0f} ms", p99, settings["max_latency_p99"],
                             kind="latency"))
    rated = [s for s in servers if s["answered"]]
    if len(rated) >= 2:
        best = max(rated, key=lambda s: s["success_rate"])
        worst = min(rated, key=lambda s: s["success_rate"])
        p = two_proportions(best["successes"], best["answered"], worst["successes"], worst["answered"])
        diff = best["success_rate"] - worst["success_rate"]
        pairs = len(rated) * (len(rated) - 1) // 2  # best against worst was picked from every pair
        alpha = settings["alpha"] / pairs
        metrics["online.success_rate_diff.server"] = diff
        metrics["online.success_rate_p.server"] = p
        if p is not None and p < alpha and diff >= settings["min_success_difference"]:
            found.append(Finding(
                "online", "online.success_rate_diff.server", severity,
                f"server {worst['server']} succeeds less often than server {best['server']}: "
                f"{worst['success_rate']:.1%} of {worst['answered']:,} recommendations against "
                f"{best['success_rate']:.1%} of {best['answered']:,} ({diff * 100:.1f} points, two-proportion "
                f"z-test p = {p:.2g} < {alpha:.2g})", diff, settings["min_success_difference"],
                kind="server_difference"))
    return found
