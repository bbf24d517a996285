"""Validation pushed down to the store: the suites' row checks as SQL, so that a window of
millions of events is never read whole into pandas.

For each dataset, one select (the "base") gives the columns its suite checks, as the frames of
recaudit.audits.validation have them: watches and ratings with their movie's id and
`unknown_movie`, recommendations with their list's distinct and unknown movies counted, the
log's lines with the reason they were quarantined, users with `age_or_group`, movies. For each
expectation whose failing rows one SQL condition finds (not null, null, between, in a set,
unique, a pair equal, compound unique, each optionally under a comparison `row_condition`), the
condition is made a superset of them: it also holds wherever a column it reads is missing. Two
queries run on the store's engine (the database, or the lake's DuckDB or Spark):

- one that counts, per expectation, the rows of its domain the condition leaves out: all of
  them present and passing;
- one that fetches the rows any condition holds for (the suspects), in the order the whole
  frame would have them.

Great Expectations then validates the suspects, so the suites stay the contract and their
examples are those it would give for the whole frame (the first failing rows, in the same
order); the counts it reports are completed with the rows left out, each of which adds one to
the rows an expectation considers and nothing to the failing ones, and success is decided again
as Great Expectations decides it (`mostly` of the rows considered). Expectations on the columns
alone (their set, their types) are answered by the suspects' frame, whose columns and types are
the whole frame's.

A dataset whose suite holds an expectation this module does not translate (a team's own type,
an option it does not know) is validated the old way, on the whole frame read from the store:
a custom suite is slower, never answered differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    Numeric,
    SmallInteger,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy import Text as TextType

from recaudit.audits.events import between
from recaudit.audits.schema import (
    movie_keys,
    movies,
    quarantine,
    ratings,
    recommendation_items,
    recommendations,
    users,
    watches,
)

QUARANTINED_BY = "failed expectation "  # the quarantine reason of events ingest --validate moved out

# The share of an expectation's failing rows is of every row of its domain ("rows": the
# expectation is about missing values) or of those whose columns are present ("present"); it
# is what Great Expectations' `unexpected_percent` and `mostly` are of.
ROW_CHECKS = {
    "expect_column_values_to_not_be_null": ("rows", {"column"}),
    "expect_column_values_to_be_null": ("rows", {"column"}),
    "expect_column_values_to_be_between": ("present", {"column", "min_value", "max_value", "strict_min",
                                                       "strict_max"}),
    "expect_column_values_to_be_in_set": ("present", {"column", "value_set"}),
    "expect_column_values_to_be_unique": ("present", {"column"}),
    "expect_column_pair_values_to_be_equal": ("present", {"column_A", "column_B"}),
    "expect_compound_columns_to_be_unique": ("present", {"column_list"}),
}
# Answered by the frame's columns and their types, which the suspects' frame shares.
COLUMN_CHECKS = {
    "expect_table_columns_to_match_set": {"column_set", "exact_match"},
    "expect_table_columns_to_match_ordered_list": {"column_list"},
    "expect_column_to_exist": {"column", "column_index"},
    "expect_column_values_to_be_in_type_list": {"column", "type_list"},
    "expect_column_values_to_be_of_type": {"column", "type_"},
}
ANY_KWARGS = {"mostly", "row_condition", "condition_parser", "result_format", "catch_exceptions", "meta"}
_UNIQUE = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique")
_COMPARISONS = {"==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}


class NotTranslated(Exception):
    """An expectation this module cannot check in SQL; its dataset is validated whole."""


@dataclass
class Base:
    """A dataset's rows as a select, and how its frame is ordered and typed."""

    select: object  # the select (columns labelled as the frame's, then the order's)
    order: list[str]  # columns to order the suspects by, the frame's order
    hidden: list[str]  # columns of the select that are not the frame's (the order's)
    types: dict[str, object]  # dtypes of the frame's columns the store does not give as the frame has them
    # Users and movies: the frame has a column per stored attribute, before the derived ones. No
    # row check reads one (it is not in the select: the dataset is read whole), yet a column
    # check may name one.
    attributes: str | None = None
    derived: tuple[str, ...] = ()


