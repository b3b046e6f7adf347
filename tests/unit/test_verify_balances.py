"""`loyalty verify`'s balance fold: conservation after each command, figures at the projector's positions."""

from __future__ import annotations

from schemas.effects import Points
from schemas.events import Event
from services.audit.balances import BalanceCheck, Difference, differences
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import TWO_LOTS, at, log_of


def fed(events: list[Event], positions: dict[int, int] | None = None) -> BalanceCheck:
    check = BalanceCheck(positions)
    for offset, event in enumerate(events):
        check.feed(event.member_id.encode(), event.to_bytes(), 0, offset)
    return check


def test_a_cancelled_redemption_adds_up_once_its_points_are_restored() -> None:
    """RedemptionCancelled alone gives the points back to the figures, PointsRestored to the lots:
    the balance is checked after the command, never between its events."""
    log = log_of(
        "m-1", *TWO_LOTS, make.redeem("r-1", 150, at(2025, 3, 1)), make.cancel("r-1", at(2025, 3, 2))
    )
    report = fed(log).finish()
    assert report.unbalanced == []
    assert report.program == Points(available=200, lifetime_earned=200)


def test_the_figures_are_those_at_the_projector_position_and_duplicates_count_once() -> None:
    log = log_of("m-1", *TWO_LOTS, make.redeem("r-1", 50, at(2025, 3, 1)))
    redeemed_at = next(i for i, event in enumerate(log) if event.type == "PointsRedeemed")
    report = fed([*log, *log], positions={0: redeemed_at}).finish()
    assert report.at_positions == {"m-1": Points(available=200, lifetime_earned=200)}
    assert report.program == Points(available=150, lifetime_earned=200, redeemed=50)
    assert report.skipped == {"duplicate": len(log)}


def test_a_member_first_seen_past_the_positions_is_not_expected_in_the_read_models() -> None:
    report = fed(log_of("m-2", *TWO_LOTS), positions={0: 0}).finish()
    assert report.at_positions == {}
    assert differences(report.at_positions, {"m-2": Points()}) == [Difference("m-2", "row", "none", "row")]
