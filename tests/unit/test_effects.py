"""One place says what each event does to points and lots, and it names every event type."""

from __future__ import annotations

import json
from functools import reduce
from pathlib import Path
from typing import get_args

import pytest

from schemas.effects import NO_EFFECT, Points, effect
from schemas.events import AnyEventData, Event, EventData, PersonalDataErased, ProfileUpdated
from services.ledger.domain.account import Account, evolve

GOLDEN_LOG = Path(__file__).resolve().parent.parent / "fixtures" / "golden-log.jsonl"


def golden_events() -> list[Event]:
    return [Event.model_validate(json.loads(line)) for line in GOLDEN_LOG.read_text().splitlines()]


def test_every_event_type_is_one_the_effects_name() -> None:
    """A type added to schemas/events.py and not to AnyEventData would pass the cast unchecked."""
    assert set(get_args(AnyEventData)) == set(EventData.registry.values())


def test_every_event_type_of_the_golden_log_has_an_effect() -> None:
    found = {type(event.data) for event in golden_events()}
    assert found >= set(get_args(AnyEventData)) - {ProfileUpdated, PersonalDataErased}
    for event in golden_events():
        effect(event.data)


def test_a_type_no_match_names_fails_loudly() -> None:
    class PointsTeleported(EventData):
        points: int

    try:
        with pytest.raises(AssertionError):
            effect(PointsTeleported(points=5))
    finally:
        del EventData.registry["PointsTeleported"]


def test_events_that_move_no_points_have_no_effect() -> None:
    quiet = [event.data for event in golden_events() if event.type in ("PurchaseRecorded", "TierChanged")]
    assert quiet and all(effect(data) is NO_EFFECT for data in quiet)


def test_every_member_of_the_golden_log_adds_up_as_the_ledger_sees_it() -> None:
    """The effects' figures, summed, are the ledger's own account after the same events."""
    events = golden_events()
    for member_id in {event.member_id for event in events} - {"$program"}:
        own = sorted((e for e in events if e.member_id == member_id), key=lambda e: e.sequence)
        summed = reduce(Points.plus, (effect(event.data).points for event in own), Points())
        account = reduce(evolve, own, Account.new(member_id))
        assert summed.conserved
        assert (summed.available, summed.pending, summed.debt) == (
            account.available,
            account.pending_points,
            account.debt,
        )
        assert (
            summed.lifetime_earned,
            summed.redeemed,
            summed.expired,
            summed.reversed,
            summed.adjusted,
        ) == (
            account.lifetime_earned,
            account.redeemed,
            account.expired,
            account.reversed,
            account.adjusted,
        )
