"""While the broker is away: a failed transaction starts over once it is back, and a producer
holding records it cannot send is closed all the same."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from localinfra.kafka import KafkaNode
from localinfra.process import reserved_ports
from schemas.rules import ProgramRules
from services.kafka_compat import TransactionRecords, close_producer
from services.ledger.processor import Processor
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import await_events, send_purchase
from tests.waiting import eventually


class BrokerAwayMidTransaction(Processor):
    """When told, one transaction fails as if the broker went away under it, and the next
    `refusals` producers cannot start transactions, as `init_transactions` times out while the
    broker restarts."""

    def __init__(self, settings: LedgerSettings, refusals: int) -> None:
        self.go_away = False
        self._refusals_to_come = refusals
        self.refusals = 0
        super().__init__(settings, ProgramRules())

    def _check_sent(self) -> None:
        if self.go_away:
            self.go_away = False
            self.refusals = self._refusals_to_come
            raise KafkaTimeoutError("the broker went away")
        super()._check_sent()

    def _new_records(self) -> TransactionRecords:
        if self.refusals:
            self.refusals -= 1
            raise KafkaTimeoutError("Timeout after waiting for 60.0 secs.")
        return super()._new_records()


def test_a_transaction_failed_while_the_broker_is_away_is_started_over_once_it_is_back(
    isolated: Isolated, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated.ledger()
    processor = BrokerAwayMidTransaction(settings, refusals=3)
    running.start(processor.run)
    send_purchase(settings, "m-1", "o-1", "10.00")
    await_events(settings, "m-1", 3)
    processor.go_away = True
    with caplog.at_level(logging.WARNING, logger="services.ledger.processor"):
        send_purchase(settings, "m-1", "o-2", "20.00")
        events = await_events(settings, "m-1", 5, timeout_s=60)
        retries = eventually(
            lambda: [r for r in caplog.records if r.getMessage() == "transactions cannot start; retrying"],
            what="retries logged",
        )
    assert [r.retry_in_s for r in retries] == [0.5, 1.0, 2.0]  # type: ignore[attr-defined]
    assert [e["type"] for e in events] == [
        "MemberEnrolled",
        "PurchaseRecorded",
        "PointsEarned",
        "PurchaseRecorded",
        "PointsEarned",
    ]
    assert not running.errors


def test_a_producer_whose_records_cannot_be_sent_is_closed_all_the_same(tmp_path: Path) -> None:
    """kafka-python's own close() raises here and leaves the producer open (services.kafka_compat)."""
    with reserved_ports(2) as (port, controller):
        broker = KafkaNode(
            state_dir=tmp_path,
            cache_dir=Path(os.environ.get("LOYALTY_CACHE_DIR", Path.home() / ".cache" / "loyalty")),
            port=port,
            controller_port=controller,
        )
        broker.up()
        try:
            settings = LedgerSettings(kafka_bootstrap=broker.bootstrap)
            ensure_topics(settings)
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
            producer.send(settings.topic_commands, b"before").get(timeout=30)
            broker.down()
            pending = producer.send(settings.topic_commands, b"while the broker is away")
            started = time.monotonic()
            close_producer(producer, timeout_s=1)
            assert time.monotonic() - started < 10
            assert pending.is_done and pending.failed()
            assert not producer._sender.is_alive()
        finally:
            broker.down()
