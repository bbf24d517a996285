"""What each metric key means, in words a reviewer reads beside the key.

Keys are ``<audit>.<metric>[.<dimension>.<group>]`` (recaudit.audits.result): the words for the
``<audit>.<metric>`` part are defined once here, in `METRICS`, and everything after it (the
dimension and group, the server, the dataset and expectation, the interval bound, warm or
cold-start ratings) is composed by `metric_name`. A key this module does not know gets no
name: the pages then show the key alone rather than a guess.
"""

from __future__ import annotations

METRICS = {  # "<audit>.<metric>": what it measures
    "validation.failed": "expectations failed",
    "validation.skipped": "expectations skipped",
    "validation.success": "expectation passed (1) or failed (0)",
    "validation.unexpected_count": "rows breaking the expectation",
    "validation.unexpected_percent": "share of rows breaking the expectation (%)",
    "drift.share_drifted": "share of drift signals that drifted",
    "drift.dataset_drift": "dataset drift (1: at least drift.share_threshold of the signals drifted)",
    "fairness.n": "ratings evaluated",
    "fairness.unscored": "ratings without a prediction",
    "fairness.scored_share": "share of ratings with a prediction",
    "fairness.rmse": "root mean squared error of predicted ratings",
    "fairness.mae": "mean absolute error of predicted ratings",
    "fairness.rmse_gap": "gap in RMSE, worst group against best",
    "fairness.mae_gap": "gap in MAE, worst group against best",
    "fairness.rmse_ratio": "ratio of RMSE, worst group to best",
    "fairness.mae_ratio": "ratio of MAE, worst group to best",
    "fairness.rmse_mde": "smallest detectable gap in RMSE",
    "fairness.mae_mde": "smallest detectable gap in MAE",
    "fairness.rmse_gap_sinking_users": "users whose removal sinks the RMSE gap",
    "fairness.mae_gap_sinking_users": "users whose removal sinks the MAE gap",
    "fairness.rmse_gap_without_user": "RMSE gap without its most influential user",
    "fairness.mae_gap_without_user": "MAE gap without its most influential user",
    "fairness.cold_start_share": "share of cold-start ratings",
    "fairness.hit_rate": "hit rate at k",
    "fairness.ndcg": "normalised discounted cumulative gain at k",
    "feedback.recommendations": "recommended slots",
    "feedback.catalogue": "movies in the catalogue",
    "feedback.gini": "Gini coefficient of recommendation exposure",
    "feedback.top1pct_share": "share of recommendations going to the top 1% of movies",
    "feedback.top10_share": "share of recommendations going to the top 10 movies",
    "feedback.coverage": "share of the catalogue recommended",
    "feedback.entropy": "entropy of recommendation exposure",
    "feedback.hhi": "Herfindahl–Hirschman index of recommendations",
    "feedback.rating_rec_corr": "correlation of ratings with recommendations per movie",
    "feedback.rating_rec_corr_lagged": "correlation of ratings with the previous window's recommendations",
    "feedback.arp": "average popularity of recommended movies",
    "feedback.arp_watched": "average popularity of watched movies",
    "feedback.popularity_lift": "popularity lift of recommendations over watching",
    "feedback.long_tail_share": "share of recommendations from the long tail",
    "feedback.long_tail_share_watched": "share of watching from the long tail",
    "feedback.gini_slope": "rise of the exposure Gini per run",
    "feedback.top10_share_slope": "rise of the top-10 share per run",
    "feedback.trend_runs": "runs the trend is fitted over",
    "online.requests": "recommendation requests",
    "online.pending": "requests whose success is judged next run",
    "online.availability": "share of requests answered (HTTP 200)",
    "online.success_rate": "share of recommendations followed by a watch",
    "online.mrr": "mean reciprocal rank of the first movie watched",
    "online.latency_p50": "median latency (ms)",
    "online.latency_p95": "95th percentile latency (ms)",
    "online.latency_p99": "99th percentile latency (ms)",
    "online.success_rate_diff": "difference in success rate, best against worst",
    "online.success_rate_p": "p-value of the difference in success rate",
    "exposure.requests": "served lists judged",
    "exposure.slots": "recommended slots",
    "exposure.viewings": "viewings",
    "exposure.success_rate": "share of served lists followed by a watch",
    "exposure.mrr": "mean reciprocal rank of the first movie watched",
    "exposure.success_rate_gap": "gap in success rate, best group of users against worst",
    "exposure.mrr_gap": "gap in MRR, best group of users against worst",
    "exposure.exposure_share": "share of recommended slots",
    "exposure.watch_share": "share of viewings",
    "exposure.ratio": "exposure-to-watch ratio",
    "exposure.lowest_ratio": "lowest exposure-to-watch ratio",
}
SIGNAL_METRICS = {"score": "drift score", "drifted": "drifted (1) or stable (0)"}  # drift.<signal>.<metric>
PARTS = {"_warm": "on warm ratings", "_cold": "on cold-start ratings"}  # fairness.PARTS' suffixes
BOUNDS = {"_low": "lower bound of", "_high": "upper bound of", "_p": "p-value of"}
# Whatever is after `<audit>.<metric>` names a dimension (and a group), except in these.
PER_SERVER = "server"
SIGNALS = "drift"  # drift.<signal>.score: the signal comes before the metric


