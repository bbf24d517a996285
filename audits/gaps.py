"""The gap between the worst and the best of k groups of users: its permutation test, the
smallest gap the test can see, and how much of it one user makes.

Every statistic here is a ratio of per-user sums, transformed: RMSE is sqrt(Σ squared error /
Σ ratings) over a group's users, MAE Σ absolute error / Σ ratings. Keeping one row of sums per
user makes thousands of permutations cheap, and keeps each user's ratings together: a user's
ratings share their taste and bias, so users, not ratings, are the independent units.

Why a permutation test of max − min: the gap reported is between the worst and the best of k
groups, picked after looking. Even when every group is served alike, the extremes of k noisy
estimates differ, and more so with small groups and with more of them. Shuffling the group
labels over users, many times, shows how large max − min gets by chance with these groups'
sizes; the p-value is the share of shuffles whose max − min is at least the observed one. It
needs no normal approximation, and it accounts for the selection of the pair by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recaudit.audits.vocabulary import distinct

CELLS = 10_000_000  # permuted labels held at once (10 MB as int8)
# Beyond EXACT_CELLS (users × shuffles) the shuffles cost seconds per test (about 7 ns a cell),
# and with NORMAL_MIN_USERS users in every group a group's sums are as good as normal: the
# permutation distribution is then drawn from its normal approximation, exact in mean and
# covariance (sampling without replacement), at a cost that does not grow with the users.
EXACT_CELLS = 200_000_000
NORMAL_MIN_USERS = 1_000
PERMUTATION, NORMAL = "permutation", "normal approximation of the permutation distribution"
# Shuffles beyond the level, at least: the smallest p-value a test can give is 1 / (1 + shuffles),
# and a level shared among many gaps (0.05 / 18) needs thousands of shuffles to be reached at all.
TAIL_SHUFFLES = 10
SINKING_CAP = 50  # users removed one after another, at most, to see how many it takes to sink a gap


@dataclass
class UserSums:
    """One row per user: the group (a code in 0..k−1), the denominator (e.g. ratings) and the
    numerators of each statistic (e.g. squared and absolute errors).

    Parameters
    ----------
    code : numpy.ndarray
        int, the user's group.
    den : numpy.ndarray
        float, e.g. the user's number of ratings; every user has den > 0.
    nums : dict of str to numpy.ndarray
        float, per statistic the user's numerator, e.g. ``{"rmse": sse, "mae": sae}``.
    groups : int
        k, how many groups the codes run over.
    """

    code: np.ndarray
    den: np.ndarray
    nums: dict[str, np.ndarray]
    groups: int


def among(sums: UserSums, eligible: np.ndarray) -> UserSums:
    """The users of the groups `eligible` (their codes) only, with codes 0..len(eligible)−1 in
    that order: the groups with a verdict, which are the ones a gap is picked from."""
    remap = np.full(sums.groups, -1)
    remap[eligible] = np.arange(len(eligible))
    keep = remap[sums.code] >= 0
    return UserSums(remap[sums.code[keep]], sums.den[keep], {m: v[keep] for m, v in sums.nums.items()},
                    len(eligible))


# How a statistic is made from its ratio of sums.
TRANSFORMS = {"rmse": np.sqrt}


def statistic(metric: str, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """`metric` of groups from their sums (NaN where a group has none)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a group without users: NaN
        # A sum less one user's part can come out a hair below zero in floating point.
        ratio = np.maximum(num / den, 0)
        return TRANSFORMS.get(metric, lambda x: x)(ratio)


@dataclass
class GapTest:
    """The permutation test of max − min over groups, for one statistic.

    Attributes
    ----------
    observed : float
        max − min of the groups' statistic.
    p_value : float
        (1 + shuffles with max − min ≥ observed) / (1 + shuffles).
    critical : float
        The (1 − alpha) quantile of max − min over the shuffles: a gap above it is found.
    null_sd : numpy.ndarray
        Per group, the standard deviation of its statistic over the shuffles: how much the
        group's figure moves by chance at its size.
    method : str
        PERMUTATION (labels shuffled) or NORMAL (shuffles drawn from the normal approximation
        of the group sums' permutation distribution, for many users in large groups).
    """

    observed: float
    p_value: float
    critical: float
    null_sd: np.ndarray
    method: str = PERMUTATION

    @property
    def name(self) -> str:
        """The test as a finding names it."""
        return "permutation test" if self.method == PERMUTATION else "permutation test (normal approximation)"


