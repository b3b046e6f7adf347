"""The clock: a tick to every partition at an interval, so that expiry, maturation and demotion
happen without any request. Time enters the ledger here, and only here, as data."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from kafka import KafkaProducer

from services.ledger.command_messages import CommandMessage, TickBody
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics

log = logging.getLogger(__name__)

TICK_KEY = b"$tick"


class Scheduler:
    def __init__(self, settings: LedgerSettings) -> None:
        self._settings = settings
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="loyalty-scheduler",
            acks="all",
            enable_idempotence=True,
        )

    def tick(self, now: datetime) -> None:
        """One tick, written to every partition of the command topic."""
        topic = self._settings.topic_commands
        partitions = sorted(self._producer.partitions_for(topic) or ())
        for partition in partitions:
            command_id = f"tick:{now.isoformat()}:{partition}"
            message = CommandMessage(
                command_id=command_id, correlation_id=command_id, issued_at=now, body=TickBody(now=now)
            )
            self._producer.send(
                topic, key=TICK_KEY, value=message.model_dump_json().encode(), partition=partition
            )
        self._producer.flush()

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self._settings)
        log.info("scheduler started", extra={"interval_s": self._settings.tick_interval_s})
        try:
            while not stop.is_set():
                self.tick(datetime.now(UTC))
                stop.wait(self._settings.tick_interval_s)
        finally:
            self._producer.close()
            log.info("scheduler stopped")
