"""Topic names and their configurations: the settings every service reads the same way."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_MS = 24 * 60 * 60 * 1000


# The inputs' records are stamped by the broker as they are appended: the processor judges a
# purchase's date against when it reached the log, which no publisher's clock may decide (one set
# a year back made today's purchases look a year ahead).
INPUT_STAMP = {"message.timestamp.type": "LogAppendTime"}


class KafkaSettings(BaseSettings):
    """Kafka endpoint and topic names (env LOYALTY_*), shared by every service's settings."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:19092"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    topic_purchases: str = "loyalty.purchases.v1"
    topic_commands: str = "loyalty.commands.v1"
    topic_events: str = "loyalty.events.v1"
    topic_state: str = "loyalty.ledger-state.v1"
    topic_dlq: str = "loyalty.purchases.dlq.v1"
    topic_replies: str = "loyalty.command-replies.v1"
    topic_status: str = "loyalty.processor-status.v1"

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Every topic with the configs of DESIGN.md."""
        inputs = {**INPUT_STAMP, "cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
        return {
            self.topic_purchases: inputs,
            self.topic_commands: dict(inputs),
            self.topic_events: {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"},
            # About one record per live key: segments roll hourly or at 64 MiB (only closed ones
            # are compacted), the cleaner runs once a tenth of the log is dirty, and tombstones
            # stay a day (a local state copy older than that is rebuilt, not trusted).
            self.topic_state: {
                "cleanup.policy": "compact",
                "segment.bytes": str(64 * 1024 * 1024),
                "segment.ms": str(60 * 60 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
                "delete.retention.ms": str(DAY_MS),
                "min.compaction.lag.ms": "0",
            },
            self.topic_dlq: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
            # Internal: the processor's answer to each API command, read by the ledger API.
            self.topic_replies: {"cleanup.policy": "delete", "retention.ms": str(DAY_MS)},
            # Internal: which processor has restored each partition, read by the ledger API.
            self.topic_status: {"cleanup.policy": "compact"},
        }
