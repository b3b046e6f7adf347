"""`loyalty history`: a crafted member's events explained, with balances computed by hand.

Rules: the default program (1 point per CNY, floor per purchase; regular x1.0, silver x1.2 from
2,000 CNY) with double points on beauty items and points pending for 14 days, as version 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, datetime

import pytest

from schemas.events import Event
from schemas.rules import CategoryBonus, ProgramRules
from services.audit.history import Row, add_arguments, history_rows, render, summary
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of

RULES = ProgramRules(
    version=2, pending_days=14, category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),)
)
MEMBER = "h-1"


def crafted_log(member_id: str = MEMBER) -> list[Event]:
    return log_of(
        member_id,
        make.purchase("p-1", 200050, at(2025, 1, 15)),
        make.purchase(
            "p-2",
            30555,
            at(2025, 2, 10),
            items=[make.item("beauty", "100.00"), make.item("home", "205.55", sku="sku-2")],
        ),
        make.refund("r-1", "p-2", 10000, at(2025, 2, 20)),
        make.tick(at(2025, 3, 1)),
        make.redeem("rd-1", 2200, at(2025, 4, 1)),
        make.cancel("rd-1", at(2025, 4, 10)),
        make.adjust("a-1", 50, at(2025, 5, 1), reason="goodwill", actor="key-ops"),
        make.tick(at(2027, 1, 20)),
        rules=RULES,
    )


# (sequence, type, available change, pending change, available, pending, explanation)
# - p-1: floor(2000.50 x 1 x 1.0) = 2000, pending until 01-29; 2,000.50 CNY promotes to silver.
# - p-2 at silver: beauty 100.00 x 2 + home 205.55 = 405.55, x 1.2 = 486.66 -> 486, pending.
# - r-1 refunds 100.00 of 305.55: 486 x 10000 // 30555 = 159, taken from p-2's pending points.
# - the 03-01 tick matures 2000 and 486 - 159 = 327; rd-1 takes 2200, its cancel gives them back.
# - the 2027-01-20 tick: p-1's lot (expiring 2027-01-15) lapses; at the evaluation date
#   2026-01-15 the window (2025-01-15, 2026-01-15] holds only p-2, 305.55 - 100.00 = 205.55 CNY.
EXPECTED = [
    (1, "MemberEnrolled", 0, 0, 0, 0, "enrolled via purchase, tier regular"),
    (2, "PurchaseRecorded", 0, 0, 0, 0, "purchase p-1: 2000.50 CNY"),
    (
        3,
        "PointsEarned",
        0,
        2000,
        0,
        2000,
        "purchase p-1: 1 point/CNY, regular x1.0, floor; pending until 2025-01-29T10:00:00Z",
    ),
    (
        4,
        "TierChanged",
        0,
        0,
        0,
        2000,
        "tier regular -> silver, promotion: 2000.50 CNY qualifying spend in 1 purchase(s)",
    ),
    (5, "PurchaseRecorded", 0, 0, 0, 2000, "purchase p-2: 305.55 CNY"),
    (
        6,
        "PointsEarned",
        0,
        486,
        0,
        2486,
        "purchase p-2: 1 point/CNY, silver x1.2, beauty items x2, floor; pending until 2025-02-24T10:00:00Z",
    ),
    (7, "PurchaseRefunded", 0, 0, 0, 2486, "refund r-1 of purchase p-2: 100.00 CNY (100.00 refunded in all)"),
    (
        8,
        "PointsReversed",
        0,
        -159,
        0,
        2327,
        "refund r-1 of purchase p-2: points earned on what was returned reversed, none that expired",
    ),
    (9, "PointsMatured", 2000, -2000, 2000, 327, "pending period over"),
    (10, "PointsMatured", 327, -327, 2327, 0, "pending period over"),
    (11, "PointsRedeemed", -2200, 0, 127, 0, "redemption rd-1: oldest lots first"),
    (12, "RedemptionCancelled", 0, 0, 127, 0, "redemption rd-1 cancelled: points back to their lots"),
    (13, "PointsRestored", 2200, 0, 2327, 0, "redemption rd-1 cancelled: points back to their lots"),
    (14, "PointsAdjusted", 50, 0, 2377, 0, "adjustment a-1 by key-ops: goodwill"),
    (15, "PointsExpired", -2000, 0, 377, 0, "lots expired: purchase:p-1@3"),
    (
        16,
        "TierChanged",
        0,
        0,
        377,
        0,
        "tier silver -> regular, demotion: 205.55 CNY qualifying spend in 1 purchase(s)",
    ),
]


def as_tuples(rows: list[Row]) -> list[tuple[object, ...]]:
    return [
        (
            row.sequence,
            row.type,
            row.available_change,
            row.pending_change,
            row.available,
            row.pending,
            row.explanation,
        )
        for row in rows
    ]


def test_every_event_is_explained_with_running_balances() -> None:
    rows = history_rows(crafted_log())

    assert as_tuples(rows) == EXPECTED
    assert {row.rules_version for row in rows} == {2}
    assert rows[0].occurred_at == rows[0].recorded_at == at(2025, 1, 15)


def test_the_order_of_the_input_does_not_matter_the_sequence_does() -> None:
    assert as_tuples(history_rows(reversed(crafted_log()))) == EXPECTED


@pytest.mark.parametrize(
    ("as_of", "last_sequence", "available", "pending"),
    [
        (at(2025, 1, 14), None, 0, 0),
        (at(2025, 2, 28), 8, 0, 2327),
        (at(2025, 3, 1), 10, 2327, 0),  # inclusive: the tick at 10:00 counts
        (at(2025, 4, 5), 11, 127, 0),
        (at(2027, 1, 19), 14, 2377, 0),
    ],
)
def test_as_of_cuts_at_business_time(
    as_of: datetime, last_sequence: int | None, available: int, pending: int
) -> None:
    rows = history_rows(crafted_log(), as_of=as_of)

    assert [row.sequence for row in rows] == list(range(1, (last_sequence or 0) + 1))
    assert summary(MEMBER, rows, as_of).endswith(f"available {available}, pending {pending}\n")


def test_as_of_without_an_offset_is_utc() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    naive = parser.parse_args(["h-1", "--as-of", "2025-03-01T10:00:00"])
    shanghai = parser.parse_args(["h-1", "--as-of", "2025-03-01T18:00:00+08:00"])

    assert naive.as_of == shanghai.as_of == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert naive.format == "table"


def test_json_is_a_list_of_rows() -> None:
    documents = json.loads(render(history_rows(crafted_log()), "json"))

    assert len(documents) == 16
    assert documents[5] == {
        "sequence": 6,
        "occurred_at": "2025-02-10T10:00:00Z",
        "recorded_at": "2025-02-10T10:00:00Z",
        "type": "PointsEarned",
        "available_change": 0,
        "pending_change": 486,
        "available": 0,
        "pending": 2486,
        "rules_version": 2,
        "explanation": EXPECTED[5][6],
    }
    assert [document["available"] for document in documents][-1] == 377


def test_csv_has_a_header_and_a_line_per_event() -> None:
    lines = list(csv.reader(io.StringIO(render(history_rows(crafted_log()), "csv"))))

    assert lines[0] == [
        "sequence",
        "occurred_at",
        "recorded_at",
        "type",
        "available_change",
        "pending_change",
        "available",
        "pending",
        "rules_version",
        "explanation",
    ]
    assert len(lines) == 17
    assert lines[11] == [
        "11",
        "2025-04-01T10:00:00Z",
        "2025-04-01T10:00:00Z",
        "PointsRedeemed",
        "-2200",
        "0",
        "127",
        "0",
        "2",
        "redemption rd-1: oldest lots first",
    ]


def test_table_columns_line_up() -> None:
    lines = render(history_rows(crafted_log()), "table").splitlines()

    assert lines[0].split()[:4] == ["seq", "occurred_at", "recorded_at", "type"]
    explanations = {line.index(expected[6]) for line, expected in zip(lines[2:], EXPECTED, strict=True)}
    assert len(explanations) == 1  # every explanation starts in the same column
    assert "+2200" in lines[2 + 12]


def test_debt_added_by_a_refund_and_repaid_by_the_next_earning() -> None:
    log = log_of(
        "h-debt",
        make.purchase("p-1", 10000, at(2025, 1, 15)),
        make.redeem("rd-1", 100, at(2025, 1, 16)),
        make.refund("r-1", "p-1", 5000, at(2025, 1, 17)),
        make.purchase("p-2", 8000, at(2025, 1, 18)),
    )

    rows = history_rows(log)

    assert [(row.type, row.available_change, row.available, row.explanation) for row in rows[4:]] == [
        ("PurchaseRefunded", 0, 0, "refund r-1 of purchase p-1: 50.00 CNY (50.00 refunded in all)"),
        (
            "PointsReversed",
            -50,
            -50,
            "refund r-1 of purchase p-1: points earned on what was returned reversed, none that expired; "
            "debt added 50",
        ),
        ("PurchaseRecorded", 0, -50, "purchase p-2: 80.00 CNY"),
        ("PointsEarned", 80, 30, "purchase p-2: 1 point/CNY, regular x1.0, floor; debt repaid 50"),
    ]
