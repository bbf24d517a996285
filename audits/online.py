"""Online quality from the logs alone: did users watch what they were recommended?

A recommendation to user u at time t succeeds when u watches any of its movies in
(t, t + horizon] (15 minutes by default). The join is a sorted as-of merge per
(user, movie) pair, never a loop per recommendation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    listed = items.merge(out[["source_id", "line", "time", "user_id"]].reset_index(names="request"),
                         on=["source_id", "line"])[["request", "time", "user_id", "movie_id", "rank"]]
    pair = _pair_codes(listed, watches)
    watched = pd.DataFrame({"pair": pair[1], "watch_time": watches["time"].to_numpy()})
    listed = listed.assign(pair=pair[0])
    listed = listed[np.isin(listed["pair"].to_numpy(), watched["pair"].to_numpy())]  # pairs never watched cannot succeed
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
    """`follow_ups` from the stored watch spans (`Store.followed_items`) instead of every watch.

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
    at = pd.MultiIndex.from_frame(out[["source_id", "line"]])
    seen = seen.assign(request=at.get_indexer(pd.MultiIndex.from_frame(seen[["source_id", "line"]])))
    seen = seen[seen["request"] >= 0]  # a request left out of `recommendations` (not answered, or not yet due)
    first_seen = (seen.sort_values(["request", "watch_time", "rank"], kind="stable")
                  .drop_duplicates("request").set_index("request")["rank"])
    out.loc[first_seen.index, "success"] = True
    out.loc[first_seen.index, "first_rank"] = first_seen.to_numpy(dtype=float)
    return out


def followed_requests(store, since, until, horizon: str = HORIZON) -> pd.DataFrame:
    """`follow_ups` of the stored requests in [since, until) whose horizon has passed by the
    latest stored event (a request of the last minutes has not had its chance yet): from the
    watch spans when the horizon allows (a few rows per watched movie), else from every watch."""
    recommendations = store.read("recommendations", since, until)
    latest = store.latest_event_time()
    if latest is not None:
        recommendations = recommendations[recommendations["time"] + pd.Timedelta(horizon) <= latest]
    if pd.Timedelta(horizon) >= pd.Timedelta(seconds=st.SPAN_SECONDS):
        return follow_ups_from_spans(recommendations, store.followed_items(since, until, pd.Timedelta(horizon)),
                                     horizon)
    return follow_ups(recommendations, store.read("items", since, until),
                      store.read("watches", since, pd.Timestamp(until) + pd.Timedelta(horizon)), horizon)


def _answered(recommendations: pd.DataFrame) -> pd.DataFrame:
    """The requests that got a list, not yet followed."""
    ok = recommendations.loc[(recommendations["status"] == 200) & (recommendations["n_items"] > 0),
                             ["source_id", "line", "time", "user_id", "server"]].reset_index(drop=True)
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


def audit(ctx) -> AuditResult:
    settings = ctx.config["online"]
    store, since, until = ctx.store, ctx.since, ctx.until
    recommendations = store.read("recommendations", since, until)
    if recommendations.empty:
        return AuditResult("online", "insufficient_data", details={"reason": "no recommendation requests in the window"})
    horizon = settings["success_horizon"]
    follow = followed_requests(store, since, until, horizon)
    metrics = {f"online.{k}": v for k, v in quality(recommendations, follow).items()}
    waiting = int(((recommendations["status"] == 200) & (recommendations["n_items"] > 0)).sum()) - len(follow)
    servers = []
    for server, part in recommendations.groupby("server", observed=True):
        values = quality(part, follow[follow["server"] == server])
        servers.append({"server": str(server), **values, "successes": int(follow.loc[follow["server"] == server,
                                                                                      "success"].sum()),
                        "answered": int((follow["server"] == server).sum())})
        metrics.update({f"online.{k}.server.{server}": v for k, v in values.items()})
    findings = _findings(metrics, servers, settings)
    return AuditResult("online", metrics=metrics, findings=findings,
                       details={"servers": servers, "horizon": horizon, "awaiting_follow_up": waiting})


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
                             f"{settings['max_latency_p99']:,.0f} ms", p99, settings["max_latency_p99"], kind="latency"))
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
                f"z-test p = {p:.2g} < {alpha:.2g})", diff, settings["min_success_difference"], kind="server_difference"))
    return found
