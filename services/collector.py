"""The cycle collector kept off the hot paths: held off while a batch is handled, and kept from
walking the long-lived objects of a service again and again.

A batch makes hundreds of thousands of short-lived objects, all freed by reference counting
when it is done. Left on, the cycle collector walked them (and every long-lived object) again
and again: a third of the projector's time. Between batches it runs on its usual thresholds, so
a cycle made during a batch is still collected soon after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


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

    Called once a service has started (modules, schemas, routes) and after the processor has
    restored its accounts, the bulk of what it holds. A full collection over all of that took up
    to 125 ms in the ledger API, a stall every request in flight waited out.
    """
    gc.collect()
    gc.freeze()
