"""Online quality from the logs alone: did users watch what they were recommended?

A recommendation to user u at time t succeeds when u watches any of its movies in
(t, t + horizon] (15 minutes by default). The join is a sorted as-of merge per
(user, movie) pair, never a loop per recommendation.

Whether a request succeeded is known at t + horizon, so a window [since, until) judges the
requests whose horizon ends in it (`judged_span`): those made from since - horizon to
until - horizon, once the events go past their horizon. Consecutive windows judge each request
once, and a window audited again later gives the same figures. The requests made in a window's
last horizon are pending, for the next window; so are those whose horizon the events have not
reached yet, which only a window audited before its data were complete has.

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


def judged_span(since, until, latest, horizon: str = HORIZON) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[first, last): when the requests the window [since, until) judges were made.

    The success of a request at t is decided at t + horizon, so the window judges the requests
    whose horizon ends in it (t + horizon in [since, until)) and before `latest`, the latest
    event (none after it says what happened by then; with None, every one). The requests made
    from `last` to `until` are pending: those of the window's last horizon for the next window,
    and any before them only while the events stop short of the window's end.
    """
    h = pd.Timedelta(horizon)
    since, until = pd.Timestamp(since), pd.Timestamp(until)
    reach = until if latest is None else min(until, pd.Timestamp(latest))
    return since - h, max(since, reach) - h


def followed_requests(store, since, until, horizon: str = HORIZON, latest=None) -> pd.DataFrame:
    """`follow_ups` of the stored requests the window [since, until) judges (`judged_span`):
    those whose horizon ends in the window, by the latest stored event (`latest`, when the
    caller read it already)."""
    latest = store.latest_event_time() if latest is None else latest
    first, last = judged_span(since, until, latest, horizon)
    return _followed_in_store(store, store.read("recommendations", first, last), first, last, horizon)


def _followed_in_store(store, recommendations: pd.DataFrame, first, last, horizon: str) -> pd.DataFrame:
    """`follow_ups` of `recommendations`, the stored requests made in [first, last): from the
    watch spans when the horizon allows (a few rows per watched movie), else from every watch."""
    if _spans_suffice(horizon):
        return follow_ups_from_spans(recommendations, followed_items(store, first, last, pd.Timedelta(horizon)),
                                     horizon)
    return follow_ups(recommendations, store.read("items", first, last),
                      store.read("watches", first, pd.Timestamp(last) + pd.Timedelta(horizon)), horizon)


def followed_requests_of_frames(recommendations: pd.DataFrame, items: pd.DataFrame, watches: pd.DataFrame,
                                since, until, horizon: str = HORIZON) -> pd.DataFrame:
    """`followed_requests` of frames: the latest event is the latest of these frames, and the
    spans are those their watches make, so that the answer is the store's for the same events."""
    first, last = judged_span(since, until, _latest_of(recommendations, watches), horizon)
    return _followed_in_frames(recommendations, items, watches, first, last, horizon)


def _followed_in_frames(recommendations: pd.DataFrame, items: pd.DataFrame, watches: pd.DataFrame, first, last,
                        horizon: str) -> pd.DataFrame:
    """`follow_ups` of the requests of the frames made in [first, last)."""
    made = activity.within(recommendations, first, last)
    if _spans_suffice(horizon):
        followed = followed_items_of_frames(recommendations, items, watches, first, last, pd.Timedelta(horizon))
        return follow_ups_from_spans(made, followed, horizon)
    return follow_ups(made, items, activity.within(watches, first, pd.Timestamp(last) + pd.Timedelta(horizon)),
                      horizon)


def _latest_of(recommendations: pd.DataFrame, watches: pd.DataFrame) -> pd.Timestamp | None:
    """The latest event of the frames: how far they go."""
    return max([f["time"].max() for f in (recommendations, watches) if len(f)], default=None)


def _spans_suffice(horizon: str) -> bool:
    """Whether the quarter-hour spans answer for every watch: a horizon at least that long."""
    return pd.Timedelta(horizon) >= pd.Timedelta(seconds=st.SPAN_SECONDS)


def _answered(recommendations: pd.DataFrame) -> pd.DataFrame:
    """The requests that got a list, not yet followed."""
    columns = [*activity.request_key(recommendations), "time", "user_id", "server"]
    ok = recommendations.loc[_got_a_list(recommendations), columns].reset_index(drop=True)
    return ok.assign(success=False, first_rank=np.nan)


