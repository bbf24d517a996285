"""The groups users are compared by: sex, and age groups (bins configurable).

A user whose source fixed the group itself (MovieLens-1M "under 18") keeps it; everyone else is
binned by age. Users of unknown age or sex are a group of their own ("unknown"), never dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNKNOWN = "unknown"
DEFAULT_AGE_GROUPS = {"child": [0, 12], "teen": [13, 17], "young_adult": [18, 34], "middle_aged": [35, 54],
                      "senior": [55, 200]}


def age_group(users: pd.DataFrame, bins: dict[str, list[int]]) -> pd.Series:
    """The age group of each user: the source's own group, else the bin holding the age."""
    age = users["age"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    out = np.full(len(users), UNKNOWN, dtype=object)
    for name, (low, high) in bins.items():
        out[(age >= low) & (age <= high)] = name
    fixed = users["age_group"].notna().to_numpy() if "age_group" in users else np.zeros(len(users), bool)
    out[fixed] = users["age_group"].to_numpy()[fixed]
    return pd.Series(out, index=users.index, name="age_group")


def sex(users: pd.DataFrame) -> pd.Series:
    return users["gender"].where(users["gender"].isin(["M", "F"]), UNKNOWN).rename("sex")


def occupation(users: pd.DataFrame) -> pd.Series:
    return users["occupation"].astype(object).fillna(UNKNOWN).rename("occupation")


def of_users(users: pd.DataFrame, bins: dict[str, list[int]]) -> pd.DataFrame:
    """(user_id, sex, age, occupation): every dimension users are compared by, one row per user."""
    return pd.DataFrame({"user_id": users["user_id"].to_numpy(dtype=np.int64), "sex": sex(users).to_numpy(),
                         "age": age_group(users, bins).to_numpy(), "occupation": occupation(users).to_numpy()})


def describe(groups: dict[str, list[int]], name: str) -> str:
    """An age group in words: 'teen (13-17)'."""
    if name in groups:
        low, high = groups[name]
        return f"{name.replace('_', ' ')} ({low}+)" if high >= 120 else f"{name.replace('_', ' ')} ({low}-{high})"
    return name.replace("_", " ")
