"""Old event versions stay readable: upcast on read, while the stored form keeps its hash."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas.canonical import event_hash
from schemas.events import Event, EventData, PointsRedeemed
from schemas.upcasting import STEPS
from services.projector.fold import UNKNOWN_VERSION, decode
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of


def redeemed_as_written_in_v1() -> dict:  # type: ignore[type-arg]
    """A PointsRedeemed event exactly as a v1 ledger wrote it: no currency, hashed in that form."""
    log = log_of("u-1", make.purchase("o-1", 10000, at(2025, 1, 5)), make.redeem("rd-1", 40, at(2025, 2, 1)))
    document = next(event for event in log if event.type == "PointsRedeemed").document()
    del document["data"]["currency"]
    document["schema_version"] = 1
    document["hash"] = event_hash(document)
    return document


def test_a_v1_redemption_reads_as_the_current_version() -> None:
    stored = redeemed_as_written_in_v1()
    event = Event.from_bytes(json.dumps(stored).encode())
    assert event.schema_version == PointsRedeemed.SCHEMA_VERSION == 2
    assert isinstance(event.data, PointsRedeemed)
    assert (event.data.currency, event.data.points, event.data.value_minor) == ("CNY", 40, 400)
    assert event_hash(stored) == stored["hash"], "the hash covers the event as it was written"


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
