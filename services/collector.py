"""The cycle collector held off while a batch is handled.

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
