"""The processor's instance name when none is set: the host name and the first free slot on it.

The name is the transactional id, so it must be stable across restarts (a restart fences and
aborts what its predecessor left open, and finds its local state again) and unique among the
processors running (two with one id fence each other in a loop). A slot is held by a lock on a
file in the state directory for as long as the process lives; the lock goes with the process,
however it ends, and the next processor started on the host takes the lowest free slot.
"""

from __future__ import annotations

import fcntl
import itertools
import socket
from typing import IO

from services.ledger.settings import LedgerSettings


def claim_instance(settings: LedgerSettings) -> tuple[LedgerSettings, IO[str] | None]:
    """The settings with an instance name, and the lock that holds it (keep it open)."""
    if settings.processor_instance:
        return settings, None
    host = socket.gethostname()
    slots = settings.state_dir / "processor" / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for slot in itertools.count():
        lock = (slots / f"{host}-{slot}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return settings.model_copy(update={"processor_instance": f"{host}-{slot}"}), lock
    raise AssertionError("unreachable")
