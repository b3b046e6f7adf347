"""Random histories projected: `as_of` balances and open lots are what the ledger itself held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.projector import store
from services.projector.api import create_app
from services.projector.checksums import READ_MODEL_TABLES
from services.projector.fold import decode, fold
from tests.conftest import Isolated
from tests.unit.ledger_fixtures import MEMBER, T0
from tests.unit.test_ledger_properties import RULE_SETS, STEPS, Member


@pytest.fixture
def read(isolated: Isolated) -> Iterator[tuple[TestClient, str]]:
    with TestClient(create_app(isolated.projector()), headers=isolated.headers) as client:
        yield client, isolated.env["LOYALTY_DATABASE_URL"]


def project(url: str, member: Member) -> None:
    """The member's log through the projector's own fold and writes, into emptied read models."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(
            sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, READ_MODEL_TABLES)))
        )
        records = [decode(event.to_bytes()) for event in member.log]
        store.write(conn, fold(records, {}), "as-of", {0: (len(records), len(records))}, time.monotonic())


def expected(account: Account) -> dict[str, int]:
    return {
        "available": account.available,
        "pending": account.pending_points,
        "lifetime_earned": account.lifetime_earned,
        "redeemed": account.redeemed,
        "expired": account.expired,
        "reversed": account.reversed,
        "adjusted": account.adjusted,
        "debt": account.debt,
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(rules=st.sampled_from(RULE_SETS), steps=STEPS)
def test_balance_as_of_any_instant_is_the_ledger_state_then(
    read: tuple[TestClient, str], rules: ProgramRules, steps: list[tuple[int, tuple[object, ...]]]
) -> None:
    client, url = read
    member = Member(rules)
    states: list[tuple[datetime, Account]] = [(T0 - timedelta(days=1), Account.new(MEMBER))]
    for n, (days, (kind, *args)) in enumerate(steps):
        member.now += timedelta(days=days)
        getattr(member, str(kind))(f"c-{n}", *args)
        states.append((member.now, member.account))
    project(url, member)
    if not member.account.enrolled:
        assert client.get(f"/v1/members/{MEMBER}/balance").status_code == 404
        return
    instants = sorted(
        {moment for moment, _ in states} | {moment + timedelta(hours=12) for moment, _ in states}
    )
    for instant in instants:
        account = [state for moment, state in states if moment <= instant][-1]
        response = client.get(f"/v1/members/{MEMBER}/balance", params={"as_of": instant.isoformat()})
        assert response.status_code == 200, response.text
        body = response.json()
        assert {key: body[key] for key in expected(account)} == expected(account), instant
    lots = client.get(f"/v1/members/{MEMBER}/lots").json()["lots"]
    held = {(lot.lot_id, lot.points, False) for lot in member.account.lots}
    held |= {(lot.lot_id, lot.points, True) for lot in member.account.pending}
    assert {(lot["lot_id"], lot["points"], lot["matures_at"] is not None) for lot in lots} == held
    assert client.get(f"/v1/members/{MEMBER}").json()["balance"] == expected(member.account)
