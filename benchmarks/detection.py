"""Detection figures: every detector on the simulator, its false alarms on an unchanged service and
its power against each fault at several strengths, over seeds.

    python benchmarks/detection.py [--seeds 20] [--users 6000] [--movies 300] [--days 6]
                                   [--faults none,corrupt,...] [--strengths fairness=0.8,1.1,1.4 ...]
                                   [--jobs 2] [--json PATH]

For each seed the simulator writes the unchanged service ("none") and, for each fault (corrupt,
drift, fairness, feedback, starve) and strength, the same service with that fault from the
middle day on (`recaudit simulate --inject fault:strength`, same seed: the days before it are
the same). Each is ingested into a SQLite store of its own, its reference model trained as
`recaudit train --until <middle day>` trains it (the default SVD, on the days before), and it is
audited in process by the registered audits, through the code `recaudit audit` runs
(`audits.run.run`), at the default settings except that evidently writes no report of its own;
no page is rendered and no alert evaluated. Windows, with m the middle day (the fault's first)
and D the number of days:
- validation, drift, online and exposure: day m, the default one-day window (drift's reference:
  the days before it);
- feedback: one run for each of days m to D-1, in order (the trend reads the earlier runs);
- fairness: days m to the end, the ratings after the model's cutoff.
The unchanged service is audited by every detector; a faulty one by the detector its fault
targets. A false alarm is any warning or critical finding of a detector on the unchanged service
(info findings are not alarms). Power is the share of seeds in which the targeted detector makes
the targeted finding: any validation failure (corrupt); dataset drift, and each of the three
signals the fault moves (drift); a fairness gap whose worst group is women (sex) or seniors (age),
the groups the fault makes noisier (fairness); the feedback loop (feedback); Romance movies
under-exposed (starve). Rates come with 95% Wilson intervals. An audit that errors counts in
neither and is listed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recaudit.recsys.simulate import STARVED_GENRE, injections  # noqa: E402

DETECTORS = ("validation", "drift", "fairness", "feedback", "online", "exposure")
# Each fault's detector, and the findings that count as detecting it: (target, what it is).
TARGETS = {
    "corrupt": ("validation", [("any", "any validation failure")]),
    "drift": ("drift", [("dataset", "dataset drift"), ("age_group", "the age group signal drifted"),
                        ("genre", "the genre signal drifted"), ("rating", "the rating signal drifted")]),
    "fairness": ("fairness", [("sex:F", "a gap with women worst (sex)"),
                              ("age:senior", "a gap with seniors worst (age)")]),
    "feedback": ("feedback", [("loop", "feedback loop suspected")]),
    "starve": ("exposure", [(f"genre:{STARVED_GENRE}", f"{STARVED_GENRE} movies under-exposed")]),
}
# From a fault too weak to find to one every detector should find: each fault's default (the fault
# as `--inject fault` writes it) is among them, and drift's strongest is twice its default, since
# at the default the genre mix moves by less than its signal's threshold (about 0.08 against 0.1).
STRENGTHS = {"corrupt": (0.00001, 0.00003, 0.0001, 0.03), "drift": (0.25, 0.5, 1.0, 2.0),
             "fairness": (0.8, 1.1, 1.4, 2.0), "feedback": (0.05, 0.1, 0.25, 1.0), "starve": (0.5, 0.75, 1.0)}
ALARM = ("warning", "critical")


# -- one scenario ---------------------------------------------------------------------------------

def scenario(seed: int, fault: str | None, strength: float | None, sizes: dict) -> dict:
    """Simulate, ingest and audit one service (unchanged when `fault` is None): each detector's
    status, alarms (warning and critical findings, as key and kind) and verdicts on its targets."""
    import pandas as pd

    from recaudit.audits import config as configuration
    from recaudit.audits import run as runs
    from recaudit.audits.ingest import ingest
    from recaudit.audits.store import Store
    from recaudit.recsys import recommender as rc
    from recaudit.recsys.simulate import Config, simulate
    from recaudit.scheduler.jobs import save_model

    started = time.perf_counter()
    cfg = Config(**sizes, seed=seed, inject={fault: strength} if fault else {})
    settings = configuration.load()
    settings["drift"]["report"] = False
    day = lambda k: pd.Timestamp(cfg.start) + pd.Timedelta(days=k)  # noqa: E731
    m, end = cfg.injection_day, day(cfg.days + 1)  # the last day's sessions run past its midnight
    detectors = DETECTORS if fault is None else (TARGETS[fault][0],)
    out: dict = {"seed": seed, "fault": fault, "strength": strength, "detectors": {}}
    with tempfile.TemporaryDirectory(prefix="recaudit-detection-") as tmp:
        work = Path(tmp)
        simulate(work / "data", cfg)
        store = Store(f"sqlite:///{work / 'audits.db'}")
        try:
            ingest(store, [str(work / "data")])
            # The service's reference model exists for every detector, as it would in production:
            # fairness evaluates it, and drift follows its predicted scores.
            data = rc.split(store.read("ratings"), day(m))
            data.seen = store.watched_pairs(data.cutoff)
            save_model(store, rc.train(data, seed=seed), work / "models")
            for name in detectors:
                if name == "feedback":
                    windows = [(day(k), day(k + 1) if k < cfg.days - 1 else end) for k in range(m, cfg.days)]
                elif name == "fairness":
                    windows = [(day(m), end)]
                else:
                    windows = [(day(m), day(m + 1))]
                results = [runs.run(store, since, until, settings, [name], work / "runs").results[name]
                           for since, until in windows]
                out["detectors"][name] = judge(name, results, fault)
        finally:
            store.close()
    out["seconds"] = time.perf_counter() - started
    return out


def judge(name: str, results: list, fault: str | None) -> dict:
    """A detector's runs judged: errored (the first error), alarms, and each target of `fault`
    that this detector is judged on, found or not."""
    alarms = [f for r in results for f in r.findings if f.severity in ALARM]
    errors = [r.error for r in results if r.status == "errored"]
    verdict = {"status": [r.status for r in results], "error": errors[0] if errors else None,
               "alarms": sorted({f"{f.kind}:{f.key}" for f in alarms}), "targets": {}}
    if fault is not None:
        metrics = results[-1].metrics
        verdict["figures"] = {key: metrics.get(key) for key in figures(name, fault)}
        for target, _what in TARGETS[fault][1]:
            verdict["targets"][target] = found(name, target, alarms, metrics)
    return verdict


def figures(name: str, fault: str) -> list[str]:
    """The metrics behind a detector's verdicts on `fault`, kept to tell a miss from too little data."""
    if name == "drift":
        return ["drift.share_drifted", *(f"drift.{t}.score" for t, _ in TARGETS[fault][1] if t != "dataset")]
    if name == "fairness":
        return [key for t, _ in TARGETS[fault][1] for dim, group in [t.split(":")]
                for key in (f"fairness.n.{dim}.{group}", f"fairness.rmse.{dim}.{group}", f"fairness.rmse_gap.{dim}")]
    if name == "exposure":
        return [f"exposure.ratio.{t.replace(':', '.')}" for t, _ in TARGETS[fault][1]]
    return {"validation": ["validation.failed"], "feedback": ["feedback.gini_slope"]}[name]