# -- the datasets as selects -----------------------------------------------------------------

def _movie(table, catalogue: bool) -> tuple[list, object, list]:
    """An event table's columns with its movie's id, and `unknown_movie` with a catalogue."""
    t, k = table.c, movie_keys.alias("k")
    joined = table.outerjoin(k, k.c.key == t.movie_key)
    extra = []
    if catalogue:
        m = movies.alias("m")
        joined = joined.outerjoin(m, m.c.movie_key == t.movie_key)
        extra = [case((m.c.movie_key.is_(None), k.c.movie_id), else_=null()).label("unknown_movie")]
    return [t.source_id, t.line, t.time, t.user_id, k.c.movie_id.label("movie_id")], joined, extra


def base(dataset: str, since, until, catalogue: bool) -> Base:
    """The select of a dataset's rows in [since, until): the columns the frame of
    recaudit.audits.validation has for it."""
    if dataset in ("watches", "ratings"):
        table = watches if dataset == "watches" else ratings
        columns, joined, extra = _movie(table, catalogue)
        own = table.c.minute if dataset == "watches" else table.c.rating
        query = select(*columns, own, *extra).select_from(joined).where(*between(table.c.time, since, until))
        return Base(query, ["time", "source_id", "line"], [], {"movie_id": "category"})
    if dataset == "recommendations":
        r, i = recommendations.c, recommendation_items.c
        per_list = [func.count(i.movie_key.distinct()).label("n_distinct_items")]
        lists = recommendation_items.join(recommendations, and_(r.source_id == i.source_id, r.line == i.line))
        if catalogue:
            m = movies.alias("m")
            lists = lists.outerjoin(m, m.c.movie_key == i.movie_key)
            per_list.append(func.sum(case((m.c.movie_key.is_(None), 1), else_=0)).label("n_unknown_items"))
        per_list = (select(i.source_id, i.line, *per_list).select_from(lists)
                    .where(*between(r.time, since, until)).group_by(i.source_id, i.line).subquery("lists"))
        counted = [func.coalesce(per_list.c.n_distinct_items, 0).label("n_distinct_items")]
        if catalogue:
            counted.append(func.coalesce(per_list.c.n_unknown_items, 0).label("n_unknown_items"))
        query = (select(r.source_id, r.line, r.time, r.user_id, r.server, r.status, r.latency_ms, r.n_items,
                        r.error, *counted)
                 .select_from(recommendations.outerjoin(per_list, and_(per_list.c.source_id == r.source_id,
                                                                      per_list.c.line == r.line)))
                 .where(*between(r.time, since, until)))
        return Base(query, ["time", "source_id", "line"], [],
                    {"server": "category", "n_distinct_items": np.int64, "n_unknown_items": np.int64})
    if dataset == "log":
        # Every event's line parsed; the window's quarantined lines (less those an expectation
        # moved out at ingestion) did not. In the frame's order: by line, events first.
        parts = [select(t.c.line, null().label("reason"), literal(0).label("part"), literal(0).label("at"))
                 .where(*between(t.c.time, since, until)) for t in (watches, ratings, recommendations)]
        q = quarantine.c
        parts.append(select(q.line, q.reason, literal(1).label("part"), q.id.label("at"))
                     .where(*between(q.near_time, since, until), not_(q.reason.startswith(QUARANTINED_BY))))
        lines = union_all(*parts).subquery("lines")
        query = select(lines.c.line, cast(lines.c.reason, TextType).label("reason"), lines.c.part, lines.c.at)
        return Base(query, ["line", "part", "at"], ["part", "at"], {"reason": object})
    if dataset == "users":
        u = users.c
        age_or_group = case((u.age.is_(None), u.age_group), else_=cast(u.age, TextType)).label("age_or_group")
        query = select(u.user_id, u.age, u.age_group, u.gender, u.occupation, age_or_group)
        return Base(query, ["user_id"], [], {"age_or_group": object}, "users", ("age_or_group",))
    if dataset == "movies":
        m, k = movies.c, movie_keys.alias("k")
        query = (select(k.c.movie_id.label("movie_id"), m.title, m.year, m.genres, m.movie_key.label("key"))
                 .select_from(movies.outerjoin(k, k.c.key == m.movie_key)))
        return Base(query, ["key"], ["key"], {"movie_id": "category"}, "movies")
    raise ValueError(f"no such dataset: {dataset}")


