"""Older versions of event data, turned into the current version on read: the one place that knows.

Events are immutable: the log keeps every event in the version it was written in, and its hash
covers that form. Readers see only current versions. A change to an event type's data bumps its
`SCHEMA_VERSION` and adds here a step from the previous version; steps chain, so any old event
reaches the current version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Data = dict[str, Any]


class UnknownVersion(ValueError):
    """An event written by a newer ledger than this reader: it must not be guessed at."""


def _redeemed_v1_to_v2(data: Data) -> Data:
    # v1 gave the redemption value without its currency; the program has only ever run in CNY.
    return {**data, "currency": "CNY"}


# (event type, version) -> the step from that version to the next one.
STEPS: dict[tuple[str, int], Callable[[Data], Data]] = {
    ("PointsRedeemed", 1): _redeemed_v1_to_v2,
}


def upcast(event_type: str, version: int, data: Data, current: int) -> Data:
    """`data` of an event written at `version`, as the `current` version of its type."""
    if version > current:
        raise UnknownVersion(f"{event_type} version {version} is newer than this reader's {current}")
    while version < current:
        data = STEPS[(event_type, version)](data)
        version += 1
    return data
