"""The groups users are compared by: sex, age groups (bins configurable), occupation, and any
attribute stored with the users (a users.csv's `region`), as categories or in configured bins.

A user whose source fixed the age group itself (MovieLens-1M "under 18") keeps it; everyone else is
binned by age. Users of unknown age or sex, or without the attribute, are a group of their own
("unknown"), never dropped.

Groups are labelled by text that metric keys can hold: metric keys are dot-separated
(fairness.rmse.region.<group>), so a "." in a value is shown as "_" ("st. louis" is the group
"st_ louis"). Refusing the value would refuse a whole audit for one user's attribute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recaudit.recsys import formats
from recaudit.recsys.formats import InputError, attribute_columns

UNKNOWN = "unknown"
BUILT_IN = ("sex", "age", "occupation")  # any other dimension is a user attribute of that name
DEFAULT_AGE_GROUPS = {"child": [0, 12], "teen": [13, 17], "young_adult": [18, 34], "middle_aged": [35, 54],
                      "senior": [55, 200]}
# Columns the audits keep beside users' groups in one frame (a rating, its prediction, a ranked
# user's hit, a request's success): no dimension may be named as one of them.
ALONGSIDE = formats.RESERVED["users"]


def as_text(value) -> str:
    """A value as a group's name: an integral float is its integer ("1", not "1.0": a column of
    integers with a missing value reads as floats), so that a group keeps one name."""
    return str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)


def labels(values: pd.Series) -> np.ndarray:
    """Values as group labels: their text with "." shown as "_", missing or blank values unknown."""
    codes, uniques = pd.factorize(pd.Series(values, copy=False))
    text = [as_text(v).strip().replace(".", "_") or UNKNOWN for v in uniques]
    return np.array([*text, UNKNOWN], dtype=object)[codes]  # code -1, a missing value: the last


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
    return pd.Series(labels(users["occupation"]), index=users.index, name="occupation")


def attribute(values: pd.Series, bins: dict[str, list[float]] | None = None) -> pd.Series:
    """The group of each value of an attribute: its text as a category, or with `bins` (name:
    [lowest, highest], both included) the bin holding its number; a value that is not a number
    or lies in no bin is unknown."""
    if bins is None:
        return pd.Series(labels(values), index=values.index, name=values.name)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    out = np.full(len(values), UNKNOWN, dtype=object)
    for name, (low, high) in bins.items():
        out[(numbers >= low) & (numbers <= high)] = name
    return pd.Series(out, index=values.index, name=values.name)


def require_attributes(known: list[str], wanted: list[str], setting: str) -> None:
    """Refuse, naming `setting`, any of `wanted` that is neither built in nor a known attribute."""
    missing = [name for name in wanted if name not in BUILT_IN and name not in known]
    if missing:
        raise InputError(setting, f"no stored user has the attribute {missing[0]!r} "
                                  f"(stored attributes: {', '.join(known) or 'none'})")


def user_groups(users: pd.DataFrame, dimensions: list[str], config: dict) -> pd.DataFrame:
    """Each user's group in each dimension.

    Parameters
    ----------
    users : pandas.DataFrame
        As ``Store.read("users")`` gives them: user_id, age, age_group, gender, occupation, then
        one text column per attribute.
    dimensions : list of str
        ``sex``, ``age``, ``occupation`` or attribute names.
    config : dict
        The configuration: ``groups.age`` bins ages, ``groups.bins.<attribute>`` bins a numeric
        attribute (without one, an attribute's values are its groups).

    Returns
    -------
    pandas.DataFrame
        user_id, then one column of text labels per dimension, named as the dimension.

    Raises
    ------
    InputError
        When a dimension is an attribute no user has, naming ``fairness.dimensions``.
    """
    require_attributes(attribute_columns(users, "users"), dimensions, "fairness.dimensions")
    built = {"sex": lambda: sex(users), "age": lambda: age_group(users, config["groups"]["age"]),
             "occupation": lambda: occupation(users)}
    out = pd.DataFrame({"user_id": users["user_id"].to_numpy(dtype=np.int64)})
    for dim in dimensions:
        groups = built[dim]() if dim in built else attribute(users[dim], config["groups"]["bins"].get(dim))
        out[dim] = groups.to_numpy(dtype=object)
    return out


def check_stored(config: dict, attributes: list[str], audits: list[str]) -> None:
    """Refuse before a run what the `audits` would refuse in it: a fairness dimension or a drift
    attribute that none of the stored `attributes` of users is."""
    if {"fairness", "exposure"} & set(audits):
        require_attributes(attributes, config["fairness"]["dimensions"], "fairness.dimensions")
    if "drift" in audits:
        require_attributes(attributes, list(config["drift"]["attributes"]), "drift.attributes")


# How a dimension is named before "group(s)" in findings, where its own name would read oddly.
DIMENSION_WORDS = {"age_group": "age"}


def label(dim: str, group: str, age_bins: dict) -> str:
    """A group in words for findings and tables: 'women', 'age group teen (13-17)', 'region south'."""
    if dim in ("age", "age_group"):
        return f"age group {describe(age_bins, group)}"
    if dim == "sex":
        return {"F": "women", "M": "men"}.get(group, f"sex {group}")
    return f"{dim} {group}"


def describe(groups: dict[str, list[int]], name: str) -> str:
    """An age group in words: 'teen (13-17)'."""
    if name in groups:
        low, high = groups[name]
        return f"{name.replace('_', ' ')} ({low}+)" if high >= 120 else f"{name.replace('_', ' ')} ({low}-{high})"
    return name.replace("_", " ")