# -- expectations as SQL conditions ----------------------------------------------------------

@dataclass
class Condition:
    """One row check in SQL: its domain, the superset of its failing rows, how its share is counted."""

    name: str
    domain: object  # a condition, or None for every row
    suspect: object
    share_of: str  # "rows" or "present"


def resolved(value, params: dict, rounding: str | None = None):
    """A kwarg's value, its suite parameter resolved. Times are compared at the stores'
    resolution (microseconds): a bound below is rounded up, one above down."""
    if isinstance(value, dict) and "$PARAMETER" in value:
        value = params[value["$PARAMETER"]]
    if isinstance(value, pd.Timestamp) and rounding is not None:
        value = value.ceil("us") if rounding == "up" else value.floor("us")
    return value


def _row_condition(kwargs: dict, columns) -> object:
    condition = kwargs.get("row_condition")
    if condition is None:
        return None
    if kwargs.get("condition_parser") is not None or not isinstance(condition, dict) \
            or condition.get("type") != "comparison" or condition.get("operator") not in _COMPARISONS:
        raise NotTranslated("a row condition other than one comparison")
    column = _column(columns, (condition.get("column") or {}).get("name"))
    operator, value = condition["operator"], _literal(column, condition.get("parameter"))
    compared = getattr(column, _COMPARISONS[operator])(value)
    # pandas holds a missing value unequal to anything; SQL's NULL compares to nothing.
    return or_(compared, column.is_(None)) if operator == "!=" else compared


# Columns whose values in the frame are of two types (an age, or else a MovieLens age group):
# SQL compares them as text, so only their nulls are checked there.
NULLS_ONLY = {"age_or_group"}


def _column(columns, name, values: bool = True):
    """A column by name; `values` when a check compares its values (not only its nulls)."""
    if name not in columns:
        raise NotTranslated(f"no column {name}")  # Great Expectations says so, on the whole frame
    if values and name in NULLS_ONLY:
        raise NotTranslated(f"{name} holds values of two types")
    return columns[name]


def _kind(column) -> str | None:
    """What kind of Python value a column's values compare with: number, text or time."""
    t = getattr(column.type, "impl", column.type)  # a TypeDecorator (UTCTime) by what it stores
    if isinstance(t, (Integer, Float, Numeric)):
        return "number"
    if isinstance(t, String):
        return "text"
    if isinstance(t, DateTime):
        return "time"
    return None


# The range of each integer type: SQL binds a value with its column's type, so a value outside
# it (or with a fraction) would be an error or be rounded, not compared.
_INTEGER_RANGES = ((SmallInteger, 2 ** 15), (BigInteger, 2 ** 63), (Integer, 2 ** 31))


def _literal(column, value):
    """A value a column is compared with, when SQL compares them as pandas would: a value of
    another kind (the text "200" against integers, None in a set, 2.5 against integers, a
    number beyond the column's type) is left to the whole frame."""
    kind = _kind(column)
    if kind == "number" and isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        t = getattr(column.type, "impl", column.type)
        limit = next((n for cls, n in _INTEGER_RANGES if isinstance(t, cls)), None)
        if limit is None:
            return float(value)
        if float(value).is_integer() and -limit <= value < limit:
            return int(value)
    elif kind == "text" and isinstance(value, str) or kind == "time" and isinstance(value, (pd.Timestamp, datetime)):
        return value
    raise NotTranslated(f"{value!r} compared with a column of {kind or 'unknown'} values")


