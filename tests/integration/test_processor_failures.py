"""The processor's failure paths on a real broker: transactions that fail and abort, a newer
instance that fences it, a decision that raises, and topics that are not co-partitioned."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import ProducerFencedError

from schemas.rules import ProgramRules
from services.ledger import state_records
from services.ledger.command_messages import AdjustmentBody, CommandMessage
from services.ledger.domain.account import Account
from services.ledger.processor import Processor
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import (
    await_events,
    evict_group_members,
    publish,
    publish_together,
    purchase,
    read_all,
    send_purchase,
    topic_config,
)
from tests.integration.serving import spawn
from tests.integration.test_processor_guarantees import all_events, assert_chains_intact
from tests.integration.test_processor_state import log_lines
from tests.waiting import eventually

TRANSACTION_FAILED = "transaction failed; restoring the state and reading the batch again"
# Larger than a transaction marker (about 80 bytes), smaller than any event (400 bytes and more):
# the broker refuses the events and still takes the markers that end the transaction.
REFUSING_EVENTS = "256"


def purchases(*orders: tuple[str, str, str]) -> list[tuple[bytes, bytes]]:
    """(member, purchase id, amount) as inbound records, keyed by member."""
    return [
        (member.encode(), json.dumps(purchase(member, order, amount)).encode())
        for member, order, amount in orders
    ]


def member_events(isolated: Isolated) -> list[dict[str, Any]]:
    """Every member's committed events (not the program's own stream)."""
    return [e for e in all_events(isolated) if not e["member_id"].startswith("$")]


def changelog_account(settings: LedgerSettings, member_id: str) -> Account:
    """The member's account as the committed changelog describes it (the last record of each key)."""
    latest: dict[str, bytes | None] = {}
    for record in read_all(settings.kafka_bootstrap, settings.topic_state):
        latest[record.key.decode()] = record.value
    low, high = state_records.member_range(member_id)
    rows = [(key, value) for key, value in sorted(latest.items()) if low <= key < high and value is not None]
    return state_records.assemble(member_id, rows)


def assert_changelog_matches_the_log(settings: LedgerSettings, events: list[dict[str, Any]]) -> None:
    """Each member's committed state is where its committed events leave it, and nothing more."""
    by_member: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(events, key=lambda e: e["sequence"]):
        by_member.setdefault(event["member_id"], []).append(event)
    for member, stream in by_member.items():
        account = changelog_account(settings, member)
        assert (account.sequence, account.last_hash) == (len(stream), stream[-1]["hash"]), member
        bought = {e["data"]["purchase_id"] for e in stream if e["type"] == "PurchaseRecorded"}
        assert set(account.purchases) == bought, member


def messages(caplog: pytest.LogCaptureFixture, message: str) -> int:
    return sum(record.getMessage() == message for record in caplog.records)


