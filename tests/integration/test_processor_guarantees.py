"""The processor under crashes, rebalances, duplicates and bad input, on real Kafka."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from schemas.canonical import GENESIS_HASH, event_hash
from schemas.rules import ProgramRules
from services.ledger.processor import Processor
from services.ledger.scheduler import Scheduler
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import await_events, events_of, publish, purchase, read_all, send_purchase
from tests.integration.serving import spawn
from tests.waiting import eventually


def all_events(isolated: Isolated) -> list[dict[str, Any]]:
    settings = isolated.ledger()
    return [json.loads(r.value) for r in read_all(settings.kafka_bootstrap, settings.topic_events)]


def publish_purchases(isolated: Isolated, count: int, members: int, prefix: str = "o") -> None:
    settings = isolated.ledger()
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20)
    for index in range(count):
        member = f"m-{index % members}"
        value = json.dumps(purchase(member, f"{prefix}-{index}", f"{1 + index % 50}.00")).encode()
        producer.send(settings.topic_purchases, key=member.encode(), value=value)
    producer.flush()
    producer.close()


def assert_chains_intact(events: list[dict[str, Any]]) -> None:
    by_member: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_member.setdefault(event["member_id"], []).append(event)
    for member, stream in by_member.items():
        stream.sort(key=lambda e: e["sequence"])
        assert [e["sequence"] for e in stream] == list(range(1, len(stream) + 1)), member
        previous = GENESIS_HASH
        for event in stream:
            assert event["prev_hash"] == previous and event["hash"] == event_hash(event), member
            previous = event["hash"]


def test_a_purchase_published_twice_is_applied_once(isolated: Isolated, running: Running) -> None:
    settings = isolated.ledger()
    running.start(Processor(settings, ProgramRules()).run)
    value = json.dumps(purchase("m-1", "o-1", "12.00")).encode()
    for _ in range(2):
        publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-1", value)
    send_purchase(settings, "m-1", "o-2", "1")
    events = await_events(settings, "m-1", 5)
    assert Counter(e["type"] for e in events) == {
        "MemberEnrolled": 1,
        "PurchaseRecorded": 2,
        "PointsEarned": 2,
    }


def test_purchases_that_arrive_within_the_transaction_interval_share_the_next_transaction(
    isolated: Isolated, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A purchase after a pause is decided at once; those that arrive within the interval after
    it wait and share one transaction, instead of each paying for its own."""
    caplog.set_level(logging.DEBUG, logger="services.ledger.processor")
    settings = isolated.ledger(processor_transaction_interval_ms=1500)
    running.start(Processor(settings, ProgramRules()).run)
    send_purchase(settings, "m-0", "o-0", "10.00")
    await_events(settings, "m-0", 3)
    time.sleep(1.6)  # a pause longer than the interval
    caplog.clear()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    sent = []
    for index in range(1, 6):  # one every 100 ms: all within the interval after the first
        value = json.dumps(purchase(f"m-{index}", f"o-{index}", "10.00")).encode()
        sent.append(producer.send(settings.topic_purchases, key=f"m-{index}".encode(), value=value).get(10))
        time.sleep(0.1)
    producer.close()
    for index in range(1, 6):
        await_events(settings, f"m-{index}", 3)
    batches = [vars(r) for r in caplog.records if r.getMessage() == "batch committed" and vars(r)["records"]]
    # Two transactions: the first began at once (with the first purchase, or more if it stalled),
    # the second an interval after it. (Each line gives its phases' times.)
    assert len(batches) == 2
    assert sum(batch["records"] for batch in batches) == 5
    phases = ("decide_ms", "offsets_ms", "commit_ms", "store_ms")
    began = [batch["created"] - sum(batch[phase] for phase in phases) / 1000 for batch in batches]
    assert began[0] - sent[0].timestamp / 1000 < 1.0
    assert began[1] - began[0] >= 1.5 - 0.01


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (json.dumps({"type": "purchase", "member_id": "m-2"}).encode(), "purchase_id: Field required"),
        (json.dumps(purchase("m-2", "o-x", "99999999999999.00")).encode(), "amount"),
        (json.dumps({**purchase("m-2", "o-x", "10.00"), "currency": "USD"}).encode(), "currency"),
        (json.dumps({**purchase("m-2", "o-x", "10.00"), "type": "gift"}).encode(), "gift"),
    ],
    ids=["not-json", "missing-fields", "absurd-amount", "wrong-currency", "unknown-type"],
)
def test_bad_input_is_dead_lettered_with_its_reason_and_the_next_record_applied(
    isolated: Isolated, running: Running, value: bytes, reason: str
) -> None:
    settings = isolated.ledger()
    running.start(Processor(settings, ProgramRules()).run)
    publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-2", value)
    send_purchase(settings, "m-2", "ok", "3")
    eventually(
        lambda: len(events_of(settings.kafka_bootstrap, settings.topic_events, "m-2")) == 3, what="valid one"
    )
    [dead] = read_all(settings.kafka_bootstrap, settings.topic_dlq)
    headers = dict(dead.headers)
    assert dead.value == value
    assert reason in headers["error.message"].decode()
    assert headers["error.code"] == b"invalid_message"


