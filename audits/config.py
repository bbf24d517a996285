"""recaudit.toml: thresholds, windows and schedules, every value with a default.

Only what differs from the defaults needs writing. The file is read into pydantic models, one
per table (`Settings` holds them all), which refuse unknown keys, so that a typo does not
silently leave a default in place, and check every value's type and range at load, so that a
bad value stops the command at once with one line naming the key, not a job hours later.
Secrets and the database URL come from the environment, not from this file.

The rest of recaudit reads the settings as plain dicts (`load`); `load_settings` gives the
models themselves, and `settings_table` the README's table of every setting.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from recaudit.audits.groups import BUILT_IN, DEFAULT_AGE_GROUPS, UNKNOWN
from recaudit.audits.urls import ENGINES
from recaudit.audits.vocabulary import SEVERITIES
from recaudit.recsys import formats
from recaudit.recsys.formats import InputError, attribute_name_problem
from recaudit.recsys.recommender import ALGOS

DEFAULT_PATH = "recaudit.toml"
# Tables whose keys are the user's own (replaced whole, not merged key by key).
OPEN_TABLES = {"groups.age"}
DRIFT_SIGNALS = {  # name: (method, threshold); justified in the README
    "rating": ("jensenshannon", 0.1),
    "ratings_per_user": ("wasserstein", 0.1),
    "minutes_per_session": ("wasserstein", 0.1),
    "watched_popularity": ("jensenshannon", 0.1),
    "recommended_popularity": ("jensenshannon", 0.1),
    "genre": ("jensenshannon", 0.1),
    "age_group": ("jensenshannon", 0.1),
    "sex": ("jensenshannon", 0.1),
    "occupation": ("jensenshannon", 0.1),
    "latency": ("wasserstein", 0.1),
    "status": ("jensenshannon", 0.1),
    "predicted_score": ("wasserstein", 0.1),
}
# The drift tests a signal may name: evidently's statistical tests for numerical or categorical
# columns, by the names its registry knows them by (checked by a test, so that the file is
# checked at load without importing evidently).
DRIFT_METHODS = ("anderson", "chisquare", "cramer_von_mises", "ed", "empirical_mmd", "es", "fisher_exact", "g_test",
                 "hellinger", "jensenshannon", "kl_div", "ks", "mannw", "psi", "t_test", "TVD", "wasserstein", "z")
JOB_SCHEDULES = {  # name: when it runs by default; jobs due at the same time run in this order
    "ingest": "5min",
    "validation": "1h",
    "drift": "15 0 * * *",
    "fairness": "30 0 * * *",
    "feedback": "45 0 * * *",  # feedback, online and exposure
    "retrain": "0 3 * * 0",
    "report": "15min",
    "alerts": "1min",
}
JOBS = tuple(JOB_SCHEDULES)
FAIRNESS_DIMENSIONS = BUILT_IN  # the default dimensions; any user attribute can be one too
EXPOSURE_GROUPINGS = formats.MOVIE_GROUPINGS  # beside movie attributes
SCORER_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
OPS = (">", ">=", "<", "<=", "==", "!=")


# -- value types --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    """How the settings table names a value type whose Python type alone would not tell."""

    text: str


class Misplaced(ValueError):
    """A check across several settings, raised by a table's model, that names the setting at
    fault (`key`, relative to the table) rather than the table."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(reason)


def _positive_duration(value: str) -> str:
    import pandas as pd  # the code reads these with pd.Timedelta, so they are checked with it

    try:
        ok = pd.Timedelta(value) > pd.Timedelta(0)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f'must be a positive duration such as "1d" or "12h" (got {value!r})')
    return value


def _when(value: str) -> str:
    """A positive duration ("5min": every 5 minutes) or a crontab line of five fields (UTC),
    told apart as the service tells them apart, and a crontab line checked by APScheduler."""
    from apscheduler.triggers.cron import CronTrigger

    if len(value.split()) == 5:
        try:
            CronTrigger.from_crontab(value.strip(), timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a valid crontab line (got {value!r}: {exc})") from None
        return value
    try:
        _positive_duration(value.strip())
    except ValueError:
        raise ValueError(f'must be a duration ("5min") or a crontab line ("15 0 * * *") (got {value!r})') from None
    return value


def _age_band(value):
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) and value[0] <= value[1])
    if not ok:
        raise ValueError(f"must be [lowest age, highest age], whole numbers with lowest <= highest (got {value!r})")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
    return value


Duration = Annotated[str, AfterValidator(_positive_duration), Shown('duration (`"1d"`, `"12h"`, `"15min"`)')]
When = Annotated[str, AfterValidator(_when), Shown('duration (`"5min"`: every 5 minutes) or crontab line (UTC)')]
AgeBand = Annotated[list[int], BeforeValidator(_age_band), Shown("[lowest age, highest age]")]
Severity = Literal[SEVERITIES]


