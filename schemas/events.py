"""Events of loyalty.events.v1: one envelope, a data model per event type."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from schemas.canonical import event_hash
from schemas.inbound import PurchaseItem
from schemas.money import Currency
from schemas.upcasting import upcast


class EventData(BaseModel):
    """Base of every event's `data`; the class name is the event `type`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1
    registry: ClassVar[dict[str, type[EventData]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EventData.registry[cls.__name__] = cls


class LotPoints(BaseModel):
    """Points taken from, or given back to, one lot; `expires_at` is the lot's own expiry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lot_id: str
    points: int
    expires_at: datetime


ProfileField = Literal["name", "phone", "email", "birthday"]


class EncryptedProfile(BaseModel):
    """Profile fields, each sealed with AES-256-GCM under the member's data key `key_id`.

    A value is base64 of the 12-byte nonce followed by the ciphertext and tag; the member id and
    field name are authenticated with it. Erasing the data key makes every copy unreadable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    fields: dict[ProfileField, str]


class MemberEnrolled(EventData):
    via: Literal["purchase", "api"]
    tier: str
    # Enrolment over the API carries the profile; a purchase enrols a member without one.
    profile: EncryptedProfile | None = None


class ProfileUpdated(EventData):
    """Profile fields set or changed: only those fields, encrypted."""

    profile: EncryptedProfile


class PersonalDataErased(EventData):
    """The member's data key was destroyed: every copy of the profile is unreadable for good."""

    actor: str


class PurchaseRecorded(EventData):
    purchase_id: str
    amount_minor: int
    currency: str
    store_id: str | None = None
    channel: str | None = None
    items: tuple[PurchaseItem, ...] = ()
    # The account forgets purchases that occurred before this instant: past the refund window
    # and every qualifying window still to be evaluated. It keeps a member's state bounded.
    forget_before: datetime | None = None


class EarningRule(BaseModel):
    """How the points of an earning were computed, for auditors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: str
    tier_multiplier: str
    points_per_cny: str
    category_bonuses: dict[str, str] = {}
    rounding: str


class PointsEarned(EventData):
    purchase_id: str
    lot_id: str
    points: int
    expires_at: datetime
    matures_at: datetime | None = None
    debt_repaid: int = 0
    rule: EarningRule


class PointsMatured(EventData):
    lot_id: str
    points: int
    debt_repaid: int = 0


class PurchaseRefunded(EventData):
    refund_id: str
    purchase_id: str
    amount_minor: int
    refunded_total_minor: int
    # The items the refund named (none before they could be named): what its reversal follows.
    items: tuple[PurchaseItem, ...] = ()


class PointsReversed(EventData):
    refund_id: str
    purchase_id: str
    points: int
    from_pending: tuple[LotPoints, ...] = ()
    from_lots: tuple[LotPoints, ...] = ()
    debt_added: int = 0


class PointsRedeemed(EventData):
    """v2: the redemption value carries its currency (v1 had none; see schemas/upcasting.py)."""

    SCHEMA_VERSION: ClassVar[int] = 2

    redemption_id: str
    points: int
    reward: str | None = None
    value_minor: int
    currency: Currency
    from_lots: tuple[LotPoints, ...]


class RedemptionCancelled(EventData):
    redemption_id: str
    points: int


class PointsRestored(EventData):
    redemption_id: str
    points: int
    to_lots: tuple[LotPoints, ...]
    debt_repaid: int = 0


class PointsAdjusted(EventData):
    adjustment_id: str
    points: int
    reason: str
    actor: str
    lot_id: str | None = None
    expires_at: datetime | None = None
    from_lots: tuple[LotPoints, ...] = ()
    debt_repaid: int = 0


class PointsExpired(EventData):
    points: int
    lots: tuple[LotPoints, ...]


class TierChanged(EventData):
    from_tier: str
    to_tier: str
    reason: Literal["promotion", "demotion", "manual"]
    qualifying_spend_minor: int
    purchase_count: int
    # None when the new tier is the entry tier, which is never evaluated.
    next_evaluation_at: datetime | None
    note: str | None = None
    actor: str | None = None


class TierRetained(EventData):
    """The evaluation date came and the window still qualifies: the next one is set."""

    tier: str
    qualifying_spend_minor: int
    purchase_count: int
    next_evaluation_at: datetime


class ProgramRulesChanged(EventData):
    version: int
    fingerprint: str
    rules: dict[str, Any]


class CommandRejected(EventData):
    command: str
    code: str
    detail: str


# Every event type: what a `match` over event data must cover (`typing.assert_never` checks it).
AnyEventData = (
    MemberEnrolled
    | ProfileUpdated
    | PersonalDataErased
    | PurchaseRecorded
    | PointsEarned
    | PointsMatured
    | PurchaseRefunded
    | PointsReversed
    | PointsRedeemed
    | RedemptionCancelled
    | PointsRestored
    | PointsAdjusted
    | PointsExpired
    | TierChanged
    | TierRetained
    | ProgramRulesChanged
    | CommandRejected
)


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
        """The data as its type's model, upcast to the current version when written by an older one."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            data_type = EventData.registry.get(raw.get("type", ""))
            if data_type is None:
                raise ValueError(f"unknown event type {raw.get('type')!r}")
            version = raw.get("schema_version")
            if not isinstance(version, int):
                raise ValueError("schema_version must be an integer")
            current = data_type.SCHEMA_VERSION
            data = upcast(raw["type"], version, raw["data"], current)
            return {**raw, "schema_version": current, "data": data_type.model_validate(data)}
        return raw

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        # The upcasting validator needs the document as Python objects: orjson makes them faster
        # than pydantic's JSON mode. What orjson refuses goes to pydantic, for the error it gives.
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return cls.model_validate_json(raw)
        return cls.model_validate(document)

    def hash_is_valid(self) -> bool:
        """Whether `hash` covers this document: only for events read at the version they were written in."""
        return event_hash(self.document()) == self.hash