def shuffles(level: float, asked: int) -> int:
    """The shuffles a test at `level` makes: those asked, and at least TAIL_SHUFFLES / level.

    >>> shuffles(0.05, 2000), shuffles(0.05 / 18, 2000)
    (2000, 3600)
    """
    return max(asked, math.ceil(TAIL_SHUFFLES / level - 1e-9))


def permutation_tests(sums: UserSums, permutations: int, seed: int, alpha: float) -> dict[str, GapTest]:
    """The permutation test of max − min of each statistic over the groups of `sums`, shuffling
    the group labels over users (each user keeps all their ratings; group sizes in users stay
    as they are). Past EXACT_CELLS users × shuffles, with at least NORMAL_MIN_USERS users in
    every group, the shuffles' group sums are drawn from their normal approximation instead
    (`GapTest.method` says which).

    Parameters
    ----------
    sums : UserSums
        The users of the groups compared (at least two groups).
    permutations : int
        How many shuffles.
    seed : int
        The seed of the shuffles.
    alpha : float
        The test's level, for the critical value.

    Returns
    -------
    dict of str to GapTest
        Per statistic of ``sums.nums``, from the same shuffles.

    Examples
    --------
    Three groups of 30 users who are all served alike: max − min is what chance gives.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> code = np.repeat([0, 1, 2], 30)
    >>> den = np.full(90, 10.0)
    >>> sse = rng.chisquare(10, 90)  # ten unit-variance errors per user
    >>> test = permutation_tests(UserSums(code, den, {"rmse": sse}, 3), 2000, seed=0, alpha=0.05)["rmse"]
    >>> bool(test.p_value > 0.05), bool(test.critical > 0)
    (True, True)
    """
    k, users = sums.groups, len(sums.code)
    rng = np.random.default_rng(seed)
    observed = {m: _range(statistic(m, np.bincount(sums.code, weights=num, minlength=k),
                                    np.bincount(sums.code, weights=sums.den, minlength=k))[None, :])[0]
                for m, num in sums.nums.items()}
    normal = (users * permutations > EXACT_CELLS
              and np.bincount(sums.code, minlength=k).min() >= NORMAL_MIN_USERS)
    ranges = {m: [] for m in sums.nums}
    total = {m: np.zeros(k) for m in sums.nums}
    squares = {m: np.zeros(k) for m in sums.nums}
    for den, nums in (_normal_sums if normal else _shuffled_sums)(sums, permutations, rng):
        for m, num in nums.items():
            values = statistic(m, num, den)
            ranges[m].append(_range(values))
            total[m] += values.sum(axis=0)
            squares[m] += (values ** 2).sum(axis=0)
    tests = {}
    for m in sums.nums:
        null = np.concatenate(ranges[m])
        mean = total[m] / permutations
        sd = np.sqrt(np.maximum(squares[m] / permutations - mean ** 2, 0) * permutations / max(permutations - 1, 1))
        # A tolerance, so that shuffles equal to the observed gap up to rounding count as at least as large.
        at_least = int(np.sum(null >= observed[m] - 1e-12 * max(1.0, abs(observed[m]))))
        tests[m] = GapTest(float(observed[m]), (1 + at_least) / (1 + permutations),
                           float(np.quantile(null, 1 - alpha)), sd, NORMAL if normal else PERMUTATION)
    return tests


