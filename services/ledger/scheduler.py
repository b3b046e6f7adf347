"""The clock: a tick to every partition at an interval, so that expiry, maturation and demotion
happen without any request. Time enters the ledger here, and only here, as data."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.kafka_compat import NO_CLIENT_METRICS, close_producer, install_fixes
from services.ledger.command_messages import CommandMessage, TickBody
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics

log = logging.getLogger(__name__)

TICK_KEY = b"$tick"
SEND_TIMEOUT_S = 10.0


class Scheduler:
    def __init__(self, settings: LedgerSettings) -> None:
        self._settings = settings
        install_fixes()
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="loyalty-scheduler",
            acks="all",
            enable_idempotence=True,
            # Bounded, so that a tick during a broker outage fails and is retried, and a stop is seen.
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
            **NO_CLIENT_METRICS,
        )

    def tick(self, now: datetime) -> None:
        """One tick, written to every partition of the command topic; raises KafkaError if it was not."""
        topic = self._settings.topic_commands
        partitions = sorted(self._producer.partitions_for(topic) or ())
        sent = []
        for partition in partitions:
            command_id = f"tick:{now.isoformat()}:{partition}"
            message = CommandMessage(
                command_id=command_id, correlation_id=command_id, issued_at=now, body=TickBody(now=now)
            )
            sent.append(
                self._producer.send(
                    topic, key=TICK_KEY, value=message.model_dump_json().encode(), partition=partition
                )
            )
        for future in sent:
            future.get(timeout=SEND_TIMEOUT_S)

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self._settings)
        interval_s = self._settings.tick_interval_s
        log.info("scheduler started", extra={"interval_s": interval_s})
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.tick(datetime.now(UTC))
                except KafkaError as error:  # the broker is away: the clock moves at a tick soon after
                    failures += 1
                    delay = min(2.0**failures, interval_s)
                    log.warning(
                        "tick not written; retrying", extra={"error": str(error), "retry_in_s": delay}
                    )
                    stop.wait(delay)
                    continue
                failures = 0
                stop.wait(interval_s)
        finally:
            close_producer(self._producer, timeout_s=5)
            log.info("scheduler stopped")
