"""The read side's settings (env LOYALTY_*)."""

from __future__ import annotations

from pydantic import Field

from schemas.topics import KafkaSettings
from services.access.settings import AccessSettings
from services.serving import ServingSettings


class ProjectorSettings(KafkaSettings, AccessSettings, ServingSettings):
    # The Postgres schema holding the read models; `loyalty replay --switch` swaps a rebuilt one in.
    read_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    read_host: str = "127.0.0.1"
    read_port: int = 8001
    projector_group: str = "loyalty-projector"
    projector_batch_max: int = Field(default=5000, ge=1)
    # A batch also ends this long after its first records arrived.
    projector_batch_wait_ms: int = Field(default=200, ge=0)
    # How soon the group notices a dead projector and hands its partitions to another.
    projector_session_timeout_ms: int = Field(default=10_000, ge=6000)
    # /readyz fails while the projector is further behind than this many records.
    ready_max_lag: int = Field(default=1000, ge=0)
    # A read with `min_position` waits at most this long for the position to be applied.
    read_wait_s: float = Field(default=5.0, gt=0, le=60)