def _got_a_list(recommendations: pd.DataFrame) -> pd.Series:
    """Which requests were answered with a list: the ones a follow-up can judge."""
    return (recommendations["status"] == 200) & (recommendations["n_items"] > 0)


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

    Availability, latency and the request count are of the requests made in the window. The
    success rate and MRR are of the answered requests whose horizon (``online.success_horizon``,
    15 minutes by default) ends in the window: those made from `since` - horizon to
    `until` - horizon, whose success is known by the window's end. Consecutive windows judge
    each request once, and a window audited again later gives the same figures; the requests
    made in its last horizon are pending, judged by the next window.

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
        movie_id. The latest event given is how far the frames go: a request whose horizon
        ends after it is pending too, until frames that go further are audited.
    since, until : timestamp, optional
        The window [since, until) audited, anything `pandas.Timestamp` reads; an end not given
        is filled from the whole hours holding every event.
    config : dict, optional
        Settings in the shape of recaudit.toml (``{"online": {"success_horizon": "30min"}}``),
        over the defaults.

    Returns
    -------
    AuditResult
        ``online.*`` metrics overall and per server (``online.pending``: the answered requests
        not judged yet), and the availability, latency and server-difference findings;
        ``details["judged"]`` gives the number and the span of request times judged, and
        ``details["pending"]`` those pending (``next_run``: made in the window's last horizon;
        ``beyond_data``: whose horizon ends in the window after the latest event).
        ``insufficient_data`` when there is no request to audit.

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
    >>> result.details["judged"]
    {'requests': 1, 'since': '2024-01-01T09:45:00', 'until': '2024-01-01T10:45:00'}
    >>> online(log.recommendations, log.items, log.watches).metrics == result.metrics
    True

    A window ending ten minutes after the request leaves it pending; the next window judges it:

    >>> first = online(log, until="2024-01-01T10:10")
    >>> first.metrics["online.success_rate"], first.metrics["online.pending"]
    (None, 1.0)
    >>> online(log, since="2024-01-01T10:10", until="2024-01-01T11:00").metrics["online.success_rate"]
    1.0
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
    latest = _latest_of(recommendations, watches)
    first, last = judged_span(since, until, latest, horizon)
    follow = _followed_in_frames(recommendations, items, watches, first, last, horizon)
    return measure(activity.within(recommendations, first, until), follow, config["online"], since, until, latest)


def audit(ctx) -> AuditResult:
    """The registered audit: `measure` over the store's window."""
    settings = ctx.config["online"]
    horizon = settings["success_horizon"]
    latest = ctx.store.latest_event_time()
    first, last = judged_span(ctx.since, ctx.until, latest, horizon)
    requests = ctx.store.read("recommendations", first, ctx.until)
    follow = _followed_in_store(ctx.store, activity.within(requests, first, last), first, last, horizon)
    return measure(requests, follow, settings, ctx.since, ctx.until, latest)


def measure(requests: pd.DataFrame, follow: pd.DataFrame, settings: dict, since, until, latest) -> AuditResult:
    """The audit's metrics and findings over the window [since, until).

    `requests` are those made from the horizon before `since` to `until`: availability, latency
    and the count are of those in the window, success and MRR of those judged (`judged_span`
    with `latest`), whose follow-ups `follow` holds (`followed_requests`, from the store or
    from frames: the same numbers). The answered requests made after those are pending.
    """
    horizon = settings["success_horizon"]
    first, last = judged_span(since, until, latest, horizon)
    window = activity.within(requests, since, until)
    if window.empty and follow.empty:
        return AuditResult("online", "insufficient_data",
                           details={"reason": "no recommendation requests in the window"})
    metrics = {f"online.{k}": v for k, v in quality(window, follow).items()}
    waiting = activity.within(requests[_got_a_list(requests)], last, until)["time"]
    next_run = int((waiting >= pd.Timestamp(until) - pd.Timedelta(horizon)).sum())
    metrics["online.pending"] = float(len(waiting))
    servers = []
    # By name, whoever parsed; a server may have only judged requests, made before the window.
    window_server, judged_server = window["server"].astype(str), follow["server"].astype(str)
    for server in sorted(set(window_server) | set(judged_server)):
        part = follow[judged_server == server]
        values = quality(window[window_server == server], part)
        servers.append({"server": server, **values, "successes": int(part["success"].sum()), "answered": len(part)})
        metrics.update({f"online.{k}.server.{server}": v for k, v in values.items()})
    findings = _findings(metrics, servers, settings)
    return AuditResult("online", metrics=metrics, findings=findings, details={
        "servers": servers, "horizon": horizon,
        "judged": {"requests": len(follow), "since": first.isoformat(), "until": last.isoformat()},
        "pending": {"requests": len(waiting), "since": last.isoformat(), "until": pd.Timestamp(until).isoformat(),
                    "next_run": next_run, "beyond_data": len(waiting) - next_run}})


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
