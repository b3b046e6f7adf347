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


def freeze_survivors() -> None:
    """Set aside everything alive now, for good: later full collections walk only what came after.

    Called once a service has started (modules, schemas, routes, Kafka clients). A full collection
    over all of that took up to 125 ms in the ledger API, a stall every request in flight waited
    out. The processor's accounts come later and change: `FullCollections` keeps them.
    """
    gc.collect()
    gc.freeze()


class FullCollections:
    """Full collections at a time of the service's choosing, at most once per `every_s`.

    A full collection walks everything the service holds: in the processor, with 2,000 accounts
    cached, 150 to 270 ms, a stall every command in flight waited out, every few seconds under
    load (the interpreter runs one each time a quarter more objects have survived). Young
    collections still run as usual and free the short-lived cycles; what reaches the oldest
    generation waits for `collect_if_due`, so a cycle among long-lived objects is freed within
    `every_s` instead of at once, and the stall comes once per `every_s`.

    Written for the generational collector of CPython 3.11 (the one this project runs on), whose
    third threshold decides when a full collection runs.
    """

    # The thresholds are the process's: the first to enter sets them, the last to leave gives
    # them back (several processors can run in one process, each on a thread, as in the tests).
    _lock = threading.Lock()
    _inside = 0
    _given: tuple[int, ...] = ()

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._next = time.monotonic() + every_s

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
        if time.monotonic() < self._next:
            return
        started = time.perf_counter()
        freed = gc.collect()
        log.info(
            "full collection",
            extra={"ms": round((time.perf_counter() - started) * 1000, 1), "freed": freed},
        )
        self._next = time.monotonic() + self._every_s