class Table(BaseModel):
    """A table of recaudit.toml: no keys but its own, no value of another type (TOML's own
    types, so `1` is no `true` and `"5"` no 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NamedTables(Table):
    """A table of tables of one model, one per name recaudit knows (signals, jobs): the names
    are the fields, each with its own defaults."""

    item: ClassVar[str]  # what a name names, for the settings table


def named_tables(model_name: str, item: str, defaults: dict[str, Table]) -> type[NamedTables]:
    """The NamedTables model of `defaults` (name: its default table)."""
    model = create_model(model_name, __base__=NamedTables, **{
        name: (type(table), Field(default_factory=table.model_copy)) for name, table in defaults.items()})
    model.item = item
    return model


# -- the tables ---------------------------------------------------------------------------------

class Audit(Table):
    window: Duration = Field("1d", description="the current window: this long, ending at the end of the "
                                               "latest day with data (without --since/--until)")
    out: str = Field("recaudit-reports", min_length=1, description="the dashboard (index.html) and runs/<run_id>/")
    max_silence: Annotated[str, AfterValidator(lambda v: v and _positive_duration(v))] = Field(
        "1h", description='an event kind no ingest stored for this long (wall-clock) is a critical condition; "" '
                          'for no check')


def _bin(value):
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in value)
          and value[0] <= value[1])
    if not ok:
        raise ValueError(f"must be [lowest, highest], numbers with lowest <= highest (got {value!r})")
    return value


Bin = Annotated[list[float], BeforeValidator(_bin), Shown("[lowest, highest]")]


def _attribute_bins(value: dict[str, dict[str, list[float]]]) -> dict:
    """Each binned attribute's name is a user attribute's, and its bins are labels metric keys
    can hold that share no value (a value has one group)."""
    for name, bins in value.items():
        problem = attribute_name_problem(name, "users")
        if problem:
            raise Misplaced(name, problem + (" (ages are binned by groups.age)" if name == "age" else ""))
        if not bins:
            raise Misplaced(name, "names no bin")
        for label in bins:
            if "." in label or label == UNKNOWN or not label.strip():
                raise Misplaced(name, f"bin {label!r}: a bin's name has no '.' (metric keys are dot-separated) and is "
                                      f"not {UNKNOWN!r} or blank")
        ordered = sorted(bins.items(), key=lambda kv: kv[1][0])
        for (a, (_, a_high)), (b, (b_low, _)) in zip(ordered, ordered[1:]):
            if b_low <= a_high:
                raise Misplaced(name, f"bins {a!r} and {b!r} overlap: a value has one group")
    return value


class Groups(Table):
    age: dict[str, AgeBand] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_AGE_GROUPS),
                                    description="the age groups fairness compares and drift's age_group counts; "
                                                "replaced whole when given")
    bins: Annotated[dict[str, dict[str, Bin]], AfterValidator(_attribute_bins)] = Field(
        default_factory=dict, json_schema_extra={"shown_default": "none"},
        description="bins of a numeric user attribute, one table per attribute (`[groups.bins.income]` with "
                    "`low = [0, 29999]`): its groups instead of its values; both ends included, bins may not overlap; "
                    "a value that is not a number or in no bin is unknown")


class Signal(Table):
    enabled: bool = Field(True, description="compare this signal")
    method: Literal[DRIFT_METHODS] = Field(description="evidently's statistical test")
    threshold: float = Field(ge=0, description="drifted at a score of at least this (for p-value tests: below it)")


Signals = named_tables("Signals", "signal", {name: Signal(method=method, threshold=threshold)
                                             for name, (method, threshold) in DRIFT_SIGNALS.items()})


class AttributeSignal(Signal):
    """A user attribute's share of daily active users, compared as sex's is by default."""

    method: Literal[DRIFT_METHODS] = Field(DRIFT_SIGNALS["sex"][0],
                                           description=Signal.model_fields["method"].description)
    threshold: float = Field(DRIFT_SIGNALS["sex"][1], ge=0,
                             description=Signal.model_fields["threshold"].description)


def _drift_attributes(value: dict[str, AttributeSignal]) -> dict:
    for name in value:
        problem = attribute_name_problem(name, "users") or (
            f"names a built-in signal (drift.signals.{name})" if name in DRIFT_SIGNALS else None)
        if problem:
            raise Misplaced(name, problem)
    return value


class Drift(Table):
    reference: Literal["previous", "training"] = Field(
        "previous", description="previous: the reference_window before the current one; training: the newest "
                                "model's training window")
    reference_window: Duration = Field("7d", description="the length of the previous reference")
    share_threshold: float = Field(0.25, ge=0, le=1, description="dataset drift when at least this share of the "
                                                                 "signals drifted")
    dataset_severity: Severity = Field("critical", description="the severity of a dataset drift finding")
    min_sample: int = Field(200, ge=1, description="fewer values in either window: insufficient data, no verdict")
    max_sample: int = Field(100_000, ge=1, description="signals are sampled (seeded) by whole users or requests "
                                                       "beyond this many values per window")
    seed: int = Field(0, ge=0, description="the seed of that sampling and of the noise floor's splits")
    report: bool = Field(True, description="write evidently's own report (HTML and JSON) beside the run")
    signals: Signals = Field(default_factory=Signals, description="each signal's test and threshold")
    attributes: Annotated[dict[str, AttributeSignal], AfterValidator(_drift_attributes)] = Field(
        default_factory=dict, description="user attributes whose share of daily active users is a signal too, named "
                                          "after the attribute (`[drift.attributes.region]`, its keys as a signal's; "
                                          "method and threshold by default sex's); each must be stored")

    @model_validator(mode="after")
    def _samples(self):
        if self.max_sample < self.min_sample:
            raise Misplaced("max_sample", f"must be at least min_sample ({self.min_sample}) (got {self.max_sample})")
        return self


class GapThresholds(Table):
    rmse: float = Field(0.2, ge=0, description="the largest gap in RMSE between groups without a finding")
    mae: float = Field(0.2, ge=0, description="likewise for MAE")


def _scorer_path(value: str) -> str:
    if value and not SCORER_PATH.fullmatch(value):
        raise ValueError(f'must be "package.module:function" (got {value!r})')
    return value


def _dimensions(value: list[str]) -> list[str]:
    for name in value:
        if name in BUILT_IN:
            continue
        problem = attribute_name_problem(name, "users")
        if problem:
            raise ValueError(f"{name!r} is neither one of {', '.join(BUILT_IN)} nor a user attribute: {problem}")
    repeated = [name for name, n in Counter(value).items() if n > 1]
    if repeated:
        raise ValueError(f"names {repeated[0]!r} twice")
    return value


class Fairness(Table):
    model: str = Field("", description='the model audited: a name in the stored predictions, or a model id of '
                                       '`recaudit train`; "" for the model with the most predictions in the window '
                                       '(the newest trained model when no predictions are stored)')
    window: Duration = Field("7d", description="evaluate at least this far back from the window's end (after a "
                                               "trained model's cutoff)")
    scorer: Annotated[str, AfterValidator(_scorer_path)] = Field(
        "", description='"package.module:function" (found on PYTHONPATH or in the current directory): called with '
                        'arrays of user ids and movie ids, it returns predicted ratings, and is the model audited '
                        'unless `model` names another; "" for none')
    scorer_name: str = Field("", description='names the scorer\'s model in results; "" for its path')
    scorer_batch: int = Field(100_000, ge=1, description="ratings per call of the scorer, at most")
    dimensions: Annotated[list[str], AfterValidator(_dimensions),
                          Shown("list of `sex`, `age`, `occupation` or user attribute names")] = Field(
        list(FAIRNESS_DIMENSIONS), description="the groups of users compared: sex, age (by groups.age), occupation, "
                                               "or the name of a stored user attribute (its values, or its "
                                               "groups.bins); checked against the stored users when the audit runs")
    min_group_size: int = Field(100, ge=1, description="ratings; smaller groups are reported as insufficient, "
                                                       "without a verdict")
    min_group_users: int = Field(20, ge=1, description="users, likewise")
    resamples: int = Field(2000, ge=1, description="bootstrap resamples of users, for the percentile intervals")
    permutations: int = Field(2000, ge=1, description="shuffles of the group labels over users, for the test of "
                                                      "a dimension's gap (worst − best of its groups)")
    confidence: float = Field(0.95, gt=0, lt=1, description="of the intervals; 1 − confidence is the test's level")
    power: float = Field(0.8, gt=0, lt=1, description="of the smallest detectable gap reported per dimension")
    seed: int = Field(0, ge=0, description="the seed of the resampling and of the shuffles")
    gap_thresholds: GapThresholds = Field(default_factory=GapThresholds, description="per accuracy metric")
    severity: Severity = Field("warning", description="the severity of a fairness finding")
    k: int = Field(20, ge=1, description="ranking quality at k")
    ranking_max_users: int = Field(5000, ge=1, description="ranked per run at most (a seeded sample beyond)")
    export_predictions: str = Field("", description='a CSV path: one row per evaluated rating; "" for none')


class Feedback(Table):
    trend_runs: int = Field(5, ge=2, description="K: the runs (this one included) the trend is fitted over")
    min_runs: int = Field(3, ge=2, description="no verdict on a trend of fewer runs")
    gini_slope_threshold: float = Field(0.01, ge=0, description="rise of the exposure Gini per run")
    correlation_method: Literal["pearson", "spearman"] = Field(
        "pearson", description="the rating-recommendation correlation")
    correlation_threshold: float = Field(0.3, ge=0, le=1, description="a correlation at least this strong is a "
                                                                      "finding")
    correlation_window: Duration = Field("7d", description="the correlation counts over at least this span, "
                                                           "ending with the window")
    head_share: float = Field(0.8, gt=0, le=1, description="the most watched movies making this share of the "
                                                           "viewing are the head")
    severity: Severity = Field("warning", description="the severity of a feedback finding")

    @model_validator(mode="after")
    def _runs(self):
        if self.min_runs > self.trend_runs:
            raise Misplaced("min_runs", f"must be at most trend_runs ({self.trend_runs}) (got {self.min_runs})")
        return self


class Online(Table):
    success_horizon: Duration = Field("15min", description="a watch this soon after a recommendation is a success")
    min_availability: float = Field(0.98, ge=0, le=1, description="share of requests answered with status 200 "
                                                                  "(beyond chance: see Online quality)")
    max_latency_p99: float = Field(1000.0, gt=0, description="milliseconds, successful requests")
    alpha: float = Field(0.01, gt=0, lt=1, description="significance of a difference in success rate between "
                                                       "servers")
    min_success_difference: float = Field(0.02, ge=0, le=1, description="and the smallest difference worth a "
                                                                        "finding")
    severity: Severity = Field("warning", description="the severity of an online finding")


class ExposureGapThresholds(Table):
    success_rate: float = Field(0.05, ge=0, le=1, description="the largest gap in online success rate between "
                                                              "groups of users without a finding (0.05: 5 points)")
    mrr: float = Field(0.03, ge=0, le=1, description="likewise for the MRR of the served lists")


def _movie_groupings(value: list[str]) -> list[str]:
    for name in value:
        problem = None if name in EXPOSURE_GROUPINGS else attribute_name_problem(name, "movies")
        if problem:
            raise ValueError(f"{name!r} is neither one of {', '.join(EXPOSURE_GROUPINGS)} nor a movie attribute: "
                             f"{problem}")
    repeated = [name for name, n in Counter(value).items() if n > 1]
    if repeated:
        raise ValueError(f"names {repeated[0]!r} twice")
    return value


class Exposure(Table):
    movie_groups: Annotated[list[str], AfterValidator(_movie_groupings)] = Field(
        list(EXPOSURE_GROUPINGS), description="the groupings of movies compared: genre, popularity (tiers of the "
                                              "previous window's viewing), decade (of release), or the name of a "
                                              "stored movie attribute")
    min_ratio: float = Field(0.5, gt=0, description="a movie group whose exposure-to-watch ratio is below this "
                                                    "beyond chance is a finding")
    # Low on purpose: starving a group also lowers its viewing (most viewing follows what is
    # shown), so a high bar would rule the starved group too small to judge; the ratio's
    # user-clustered interval, not this bar, keeps chance out of the findings.
    min_group_viewings: int = Field(10, ge=1, description="viewings (a user watching a movie on a day) of a movie "
                                                          "group; fewer: no verdict")
    min_group_viewers: int = Field(10, ge=1, description="users who watched a movie group, likewise")
    min_group_requests: int = Field(100, ge=1, description="served lists of a group of users; fewer: no verdict")
    min_group_users: int = Field(20, ge=1, description="users of a group of users who were served, likewise")
    gap_thresholds: ExposureGapThresholds = Field(default_factory=ExposureGapThresholds,
                                                  description="per metric of the users' side")
    resamples: int = Field(2000, ge=2, description="bootstrap resamples of users, for the percentile intervals")
    permutations: int = Field(2000, ge=1, description="shuffles of the group labels over users, for the test of a "
                                                      "gap between groups of users")
    confidence: float = Field(0.95, gt=0, lt=1, description="of the intervals; 1 − confidence, shared among the gaps "
                                                            "and among the movie groups a run tests, is the level "
                                                            "of a finding")
    seed: int = Field(0, ge=0, description="the seed of the resampling and of the shuffles")
    severity: Severity = Field("warning", description="the severity of an exposure finding")


class Rule(Table):
    name: str = Field(min_length=1, description="names the alert")
    metric: Optional[str] = Field(None, description="a metric key (see Metric keys); with op and threshold")
    op: Optional[Literal[OPS]] = Field(None, description="how the metric compares with the threshold")
    threshold: Optional[float] = Field(None, description="what the metric is compared with")
    finding: Optional[str] = Field(None, description="a kind of finding, instead of a metric")
    severity: Severity = Field("warning", description="the alert's severity")
    for_runs: int = Field(1, ge=1, description="fires when the rule held in this many runs in a row")

    @model_validator(mode="after")
    def _one_condition(self):
        if (self.metric is None) == (self.finding is None):
            raise ValueError("needs either metric (with op and threshold) or finding")
        if self.metric is not None and (self.op is None or self.threshold is None):
            raise ValueError(f"a metric rule needs op (one of {' '.join(OPS)}) and threshold")
        return self

    @model_serializer(mode="wrap")
    def _given(self, handler):
        """Without the condition it does not have: alerts tell a metric rule by its `metric`."""
        return {k: v for k, v in handler(self).items() if v is not None}


def _address(value: str) -> str:
    if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", value):
        raise ValueError(f"must be an email address such as \"oncall@example.org\" (got {value!r})")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url), Shown("`http://` or `https://` URL")]
Address = Annotated[str, AfterValidator(_address), Shown("email address")]
EnvName = Annotated[str, Shown("environment variable name")]
CHANNEL = "the channel, and so the body sent and the other keys of the entry"


class Webhook(Table):
    """What every entry of [[alerts.webhooks]] has, whatever its channel (`format`)."""

    name: str = Field(min_length=1, description="names the webhook in the outbox")
    timeout: float = Field(5.0, gt=0, description="seconds")


class JsonWebhook(Webhook):
    format: Literal["json"] = Field("json", description=CHANNEL)
    url: HttpUrl = Field(description="where the alerts are posted")
    secret_env: EnvName = Field("", description='the environment variable holding the HMAC-SHA256 signing secret; '
                                                '"" for none')


class SlackWebhook(JsonWebhook):
    format: Literal["slack"] = Field(description=CHANNEL)


class TeamsWebhook(JsonWebhook):
    format: Literal["teams"] = Field(description=CHANNEL)


class PagerDutyWebhook(Webhook):
    format: Literal["pagerduty"] = Field(description=CHANNEL)
    url: HttpUrl = Field("https://events.pagerduty.com/v2/enqueue", description="the Events API v2 endpoint")
    routing_key_env: EnvName = Field(min_length=1, description="the environment variable holding the integration's "
                                                               "routing key")


class EmailWebhook(Webhook):
    format: Literal["email"] = Field(description=CHANNEL)
    smtp_host: str = Field(min_length=1, description="the SMTP server")
    smtp_port: int = Field(587, ge=1, le=65535, description="its port (587: submission with STARTTLS)")
    starttls: bool = Field(True, description="upgrade the connection with STARTTLS, verifying the server's "
                                             "certificate, before anything is sent")
    username_env: EnvName = Field("", description='the environment variable holding the SMTP login; "" for no '
                                                  'login')
    password_env: EnvName = Field("", description='the environment variable holding the SMTP password; "" for no '
                                                  'login')
    sender: Address = Field(description="the From address")
    to: Annotated[list[Address], Shown("list of email addresses")] = Field(min_length=1, description="the recipients")
    ca_file: str = Field("", description='PEM file of the CA certificates the server\'s is verified against; "" for '
                                         'the system\'s')

    @model_validator(mode="after")
    def _login(self):
        if bool(self.username_env) != bool(self.password_env):
            given, missing = ("username_env", "password_env") if self.username_env else ("password_env", "username_env")
            raise Misplaced(missing, f"must be set too when {given} is (a login needs both)")
        if self.username_env and not self.starttls:
            raise Misplaced("starttls", "must be true when logging in: the password is sent only over TLS")
        return self


CHANNELS = (JsonWebhook, SlackWebhook, TeamsWebhook, PagerDutyWebhook, EmailWebhook)


def _default_channel(entry):
    """An entry without `format` is a JSON webhook, as every entry was before there were channels."""
    return {"format": JsonWebhook.model_fields["format"].default, **entry} if isinstance(entry, dict) else entry


# One of CHANNELS, chosen by `format`, as Great Expectations' checkpoint actions are by `type`.
AnyWebhook = Annotated[Union[CHANNELS], Field(discriminator="format"), BeforeValidator(_default_channel)]


class Alerts(Table):
    findings: Literal[("", *SEVERITIES)] = Field(
        "warning", description='every finding at least this severe alerts; "" for none (rules only)')
    report_url: str = Field("", description='where the reports are published, for links in alerts; "" for file paths')
    rules: list[Rule] = Field([], description="[[alerts.rules]]: alerts on a metric or a kind of finding")
    webhooks: list[AnyWebhook] = Field([], description="[[alerts.webhooks]]: where alerts are sent, an entry per "
                                                       "channel")
    backoff_seconds: float = Field(30.0, gt=0, description="first retry after this, doubling each attempt ...")
    max_backoff_seconds: float = Field(3600.0, gt=0, description="... up to this; an alert is never given up")

    @model_validator(mode="after")
    def _unique_names(self):
        for kind in ("rules", "webhooks"):
            seen = set()
            for i, entry in enumerate(getattr(self, kind)):
                if entry.name in seen:
                    raise Misplaced(f"{kind}[{i + 1}].name", f"{entry.name!r} is used twice")
                seen.add(entry.name)
        if self.max_backoff_seconds < self.backoff_seconds:
            raise Misplaced("max_backoff_seconds", f"must be at least backoff_seconds ({self.backoff_seconds:g}) "
                                                   f"(got {self.max_backoff_seconds:g})")
        return self


class Retrain(Table):
    algo: Literal[ALGOS] = Field("svd", description="the algorithm")
    factors: int = Field(100, ge=1, description="latent factors (svd)")
    epochs: int = Field(20, ge=1, description="training epochs (svd)")
    seed: int = Field(0, ge=0, description="the training seed")


class Job(Table):
    enabled: bool = Field(True, description="run this job")
    when: When = Field(description="how often, or when")


Jobs = named_tables("Jobs", "job", {name: Job(when=when) for name, when in JOB_SCHEDULES.items()})


class Schedule(Table):
    watch: list[str] = Field([], description="paths the ingest job ingests each time (logs grow, directories get "
                                             "new files)")
    models: str = Field("models", min_length=1, description="where the retrain job saves models")
    host: str = Field("127.0.0.1", min_length=1, description="the service's HTTP: /metrics, /healthz and the reports")
    port: int = Field(8090, ge=0, le=65535, description="the port of that HTTP (0: any free port)")
    misfire_grace_seconds: int = Field(3600, ge=1, description="a run missed by less than this still happens (once) "
                                                               "after a restart")
    lease_seconds: float = Field(30.0, gt=0, description="one scheduler per database runs jobs; a standby takes "
                                                         "over within 4/3 of this")
    retrain: Retrain = Field(default_factory=Retrain, description="the retrain job's model")
    jobs: Jobs = Field(default_factory=Jobs, description="each job's schedule")


def _next_year() -> int:
    return date.today().year + 1


class Validation(Table):
    list_length: int = Field(20, ge=1, description="movies in a successful recommendation list")
    max_minute: int = Field(600, ge=1, description="a watched minute beyond this is not a plausible movie")
    min_year: int = Field(1870, description="the earliest plausible release year")
    max_year: int = Field(default_factory=_next_year, json_schema_extra={"shown_default": "next year"},
                          description="the latest plausible release year")
    suite_dir: Optional[str] = Field(None, description="suites to run instead of the ones shipped in the package")

    @model_validator(mode="after")
    def _years(self):
        if self.max_year < self.min_year:
            raise Misplaced("max_year", f"must be at least min_year ({self.min_year}) (got {self.max_year})")
        return self


class StoreTable(Table):
    lake: Optional[str] = Field(None, description="keep events as Parquet files in this directory or s3:// URL "
                                                  "(--lake and $RECAUDIT_LAKE come first); none: in the database")
    engine: Literal[ENGINES] = Field("duckdb", description="what reads the lake: duckdb (embedded) or spark "
                                                           "($RECAUDIT_SPARK_MASTER, default local[*])")


class Settings(Table):
    """Every setting of recaudit.toml."""

    audit: Audit = Field(default_factory=Audit, description="`recaudit audit`")
    groups: Groups = Field(default_factory=Groups, description="groups of users")
    drift: Drift = Field(default_factory=Drift, description="the drift audit")
    fairness: Fairness = Field(default_factory=Fairness, description="the fairness audit")
    feedback: Feedback = Field(default_factory=Feedback, description="the feedback audit")
    online: Online = Field(default_factory=Online, description="the online audit")
    exposure: Exposure = Field(default_factory=Exposure, description="the exposure audit: what the recommender "
                                                                     "serves each group of users and shows of each "
                                                                     "group of movies")
    alerts: Alerts = Field(default_factory=Alerts, description="alerts")
    schedule: Schedule = Field(default_factory=Schedule, description="`recaudit schedule`")
    validation: Validation = Field(default_factory=Validation, description="the validation audit")
    store: StoreTable = Field(default_factory=StoreTable, description="where events are kept")


DEFAULTS: dict = Settings().model_dump()


# -- loading ------------------------------------------------------------------------------------

def load(path: str | Path | None = None) -> dict:
    """The configuration as plain dicts: the defaults overridden by the TOML file (`path`, or
    ./recaudit.toml if it exists), every value checked."""
    return load_settings(path).model_dump()


def load_settings(path: str | Path | None = None) -> Settings:
    """The configuration as `Settings`; an `InputError` of one line naming the file, the key and
    what is wrong when the file is unreadable or a value is refused."""
    file = Path(path) if path else Path(DEFAULT_PATH)
    if path is None and not file.exists():
        return Settings()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(file, "no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(file, f"not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(file, exc.strerror or "cannot be read") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(file, f"not valid TOML ({exc})") from None
    return _settings(data, file)


def resolve(config: dict | Settings | None = None) -> dict:
    """The configuration the Python API runs with: the defaults overridden by `config`, a
    partial dict in the shape of recaudit.toml (``{"fairness": {"seed": 1}}``), every value
    checked as a file's are. ./recaudit.toml is not read: a notebook's result must not depend on
    the directory it runs in.

    Examples
    --------
    >>> resolve({"fairness": {"resamples": 500}})["fairness"]["resamples"]
    500
    >>> resolve({"fairness": {"resamples": -3}})
    Traceback (most recent call last):
    ...
    recaudit.recsys.formats.InputError: config: fairness.resamples: must be at least 1 (got -3)
    """
    if isinstance(config, Settings):
        return config.model_dump()
    if config is not None and not isinstance(config, dict):
        raise InputError("config", f"must be a dict in the shape of recaudit.toml (got {type(config).__name__})")
    return _settings(config or {}, "config").model_dump()


def _settings(data: dict, source) -> Settings:
    merged = Settings().model_dump()  # afresh: the default max_year is next year as of now
    _merge(merged, copy.deepcopy(data), [])
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise InputError(source, "; ".join(_describe(error) for error in _first_per_key(exc.errors()))) from None


def _merge(into: dict, data: dict, where: list[str]) -> None:
    """Tables merge key by key into the defaults (a signal's or a job's own defaults stay when
    the file sets one of its keys), except OPEN_TABLES and lists, which the file replaces.
    Unknown keys and values of the wrong shape are kept for the models to refuse."""
    for key, value in data.items():
        if isinstance(into.get(key), dict) and isinstance(value, dict) and ".".join(where + [key]) not in OPEN_TABLES:
            _merge(into[key], value, where + [key])
        else:
            into[key] = value


# -- one line per refused value -----------------------------------------------------------------

def _first_per_key(errors: list[dict]) -> list[dict]:
    seen, first = set(), []
    for error in errors:
        if error["loc"] not in seen:
            seen.add(error["loc"])
            first.append(error)
    return first


def _describe(error: dict) -> str:
    """`drift.signals.sex.method: must be one of ... (got 'nosuch')`: the dotted key (a list's
    entries counted from 1, as a reader counts [[alerts.rules]]) and the reason."""
    loc, ctx = _as_written(error["loc"]), error.get("ctx") or {}
    if isinstance(ctx.get("error"), Misplaced):
        loc.append(ctx["error"].key)
    if error["type"] == "union_tag_invalid":  # the key that chooses the table's kind is at fault
        loc.append(ctx["discriminator"].strip("'"))
    key = "".join(f"[{part + 1}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{key}: {_reason(error)}".replace("\n", " ")


TYPES = {"string_type": "a string", "int_type": "a whole number", "float_type": "a number",
         "bool_type": "true or false", "list_type": "a list", "dict_type": "a table", "model_type": "a table",
         "model_attributes_type": "a table"}


def _reason(error: dict) -> str:
    """The reason in the words of the README's table, not pydantic's ("Input should be ...")."""
    kind, got, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown setting (known: {', '.join(_known_keys(list(error['loc'])[:-1]))})"
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"must not be empty (got {got!r})"
    if kind == "union_tag_invalid":
        field = ctx["discriminator"].strip("'")
        return f"must be one of {ctx['expected_tags']} (got {got.get(field)!r})"
    if kind in TYPES:
        reason = f"must be {TYPES[kind]}"
    elif kind == "literal_error":
        reason = f"must be {ctx['expected']}"
    elif kind == "greater_than":
        reason = "must be positive" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}"
    elif kind in ("greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than_equal": ("at least", "ge"), "less_than": ("less than", "lt"),
                 "less_than_equal": ("at most", "le")}[kind]
        reason = f"must be {words[0]} {ctx[words[1]]}"
    else:
        reason = error["msg"][:1].lower() + error["msg"][1:]
    return f"{reason} (got {got!r})"


def _known_keys(loc: list) -> list[str]:
    """The keys of the table at `loc`, for the message refusing an unknown one."""
    return list(_walk(loc)[0].model_fields)


def _as_written(loc) -> list:
    """`loc` without the parts pydantic adds that the file does not have: the tag naming the kind
    of a table in a list of several kinds (the "pagerduty" of a PagerDuty webhook)."""
    return _walk(loc)[1]


def _walk(loc) -> tuple[type[BaseModel], list]:
    """The model of the table at `loc` (the innermost one, when `loc` ends in a value), and
    `loc` as the file writes it."""
    model, kinds, written = Settings, {}, []
    for part in loc:
        if part in kinds:  # the tag of a tagged union: which member's table this is
            model, kinds = kinds[part], {}
            continue
        written.append(part)
        if not isinstance(part, int) and part in model.model_fields:  # not a list's index or a table's own name
            annotation = model.model_fields[part].annotation
            kinds = _kinds(annotation)[1]
            model = next(iter(kinds.values()), None) or _model_or_none(annotation) or model
    return model, written


def _model_in(annotation) -> type[BaseModel]:
    """The model a field holds, itself or in a list."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is None and isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise LookupError(annotation)


