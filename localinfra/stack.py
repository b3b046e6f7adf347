"""Kafka and Postgres together: which to start, where, and the settings that reach them."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from localinfra.kafka import KafkaNode
from localinfra.postgres import PostgresNode


@dataclass(frozen=True)
class LocalStack:
    """The local servers that stand in for external Kafka and Postgres endpoints.

    A server is local only when its endpoint setting (LOYALTY_KAFKA_BOOTSTRAP,
    LOYALTY_DATABASE_URL) is absent; a configured endpoint is used as it is.
    """

    kafka: KafkaNode | None
    postgres: PostgresNode | None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, state_dir: Path | None = None) -> LocalStack:
        env = dict(os.environ if env is None else env)
        state = state_dir or Path(env.get("LOYALTY_STATE_DIR", ".state")).resolve()
        cache = Path(env.get("LOYALTY_CACHE_DIR", Path.home() / ".cache" / "loyalty"))
        kafka = None
        if not env.get("LOYALTY_KAFKA_BOOTSTRAP"):
            kafka = KafkaNode(
                state_dir=state,
                cache_dir=cache,
                port=int(env.get("LOYALTY_LOCAL_KAFKA_PORT", "19092")),
                controller_port=int(env.get("LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT", "19093")),
            )
        postgres = None
        if not env.get("LOYALTY_DATABASE_URL"):
            postgres = PostgresNode.in_state_dir(state, port=int(env.get("LOYALTY_LOCAL_PG_PORT", "15432")))
        return cls(kafka=kafka, postgres=postgres)

    def up(self) -> dict[str, str]:
        """Start what is local (idempotent) and return the endpoint settings to use."""
        if self.postgres is not None:
            self.postgres.up()
        if self.kafka is not None:
            self.kafka.up()
        return self.endpoints()

    def endpoints(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.kafka is not None:
            found["LOYALTY_KAFKA_BOOTSTRAP"] = self.kafka.bootstrap
        if self.postgres is not None:
            found["LOYALTY_DATABASE_URL"] = self.postgres.url
        return found

    def down(self) -> None:
        if self.kafka is not None:
            self.kafka.down()
        if self.postgres is not None:
            self.postgres.down()

    def purge(self, state_dir: Path) -> None:
        """Stop what is local and delete its data, wherever the cluster had to live."""
        self.down()
        if self.postgres is not None:
            shutil.rmtree(self.postgres.home, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)

    def status(self) -> list[str]:
        lines = []
        lines.append(self.kafka.status() if self.kafka else "kafka: external (LOYALTY_KAFKA_BOOTSTRAP)")
        lines.append(self.postgres.status() if self.postgres else "postgres: external (LOYALTY_DATABASE_URL)")
        return lines