def found(name: str, target: str, alarms: list, metrics: dict) -> bool:
    """Whether the alarms hold the targeted finding."""
    if name == "validation":
        return any(f.kind == "expectation_failed" for f in alarms)
    if name == "drift":
        if target == "dataset":
            return any(f.kind == "dataset_drift" for f in alarms)
        return any(f.kind == "drift" and f.key == f"drift.{target}.score" for f in alarms)
    if name == "fairness":
        dim, group = target.split(":")
        return any(f.kind == "fairness_gap" and worst_group(f.key, dim, metrics) == group for f in alarms)
    if name == "feedback":
        return any(f.kind == "feedback_loop" for f in alarms)
    if name == "exposure":
        grouping, group = target.split(":")
        return any(f.kind == "underexposed" and f.key == f"exposure.ratio.{grouping}.{group}" for f in alarms)
    raise ValueError(f"no target {target!r} for {name}")


def worst_group(key: str, dim: str, metrics: dict) -> str | None:
    """The group a fairness gap finding is about, on all ratings (fairness.<metric>_gap.<dim>) or
    on a part of them (fairness.<metric>_gap_<part>.<dim>, warm or cold-start): the one with the
    highest <metric> of `dim` in that part among the groups with a value (enough ratings)."""
    match = re.fullmatch(rf"fairness\.([a-z]+)_gap(_[a-z]+)?\.{re.escape(dim)}", key)
    if not match:
        return None
    prefix = f"fairness.{match.group(1)}{match.group(2) or ''}.{dim}."
    values = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix) and v is not None}
    return max(values, key=values.get) if values else None


# -- the figures ----------------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of k successes in n trials."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def rows(done: list[dict], faults: list[str], strengths: dict) -> list[dict]:
    """The table: each detector's false alarms, then each fault's detector and target by strength."""
    table = []

    def row(detector, fault, strength, fires_on, verdicts):
        judged = [v for v in verdicts if v is not None]
        k, n = sum(judged), len(judged)
        low, high = wilson(k, n)
        table.append({"detector": detector, "fault": fault, "strength": strength, "fires_on": fires_on,
                      "seeds": n, "fired": k, "rate": k / n if n else None, "low": low, "high": high,
                      "errored": len(verdicts) - n})

    clean = [d for d in done if d["fault"] is None]
    for name in DETECTORS if clean else ():
        verdicts = [None if d["detectors"][name]["error"] else bool(d["detectors"][name]["alarms"]) for d in clean]
        row(name, "none (false alarms)", None, "any warning or critical finding", verdicts)
    for fault in faults:
        name, targets = TARGETS[fault]
        for target, what in targets:
            for strength in strengths[fault]:
                runs = [d["detectors"][name] for d in done if d["fault"] == fault and d["strength"] == strength]
                row(name, fault, strength, what, [None if r["error"] else r["targets"][target] for r in runs])
    return table


