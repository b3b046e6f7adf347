"""Serving an HTTP API: worker processes, and admission that sheds excess load instead of queueing it.

One Python process serves a few hundred requests a second; past that, requests used to queue
without bound and each waited out the 30 s pool timeout before a 503. Now each API runs several
uvicorn workers, and each worker works on at most `api_max_in_flight` requests at once. A request
that cannot start within `api_queue_budget_ms` is answered 503 with `Retry-After` at once, so the
requests that are served keep their normal latency and a client learns quickly to back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
import time
from collections import deque

from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from services.problems import Problem, problem_response
from services.worker_pool import StartupFailed, Worker, run_workers

# Probes and scrapes are never shed: an overloaded API must still say so.
UNGATED = frozenset({"/healthz", "/readyz", "/metrics"})
TURN = "loyalty.turn"
# How often the event loop's lateness is checked.
LATENESS_TICK_S = 0.01
# Controlled delay with adaptive LIFO (Maurer, "Fail at Scale"): a queue for turns while no turn
# has been free for an interval is standing, not a burst. While it stands, newcomers wait at most a
# few ms and the newest waiter is served first, so the requests served keep their latency and
# the ones that cannot be served fail fast. A FIFO queue kept the budget's worth of wait: at twice
# capacity, served reads and 503s both had a p99 of 260 ms, the budget. A queue whose oldest waiter
# is served within the target is a good queue (CoDel's): it absorbs a burst and does not stand.
# Without the target, a queue that always held a waiter for 100 ms stood, even one whose waiters
# each waited only the length of a turn: a worker at capacity, not past it.
# A queue stands until no request has been shed for an interval: shedding itself empties the queue
# and frees turns, and counting that as the load falling flipped an overloaded worker back to a
# FIFO queue for an interval at a time, whose waits made the tail (at 3,000 reads/s on a machine
# half as fast: 503s p99 110-122 ms, served p99 96-107 ms; held, 86 and 53 ms).
CODEL_INTERVAL_S = 0.1
CODEL_TARGET_S = 0.005
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
    # Requests one worker works on at once; more wait for a turn, up to the queue budget. They
    # share one event loop: beyond a few, each only gets it thinner (README, "Serving under load").
    api_max_in_flight: int = Field(default=4, ge=1)
    # How long a request may wait for a turn before it is answered 503 with Retry-After.
    api_queue_budget_ms: int = Field(default=250, ge=0)
    # One JSON line per request; the per-route metrics count every request either way.
    api_access_log: bool = False
    # How long an idle connection is kept open. Longer than clients keep theirs idle (Go's 90 s),
    # so that the client closes it first: a server that closes first races the client's next
    # request, which is then reset. At uvicorn's 5 s, an overloaded run reset 21 purchases.
    api_keep_alive_s: int = Field(default=120, ge=1)
    # About how many requests a client's connection carries before an answer asks the client to
    # reconnect (Rotation); 0: never.
    api_requests_per_connection: int = Field(default=100, ge=0)


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
    takes) is shed on arrival, not after waiting the budget out. Once the queue stands (above),
    waiting is short and newest first. When the worker's event loop itself runs later than the
    budget (more arrives than it can even read), requests have already waited the budget out
    unseen: every new one is shed until the loop catches up, which is what lets it catch up.
    """

    def __init__(self, app: ASGIApp, limit: int, budget_s: float, shed: Counter) -> None:
        self._app = app
        self._limit = limit
        self._budget_s = budget_s
        self._shed = shed
        self._free = limit
        self._waiters: deque[tuple[float, asyncio.Future[bool]]] = deque()  # (queued at, waiter)
        self._last_good = 0.0  # when the queue was last empty or drained within the target
        self._last_shed = -CODEL_INTERVAL_S  # when a request was last shed
        self._turn_s = 0.0  # moving average of how long a turn is held
        self._late_s = 0.0  # how late the event loop ran at its last check
        self._lateness: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED:
            await self._app(scope, receive, send)
            return
        if self._lateness is None:
            self._lateness = asyncio.get_running_loop().create_task(self._watch_lateness())
        refused = "late" if self._late_s > self._budget_s else await self._take_turn()
        if refused is not None:
            self._shed.labels(refused).inc()
            self._last_shed = time.perf_counter()
            await _OVERLOADED(scope, receive, send)
            return
        turn = scope[TURN] = _Turn(self)
        try:
            await self._app(scope, receive, send)
        finally:
            turn.release()

    async def _take_turn(self) -> str | None:
        """None once the request has a turn; else why it is shed (a label of the shed counter)."""
        now = time.perf_counter()
        if not self._waiters and self._free:
            self._good(now)
            self._free -= 1
            return None
        standing = self._standing(now)
        if standing:
            allowed_s = STANDING_TIMEOUT_S
            self._expire(now - STANDING_TIMEOUT_S)
        else:
            allowed_s = self._budget_s
            if (len(self._waiters) + 1) * self._turn_s / self._limit > allowed_s:
                return "backlog"
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (now, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(allowed_s):
                return None if await waiter else "standing"  # shed as the queue came to stand
        except TimeoutError:
            if self._outcome(entry):  # handed a turn just as its time ran out, perhaps
                return None
            return "standing" if standing else "budget"
        except asyncio.CancelledError:
            if self._outcome(entry):
                self._hand_on()
            raise

    def _standing(self, now: float) -> bool:
        """Whether the queue has been neither empty nor drained within the target for an interval.
        A queue that shedding emptied still stands: only a turn going free with nobody waiting, or
        the oldest waiter served in time, with nothing shed for an interval, means the load is
        within capacity."""
        return now - self._last_good > CODEL_INTERVAL_S

    def _outcome(self, entry: tuple[float, asyncio.Future[bool]]) -> bool:
        """Whether the waiter got a turn; one that did not leaves the queue (if a turn being
        handed out has not already skipped it).

        Cancelling the task that awaits the waiter (its timeout) cancels the waiter too.
        """
        waiter = entry[1]
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)
        return False

    def _expire(self, queued_before: float) -> None:
        """Shed the waiters queued before the queue stood, whose budget would outlast it."""
        while self._waiters and self._waiters[0][0] < queued_before:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

    def done(self, held_s: float) -> None:
        self._turn_s += (held_s - self._turn_s) / 16
        self._hand_on()

    def _hand_on(self) -> None:
        """Give a turn to the newest waiter while the queue stands, else to the oldest. (The newest
        waited least by design: while the queue stands, its wait says nothing of the queue's.)"""
        now = time.perf_counter()
        standing = self._standing(now)
        while self._waiters:
            queued_at, waiter = self._waiters.pop() if standing else self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                if not standing and now - queued_at <= CODEL_TARGET_S:
                    self._good(now)
                return
        self._good(now)
        self._free += 1

    def _good(self, now: float) -> None:
        """The queue emptied or drained within the target: the load is within capacity, unless a
        request was shed within the last interval (then shedding is what emptied it)."""
        if now - self._last_shed >= CODEL_INTERVAL_S:
            self._last_good = now

    async def _watch_lateness(self) -> None:
        late = 0.0
        while True:
            due = time.perf_counter() + LATENESS_TICK_S
            await asyncio.sleep(LATENESS_TICK_S)
            late, previous = time.perf_counter() - due, late
            self._late_s = min(late, previous)  # late twice running: not one hiccup of the scheduler


