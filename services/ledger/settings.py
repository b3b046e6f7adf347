"""The write side's settings (env LOYALTY_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from schemas.topics import KafkaSettings
from services.access.settings import AccessSettings
from services.serving import ServingSettings


class LedgerSettings(KafkaSettings, AccessSettings, ServingSettings):
    ledger_host: str = "127.0.0.1"
    ledger_port: int = 8000
    processor_group: str = "loyalty-ledger"
    # Stable across restarts of one instance, so a restart fences and aborts what it left open;
    # unset, the processor takes the host name and the first free slot on it (ledger.instance).
    processor_instance: str | None = None
    # Processor processes `loyalty run` starts; more instances split the partitions.
    processors: int = Field(default=1, ge=1, le=64)
    # Under a backlog, larger transactions carry fewer markers and fewer state records per input
    # (a member's state is written once per batch): 5,000 was ~25% faster than 2,000, 10,000 no
    # faster (bench.processor_throughput). At a trickle a batch is whatever has arrived.
    processor_batch_max: int = Field(default=5000, ge=1)
    # A batch also stops taking records after this long, so that a backlog does not keep the
    # commands that arrive meanwhile (in any partition) waiting for a long transaction. Shorter
    # costs throughput under a backlog: 300 ms moved a third fewer purchases/s than unbounded.
    processor_batch_time_ms: int = Field(default=1000, ge=1)
    # The least time from one transaction's start to the next's. Commands that arrive meanwhile
    # share a transaction, and with it its fixed cost (markers, offsets, a fetch of the replies by
    # every API worker), instead of each paying it. After a pause, the first one starts at once.
    processor_transaction_interval_ms: int = Field(default=20, ge=0)
    transaction_timeout_ms: int = Field(default=15_000, ge=1000)
    # How soon the group notices a dead instance and hands its partitions to another.
    processor_session_timeout_ms: int = Field(default=10_000, ge=6000)
    command_timeout_s: float = Field(default=5.0, gt=0)
    # Past this, the processor is behind in a partition: while a command this worker sent there
    # has waited longer for its answer (and answers still come), new ones for the partition are
    # shed with 503 rather than queued behind it. Above the command path's p99 at a steady rate.
    command_budget_ms: int = Field(default=500, ge=1)
    # A TOML file of program rules; without one, the default program of the domain notes.
    rules_file: Path | None = None
    tick_interval_s: float = Field(default=60.0, gt=0)
    # Where the processor keeps its local copy of the state (under processor/{transactional id}).
    state_dir: Path = Path(".state")
    # Accounts kept in memory per owned partition; the rest are read from the local copy.
    processor_cached_members: int = Field(default=100_000, ge=1)
    # How long a restored partition's accounts are read into memory before its input is: a
    # command after a restart then finds its account cached. The rest are read while idle.
    processor_warm_s: float = Field(default=10.0, ge=0)

    @property
    def transactional_id(self) -> str:
        if not self.processor_instance:
            raise ValueError("the processor's instance is not named yet (ledger.instance.claim_instance)")
        return f"{self.processor_group}-{self.processor_instance}"