# -- the README's table -------------------------------------------------------------------------

README_START, README_END = "<!-- settings:start -->", "<!-- settings:end -->"
BOUNDS = ((annotated_types.Ge, "≥", "ge"), (annotated_types.Gt, ">", "gt"), (annotated_types.Le, "≤", "le"),
          (annotated_types.Lt, "<", "lt"))


def settings_table() -> str:
    """Every setting as a Markdown table (key, type and allowed values, default, description),
    drawn from the models, so that the README's table (between README_START and README_END,
    compared by a test) is the models' own word."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [f"| {' | '.join(_cell(c) for c in row)} |" for row in _rows(Settings, "")]
    return "\n".join(rows)


def _rows(model: type[BaseModel], prefix: str):
    """(key, type, default, description) of every setting of `model`, table by table."""
    for name, field in model.model_fields.items():
        key, inner = f"{prefix}{name}", _model_or_none(field.annotation)
        if inner is not None and issubclass(inner, NamedTables):
            names = list(inner.model_fields)
            item = _model_in(inner.model_fields[names[0]].annotation)
            yield (f"`{key}.<{inner.item}>`", f"a table per {inner.item}: {', '.join(f'`{n}`' for n in names)}", "",
                   field.description)
            defaults = field.get_default(call_default_factory=True)
            for sub, subfield in item.model_fields.items():
                yield (f"`{key}.<{inner.item}>.{sub}`", _type_text(subfield),
                       _grouped({n: getattr(getattr(defaults, n), sub) for n in names}), subfield.description)
        elif _kinds(field.annotation)[1]:
            yield f"`{key}`", "list of tables", "`[]`", field.description
            yield from _kind_rows(key, *_kinds(field.annotation))
        elif inner is not None and get_origin(field.annotation) is list:
            yield f"`{key}`", "list of tables", "`[]`", field.description
            yield from ((f"`{key}[].{k}`", t, d, desc) for k, t, d, desc in _leaves(inner))
        elif inner is not None and get_origin(field.annotation) is dict:  # tables named by the user
            yield f"`{key}.<name>`", "a table per name", "none", field.description
            yield from ((f"`{key}.<name>.{k}`", t, d, desc) for k, t, d, desc in _leaves(inner))
        elif inner is not None:
            yield from _rows(inner, f"{key}.")
        else:
            yield f"`{key}`", _type_text(field), _shown_default(field), field.description


def _kind_rows(key: str, chooser: str, kinds: dict[str, type[BaseModel]]):
    """The rows of a list of tables of several kinds: first `chooser`, the key choosing the kind,
    then each other key once, under the kinds that have it (`key[]` when all do, else
    `key[format = "a", "b"]`), in the order the models give them."""
    fields = [m.model_fields[chooser] for m in kinds.values()]
    default = next((f"`{_toml(f.default)}`" for f in fields if not f.is_required()), "required")
    yield (f"`{key}[].{chooser}`", "one of " + ", ".join(f"`{_toml(tag)}`" for tag in kinds), default,
           fields[0].description)
    owners: dict[tuple, list[str]] = {}
    for tag, model in kinds.items():
        for row in _leaves(model):
            if row[0] != chooser:
                owners.setdefault(row, []).append(tag)
    for (name, *rest), tags in owners.items():
        where = "" if len(tags) == len(kinds) else f"{chooser} = {', '.join(_toml(t) for t in tags)}"
        yield (f"`{key}[{where}].{name}`", *rest)


def _leaves(model: type[BaseModel]):
    for name, field in model.model_fields.items():
        yield name, _type_text(field), _shown_default(field), field.description


def _kinds(annotation) -> tuple[str, dict[str, type[BaseModel]]]:
    """The key that chooses the model of a (list of a) tagged union, such as [[alerts.webhooks]],
    and its models by tag; ("", {}) for any other annotation."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Annotated:
            member, *metadata = get_args(candidate)
            chooser = next((m.discriminator for m in metadata if getattr(m, "discriminator", None)), None)
            if chooser:
                return chooser, {get_args(m.model_fields[chooser].annotation)[0]: m for m in get_args(member)}
    return "", {}


