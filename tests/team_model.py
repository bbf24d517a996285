"""A team's own recommender for tests/test_predictions.py: a model recaudit did not train (a
KNN or a boosted tree, as far as recaudit can tell). It predicts the simulated service's true
opinion of a movie plus noise, and the noise is larger for users of one region.

A test calls `serve` with the simulated world first. The fairness audit then calls `predict`
through `fairness.scorer = "team_model:predict"`: under pytest, tests/ is on sys.path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recaudit.recsys.simulate import MEAN_RATING, Config, make_world

NOISY_SD, CALM_SD = 1.2, 0.2
_served: dict = {}


def serve(cfg: Config, users: pd.DataFrame, noisy_region: str, seed: int = 1) -> None:
    """Serve the world of `cfg`, whose `users` (user_id, region) in `noisy_region` get noisier
    predictions; `seed` fixes each (user, movie) pair's noise, so that every call agrees."""
    world = make_world(cfg)
    region = users.set_index("user_id")["region"].reindex(np.arange(1, cfg.users + 1)).to_numpy()
    _served.update(world=world, movies=pd.Index(world.movies["movie_id"]),
                   sd=np.where(region == noisy_region, NOISY_SD, CALM_SD),
                   noise=np.random.default_rng(seed).standard_normal((cfg.users, cfg.movies)), calls=[])


def predict(user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Predicted ratings of (user, movie) pairs (the simulator numbers users from 1)."""
    world, sd, noise = _served["world"], _served["sd"], _served["noise"]
    _served["calls"].append(len(user_ids))
    u, m = np.asarray(user_ids, dtype=np.int64) - 1, _served["movies"].get_indexer(movie_ids)
    truth = (MEAN_RATING + world.user_bias[u] + world.movie_bias[m]
             + np.einsum("bk,bk->b", world.taste[u], world.factors[m]))
    return truth + sd[u] * noise[u, m]


def calls() -> list[int]:
    """How many pairs each call of `predict` since `serve` asked for."""
    return list(_served["calls"])
