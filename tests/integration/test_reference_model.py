"""Random hostile histories through the read side: the projector's fold into real Postgres and
`loyalty history` over a real events topic agree with the reference model (issue 14)."""

from __future__ import annotations

import itertools
import json
import time

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from schemas.events import Event
from services import cli
from services.migrations import migrate
from services.projector import store
from services.projector.fold import Folded, decode, fold
from services.projector.segments import RECENCY, RecencyBounds, recency_bounds
from tests.conftest import Isolated
from tests.integration.projection import publish_events
from tests.reference import model
from tests.reference.histories import LedgerAgainstReference, figures

HISTORIES = 6
BALANCE = ("available", "pending", "lifetime_earned", "redeemed", "expired", "reversed", "adjusted", "debt")


def project(url: str, log: list[Event]) -> None:
    """The log in three batches, each folded and written as the projector does (after reading what
    the previous batch left), with its checkpoint."""
    cuts = [0, len(log) // 3, 2 * len(log) // 3, len(log)]
    for start, end in itertools.pairwise(cuts):
        with psycopg.connect(url) as conn, conn.transaction():
            records = [decode(event.to_bytes()) for event in log[start:end]]
            applied = store.applied(conn, {event.member_id for event in log})
            folded = Folded(known=set(applied))
            folded.balances.update({member: balance for member, (_, balance) in applied.items()})
            last = {member: sequence for member, (sequence, _) in applied.items()}
            fold(records, last, folded)
            store.write(conn, folded, "reference", {0: (end, end - start)}, time.monotonic())


def projected_member(url: str, member_id: str, bounds: RecencyBounds) -> dict[str, object]:
    """What the read models hold for the member: balance, tier, lots, and the recency segments
    whose own SQL finds it within `bounds`."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT tier, next_evaluation_at, {', '.join(BALANCE)} FROM members WHERE member_id = %s",
            (member_id,),
        ).fetchone()
        assert row is not None
        lots = conn.execute(
            "SELECT lot_id, expires_at, points, matures_at IS NOT NULL FROM member_lots WHERE member_id = %s",
            (member_id,),
        ).fetchall()
        segments = [
            name
            for name, condition in RECENCY.items()
            if conn.execute(
                f"SELECT 1 FROM members m WHERE m.member_id = %(member)s AND {condition}",
                {**bounds._asdict(), "member": member_id},
            ).fetchone()
        ]
    return {
        "tier": row[0],
        "next_evaluation_at": row[1],
        "balance": dict(zip(BALANCE, row[2:], strict=True)),
        "lots": sorted(
            (lot_id.split("@")[0], expires, points, pending) for lot_id, expires, points, pending in lots
        ),
        "segments": segments,
    }


def test_the_read_side_agrees_with_the_reference(
    isolated: Isolated, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = isolated.env["LOYALTY_DATABASE_URL"]
    migrate(url)
    isolated.export(monkeypatch)
    members = itertools.count(1)

    class ReadSideAgainstReference(LedgerAgainstReference):
        """Each history its own member; at its end, projected, published and explained."""

        def __init__(self) -> None:
            self.member_id = f"ref-{next(members)}"
            super().__init__()

        def teardown(self) -> None:
            log, reference, rules = self.ledger.log, self.reference, self.program
            project(url, log)
            found = projected_member(url, self.member_id, recency_bounds(self.now, rules))
            assert found["balance"] == figures(reference)
            assert found["lots"] == reference.open_lots()
            assert found["tier"] == rules.tiers[reference.tier].name
            assert found["next_evaluation_at"] == reference.next_evaluation
            assert found["segments"] == [model.recency(reference.last_kept_purchase(), self.now, rules)]

            publish_events(isolated, log)
            capsys.readouterr()
            assert cli.main(["history", self.member_id, "--format", "json"]) == 0
            rows = json.loads(capsys.readouterr().out)
            assert [row["sequence"] for row in rows] == [event.sequence for event in log]
            assert (rows[-1]["available"], rows[-1]["pending"]) == (reference.available, reference.pending)

    run_state_machine_as_test(
        ReadSideAgainstReference,
        settings=settings(
            max_examples=HISTORIES,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