def _model_or_none(annotation) -> type[BaseModel] | None:
    try:
        return _model_in(annotation)
    except LookupError:
        return None


def _shown_default(field) -> str:
    if field.is_required():
        return "required"
    shown, value = (field.json_schema_extra or {}).get("shown_default"), field.get_default(call_default_factory=True)
    return shown or ("not set" if value is None else f"`{_toml(value)}`")


def _grouped(defaults: dict[str, object]) -> str:
    """The defaults of one setting across names: the most common one plain, the others with the
    names they belong to (all with their names when no two share one)."""
    by_value = Counter(_toml(v) for v in defaults.values())
    common = by_value.most_common(1)[0][0] if by_value.most_common(1)[0][1] > 1 else None
    parts = [f"`{common}`"] if common is not None else []
    for value in by_value:
        if value != common:
            owners = ", ".join(n for n, v in defaults.items() if _toml(v) == value)
            parts.append(f"`{value}` for {owners}")
    return "; ".join(parts)


def _type_text(field) -> str:
    shown = [m.text for m in field.metadata if isinstance(m, Shown)]
    text = shown[0] if shown else _annotation_text(field.annotation)
    bounds = [f"{sign} {getattr(m, attr)}" for m in field.metadata for cls, sign, attr in BOUNDS if isinstance(m, cls)]
    if any(isinstance(m, annotated_types.MinLen) for m in field.metadata):
        text = f"non-empty {text}"
    return " ".join([text, " and ".join(bounds)]) if bounds else text


def _annotation_text(annotation) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        shown = [m.text for m in args[1:] if isinstance(m, Shown)]
        return shown[0] if shown else _annotation_text(args[0])
    if origin is Union:  # Optional: TOML has no null, so "not set" is only ever the default
        return _annotation_text(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(f"`{_toml(a)}`" for a in args)
    if origin is list:
        item = args[0]
        return ("list of " + ", ".join(f"`{_toml(a)}`" for a in get_args(item)) if get_origin(item) is Literal
                else f"list of {_annotation_text(item)}s")
    if origin is dict:
        return f"table: name = {_annotation_text(args[1])}"
    return {bool: "true or false", int: "whole number", float: "number", str: "string"}[annotation]


def _toml(value) -> str:
    """A value as recaudit.toml writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