def _shuffled_sums(sums: UserSums, permutations: int, rng):
    """Chunks of shuffles' group sums (den: shuffles × groups, and each statistic's numerators),
    the group labels shuffled over users."""
    k, users = sums.groups, len(sums.code)
    # int8 codes: the same shuffles as int64 ones (the positions permuted do not depend on the
    # type), three times as fast to permute.
    code = sums.code.astype(np.int8 if k <= 127 else np.int64)
    chunk = max(1, min(permutations, CELLS // max(users, 1)))
    for start in range(0, permutations, chunk):
        c = min(chunk, permutations - start)
        shuffled = rng.permuted(np.tile(code, (c, 1)), axis=1)
        flat = (shuffled + (np.arange(c) * k)[:, None]).ravel()
        den = np.bincount(flat, weights=np.tile(sums.den, c), minlength=c * k).reshape(c, k)
        yield den, {m: np.bincount(flat, weights=np.tile(num, c), minlength=c * k).reshape(c, k)
                    for m, num in sums.nums.items()}


def _normal_sums(sums: UserSums, permutations: int, rng, chunk: int = 10_000):
    """Chunks of group sums drawn from the normal law with the permutation's own mean and
    covariance: a group of n of the N users sums to n·x̄ on average, with covariance
    (n δ − n n' / N) · S · N / (N − 1) between groups of n and n' users (S: the users' covariance
    of den and numerators). Drawn as W_g ~ N(0, n_g S N / (N − 1)) less n_g / N of their total."""
    k, users = sums.groups, len(sums.code)
    x = np.column_stack([sums.den, *sums.nums.values()])
    n = np.bincount(sums.code, minlength=k).astype(float)
    cov = np.atleast_2d(np.cov(x, rowvar=False, bias=True)) * users / max(users - 1, 1)
    # A square root of the covariance that tolerates its being singular (a constant column).
    values, vectors = np.linalg.eigh(cov)
    root = vectors * np.sqrt(np.maximum(values, 0))
    for start in range(0, permutations, chunk):
        c = min(chunk, permutations - start)
        w = rng.standard_normal((c, k, x.shape[1])) @ root.T * np.sqrt(n)[None, :, None]
        drawn = w - (n / users)[None, :, None] * w.sum(axis=1, keepdims=True) + n[None, :, None] * x.mean(axis=0)
        den = np.maximum(drawn[:, :, 0], np.finfo(float).tiny)  # never reached with large groups; no division by 0
        yield den, {m: drawn[:, :, 1 + i] for i, m in enumerate(sums.nums)}


def p_below(p: float, level: float) -> str:
    """"p = …, below …" with as many digits as it takes to tell a p-value from the level it
    passed (two, unless both would read the same).

    >>> p_below(0.00031, 0.0031)
    'p = 0.00031, below 0.0031'
    >>> p_below(10 / 3201, 0.05 / 16)
    'p = 0.00312, below 0.00313'
    """
    p_text, level_text = distinct(p, level)
    return f"p = {p_text}, below {level_text}"


def _range(values: np.ndarray) -> np.ndarray:
    return np.nanmax(values, axis=1) - np.nanmin(values, axis=1)


def detectable(test: GapTest, users: np.ndarray, power: float) -> np.ndarray:
    """Per group, a gap between it and the largest other group that the test finds with at
    least `power` probability: critical + z_power × sd, where sd is that of the two groups'
    difference by chance. (The observed max − min is at least that pair's difference, which is
    about normal around the true gap: so the test's power is at least that of the pair.)

    Parameters
    ----------
    test : GapTest
        The permutation test of the groups.
    users : numpy.ndarray
        Per group, its number of users (the largest is the reference).
    power : float
        E.g. 0.8.

    Returns
    -------
    numpy.ndarray
        Per group, the detectable gap.
    """
    from scipy.stats import norm

    order = np.argsort(-users, kind="stable")
    largest, second = order[0], order[1] if len(order) > 1 else order[0]
    reference = np.where(np.arange(len(users)) == largest, second, largest)
    sd = np.sqrt(test.null_sd ** 2 + test.null_sd[reference] ** 2)
    return test.critical + float(norm.ppf(power)) * sd


@dataclass
class Influence:
    """How much of a gap one user makes.

    Attributes
    ----------
    user : int
        Index (into the UserSums rows) of the user whose removal lowers the gap most.
    gap_without : float or None
        The gap without that user (None when fewer than two groups keep a verdict without them).
    share : float
        That user's share of their group's numerator (e.g. of its squared error).
    sinking : int or None
        How many users, removed one after another (each time the most influential), take the gap
        to the threshold or below; None when SINKING_CAP users do not.
    """

    user: int
    gap_without: float | None
    share: float
    sinking: int | None


def influence(sums: UserSums, metric: str, threshold: float, min_den: float, min_users: int) -> Influence:
    """The most influential user of the max − min gap of `metric`, and how many removals sink it.

    A group keeps its verdict while it has at least `min_den` (e.g. ratings) and `min_users`
    users: a removal that leaves a group below that takes the group out of the comparison.

    Examples
    --------
    Two groups of three users; one user of group 1 has a huge error:

    >>> import numpy as np
    >>> sums = UserSums(np.array([0, 0, 0, 1, 1, 1]), np.full(6, 10.0),
    ...                 {"mae": np.array([5.0, 5, 5, 5, 5, 50])}, 2)
    >>> found = influence(sums, "mae", threshold=0.2, min_den=1, min_users=1)
    >>> found.user, found.gap_without, round(found.share, 2), found.sinking
    (5, 0.0, 0.83, 1)
    """
    num, den, code = sums.nums[metric].astype(float), sums.den.astype(float), sums.code
    alive = np.ones(len(code), dtype=bool)
    first = None
    for removed in range(1, SINKING_CAP + 1):
        user, gap = _most_influential(metric, num, den, code, alive, sums.groups, min_den, min_users)
        if first is None:
            group_num = num[(code == code[user]) & alive].sum()
            first = Influence(int(user), gap, float(num[user] / group_num) if group_num else 0.0, None)
        if gap is None or gap <= threshold:
            first.sinking = removed
            break
        alive[user] = False
    return first


def _most_influential(metric, num, den, code, alive, k, min_den, min_users) -> tuple[int, float | None]:
    """The user (among the alive) whose removal leaves the smallest max − min, and that gap
    (None: fewer than two groups keep a verdict)."""
    s_num = np.bincount(code[alive], weights=num[alive], minlength=k)
    s_den = np.bincount(code[alive], weights=den[alive], minlength=k)
    s_users = np.bincount(code[alive], minlength=k)
    kept = (s_den >= min_den) & (s_users >= min_users)
    value = np.where(kept, statistic(metric, s_num, s_den), np.nan)
    # Each group's statistic without one of its users, and whether it keeps its verdict then.
    g = code
    without = statistic(metric, s_num[g] - num, s_den[g] - den)
    keeps = kept[g] & (s_den[g] - den >= min_den) & (s_users[g] - 1 >= min_users)
    # The highest and lowest of the other groups: from each group's two highest and lowest.
    high = np.where(kept, value, -np.inf)
    low = np.where(kept, value, np.inf)
    top = np.argsort(-high, kind="stable")[:2]
    bottom = np.argsort(low, kind="stable")[:2]
    other_high = np.where(g == top[0], high[top[1]] if k > 1 else -np.inf, high[top[0]])
    other_low = np.where(g == bottom[0], low[bottom[1]] if k > 1 else np.inf, low[bottom[0]])
    others = kept.sum() - kept[g]  # groups with a verdict besides the user's own
    new_high = np.where(keeps, np.maximum(without, other_high), other_high)
    new_low = np.where(keeps, np.minimum(without, other_low), other_low)
    gap = np.where(others + keeps >= 2, new_high - new_low, np.nan)
    candidates = np.flatnonzero(alive & kept[g])
    sunk = candidates[np.isnan(gap[candidates])]
    if len(sunk):  # removing this user leaves one group: no gap is left to speak of
        return int(sunk[0]), None
    best = candidates[np.argmin(gap[candidates])]
    return int(best), float(gap[best])