def test_a_purchase_is_judged_by_when_it_reached_the_log_not_by_its_publisher_s_clock(
    isolated: Isolated, running: Running
) -> None:
    settings = isolated.ledger()
    topic = settings.topic_purchases
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="tests-stamp")
    try:
        admin.create_topics([NewTopic(topic, settings.partitions, 1)])  # stamped by the publisher
        running.start(Processor(settings, ProgramRules()).run)  # brings the topic in line as it starts

        def stamp() -> str | None:
            wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {"message.timestamp.type": None})
            [found] = admin.describe_configs([wanted]).values()
            return found[topic].get("message.timestamp.type", {}).get("value")  # type: ignore[no-any-return]

        eventually(lambda: stamp() == "LogAppendTime", what="the topic stamped by the broker")
    finally:
        admin.close()
    now = datetime.now(UTC)
    value = json.dumps(purchase("m-7", "o-1", "10.00", occurred_at=now.isoformat())).encode()
    year_back_ms = int((now - timedelta(days=365)).timestamp() * 1000)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        sent = producer.send(topic, key=b"m-7", value=value, timestamp_ms=year_back_ms).get(timeout=10)
    finally:
        producer.close()
    assert sent.timestamp != year_back_ms, "stamped as it was appended"
    events = await_events(settings, "m-7", 3)
    assert [e["type"] for e in events] == ["MemberEnrolled", "PurchaseRecorded", "PointsEarned"]
    assert abs(datetime.fromisoformat(events[1]["recorded_at"]) - now) < timedelta(minutes=5)


def test_ticks_expire_lots_and_mature_pending_points(isolated: Isolated, running: Running) -> None:
    settings = isolated.ledger()
    running.start(Processor(settings, ProgramRules(pending_days=7)).run)
    old = {**purchase("m-3", "o-old", "80.00"), "occurred_at": "2024-01-10T00:00:00Z"}
    publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-3", json.dumps(old).encode())
    eventually(
        lambda: len(events_of(settings.kafka_bootstrap, settings.topic_events, "m-3")) == 3, what="earned"
    )
    Scheduler(settings).tick(datetime(2026, 2, 1, tzinfo=UTC))
    events = eventually(
        lambda: (
            (found := events_of(settings.kafka_bootstrap, settings.topic_events, "m-3"))
            and len(found) == 5
            and found
        ),
        what="matured and expired",
    )
    assert [e["type"] for e in events[3:]] == ["PointsMatured", "PointsExpired"]
    assert events[4]["data"]["points"] == 80


def test_ten_thousand_purchases_survive_a_sigkilled_processor_exactly_once(
    isolated: Isolated, tmp_path: Path
) -> None:
    publish_purchases(isolated, 10_000, members=500)
    env = {**isolated.env, "LOYALTY_PROCESSOR_BATCH_MAX": "500"}
    first = spawn("processor", env, tmp_path / "processor.log")
    try:
        eventually(
            lambda: sum(e["type"] == "PointsEarned" for e in all_events(isolated)) >= 1500,
            timeout_s=60,
            what="some progress",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = spawn("processor", env, tmp_path / "processor.log")
    try:
        events = eventually(
            lambda: (
                (found := all_events(isolated))
                and sum(e["type"] == "PurchaseRecorded" for e in found) >= 10_000
                and found
            ),
            timeout_s=120,
            what="every purchase",
        )
    finally:
        second.terminate()
        second.wait(timeout=30)
    member_events = [e for e in events if not e["member_id"].startswith("$")]
    recorded = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(recorded) == len(set(recorded)) == 10_000
    earned = sum(e["data"]["points"] for e in member_events if e["type"] == "PointsEarned")
    assert earned == sum(1 + index % 50 for index in range(10_000))
    assert sum(e["type"] == "MemberEnrolled" for e in member_events) == 500
    assert_chains_intact(member_events)


def test_two_processors_split_the_partitions_and_one_takes_over_when_the_other_dies(
    isolated: Isolated, tmp_path: Path
) -> None:
    env = {**isolated.env, "LOYALTY_PROCESSOR_SESSION_TIMEOUT_MS": "6000"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "a"}, logs[0])
    b = None
    try:
        eventually(lambda: _assigned(logs[0]) == {0, 1, 2, 3}, timeout_s=60, what="a owns everything")
        b = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "b"}, logs[1])
        eventually(
            lambda: (
                _assigned(logs[1])
                and _assigned(logs[0]) | _assigned(logs[1]) == {0, 1, 2, 3}
                and not _assigned(logs[0]) & _assigned(logs[1])
            ),
            timeout_s=60,
            what="a split",
        )
        publish_purchases(isolated, 400, members=40, prefix="first")
        eventually(
            lambda: sum(e["type"] == "PurchaseRecorded" for e in all_events(isolated)) >= 400,
            timeout_s=60,
            what="first purchases",
        )
        b.send_signal(signal.SIGKILL)
        b.wait()
        publish_purchases(isolated, 400, members=40, prefix="second")
        events = eventually(
            lambda: (
                (found := all_events(isolated))
                and sum(e["type"] == "PurchaseRecorded" for e in found) >= 800
                and found
            ),
            timeout_s=90,
            what="second purchases after the takeover",
        )
        assert _assigned(logs[0]) == {0, 1, 2, 3}
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    member_events = [e for e in events if not e["member_id"].startswith("$")]
    assert sum(e["type"] == "MemberEnrolled" for e in member_events) == 40
    assert sum(e["type"] == "PurchaseRecorded" for e in member_events) == 800
    assert_chains_intact(member_events)


def _assigned(log: Path) -> set[int]:
    """The partitions of the instance's latest assignment, from its structured log."""
    latest: set[int] = set()
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("{") and json.loads(line).get("msg") == "partitions assigned":
            latest = set(json.loads(line)["partitions"])
    return latest