class Rotation:
    """ASGI middleware: about one answer in `every` asks the client to reconnect (`Connection:
    close`), so that its connections are dealt out among the workers again.

    The kernel deals out connections, not requests (worker_pool). A client at a steady rate
    reuses its most recent idle connection (Go's does), so a few connections carry most of its
    requests, and whichever worker holds them most of the load: at 1,000 reads/s, 47% of a core
    against 9%, or 33% against 24%, by how they fell. Reconnecting now and then, they fall anew,
    and the shares even out (29% and 26%, 28% and 27%). Unlike a connection closed while idle,
    an answer that says it closes races nothing for a client that does not pipeline (Go's,
    httpx's): that client sends nothing more on it.
    """

    def __init__(self, app: ASGIApp, every: int) -> None:
        self._app = app
        self._chance = 1 / every if every else 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED or random.random() >= self._chance:
            await self._app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            headers = message.get("headers", [])
            if message["type"] == "http.response.start" and all(name != b"connection" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self._app(scope, receive, closing)


def overloaded(detail: str) -> Problem:
    """The 503 of a request shed because the service is at capacity; `detail` says which limit."""
    return Problem(503, "overloaded", "The service is at capacity", detail)


# One response for every shed request: made once, so shedding stays cheap.
_OVERLOADED = problem_response(
    overloaded("no turn was free within the queue budget; retry after the given delay")
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
            worker = Worker(factory, host, port, settings.api_access_log, settings.api_keep_alive_s)
            run_workers(worker, settings.api_workers)
        except StartupFailed as failed:
            log.error("api cannot start", extra={"error": str(failed)})
            return STARTUP_FAILURE
    return 0
