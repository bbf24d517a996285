"""/metrics of `recaudit schedule` on the quick demo's database: scrapes per second, latency, memory.

    python benchmarks/metrics.py [--requests 2000] [--connections 4] [--demo DIR]

- The database: `recaudit demo --quick --out DIR` makes it, in a temporary directory unless
  --demo names one where it was made already.
- The service: `recaudit schedule` on it, bound to 127.0.0.1, with every job disabled, so that
  the figures are the endpoint's own and not those of an audit running beside it on 2 cores.
- The load: a client in another process sends --requests scrapes over --connections kept-alive
  connections, back to back; latency is each request's, from send to the last byte. The
  service's resident memory is read before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RECAUDIT = str(Path(sys.executable).parent / "recaudit")


def client(port: int, requests: int, connections: int) -> dict:
    """Send `requests` scrapes, shared by `connections` threads; every answer must be a 200."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(count):
            sent = time.perf_counter()
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            took = time.perf_counter() - sent
            with lock:
                latencies.append(took)
                errors[0] += response.status != 200
        conn.close()

    shares = [requests // connections + (k < requests % connections) for k in range(connections)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "errors": errors[0], "seconds": seconds, "per_second": len(ms) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure(demo: Path, requests: int, connections: int) -> dict:
    db = demo / "recaudit.db"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "recaudit.toml"
        config.write_text(f'[audit]\nout = "{demo / "reports"}"\n' + "".join(
            f"[schedule.jobs.{name}]\nenabled = false\n"
            for name in ("ingest", "validation", "drift", "fairness", "feedback", "retrain", "report", "alerts")))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([RECAUDIT, "schedule", "--db", str(db), "--config", str(config), "--host",
                                   "127.0.0.1", "--port", str(port)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/metrics")
                    body = conn.getresponse().read()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the service did not answer")
            before = rss_mb(server.pid)
            done = subprocess.run([sys.executable, __file__, "--client", str(port), str(requests), str(connections)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout)
            result.update(rss_before_mb=before, rss_after_mb=rss_mb(server.pid), body_bytes=len(body),
                          series=sum(1 for line in body.decode().splitlines() if line and not line.startswith("#")))
            return result
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--demo", type=Path, help="a directory `recaudit demo --quick --out DIR` made")
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)  # port requests connections (child process)
    args = ap.parse_args()
    if args.client:
        port, requests, connections = map(int, args.client)
        print(json.dumps(client(port, requests, connections)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo
        if demo is None:
            demo = Path(tmp) / "demo"
            subprocess.run([RECAUDIT, "demo", "--quick", "--out", str(demo)], check=True, capture_output=True)
        r = measure(demo.resolve(), args.requests, args.connections)
    print(f"/metrics of the quick demo's database: {r['series']} series, {r['body_bytes']:,} bytes; "
          f"Python {sys.version.split()[0]}\n")
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| scrapes ({args.connections} connections, back to back) | {r['requests']:,} in {r['seconds']:.2f} s, "
          f"{r['errors']} errors | |")
    print(f"| scrapes per second | {r['per_second']:,.0f} | ≥ 500 |")
    print(f"| latency p50 / p99 / max | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms | p99 ≤ 50 ms |")
    print(f"| service memory before / after | {r['rss_before_mb']:.0f} / {r['rss_after_mb']:.0f} MB | |")


if __name__ == "__main__":
    main()