def plain(x: float) -> str:
    """A strength as it is typed: 0.00001, not 1e-05."""
    return f"{x:.10f}".rstrip("0").rstrip(".")


def markdown(table: list[dict]) -> str:
    lines = ["| detector | fault | strength | fires on | seeds | rate | 95% interval |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in table:
        rate = "—" if r["rate"] is None else f"{r['rate']:.0%} ({r['fired']}/{r['seeds']})"
        interval = "—" if r["rate"] is None else f"{r['low']:.0%}–{r['high']:.0%}"
        strength = "" if r["strength"] is None else plain(r["strength"])
        errored = f" ({r['errored']} errored)" if r["errored"] else ""
        lines.append(f"| {r['detector']} | {r['fault']} | {strength} | {r['fires_on']} | {r['seeds']}{errored} "
                     f"| {rate} | {interval} |")
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------

def parse_strengths(items: list[str]) -> dict[str, tuple[float, ...]]:
    """`--strengths fault=s1,s2,...` (repeatable) over the defaults, each checked as the simulator checks it."""
    out = dict(STRENGTHS)
    for item in items:
        fault, _, values = item.partition("=")
        try:
            levels = tuple(float(v) for v in values.split(",") if v.strip())
            if not levels:
                raise ValueError(f"no strengths given for {fault!r}")
            for level in levels:
                injections({fault.strip(): level})
        except ValueError as exc:
            raise SystemExit(f"--strengths {item!r}: {exc}") from None
        out[fault.strip()] = levels
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0 to N-1 (default 20)")
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--movies", type=int, default=300)
    ap.add_argument("--days", type=int, default=6, help="days simulated; faults start on the middle day")
    ap.add_argument("--strengths", action="append", default=[], metavar="FAULT=S1,S2,...",
                    help="strengths of a fault (repeatable); default: " +
                         "; ".join(f"{f}={','.join(plain(s) for s in v)}" for f, v in STRENGTHS.items()))
    ap.add_argument("--faults", default=",".join(("none", *TARGETS)), metavar="LIST",
                    help="the services simulated: none (the unchanged one, for false alarms) and the faults "
                         "(default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the table and every scenario's verdicts")
    args = ap.parse_args()
    if args.seeds < 1 or args.jobs < 1 or args.days < 2:
        ap.error("--seeds and --jobs must be at least 1, --days at least 2")
    strengths = parse_strengths(args.strengths)
    chosen = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in ("none", *TARGETS)]
    if unknown or not chosen:
        ap.error(f"--faults: unknown fault {unknown[0] if unknown else ''!r} (choose from none, {', '.join(TARGETS)})")
    faults, clean = [f for f in TARGETS if f in chosen], "none" in chosen
    sizes = {"users": args.users, "movies": args.movies, "days": args.days}
    tasks = [(seed, None, None) for seed in range(args.seeds)] if clean else []
    tasks += [(seed, fault, s) for fault in faults for s in strengths[fault] for seed in range(args.seeds)]
    started = time.perf_counter()
    done = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(scenario, seed, fault, s, sizes) for seed, fault, s in tasks]
        for i, future in enumerate(as_completed(futures), start=1):
            done.append(future.result())
            if i % max(1, len(tasks) // 20) == 0 or i == len(tasks):
                print(f"{i}/{len(tasks)} scenarios, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    done.sort(key=lambda d: (d["fault"] or "", d["strength"] or 0, d["seed"]))
    table = rows(done, faults, strengths)
    per = {f or "none": sum(d["seconds"] for d in done if d["fault"] == f) / sum(d["fault"] == f for d in done)
           for f in ([None] if clean else []) + faults}
    print(f"{args.seeds} seeds; {args.users:,} users, {args.movies:,} movies, {args.days} days, faults from day "
          f"{args.days // 2 + 1}; every audit at its default settings; Python {sys.version.split()[0]}\n")
    print(markdown(table))
    errors = sorted({f"{name}: {v['error']}" for d in done for name, v in d["detectors"].items() if v["error"]})
    if errors:
        print("\nerrored audits (counted in neither rate):\n" + "\n".join(f"- {e}" for e in errors))
    print("\nseconds per scenario (one process): " + ", ".join(f"{f} {s:.1f}" for f, s in per.items()))
    print(f"command: python benchmarks/detection.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"elapsed: {elapsed:.0f} s for {len(tasks)} scenarios with {args.jobs} jobs")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "sizes": sizes, "seeds": args.seeds,
                                         "strengths": strengths, "elapsed_seconds": elapsed, "rows": table,
                                         "scenarios": done}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
