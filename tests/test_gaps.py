"""The gap between the worst and the best of k groups: the permutation test of max − min keeps
its level where the threshold alone would not, the detectable gap is found at least as often as
promised and shrinks as groups grow, and one user's share of a gap is measured exactly."""

import numpy as np
import pytest

from recaudit.audits import gaps


def clustered(rng, users_per_group: int, groups: int, scale_first: float = 1.0, ratings: int = 10) -> gaps.UserSums:
    """Users whose ratings share a bias of their own (sd 0.4) on top of unit noise; the first
    group's errors are scaled by `scale_first`."""
    code = np.repeat(np.arange(groups), users_per_group)
    err = rng.normal(0, 0.4, len(code))[:, None] + rng.normal(0, 1, (len(code), ratings))
    err *= np.where(code == 0, scale_first, 1.0)[:, None]
    return gaps.UserSums(code, np.full(len(code), float(ratings)),
                         {"rmse": (err ** 2).sum(axis=1), "mae": np.abs(err).sum(axis=1)}, groups)


def test_with_five_tiny_groups_and_no_true_gap_the_max_minus_min_test_stays_quiet():
    fired = above = 0
    for seed in range(100):
        sums = clustered(np.random.default_rng(seed), users_per_group=6, groups=5, ratings=5)
        test = gaps.permutation_tests(sums, 1000, seed, alpha=0.05)["rmse"]
        above += test.observed > 0.2
        fired += test.observed > 0.2 and test.p_value < 0.05
    assert above >= 50  # the threshold alone would call most of these draws unfair ...
    assert fired <= 5  # ... the test, at most its level


def test_a_gap_as_large_as_the_detectable_one_is_found_at_least_as_often_as_the_power_promises():
    sums = clustered(np.random.default_rng(1), users_per_group=80, groups=4)
    test = gaps.permutation_tests(sums, 1000, 0, alpha=0.05)["rmse"]
    planted = gaps.detectable(test, np.bincount(sums.code), 0.8)[0]
    base = np.sqrt(0.4 ** 2 + 1)  # the RMSE of every group before the first is scaled
    found = sum(gaps.permutation_tests(clustered(np.random.default_rng(100 + seed), 80, 4, (base + planted) / base),
                                       500, seed, alpha=0.05)["rmse"].p_value < 0.05 for seed in range(60))
    assert found >= 0.8 * 60
    # and half of it mostly goes unseen: the promise is not met by a test that finds everything
    half = sum(gaps.permutation_tests(clustered(np.random.default_rng(100 + seed), 80, 4,
                                                (base + planted / 2) / base), 500, seed,
                                      alpha=0.05)["rmse"].p_value < 0.05 for seed in range(60))
    assert half < 0.6 * 60


def test_the_detectable_gap_shrinks_as_groups_grow():
    found = []
    for users in (20, 80, 320):
        sums = clustered(np.random.default_rng(0), users, groups=4)
        test = gaps.permutation_tests(sums, 1000, 0, alpha=0.05)["rmse"]
        found.append(gaps.detectable(test, np.bincount(sums.code), 0.8).max())
    assert found[0] > found[1] > found[2]
    assert found[0] / found[2] == pytest.approx(4, rel=0.35)  # about 1/sqrt(users): 16 times the users


def test_the_permutation_test_is_seeded_and_its_p_value_counts_the_observed_gap():
    sums = clustered(np.random.default_rng(3), 30, 3)
    one, two = (gaps.permutation_tests(sums, 300, 7, 0.05) for _ in range(2))
    assert one["rmse"].p_value == two["rmse"].p_value and one["mae"].critical == two["mae"].critical
    assert 1 / 301 <= one["rmse"].p_value <= 1  # the observed labelling is one of the possible ones


def test_the_most_influential_user_and_the_users_it_takes_to_sink_a_gap_are_found_by_hand():
    # Group 0: users with error 1 on 10 ratings, and two heavy ones; group 1: error 0.5.
    code = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    den = np.full(8, 10.0)
    sse = np.array([10.0, 10, 90, 40, 2.5, 2.5, 2.5, 2.5])  # users 2 (error 3) and 3 (error 2)
    found = gaps.influence(gaps.UserSums(code, den, {"rmse": sse}, 2), "rmse", threshold=0.6, min_den=1,
                           min_users=1)
    assert found.user == 2 and found.share == pytest.approx(90 / 150)
    assert found.gap_without == pytest.approx(np.sqrt(60 / 30) - 0.5)  # 0.914: still above 0.6
    assert found.sinking == 2  # without user 3 as well: sqrt(20 / 20) - 0.5 = 0.5
    # a group left below its minimum leaves the comparison: with min_users=4, no gap is left at all
    alone = gaps.influence(gaps.UserSums(code, den, {"rmse": sse}, 2), "rmse", 0.6, min_den=1, min_users=4)
    assert alone.gap_without is None and alone.sinking == 1


def heavy(rng, sizes, scale_first: float = 1.0) -> gaps.UserSums:
    """Groups of the given sizes in users, whose users rate a lognormal number of times (1 to
    hundreds, as on a streaming service) with a bias of their own."""
    code = np.repeat(np.arange(len(sizes)), sizes)
    ratings = np.ceil(rng.lognormal(1, 1, len(code)))
    bias = rng.normal(0, 0.4, len(code))
    scale = np.where(code == 0, scale_first, 1.0)
    # A user's n errors, each bias + unit noise: their squared sum drawn exactly (noncentral χ²).
    sse = scale ** 2 * rng.noncentral_chisquare(ratings, ratings * bias ** 2)
    sae = scale * (np.abs(bias) * ratings + rng.normal(0, np.sqrt(ratings) * 0.6, len(code))).clip(0)
    return gaps.UserSums(code, ratings, {"rmse": sse, "mae": sae}, len(sizes))


def test_many_users_in_large_groups_are_tested_by_the_normal_approximation_with_the_shuffles_answers(monkeypatch):
    """The same sums tested both ways: the normal approximation's critical gap, each group's
    chance spread and p agree with the shuffles'; a group under NORMAL_MIN_USERS keeps the
    shuffles however many users there are."""
    sums = heavy(np.random.default_rng(7), [1000, 1500, 2500, 4000], scale_first=1.04)
    exact = gaps.permutation_tests(sums, 4000, seed=1, alpha=0.05)
    monkeypatch.setattr(gaps, "EXACT_CELLS", 0)
    normal = gaps.permutation_tests(sums, 4000, seed=1, alpha=0.05)
    for metric in ("rmse", "mae"):
        e, n = exact[metric], normal[metric]
        assert (e.method, n.method) == (gaps.PERMUTATION, gaps.NORMAL)
        assert n.observed == e.observed
        assert n.critical == pytest.approx(e.critical, rel=0.1)
        np.testing.assert_allclose(n.null_sd, e.null_sd, rtol=0.1)
        assert abs(n.p_value - e.p_value) < 0.03
    small = heavy(np.random.default_rng(7), [999, 5000])
    assert gaps.permutation_tests(small, 100, seed=1, alpha=0.05)["rmse"].method == gaps.PERMUTATION


def test_the_normal_approximation_keeps_the_level_with_no_true_gap(monkeypatch):
    monkeypatch.setattr(gaps, "EXACT_CELLS", 0)
    fired = sum(gaps.permutation_tests(heavy(np.random.default_rng(seed), [1000, 1200, 3000]), 2000, seed,
                                       alpha=0.05)["rmse"].p_value < 0.05 for seed in range(200))
    assert fired <= 16  # 5% of 200 is 10; 16 is beyond what chance gives one time in 40
