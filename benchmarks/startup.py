"""Start-up time: `import recaudit` and `recaudit --help`, each in a fresh process.

    python benchmarks/startup.py [--repeat 21]

Reported: the median and the slowest wall time of --repeat runs of each, and which heavy
libraries the import loaded (none is the promise: they load when an audit needs them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("pandas", "numpy", "scipy", "sqlalchemy", "evidently", "great_expectations", "surprise", "pyspark")


def timed(command: list[str], repeat: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), max(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    cli = str(Path(sys.executable).parent / "recaudit") if (Path(sys.executable).parent / "recaudit").exists() \
        else shutil.which("recaudit")
    rows = [("python -c 'import recaudit'", [sys.executable, "-c", "import recaudit"]),
            ("python -c 'pass' (the interpreter alone)", [sys.executable, "-c", "pass"]),
            ("recaudit --help", [cli, "--help"])]
    print("| command | median | slowest |\n|---|---:|---:|")
    for name, command in rows:
        median, slowest = timed(command, args.repeat)
        print(f"| `{name}` | {median * 1000:.0f} ms | {slowest * 1000:.0f} ms |")
    code = f"import sys, json, recaudit; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    print(f"\nheavy libraries loaded by `import recaudit`: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
