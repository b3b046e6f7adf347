"""The cycle collector kept off the hot paths: held off while a batch is handled, and kept from
walking the long-lived objects of a service again and again.

A batch makes hundreds of thousands of short-lived objects, all freed by reference counting
when it is done. Left on, the cycle collector walked them (and every long-lived object) again
and again: a third of the projector's time. Between batches it runs on its usual thresholds, so
a cycle made during a batch is still collected soon after.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Young collections count towards a full one; past this many, never: `FullCollections` runs them.
_NEVER = 2**30

log = logging.getLogger(__name__)


@contextmanager
def paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_survivors(generation: int = 2) -> None:
    """Set aside what survives a collection of `generation` (2: everything alive now), so that
    later full collections walk only what comes after, until `FullCollections` walks everything.

    Called once a service has started (modules, schemas, routes, Kafka clients): a full collection
    over all of that took up to 125 ms in the ledger API, a stall every request in flight waited
    out. The processor also calls it with generation 1 for the accounts it has just read ahead and
    will keep: a full collection first would itself be the stall avoided (700 ms for 2,000
    accounts).
    """
    gc.collect(generation)
    gc.freeze()


class FullCollections:
    """Full collections at a time of the service's choosing: at most once per `every_s`, over the
    objects that came since the last one, and over every object once per `all_every_s`.

    A full collection walks everything the service holds. Left to the interpreter, it ran each
    time a quarter more objects had survived: in the processor, with 2,000 accounts cached, a stall
    of 150 to 270 ms every few seconds under load. Run once per `every_s` over everything, it still
    grew with the cache: 610 to 790 ms for 2,000 accounts of 125 purchases, and the commands in
    flight waited it out (a p99 of 0.8 to 1.1 s at 200 commands/s, against 0.2 s without one). So
    what survives each is frozen (`gc.freeze`), and the next walks only what came since. Frozen
    objects are still freed by reference counting when they go; only a cycle among them that
    becomes garbage later waits for the next collection over everything (`gc.unfreeze` first),
    once per `all_every_s`: in the processor, cycles came to 100 to 2,000 objects a minute.

    Young collections still run as usual and free the short-lived cycles. Written for the
    generational collector of CPython 3.11 (the one this project runs on), whose third threshold
    decides when a full collection runs.
    """

    # The thresholds are the process's: the first to enter sets them, the last to leave gives
    # them back (several processors can run in one process, each on a thread, as in the tests).
    _lock = threading.Lock()
    _inside = 0
    _given: tuple[int, ...] = ()

    def __init__(self, every_s: float, all_every_s: float) -> None:
        self._every_s, self._all_every_s = every_s, all_every_s
        now = time.monotonic()
        self._next, self._next_all = now + every_s, now + all_every_s

    def __enter__(self) -> FullCollections:
        with FullCollections._lock:
            if FullCollections._inside == 0:
                FullCollections._given = gc.get_threshold()
                young, middle, _ = FullCollections._given
                gc.set_threshold(young, middle, _NEVER)
            FullCollections._inside += 1
        return self

    def __exit__(self, *_: object) -> None:
        with FullCollections._lock:
            FullCollections._inside -= 1
            if FullCollections._inside == 0:
                gc.set_threshold(*FullCollections._given)

    def collect_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        everything = now >= self._next_all
        if everything:
            gc.unfreeze()
            self._next_all = now + self._all_every_s
        started = time.perf_counter()
        freed = gc.collect()
        gc.freeze()
        log.info(
            "full collection",
            extra={
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "freed": freed,
                "everything": everything,
            },
        )
        self._next = time.monotonic() + self._every_s
