"""The bootstrap over users behind recaudit's per-group intervals.

One user's events are not independent of each other (the same taste, the same device, the same
evening), so intervals resample users, not events: each resample draws as many users as there
are, with replacement, and every per-user sum counts as often as its user was drawn. Audits
keep one row of sums per user (requests, successes, slots of a movie group, ...), so a resample
is a weighted sum of rows and a thousand resamples of a million events cost a few matrix
products.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

CELLS = 10_000_000  # weights held at once (80 MB): resamples are drawn in chunks of this many


def user_weights(users: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How many times each of `users` users is drawn in each resample, in chunks of
    resamples × users.

    The draws are those of a `numpy.random.default_rng(seed)` drawing `users` indices per
    resample, one resample after another: the same seed gives the same resamples whatever the
    chunk size.

    Parameters
    ----------
    users : int
        How many users there are; each resample draws that many.
    resamples : int
        How many resamples in all.
    seed : int
        The seed of the draws.

    Yields
    ------
    numpy.ndarray
        float64, shape (chunk, users): the draws' counts per user.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, CELLS // max(users, 1)))
    for start in range(0, resamples, chunk):
        weights = np.empty((min(chunk, resamples - start), users))
        for row in weights:
            row[:] = np.bincount(rng.integers(0, users, users), minlength=users) if users else 0
        yield weights


def resampled_sums(per_user, resamples: int, seed: int) -> np.ndarray:
    """Column sums of `per_user` (users × columns, dense or scipy sparse) over resamples of its
    rows: resamples × columns.

    Examples
    --------
    Two users, one with 3 successes in 4 requests, one with none in 1:

    >>> import numpy as np
    >>> sums = resampled_sums(np.array([[4.0, 3.0], [1.0, 0.0]]), resamples=1000, seed=0)
    >>> sums.shape, sorted(set(np.round(sums[:, 1] / sums[:, 0], 2).tolist()))
    ((1000, 2), [0.0, 0.6, 0.75])
    """
    blocks = [np.asarray(weights @ per_user) for weights in user_weights(per_user.shape[0], resamples, seed)]
    return np.vstack(blocks) if blocks else np.empty((0, per_user.shape[1]))


def percentiles(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the central `confidence` interval of the draws, ignoring absent (NaN) ones;
    NaN where a column has no draw at all."""
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (a group never drawn): no interval
        return np.nanpercentile(draws, tail, axis=0), np.nanpercentile(draws, 100 - tail, axis=0)


def normal_interval(estimate: float, draws: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """estimate ± z·sd of the finite draws, two-sided at `confidence`: for the far tails that
    a multiplicity-adjusted level asks for, which a few hundred or thousand resamples cannot
    place as percentiles. None with fewer than two finite draws."""
    from scipy.stats import norm

    finite = draws[np.isfinite(draws)]
    if len(finite) < 2:
        return None
    half = float(norm.isf((1 - confidence) / 2)) * float(np.std(finite, ddof=1))
    return estimate - half, estimate + half


def adjusted(confidence: float, comparisons: int) -> float:
    """`confidence` Bonferroni-adjusted for `comparisons` tests: with many groups the most
    extreme of them looks significant by chance."""
    return 1 - (1 - confidence) / max(1, comparisons)
