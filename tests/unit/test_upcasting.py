"""Old event versions stay readable: upcast on read, while the stored form keeps its hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.canonical import event_hash, reference_canonical_json
from schemas.events import Event, EventData, PointsRedeemed
from schemas.upcasting import STEPS
from services.projector.fold import UNKNOWN_VERSION, decode

GOLDEN_LOG = Path(__file__).resolve().parent.parent / "fixtures" / "golden-log.jsonl"
# The hash the v1 ledger sealed g-16's redemption with, as the frozen golden log holds it.
V1_REDEMPTION_HASH = "01a646da9f108590a142c5860385db76079485779ce9d7cc3412b45dd1bf705c"


def redeemed_as_written_in_v1() -> dict[str, Any]:
    """A PointsRedeemed event exactly as a v1 ledger wrote it (no currency), from the frozen golden log."""
    for line in GOLDEN_LOG.read_text().splitlines():
        document: dict[str, Any] = json.loads(line)
        if document["type"] == "PointsRedeemed" and document["data"]["redemption_id"] == "g-16-x0":
            return document
    raise AssertionError("g-16's redemption is missing from the golden log")


def test_a_v1_redemption_reads_as_the_current_version() -> None:
    stored = redeemed_as_written_in_v1()
    assert stored["schema_version"] == 1 and "currency" not in stored["data"]
    event = Event.from_bytes(json.dumps(stored).encode())
    assert event.schema_version == PointsRedeemed.SCHEMA_VERSION == 2
    assert isinstance(event.data, PointsRedeemed)
    assert (event.data.currency, event.data.points, event.data.value_minor) == ("CNY", 50, 500)


def test_the_hash_covers_the_event_as_it_was_written() -> None:
    stored = redeemed_as_written_in_v1()
    by_definition = hashlib.sha256(reference_canonical_json({k: v for k, v in stored.items() if k != "hash"}))
    assert event_hash(stored) == by_definition.hexdigest() == V1_REDEMPTION_HASH
    assert event_hash(dict(reversed(stored.items()))) == V1_REDEMPTION_HASH, "key order is not part of it"
    event = Event.from_bytes(json.dumps(stored).encode())
    assert event.hash == V1_REDEMPTION_HASH, "reading keeps the hash as written"
    assert event_hash(event.document()) != V1_REDEMPTION_HASH, "the upcast form is not what was hashed"


def test_a_version_newer_than_the_reader_is_refused_and_counted() -> None:
    stored = {**redeemed_as_written_in_v1(), "schema_version": 3}
    with pytest.raises(ValidationError, match="newer than this reader"):
        Event.from_bytes(json.dumps(stored).encode())
    assert decode(json.dumps(stored).encode()) == UNKNOWN_VERSION


def test_every_older_version_of_every_type_has_a_step_to_the_next() -> None:
    for name, data_type in EventData.registry.items():
        for version in range(1, data_type.SCHEMA_VERSION):
            assert (name, version) in STEPS, f"{name} v{version} cannot be read"
    assert all(name in EventData.registry for name, _ in STEPS)
