"""Users with attributes at scale: ingest a users.csv of N users with and without two attribute
columns (a category and a number), read the users back (the database pivots the attributes),
and compute their groups for sex, age, the category and the binned number.

    python benchmarks/attributes.py --users 1000000 [--db postgresql://...]

Without --db, each run uses a fresh SQLite file in a temporary directory; with a PostgreSQL URL,
the database should be empty (each variant is written to a schema of its own, dropped after).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path


def measure(n: int, attributes: bool, url: str | None, tmp: Path) -> dict:
    import numpy as np
    import pandas as pd

    from recaudit.audits import config, groups
    from recaudit.audits.ingest import ingest
    from recaudit.audits.store import Store

    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user_id": np.arange(1, n + 1), "age": rng.integers(10, 80, n),
                          "gender": rng.choice(["M", "F"], n),
                          "occupation": rng.choice(["writer", "lawyer", "other"], n)})
    dimensions = ["sex", "age"]
    if attributes:
        users["region"] = rng.choice(["north", "south", "st. louis"], n)
        users["income"] = rng.integers(0, 100_000, n)
        dimensions += ["region", "income"]
    path = tmp / f"users-{attributes}.csv"
    users.to_csv(path, index=False)
    store = Store(url or f"sqlite:///{tmp / f'users-{attributes}.db'}")
    try:
        started = time.perf_counter()
        ingest(store, [str(path)])
        ingested = time.perf_counter()
        read = store.read("users")
        done = time.perf_counter()
        cfg = config.resolve({"groups": {"bins": {"income": {"low": [0, 49999], "high": [50000, 100000]}}}})
        groups.user_groups(read, dimensions, cfg)
        grouped = time.perf_counter()
        return {"dialect": store.dialect, "attributes": 2 if attributes else 0, "ingest": ingested - started,
                "read": done - ingested, "groups": grouped - done}
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--db", help="a PostgreSQL URL (default: SQLite files in a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for attributes in (False, True):
            url, schema = args.db, None
            if url:
                import psycopg

                schema = f"bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
                    c.execute(f"CREATE SCHEMA {schema}")
                url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
            try:
                r = measure(args.users, attributes, url, Path(tmp))
            finally:
                if schema:
                    with psycopg.connect(args.db.replace("postgresql+psycopg://", "postgresql://"),
                                         autocommit=True) as c:
                        c.execute(f"DROP SCHEMA {schema} CASCADE")
            print(f"{args.users:,} users, {r['attributes']} attributes on {r['dialect']}: ingest {r['ingest']:.1f} s, "
                  f"read {r['read']:.1f} s, groups {r['groups']:.2f} s")


if __name__ == "__main__":
    main()