def translate(expectation: dict, columns, params: dict, repeated=None) -> Condition:
    """An expectation of ROW_CHECKS as a Condition over `columns` (a select's columns, by
    name); NotTranslated for any other, or for an option it does not know. `repeated` is, for a
    uniqueness check, a column that is not null where the row's key occurs more than once."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind not in ROW_CHECKS or set(kwargs) - ROW_CHECKS[kind][1] - ANY_KWARGS:
        raise NotTranslated(kind)
    domain = _row_condition(kwargs, columns)
    if kind in _UNIQUE and domain is not None:
        raise NotTranslated("uniqueness under a row condition")
    name = expectation["meta"]["name"]
    share_of = ROW_CHECKS[kind][0]
    if kind == "expect_column_values_to_not_be_null":
        return Condition(name, domain, _column(columns, kwargs["column"], values=False).is_(None), share_of)
    if kind == "expect_column_values_to_be_null":
        return Condition(name, domain, _column(columns, kwargs["column"], values=False).isnot(None), share_of)
    if kind == "expect_column_values_to_be_between":
        c = _column(columns, kwargs["column"])
        low, high = resolved(kwargs.get("min_value"), params, "up"), resolved(kwargs.get("max_value"), params, "down")
        outside = [c.is_(None)]
        if low is not None:
            low = _literal(c, low)
            outside.append(c <= low if kwargs.get("strict_min") else c < low)
        if high is not None:
            high = _literal(c, high)
            outside.append(c >= high if kwargs.get("strict_max") else c > high)
        return Condition(name, domain, or_(*outside), share_of)
    if kind == "expect_column_values_to_be_in_set":
        c = _column(columns, kwargs["column"])
        values = [_literal(c, resolved(v, params)) for v in resolved(kwargs["value_set"], params)]
        return Condition(name, domain, or_(c.is_(None), c.not_in(values)), share_of)
    if kind == "expect_column_pair_values_to_be_equal":
        a, b = _column(columns, kwargs["column_A"]), _column(columns, kwargs["column_B"])
        if _kind(a) is None or _kind(a) != _kind(b):
            raise NotTranslated(f"{kwargs['column_A']} and {kwargs['column_B']} hold values of different kinds")
        return Condition(name, domain, or_(a.is_(None), b.is_(None), a != b), share_of)
    present = [_column(columns, k) for k in _keys(expectation)]
    # Every row of a repeated key is a suspect, so that the suspects hold each repetition whole.
    return Condition(name, None, or_(*(c.is_(None) for c in present), repeated.isnot(None)), share_of)


def _keys(expectation: dict) -> list[str]:
    kwargs = expectation["kwargs"]
    return [kwargs["column"]] if expectation["type"] == _UNIQUE[0] else list(kwargs["column_list"])


def _with_repeated_keys(suite: list[dict], rows) -> tuple[object, dict]:
    """The rows joined, for each uniqueness check, to the keys that occur more than once
    (grouped by a hash, not sorted, so that a window of many days fits in memory); and per
    check, the joined count (null where the key is unique or missing)."""
    joined, repeated = rows, {}
    for i, e in enumerate(x for x in suite if x["type"] in _UNIQUE):
        keys = [_column(rows.c, k) for k in _keys(e)]
        repeats = (select(*keys, func.count().label("n")).group_by(*keys).having(func.count() > 1)
                   .subquery(f"repeats_{i}"))
        joined = joined.outerjoin(repeats, and_(*(repeats.c[k.name] == k for k in keys)))
        repeated[e["meta"]["name"]] = repeats.c.n
    return joined, repeated


# -- running -----------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a dataset's push-down reads: the suspects' select and the counting select."""

    suspects: object
    counts: object
    conditions: list[Condition]
    base: Base

    @property
    def share_of(self) -> dict[str, str]:
        return {c.name: c.share_of for c in self.conditions}