def test_a_transaction_whose_offsets_the_group_refuses_is_aborted_and_its_batch_decided_again(
    isolated: Isolated, running: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The processor is removed from its consumer group just before a batch reaches it: its
    transaction holds the batch's events and state, then the group refuses its offsets (unknown
    member) and it aborts. What that attempt decided (a known member's next purchase, a new
    member) must not outlive it, in memory, in the local store or on the changelog: the batch is
    read again from the committed offsets and decided again, and each event is committed once,
    chained as if the failed attempt had never happened."""
    caplog.set_level(logging.INFO, logger="services.ledger")
    settings = isolated.ledger(state_dir=tmp_path / "state")
    ensure_topics(settings)
    running.start(Processor(settings, ProgramRules()).run)
    send_purchase(settings, "m-1", "o-1", "10.00")
    await_events(settings, "m-1", 3)

    # The processor's heartbeat (every 3 s) may learn of the removal before the batch arrives; it
    # then rejoins and commits normally, and the next purchase tries again.
    for attempt in range(1, 6):
        assert evict_group_members(settings.kafka_bootstrap, settings.processor_group) == 1
        batch = purchases(("m-1", f"o-1{attempt}", "20.00"), (f"n-{attempt}", f"o-2{attempt}", "30.00"))
        publish_together(settings.kafka_bootstrap, settings.topic_purchases, batch)
        await_events(settings, f"n-{attempt}", 3)
        if messages(caplog, TRANSACTION_FAILED):
            break
    assert messages(caplog, TRANSACTION_FAILED), "no transaction failed in five attempts"

    await_events(settings, "m-1", 3 + 2 * attempt)
    events = member_events(isolated)
    assert len(events) == len({e["event_id"] for e in events}) == 3 + 5 * attempt
    assert Counter(e["type"] for e in events) == {
        "MemberEnrolled": 1 + attempt,
        "PurchaseRecorded": 1 + 2 * attempt,
        "PointsEarned": 1 + 2 * attempt,
    }
    assert_chains_intact(events)
    assert_changelog_matches_the_log(settings, events)


def test_a_transaction_the_broker_refuses_is_aborted_and_its_batch_decided_again(
    isolated: Isolated, tmp_path: Path
) -> None:
    """The events topic refuses every event for a while (larger than it now allows): the commit
    must fail and the transaction abort, and once the broker takes events again the batch is
    decided again, each event committed once. Run as a process of its own, which can be killed
    if it never comes back."""
    settings = isolated.ledger()
    ensure_topics(settings)
    log = tmp_path / "processor.log"
    processor = spawn("processor", {**isolated.env, "LOYALTY_STATE_DIR": str(tmp_path / "state")}, log)
    try:
        send_purchase(settings, "m-1", "o-1", "10.00")
        await_events(settings, "m-1", 3, timeout_s=30)
        with topic_config(
            settings.kafka_bootstrap, settings.topic_events, "max.message.bytes", REFUSING_EVENTS
        ):
            send_purchase(settings, "m-1", "o-2", "20.00")
            eventually(
                lambda: log_lines(log, TRANSACTION_FAILED), timeout_s=15, what="the refused commit failed"
            )
        events = await_events(settings, "m-1", 5)
    finally:
        processor.terminate()
        try:
            processor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            processor.kill()
            processor.wait()
    assert [(e["type"], e["data"].get("purchase_id")) for e in events[3:]] == [
        ("PurchaseRecorded", "o-2"),
        ("PointsEarned", "o-2"),
    ]
    assert_chains_intact(member_events(isolated))
    assert_changelog_matches_the_log(settings, events)


def test_a_first_transaction_that_fails_before_any_offset_is_committed_loses_nothing(
    isolated: Isolated, tmp_path: Path
) -> None:
    """The first transaction of a fresh deployment fails: no input offset was ever committed, so
    the batch is read again from the start of the inputs, not from where the failed poll left
    the consumer."""
    settings = isolated.ledger()
    ensure_topics(settings)
    log = tmp_path / "processor.log"
    with topic_config(settings.kafka_bootstrap, settings.topic_events, "max.message.bytes", REFUSING_EVENTS):
        send_purchase(settings, "m-1", "o-1", "10.00")
        processor = spawn("processor", {**isolated.env, "LOYALTY_STATE_DIR": str(tmp_path / "state")}, log)
        try:
            eventually(
                lambda: log_lines(log, TRANSACTION_FAILED), timeout_s=30, what="the first commit failed"
            )
        except BaseException:
            processor.kill()
            raise
    try:
        send_purchase(settings, "m-1", "o-2", "20.00")
        events = await_events(settings, "m-1", 5, timeout_s=30)
    finally:
        processor.terminate()
        processor.wait(timeout=30)
    assert [(e["type"], e["data"].get("purchase_id")) for e in events] == [
        ("MemberEnrolled", None),
        ("PurchaseRecorded", "o-1"),
        ("PointsEarned", "o-1"),
        ("PurchaseRecorded", "o-2"),
        ("PointsEarned", "o-2"),
    ]
    assert_chains_intact(member_events(isolated))


def test_a_fenced_processor_stops_without_committing_and_its_successor_continues_every_chain(
    isolated: Isolated, running: Running, tmp_path: Path
) -> None:
    """A newer producer with the processor's transactional id (a restarted twin) fences it while
    a batch of 200 purchases is on its way: the processor must recognise the fence and stop
    (ProducerFencedError out of `run`), not take it for a failed transaction to retry, and commit
    nothing; the instance started after it decides the batch, and every chain goes on intact."""
    settings = isolated.ledger(state_dir=tmp_path / "state")
    ensure_topics(settings)
    members = [f"m-{n}" for n in range(20)]
    fenced = Running()
    fenced.start(Processor(settings, ProgramRules()).run)
    try:
        publish_together(
            settings.kafka_bootstrap,
            settings.topic_purchases,
            purchases(*((m, f"{m}-0", "10.00") for m in members)),
        )
        eventually(lambda: len(member_events(isolated)) == 3 * 20, what="the first purchases")

        twin = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, transactional_id=settings.transactional_id
        )
        twin.init_transactions()
        twin.close()
        later = [(m, f"{m}-{n}", f"{n}.00") for n in range(1, 11) for m in members]
        publish_together(settings.kafka_bootstrap, settings.topic_purchases, purchases(*later))
        eventually(lambda: fenced.errors, timeout_s=30, what="the fenced processor stopped")
    finally:
        fenced.stop_all()
    [error] = fenced.errors
    assert len(member_events(isolated)) == 3 * 20, "nothing committed after the fence"

    running.start(Processor(settings, ProgramRules()).run)
    events = eventually(
        lambda: (found := member_events(isolated)) and len(found) == 3 * 20 + 2 * 200 and found,
        what="the later purchases, decided by the successor",
    )
    recorded = [e["data"]["purchase_id"] for e in events if e["type"] == "PurchaseRecorded"]
    assert len(recorded) == len(set(recorded)) == 220
    assert_chains_intact(events)
    assert isinstance(error, ProducerFencedError), f"it stopped, but not as fenced: {error!r}"


def send_command(settings: LedgerSettings, member_id: str, message: CommandMessage) -> None:
    """A command as the ledger API writes it: keyed by member, on the command topic."""
    value = message.model_dump_json().encode()
    publish(settings.kafka_bootstrap, settings.topic_commands, member_id.encode(), value)


def adjustment(command_id: str, member_id: str, points: int, issued_at: datetime) -> CommandMessage:
    body = AdjustmentBody(
        adjustment_id=command_id, member_id=member_id, points=points, reason="goodwill", actor="k-1"
    )
    return CommandMessage(command_id=command_id, correlation_id=command_id, issued_at=issued_at, body=body)


def test_a_command_whose_decision_raises_is_dead_lettered_and_the_partition_goes_on(
    isolated: Isolated, running: Running, tmp_path: Path
) -> None:
    """A command that passes validation but that the decision cannot compute (an adjustment issued
    in December 9999: its lot would expire in 10001, past what a datetime holds) is no LedgerError,
    so it cannot be rejected as a business outcome. It is set aside as `processing_error`, its
    caller is told, and the member's next command is applied."""
    settings = isolated.ledger(state_dir=tmp_path / "state")
    ensure_topics(settings)
    running.start(Processor(settings, ProgramRules()).run)
    send_purchase(settings, "m-1", "o-1", "10.00")
    await_events(settings, "m-1", 3)

    doomed = adjustment("c-doomed", "m-1", 5, issued_at=datetime(9999, 12, 1, tzinfo=UTC))
    send_command(settings, "m-1", doomed)
    send_command(
        settings, "m-1", adjustment("c-next", "m-1", 7, issued_at=datetime(2026, 11, 23, tzinfo=UTC))
    )
    events = await_events(settings, "m-1", 4)

    assert [(e["type"], e["command_id"]) for e in events[3:]] == [("PointsAdjusted", "c-next")]
    assert_chains_intact(events)
    [dead] = read_all(settings.kafka_bootstrap, settings.topic_dlq)
    headers = {name: value.decode() for name, value in dead.headers}
    assert dead.value == doomed.model_dump_json().encode()
    assert headers["error.code"] == "processing_error"
    assert headers["error.message"].startswith("ValueError: year 10001 is out of range"), headers
    assert headers["source.topic"] == settings.topic_commands
    records = read_all(settings.kafka_bootstrap, settings.topic_replies)
    answers = {reply["command_id"]: reply for reply in (json.loads(r.value) for r in records)}
    assert (answers["c-doomed"]["status"], answers["c-doomed"]["code"]) == ("rejected", "processing_error")
    assert (answers["c-next"]["status"], answers["c-next"]["available"]) == ("applied", 10 + 7)


def test_topics_with_different_partition_counts_keep_the_processor_from_starting(
    isolated: Isolated, tmp_path: Path
) -> None:
    """A member's inputs, events and state must share one partition number; with an events topic
    of 2 partitions beside inputs of 4 they would not, so the processor refuses to start (before
    it reads anything) and says which topic has how many."""
    settings = isolated.ledger(state_dir=tmp_path / "state")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        topic = {"num_partitions": 2, "replication_factor": 1}
        admin.create_topics({settings.topic_events: topic}, wait_for_metadata=True)
    finally:
        admin.close()
    ensure_topics(settings)
    send_purchase(settings, "m-1", "o-1", "10.00")

    with pytest.raises(RuntimeError, match="same partition count") as refused:
        Processor(settings, ProgramRules()).run(threading.Event())

    counts = str(refused.value)
    assert f"'{settings.topic_events}': 2" in counts and f"'{settings.topic_purchases}': 4" in counts, counts
    assert read_all(settings.kafka_bootstrap, settings.topic_events) == []
