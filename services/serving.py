"""Serving an HTTP API: worker processes, and admission that sheds excess load instead of queueing it.

One Python process serves a few hundred requests a second; past that, requests used to queue
without bound and each waited out the 30 s pool timeout before a 503. Now each API runs several
uvicorn workers, and each worker works on at most `api_max_in_flight` requests at once. A request
that cannot start within `api_queue_budget_ms` is answered 503 with `Retry-After` at once, so the
requests that are served keep their normal latency and a client learns quickly to back off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time

from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from services.problems import Problem, problem_response
from services.worker_pool import StartupFailed, Worker, run_workers

# Probes and scrapes are never shed: an overloaded API must still say so.
UNGATED = frozenset({"/healthz", "/readyz", "/metrics"})
TURN = "loyalty.turn"
# How often the event loop's lateness is checked.
LATENESS_TICK_S = 0.01
# Controlled delay (CoDel, as in Maurer's "Fail at Scale"): a queue for turns that never emptied
# for an interval is standing, not a burst, and queued requests then wait at most a few ms. The
# budget alone kept a standing queue as long as the budget: at three times capacity the served
# requests' median was 170 ms.
CODEL_TARGET_S = 0.005
CODEL_INTERVAL_S = 0.1
STANDING_TIMEOUT_S = 0.01
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)


def _default_workers() -> int:
    """One per core, at most four: the APIs share the machine with Kafka, Postgres and the processor."""
    return max(1, min(4, os.cpu_count() or 1))


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    # Worker processes per API; each has its own connection pools and key cache.
    api_workers: int = Field(default_factory=_default_workers, ge=1, le=64)
    # Requests one worker works on at once; more wait for a turn, up to the queue budget.
    api_max_in_flight: int = Field(default=16, ge=1)
    # How long a request may wait for a turn before it is answered 503 with Retry-After.
    api_queue_budget_ms: int = Field(default=250, ge=0)
    # One JSON line per request; the per-route metrics count every request either way.
    api_access_log: bool = False


class _Turn:
    """A request's place among the ones in flight, given back once (when done, or sooner)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission
        self._started = time.perf_counter()

    def release(self) -> None:
        if self._admission is not None:
            self._admission.done(time.perf_counter() - self._started)
            self._admission = None


def release_turn(scope: Scope) -> None:
    """Give back the request's turn early: it will only wait now (a command for its decision)."""
    turn = scope.get(TURN)
    if isinstance(turn, _Turn):
        turn.release()


class Admission:
    """ASGI middleware: at most `limit` requests in flight; one that cannot start in time is shed.

    A request that would queue behind more work than the budget allows (by the recent time a turn
    takes) is shed on arrival, not after waiting the budget out: under overload the 503 comes back
    at once and the queue stays short for the requests that are served. When the worker's event
    loop itself runs later than the budget (more arrives than it can even read), requests have
    already waited the budget out unseen: every new one is shed until the loop catches up, which
    is what lets it catch up.
    """

    def __init__(self, app: ASGIApp, limit: int, budget_s: float, shed: Counter) -> None:
        self._app = app
        self._limit = limit
        self._budget_s = budget_s
        self._shed = shed
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0
        self._turn_s = 0.0  # moving average of how long a turn is held
        self._late_s = 0.0  # how late the event loop ran at its last check
        self._standing = False  # the queue did not empty in the last interval
        self._least_wait_s = 0.0  # the shortest wait for a turn in this interval
        self._interval_ends = 0.0
        self._lateness: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED:
            await self._app(scope, receive, send)
            return
        if self._lateness is None:
            self._lateness = asyncio.get_running_loop().create_task(self._watch_lateness())
        if self._late_s > self._budget_s:
            self._shed.inc()
            await _OVERLOADED(scope, receive, send)
            return
        if not self._slots.locked():
            await self._slots.acquire()  # a free turn: taken at once
            self._waited(0.0)
        elif not await self._wait_for_turn():
            self._shed.inc()
            await _OVERLOADED(scope, receive, send)
            return
        turn = scope[TURN] = _Turn(self)
        try:
            await self._app(scope, receive, send)
        finally:
            turn.release()

    async def _wait_for_turn(self) -> bool:
        """Queue for a turn, unless the queue ahead is already longer than the wait allowed: the
        budget, or only a few ms while the queue is standing."""
        allowed_s = STANDING_TIMEOUT_S if self._standing else self._budget_s
        if (self._waiting + 1) * self._turn_s / self._limit > allowed_s:
            return False
        self._waiting += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(allowed_s):
                await self._slots.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
            self._waited(time.perf_counter() - started)

    def _waited(self, seconds: float) -> None:
        """Note one wait for a turn; at the end of each interval, judge whether the queue stands."""
        now = time.perf_counter()
        self._least_wait_s = min(self._least_wait_s, seconds)
        if now >= self._interval_ends:
            self._standing = self._least_wait_s > CODEL_TARGET_S
            self._least_wait_s = float("inf")
            self._interval_ends = now + CODEL_INTERVAL_S

    async def _watch_lateness(self) -> None:
        late = 0.0
        while True:
            due = time.perf_counter() + LATENESS_TICK_S
            await asyncio.sleep(LATENESS_TICK_S)
            late, previous = time.perf_counter() - due, late
            self._late_s = min(late, previous)  # late twice running: not one hiccup of the scheduler

    def done(self, held_s: float) -> None:
        self._turn_s += (held_s - self._turn_s) / 16
        self._slots.release()


# One response for every shed request: made once, so shedding stays cheap.
_OVERLOADED = problem_response(
    Problem(
        503,
        "overloaded",
        "The service is at capacity",
        "no turn was free within the queue budget; retry after the given delay",
    )
)


def serve(factory: str, host: str, port: int, settings: ServingSettings) -> int:
    """Run the app that `factory` ("module:function") makes, in `api_workers` processes, until
    signalled: the exit status, 3 (uvicorn's) when the app cannot start.

    The workers' Prometheus metrics go to files in a directory of this run (multiprocess mode),
    so that `/metrics`, whichever worker answers it, adds up every worker's counts.
    """
    with tempfile.TemporaryDirectory(prefix="loyalty-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        try:
            run_workers(Worker(factory, host, port, settings.api_access_log), settings.api_workers)
        except StartupFailed as failed:
            log.error("api cannot start", extra={"error": str(failed)})
            return STARTUP_FAILURE
    return 0