def plan(dataset: str, suite: list[dict], params: dict, since, until, catalogue: bool) -> Plan:
    """The two selects of a dataset, or NotTranslated when one of `suite`'s expectations (the
    runnable ones) is neither a row check nor a column check."""
    b = base(dataset, since, until, catalogue)
    inner = b.select.subquery("base")
    for e in suite:
        kind = e["type"]
        if kind in COLUMN_CHECKS:
            if set(e["kwargs"]) - COLUMN_CHECKS[kind] - ANY_KWARGS or e["kwargs"].get("row_condition") is not None:
                raise NotTranslated(kind)
        elif kind not in ROW_CHECKS:
            raise NotTranslated(kind)
    joined, repeated = _with_repeated_keys(suite, inner)
    conditions = [translate(e, inner.c, params, repeated.get(e["meta"]["name"]))
                  for e in suite if e["type"] in ROW_CHECKS]
    # A row any condition holds for is in the suspects' frame, so each check counts it there;
    # each domain's suspects are told by a column of their own, and its rows are counted from the
    # rows alone, without the repeated keys' join.
    suspect = or_(*(c.suspect for c in conditions)) if conditions else literal(False)
    domains = [case((c.domain, 1), else_=0).label(f"_domain_{i}") for i, c in enumerate(conditions)
               if c.domain is not None]
    suspects = (select(*inner.c, *domains).select_from(joined).where(suspect)
                .order_by(*(inner.c[o] for o in b.order)))
    counts = select(func.count().label("rows"), *(  # a sum of no rows is NULL (NaN on the engines): 0
        func.coalesce(func.sum(case((c.domain, 1), else_=0)), 0).label(f"domain_{i}")
        for i, c in enumerate(conditions) if c.domain is not None)).select_from(inner)
    return Plan(suspects, counts, conditions, b)


def fetch(store, p: Plan) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """The suspects, typed as the whole frame would be; the dataset's rows; and per row check,
    how many rows of its domain the suspects leave out."""
    df, totals = store.frames(p.suspects, p.counts)  # as of one moment: the counts are of these rows
    totals = totals.iloc[0]
    rows = int(totals["rows"])
    clean = {}
    for i, c in enumerate(p.conditions):
        if c.domain is None:
            clean[c.name] = rows - len(df)
        else:
            clean[c.name] = int(totals[f"domain_{i}"]) - int(df[f"_domain_{i}"].sum())
    df = df.drop(columns=[*p.base.hidden, *(c for c in df.columns if c.startswith("_domain_"))])
    for column, dtype in p.base.types.items():
        if column in df:
            df[column] = df[column].astype(dtype)
    if p.base.attributes is not None:
        at = len(df.columns) - len(p.base.derived)
        for i, name in enumerate(store.attribute_names(p.base.attributes)):
            df.insert(at + i, name, pd.Series([None] * len(df), dtype=object, index=df.index))
    return df.reset_index(drop=True), rows, clean


def complete(res, share_of: str, clean: int, mostly: float) -> None:
    """Complete Great Expectations' result on the suspects with the `clean` rows left out
    (present and passing), in place: the counts, the share failing, success as it decides it."""
    r = res.result
    if r is None or r.get("element_count") is None:
        return
    unexpected = r.get("unexpected_count") or 0
    rows = r["element_count"] + clean
    r["element_count"] = rows
    if share_of == "rows":  # Great Expectations: (rows - unexpected) / rows >= mostly
        considered = rows
    else:
        considered = rows - (r.get("missing_count") or 0)
        if r.get("missing_count") is not None:
            r["missing_percent"] = r["missing_count"] / rows * 100 if rows else None
    res.success = bool(rows == 0 or considered == 0 or (considered - unexpected) / considered >= mostly)
    share = unexpected / considered * 100 if rows and considered else None
    r["unexpected_percent"] = share
    if "unexpected_percent_total" in r:
        r["unexpected_percent_total"] = unexpected / rows * 100 if rows else None
    if "unexpected_percent_nonmissing" in r:
        r["unexpected_percent_nonmissing"] = share


def quarantined_by_rule(store, since, until) -> list[tuple[str, int]]:
    """How many of the window's events `ingest --validate` quarantined, by reason (most first)."""
    q = quarantine.c
    n = func.count().label("n")
    df = store.frame(select(q.reason, n).where(*between(q.near_time, since, until), q.reason.startswith(QUARANTINED_BY))
                     .group_by(q.reason).order_by(n.desc(), q.reason))
    return [(reason, int(count)) for reason, count in zip(df["reason"], df["n"])]


def window_rows(store, since, until) -> int:
    """The window's events and the lines quarantined for their format: what the log suite checks."""
    lines = base("log", since, until, catalogue=False).select.subquery("lines")
    return int(store.frame(select(func.count().label("n")).select_from(lines))["n"].iloc[0])
