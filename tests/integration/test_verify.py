"""`loyalty verify` on real Kafka: an intact log passes; altered, dropped and reordered copies do not;
nor does a log whose figures do not add up, nor read models that differ from the log."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from schemas.events import Event, PointsRedeemed
from services import cli
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import read_all
from tests.integration.projection import projected, publish_events
from tests.unit.ledger_fixtures import (
    LOT_1,
    TWO_LOTS,
    adjust,
    apply,
    at,
    log_of,
    purchase,
    record_rules,
    redeem,
    refund,
    set_tier,
)

Record = tuple[int, bytes, bytes]  # partition, key, value: a copy keeps each record's partition


def ledger_log() -> list[Event]:
    return [
        *log_of("$program", record_rules()),
        *log_of("m-1", *TWO_LOTS, redeem("r-1", 50), refund("rf-1", "o-1", 5000)),
        *log_of("m-2", purchase("o-7", 30000), adjust("a-1", 20), set_tier("gold", at(2025, 3, 1))),
        *log_of("m-3", purchase("o-8", 9900), purchase("o-9", 12000, at(2025, 2, 1)), redeem("r-2", 100)),
    ]


def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["verify", *argv])
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture
def published(isolated: Isolated, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    isolated.export(monkeypatch)
    events = ledger_log()
    publish_events(isolated, events)
    return events


def test_an_intact_log_verifies(published: list[Event], capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = verify(capsys)
    assert code == 0
    assert lines[0].startswith(f"{len(published)} events in 4 streams (members and $program)")
    assert lines[-1] == "chain intact"


RULE = "earned + adjusted - redeemed - expired - reversed = available + pending"
BALANCED = f"balances: {RULE} for every member"


def test_a_healthy_pipeline_adds_up_and_its_read_models_agree_with_the_log(
    isolated: Isolated, running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.export(monkeypatch)
    with projected(isolated, running, ledger_log()):
        code, lines = verify(capsys)
    assert code == 0, lines
    # Earned 200 (m-1) + 300 (m-2) + 99 + 120 (m-3); m-2's goodwill 20; redeemed 50 and 100;
    # reversed 50 (half of o-1).
    assert lines[1] == f"{BALANCED} and the program: 719 + 20 - 150 - 0 - 50 = 539, 539 + 0 = 539"
    assert lines[2] == "read models: 4 streams agree with the log up to the projector's positions"
    assert lines[-1] == "chain intact"


def test_a_read_model_that_differs_from_the_log_is_printed_figure_by_figure(
    isolated: Isolated, running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.export(monkeypatch)
    with projected(isolated, running, ledger_log()):
        with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
            conn.execute("UPDATE members SET available = available + 1000 WHERE member_id = 'm-1'")
            conn.execute("DELETE FROM members WHERE member_id = 'm-3'")
        code, lines = verify(capsys)
    assert code == 1
    assert lines[1].startswith(BALANCED), "the log itself adds up"
    assert lines[2:5] == [
        "read models: 2 difference(s) from the log up to the projector's positions:",
        "  member m-1 available: log 100, read model 1100",
        "  member m-3 row: log events, read model none",
    ]
    assert lines[-1] == "chain intact"


def test_a_log_whose_figures_do_not_add_up_fails_though_its_chain_holds(
    published: list[Event], isolated: Isolated, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redemption that says 150 points but takes 50 from the lots, sealed into a valid chain."""
    account = Account.new("m-9")
    for command in TWO_LOTS:
        account, _, _ = apply(account, command)
    short = PointsRedeemed(
        redemption_id="r-9",
        points=150,
        value_minor=1500,
        currency="CNY",
        from_lots=(LOT_1.model_copy(update={"points": 50}),),
    )
    when = at(2025, 3, 1)
    account, crafted = seal(account, redeem("r-9", 150, when), [short], 1, when)
    events = log_of("m-9", *TWO_LOTS)
    publish_events(isolated, [*events, *crafted])

    code, lines = verify(capsys)
    assert code == 1
    assert lines[1:3] == [
        f"balances: 1 member(s) break {RULE}; where each first does:",
        f"  member m-9 sequence {crafted[0].sequence}: 200 + 0 - 150 - 0 - 0 = 50, 150 + 0 = 150",
    ]
    assert lines[-1] == "chain intact"


def index_of(records: list[Record], member_id: str, sequence: int) -> int:
    return next(
        i
        for i, (_, key, value) in enumerate(records)
        if key == member_id.encode() and json.loads(value)["sequence"] == sequence
    )


def alter_points(records: list[Record]) -> None:
    i = index_of(records, "m-1", 3)  # PointsEarned
    document = json.loads(records[i][2])
    document["data"]["points"] += 900
    records[i] = (records[i][0], records[i][1], json.dumps(document).encode())


def drop(records: list[Record]) -> None:
    del records[index_of(records, "m-2", 3)]


def swap(records: list[Record]) -> None:
    i, j = index_of(records, "m-3", 4), index_of(records, "m-3", 5)
    records[i], records[j] = records[j], records[i]


@pytest.mark.parametrize(
    ("suffix", "tamper", "first_break"),
    [
        ("altered", alter_points, "member m-1 sequence 3: hash does not match the event as stored"),
        ("dropped", drop, "member m-2 sequence 3: sequence 3 missing (sequence 4 follows 2)"),
        ("reordered", swap, "member m-3 sequence 4: out of order: sequence 4 after 5"),
    ],
)
def test_a_tampered_copy_is_reported_by_member_and_sequence(
    isolated: Isolated,
    published: list[Event],
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    tamper: Callable[[list[Record]], None],
    first_break: str,
) -> None:
    """The issue's test: copy the log into a topic of its own, tamper with the copy, verify it."""
    original = isolated.env["LOYALTY_TOPIC_EVENTS"]
    copy = f"{original}.{suffix}"
    records = [
        (r.partition, r.key, r.value) for r in read_all(isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], original)
    ]
    assert len(records) == len(published)
    tamper(records)
    copy_into(isolated, copy, records)

    code, lines = verify(capsys, "--topic", copy)
    assert code == 1
    assert lines[1] == "1 break in 1 stream; the first of each:"
    assert lines[-1].startswith(f"first break: {first_break}")


def test_a_missing_topic_is_a_usage_error_and_is_not_created(
    isolated: Isolated, published: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"{isolated.env['LOYALTY_TOPIC_EVENTS']}.missing"
    assert verify(capsys, "--topic", missing) == (2, [])
    admin = KafkaAdminClient(bootstrap_servers=isolated.env["LOYALTY_KAFKA_BOOTSTRAP"])
    try:
        assert missing not in admin.list_topics()
    finally:
        admin.close()


def copy_into(isolated: Isolated, topic: str, records: list[Record]) -> None:
    settings = isolated.ledger(topic_events=topic)
    ensure_topics(settings)  # creates the copy with the events topic's partitions and configs
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        for partition, key, value in records:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close()
