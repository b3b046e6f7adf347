"""Segments, program metrics and balances in time, on crafted histories with answers worked out by hand."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg

from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.decide import decide
from tests.conftest import Isolated, Running
from tests.integration.projection import projected
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of

PROGRAM = "$program"


def test_segments_by_recency_tier_value_and_category(isolated: Isolated, running: Running) -> None:
    now = datetime.now(UTC)

    def ago(days: int) -> datetime:
        return now - timedelta(days=days)

    log = [
        *log_of("s-active", make.purchase("a1", 10000, ago(5), [make.item("shoes", "100.00")])),
        *log_of("s-silent", make.purchase("b1", 10000, ago(60))),
        *log_of("s-churned", make.purchase("c1", 10000, ago(200))),
        *log_of(
            "s-gold",
            make.purchase(
                "d1", 900000, ago(10), [make.item("beauty", "6000.00"), make.item("shoes", "3000.00")]
            ),
        ),
        *log_of("s-plat", make.purchase("e1", 5000, ago(100)), make.set_tier("platinum", ago(99))),
        *log_of("s-new", make.enrol(ago(5))),  # enrolled, never bought
        *log_of(
            "s-returned",  # the recent purchase went back in full: recency counts from the one before
            make.purchase("f1", 10000, ago(60)),
            make.purchase("f2", 10000, ago(3)),
            make.refund("rf-f2", "f2", 10000, ago(2)),
        ),
        *log_of("s-undone", make.purchase("g1", 10000, ago(4)), make.refund("rf-g1", "g1", 10000, ago(3))),
    ]
    with projected(isolated, running, log) as read:

        def segment(name: str) -> list[str]:
            response = read.get(f"/v1/segments/{name}/members")
            assert response.status_code == 200, response.text
            return [member["member_id"] for member in response.json()["members"]]

        assert segment("active") == ["s-active", "s-gold"]
        assert segment("silent") == ["s-plat", "s-returned", "s-silent"]
        assert segment("churned") == ["s-churned"]
        assert segment("new") == ["s-new", "s-undone"]
        assert segment("regular") == ["s-active", "s-churned", "s-new", "s-returned", "s-silent", "s-undone"]
        assert segment("gold") == ["s-gold"]
        assert segment("platinum") == ["s-plat"]
        # 8 members: the top 10% by spend is one member, and the top tier is core too.
        assert segment("core") == ["s-gold", "s-plat"]
        assert segment("category:beauty") == ["s-gold"]
        assert segment("category:shoes") == ["s-active"]

        first = read.get("/v1/segments/regular/members", params={"limit": 2}).json()
        assert [m["member_id"] for m in first["members"]] == ["s-active", "s-churned"]
        rest = read.get(
            "/v1/segments/regular/members", params={"limit": 4, "cursor": first["next_cursor"]}
        ).json()
        assert [m["member_id"] for m in rest["members"]] == ["s-new", "s-returned", "s-silent", "s-undone"]
        assert rest["next_cursor"] is None

        assert read.get("/v1/members/s-silent").json()["segment"] == "silent"
        assert read.get("/v1/members/s-churned").json()["segment"] == "churned"
        assert read.get("/v1/members/s-new").json()["segment"] == "new"
        assert read.get("/v1/members/s-undone").json()["segment"] == "new"
        assert read.get("/v1/members/s-returned").json()["segment"] == "silent"
        today = now.astimezone(ProgramRules().zone).date().isoformat()
        # Active members in the last 30 days: the purchases refunded in full do not count.
        recent = (now.astimezone(ProgramRules().zone).date() - timedelta(days=29)).isoformat()
        days = read.get("/v1/metrics", params={"period": "day", "from": recent, "to": today}).json()[
            "periods"
        ]
        assert sum(day["active_members"] for day in days) == 2  # s-active and s-gold


def test_program_metrics_per_month_and_day(isolated: Isolated, running: Running) -> None:
    rules = ProgramRules(expiry_months=1)
    log = [
        *log_of(
            "m-1",
            make.purchase("o-1", 100000, at(2025, 1, 5)),  # 1000 points, expire 5 Feb
            make.tick(at(2025, 2, 6)),  # 1000 expire
            make.purchase("o-4", 20000, at(2025, 2, 20)),  # 200 points
            rules=rules,
        ),
        *log_of(
            "m-2",
            make.purchase("o-2", 50000, at(2025, 1, 10)),  # 500 points, expire 10 Feb
            make.redeem("rd-1", 200, at(2025, 1, 20)),
            make.tick(at(2025, 2, 11)),  # the other 300 expire
            rules=rules,
        ),
        *log_of("m-3", make.purchase("o-3", 250000, at(2025, 2, 3)), rules=rules),  # 2500 points, silver
    ]
    with projected(isolated, running, log) as read:
        response = read.get(
            "/v1/metrics", params={"period": "month", "from": "2025-01-01", "to": "2025-03-31"}
        )
        assert response.status_code == 200, response.text
        jan, feb, mar = response.json()["periods"]

        assert (jan["start"], jan["end"]) == ("2025-01-01", "2025-02-01")
        assert (jan["members_at_start"], jan["members_at_end"], jan["growth_rate"]) == (0, 2, None)
        assert (jan["active_members"], jan["activity_rate"]) == (2, 1.0)
        assert (jan["spend_minor"], jan["spend_per_active_member_minor"]) == (150000, 75000)
        assert (jan["points_earned"], jan["points_redeemed"], jan["points_expired"]) == (1500, 200, 0)
        assert (jan["liability_points"], jan["liability_minor"]) == (1300, 13000)
        assert jan["tier_distribution"] == {"regular": 2}

        assert (feb["members_at_start"], feb["members_at_end"], feb["growth_rate"]) == (2, 3, 0.5)
        assert (feb["active_members"], feb["activity_rate"]) == (2, round(2 / 3, 6))
        assert (feb["spend_minor"], feb["spend_per_active_member_minor"]) == (270000, 135000)
        assert (feb["points_earned"], feb["points_expired"]) == (2700, 1300)
        assert feb["breakage_rate"] == round(1300 / 2700, 6)
        assert feb["lifetime_breakage_rate"] == round(1300 / 4200, 6)
        assert (feb["liability_points"], feb["liability_minor"]) == (2700, 27000)
        assert (feb["promotions"], feb["demotions"]) == (1, 0)
        assert feb["tier_distribution"] == {"regular": 2, "silver": 1}

        assert (mar["growth_rate"], mar["active_members"], mar["activity_rate"]) == (0.0, 0, 0.0)
        assert (mar["spend_per_active_member_minor"], mar["breakage_rate"]) == (None, None)
        assert mar["liability_points"] == 2700

        day = read.get(
            "/v1/metrics", params={"period": "day", "from": "2025-02-03", "to": "2025-02-03"}
        ).json()
        (only,) = day["periods"]
        assert (only["new_members"], only["promotions"], only["growth_rate"]) == (1, 1, 0.5)


def test_balance_as_of_business_time_and_as_known_at_recording_time(
    isolated: Isolated, running: Running
) -> None:
    account, log = Account.new("k-1"), []
    for command, recorded_at in [
        (make.purchase("p-1", 10000, at(2026, 1, 5)), at(2026, 1, 5)),
        (make.purchase("p-2", 5000, at(2026, 1, 10)), at(2026, 1, 20)),  # reported ten days late
        (make.redeem("rd-1", 30, at(2026, 1, 25)), at(2026, 1, 25)),
    ]:
        command = replace(command, member_id="k-1")
        account, events = seal(account, command, decide(account, command, make.RULES), 1, recorded_at)
        log.extend(events)
    # Every event delivered twice is applied once.
    with projected(isolated, running, log + log) as read:

        def available(**params: str) -> int:
            response = read.get("/v1/members/k-1/balance", params=params)
            assert response.status_code == 200, response.text
            return int(response.json()["available"])

        assert available() == 120
        assert read.get("/v1/members/k-1/balance").json()["lifetime_earned"] == 150
        assert available(as_of="2026-01-12T00:00:00Z") == 150
        assert available(as_of="2026-01-12T00:00:00Z", known_at="2026-01-15T00:00:00Z") == 100
        assert available(as_of="2026-01-12T00:00:00Z", known_at="2026-01-21T00:00:00Z") == 150
        assert available(known_at="2026-01-15T00:00:00Z") == 100
        assert available(as_of="2026-01-03T00:00:00Z") == 0


def test_a_purchase_id_used_again_after_the_ledger_forgot_it(isolated: Isolated, running: Running) -> None:
    log = log_of(
        "r-1",
        make.purchase("o-1", 10000, at(2024, 1, 10)),
        make.purchase("o-2", 10000, at(2025, 5, 1)),  # the ledger forgets o-1 here
        make.purchase("o-1", 20000, at(2025, 6, 1), command_id="purchase:o-1:again"),
        make.refund("rf-1", "o-1", 5000, at(2025, 6, 2)),
    )
    assert [event.type for event in log].count("PurchaseRecorded") == 3
    with projected(isolated, running, log) as read:
        history = read.get("/v1/members/r-1/history").json()["events"]
        assert len(history) == len(log)
        with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
            rows = conn.execute(
                "SELECT purchase_id, amount_minor, refunded_minor FROM member_purchases ORDER BY sequence"
            ).fetchall()
            lots = conn.execute(
                "SELECT points, expires_at FROM member_lots WHERE member_id = 'r-1' ORDER BY expires_at"
            ).fetchall()
        assert rows == [("o-1", 10000, 0), ("o-2", 10000, 0), ("o-1", 20000, 5000)]
        # Each recording of o-1 is its own lot, with its own expiry (issue 14, finding 1).
        assert lots == [(100, at(2026, 1, 10)), (100, at(2027, 5, 1)), (150, at(2027, 6, 1))]


def test_the_balance_reconciles_with_adjustments_and_debt(isolated: Isolated, running: Running) -> None:
    log = [
        *log_of("b-adj", make.enrol(at(2025, 3, 1)), make.adjust("a-1", 500, at(2025, 3, 2))),
        *log_of(
            "b-debt",
            make.purchase("o-1", 100000, at(2025, 3, 1)),  # 1000 points
            make.redeem("rd-1", 1000, at(2025, 3, 2)),
            make.refund("rf-1", "o-1", 100000, at(2025, 3, 3)),  # 1000 reversed, all of them spent
            make.purchase("o-2", 30000, at(2025, 3, 4)),  # 300 points repay 300 of the debt
        ),
    ]
    with projected(isolated, running, log) as read:
        assert read.get("/v1/members/b-adj").json()["balance"] == {
            "available": 500,
            "pending": 0,
            "lifetime_earned": 0,
            "adjusted": 500,
            "redeemed": 0,
            "expired": 0,
            "reversed": 0,
            "debt": 0,
        }
        balance = read.get("/v1/members/b-debt/balance").json()
        assert {
            key: balance[key] for key in ("available", "lifetime_earned", "redeemed", "reversed", "debt")
        } == {
            "available": -700,
            "lifetime_earned": 1300,
            "redeemed": 1000,
            "reversed": 1000,
            "debt": 700,
        }
        before = read.get("/v1/members/b-debt/balance", params={"as_of": "2025-03-03T12:00:00Z"}).json()
        assert (before["available"], before["debt"]) == (-1000, 1000)
        for shown in (balance, before, read.get("/v1/members/b-debt").json()["balance"]):
            earned = shown["lifetime_earned"] + shown["adjusted"]
            spent = shown["redeemed"] + shown["expired"] + shown["reversed"]
            assert earned - spent == shown["available"] + shown["pending"]

        (march,) = read.get("/v1/metrics", params={"from": "2025-03-01", "to": "2025-03-31"}).json()[
            "periods"
        ]
        assert (march["points_earned"], march["points_adjusted"], march["points_reversed"]) == (
            1300,
            500,
            1000,
        )


def test_days_and_months_are_those_of_the_program_time_zone(isolated: Isolated, running: Running) -> None:
    beijing_march_1st = datetime(2025, 2, 28, 19, 0, tzinfo=UTC)  # 03:00 on 1 March in Beijing
    log = [
        *log_of("z-1", make.purchase("o-1", 10000, beijing_march_1st)),
        *log_of("z-2", make.purchase("o-2", 20000, at(2025, 2, 28, hour=15))),  # 23:00 on 28 February
    ]
    with projected(isolated, running, log) as read:
        feb, mar = read.get("/v1/metrics", params={"from": "2025-02-01", "to": "2025-03-31"}).json()[
            "periods"
        ]
        assert (feb["new_members"], feb["purchases"], feb["spend_minor"], feb["active_members"]) == (
            1,
            1,
            20000,
            1,
        )
        assert (mar["new_members"], mar["purchases"], mar["spend_minor"], mar["active_members"]) == (
            1,
            1,
            10000,
            1,
        )
        assert (feb["tier_distribution"], mar["tier_distribution"]) == ({"regular": 1}, {"regular": 2})
        (first,) = read.get(
            "/v1/metrics", params={"period": "day", "from": "2025-03-01", "to": "2025-03-01"}
        ).json()["periods"]
        assert (first["purchases"], first["points_earned"], first["members_at_start"]) == (1, 100, 1)


def test_liability_owes_positive_balances_at_the_value_of_the_time(
    isolated: Isolated, running: Running
) -> None:
    program, rules_log = Account.new(PROGRAM), []
    for rules, when in [
        (ProgramRules(), at(2025, 1, 1)),
        (ProgramRules(version=2, redemption_value_minor_per_point=20), at(2025, 2, 15)),
    ]:
        command = replace(make.record_rules(when, f"rules:{rules.version}"), member_id=PROGRAM)
        program, _, events = make.apply(program, command, rules)
        rules_log.extend(events)
    log = [
        *rules_log,
        *log_of("l-a", make.purchase("o-1", 100000, at(2025, 1, 5))),  # 1,000 points
        *log_of(
            "l-b",
            make.purchase("o-2", 30000, at(2025, 1, 5)),
            make.redeem("rd-1", 300, at(2025, 1, 6)),
            make.refund("rf-1", "o-2", 30000, at(2025, 1, 7)),  # -300
        ),
    ]
    with projected(isolated, running, log) as read:
        jan, feb = read.get("/v1/metrics", params={"from": "2025-01-01", "to": "2025-02-28"}).json()[
            "periods"
        ]
        assert (jan["liability_points"], jan["owed_by_members_points"], jan["liability_minor"]) == (
            1000,
            300,
            10000,
        )
        # February ends under rules 2: a point is worth 0.20 CNY.
        assert (feb["liability_points"], feb["liability_minor"]) == (1000, 20000)


def test_the_favourite_category_is_net_of_refunds(isolated: Isolated, running: Running) -> None:
    log = log_of(
        "f-1",
        make.purchase(
            "o-1", 90000, at(2025, 3, 1), [make.item("beauty", "600.00"), make.item("shoes", "300.00")]
        ),
        make.purchase("o-2", 40000, at(2025, 3, 2), [make.item("shoes", "400.00")]),  # shoes 700 gross
        make.refund("rf-1", "o-2", 40000, at(2025, 3, 3)),  # all of it back: shoes 300
        make.refund("rf-2", "o-1", 30000, at(2025, 3, 4)),  # a third back: beauty 400, shoes 200
    )
    with projected(isolated, running, log) as read:
        assert read.get("/v1/members/f-1").json()["favourite_category"] == "beauty"
        beauty = read.get("/v1/segments/category:beauty/members").json()["members"]
        assert [member["member_id"] for member in beauty] == ["f-1"]
        assert read.get("/v1/segments/category:shoes/members").json()["members"] == []
        with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
            spend = conn.execute(
                "SELECT category, spend_minor FROM member_categories ORDER BY category"
            ).fetchall()
        assert spend == [("beauty", 40000), ("shoes", 20000)]
