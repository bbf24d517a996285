"""The recommendation service: GET /recommend/<user_id> answers with 20 movie ids, and every
request is written to an event log in the production format, so the service's own traffic can
be ingested and audited like any other.

Starlette under uvicorn: an ASGI server with C parsers (httptools, uvloop), graceful shutdown on
SIGTERM, and plain (sync) endpoints run in a thread pool, so numpy scoring never blocks the
accept loop. The model is loaded once and swapped atomically when a newer artifact appears.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

from recaudit.clock import utc_now
from recaudit.recsys.events import STATUS_OK, format_recommendation
from recaudit.recsys.recommender import Model

# ASCII digits only: \d (and int()) also take other scripts' digits, so "١٢" would be served and
# logged as user 12.
USER_ID = re.compile(r"[0-9]{1,18}\Z")
K = 20
log = logging.getLogger("recaudit.serving")


class ModelHolder:
    """The model in use, replaced whole when `newest()` names a different artifact."""

    def __init__(self, newest: Callable[[], tuple[str, Path] | None]):
        self.newest = newest
        self.model: Model | None = None
        self.model_id: str | None = None
        self.loaded_at: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the newest artifact if it is not the one in use; True when it changed."""
        found = self.newest()
        if found is None or found[0] == self.model_id:
            return False
        model = Model.load(found[1])  # loaded aside: requests keep using the old one meanwhile
        with self._lock:
            self.model, self.model_id = model, found[0]
            self.loaded_at = utc_now().isoformat()
        return True

    def current(self) -> tuple[Model | None, str | None]:
        with self._lock:
            return self.model, self.model_id


class EventLog:
    """Appends lines to the service's event log, one whole line at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        self._file.close()


def create_app(holder: ModelHolder, events: EventLog, server: str, reload_seconds: float = 30.0):
    from contextlib import asynccontextmanager

    import anyio
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def recommend(request):
        started = time.perf_counter()
        raw = request.path_params["user_id"]
        if not USER_ID.match(raw):
            return PlainTextResponse("user id must be a non-negative integer\n", status_code=400)
        user_id = int(raw)
        now = utc_now().to_pydatetime()
        model, _ = holder.current()
        if model is None:
            status, body, movies = 503, "no model has been trained yet\n", None
        else:
            movies, _scores, _cold = model.recommend(user_id, K)
            status, body = STATUS_OK, ",".join(movies)
        latency = max(0, round((time.perf_counter() - started) * 1000))
        events.write(format_recommendation(now, user_id, server, status, latency, movies,
                                        error=body.strip() if status != STATUS_OK else ""))
        return PlainTextResponse(body, status_code=status)

    def healthz(request):
        _model, model_id = holder.current()
        payload = {"status": "ok" if model_id else "no model", "model": model_id, "loaded_at": holder.loaded_at}
        return JSONResponse(payload, status_code=200 if model_id else 503)

    @asynccontextmanager
    async def lifespan(app):
        async def reload_forever():
            while True:
                await anyio.sleep(reload_seconds)
                try:
                    await anyio.to_thread.run_sync(holder.refresh)
                except Exception:  # a broken artifact must not take the service down
                    log.exception("could not load the newest model; still serving %s", holder.model_id)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reload_forever)
            yield
            tasks.cancel_scope.cancel()
        events.close()

    return Starlette(routes=[Route("/recommend/{user_id}", recommend), Route("/healthz", healthz)], lifespan=lifespan)


def serve(app, host: str, port: int) -> None:
    import uvicorn
    from threadpoolctl import threadpool_limits

    # Parallelism comes from serving requests side by side; a BLAS thread pool per product
    # would only oversubscribe the cores (measured: p99 at 200 req/s fell from seconds to ms).
    with threadpool_limits(limits=1):
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