def metric_name(key: str) -> str | None:
    """The words for a metric key, or None for a key this module does not know.

    Parameters
    ----------
    key : str
        ``<audit>.<metric>[.<dimension>[.<group>]]``, as every audit reports it.

    Returns
    -------
    str or None

    Examples
    --------
    >>> metric_name("feedback.hhi")
    'Herfindahl–Hirschman index of recommendations'
    >>> metric_name("fairness.rmse_gap.sex")
    'gap in RMSE, worst group against best, by sex'
    >>> metric_name("fairness.rmse_high_warm.age.senior")
    'upper bound of root mean squared error of predicted ratings on warm ratings, age senior'
    >>> metric_name("online.success_rate.server.recs-a:8082")
    'share of recommendations followed by a watch, server recs-a:8082'
    >>> metric_name("validation.success.ratings.rating_between_1_and_5")
    'expectation passed (1) or failed (0): ratings rating_between_1_and_5'
    >>> metric_name("feedback.rating_rec_corr.pearson")
    'correlation of ratings with recommendations per movie (pearson)'
    >>> metric_name("drift.rating.score") is not None, metric_name("nothing.known") is None
    (True, True)
    """
    audit, _, rest = key.partition(".")
    if audit == SIGNALS and rest.count(".") == 1:
        signal, metric = rest.split(".")
        words = SIGNAL_METRICS.get(metric)
        return f"{words} of {_signal(signal)}" if words else None
    metric, _, after = rest.partition(".")
    base, part, bound = metric, "", ""
    for suffix in PARTS:
        if base.endswith(suffix) and f"{audit}.{base}" not in METRICS:
            base, part = base.removesuffix(suffix), suffix
    for suffix in BOUNDS:
        if base.endswith(suffix) and f"{audit}.{base}" not in METRICS:
            base, bound = base.removesuffix(suffix), suffix
    words = METRICS.get(f"{audit}.{base}")
    if words is None:
        return None
    words = " ".join(w for w in (BOUNDS.get(bound, ""), words, PARTS.get(part, "")) if w)
    if not after:
        return words
    if audit == "validation":
        return f"{words}: {after.replace('.', ' ', 1)}"
    if audit == "feedback" and base.startswith("rating_rec_corr"):
        return f"{words} ({after})"
    dimension, _, group = after.partition(".")
    if dimension == PER_SERVER:
        return f"{words}, {'server ' + group if group else 'between servers'}"
    return f"{words}, {dimension} {group}" if group else f"{words}, by {dimension}"


def _signal(name: str) -> str:
    """A drift signal in words: its name read aloud (the drift audit's own wording would make the
    pages import the audits, which render pages: a cycle)."""
    return f"signal {name.replace('_', ' ')}"
