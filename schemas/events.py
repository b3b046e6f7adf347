"""Events of loyalty.events.v1: one envelope, a data model per event type."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from schemas.canonical import event_hash
from schemas.inbound import PurchaseItem


class EventData(BaseModel):
    """Base of every event's `data`; the class name is the event `type`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1
    registry: ClassVar[dict[str, type[EventData]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EventData.registry[cls.__name__] = cls


class PurchaseRecorded(EventData):
    purchase_id: str
    amount_minor: int
    currency: str
    store_id: str | None = None
    channel: str | None = None
    items: tuple[PurchaseItem, ...] = ()


class PointsEarned(EventData):
    purchase_id: str
    points: int
    rule: str


class Event(BaseModel):
    """The envelope. `hash` covers every other field in canonical JSON form."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    schema_version: int
    member_id: str
    sequence: int
    occurred_at: datetime
    recorded_at: datetime
    command_id: str
    correlation_id: str
    rules_version: int
    prev_hash: str
    hash: str
    data: SerializeAsAny[EventData]

    @model_validator(mode="before")
    @classmethod
    def _typed_data(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            data_type = EventData.registry.get(raw.get("type", ""))
            if data_type is None:
                raise ValueError(f"unknown event type {raw.get('type')!r}")
            return {**raw, "data": data_type.model_validate(raw["data"])}
        return raw

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        return cls.model_validate_json(raw)

    def hash_is_valid(self) -> bool:
        return event_hash(self.document()) == self.hash
