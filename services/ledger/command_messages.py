"""Records the processor consumes, turned into domain commands, and the replies it writes.

Two inputs carry commands: loyalty.purchases.v1 (bare inbound messages from commerce services)
and loyalty.commands.v1 (from the ledger API and the scheduler, with a command id, a
correlation id and the time the command was issued).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from schemas.events import EncryptedProfile
from schemas.inbound import ExternalId, InboundMessage, MemberId, PurchaseMessage, RefundMessage
from schemas.money import to_minor
from services.ledger.domain.commands import (
    AdjustPoints,
    CancelRedemption,
    Command,
    EnrolMember,
    ErasePersonalData,
    RecordPurchase,
    RedeemPoints,
    RefundPurchase,
    SetTier,
    UpdateProfile,
)
from services.ledger.domain.ids import derived_id

M = TypeVar("M")
R = TypeVar("R")

INBOUND_NAMESPACE = uuid.UUID("0b5e0c9e-7d0a-4f55-8a0e-3f6f1f3f2c10")
Points = Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class InvalidRecord(Exception):
    """A record that no decision can be taken on; it goes to the dead-letter topic."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RedemptionBody(_Body):
    type: Literal["redemption"] = "redemption"
    redemption_id: ExternalId
    member_id: MemberId
    points: Annotated[int, Field(gt=0, le=1_000_000_000)]
    reward: Annotated[str, StringConstraints(max_length=200)] | None = None


class CancelBody(_Body):
    type: Literal["redemption_cancel"] = "redemption_cancel"
    redemption_id: ExternalId
    member_id: MemberId


class AdjustmentBody(_Body):
    type: Literal["adjustment"] = "adjustment"
    adjustment_id: ExternalId
    member_id: MemberId
    points: Points
    reason: Text
    actor: Text


class TierBody(_Body):
    type: Literal["tier_change"] = "tier_change"
    member_id: MemberId
    tier: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    reason: Text
    actor: Text


class EnrolBody(_Body):
    type: Literal["enrolment"] = "enrolment"
    member_id: MemberId
    profile: EncryptedProfile


class ProfileBody(_Body):
    type: Literal["profile_update"] = "profile_update"
    member_id: MemberId
    profile: EncryptedProfile


class EraseBody(_Body):
    type: Literal["erasure"] = "erasure"
    member_id: MemberId
    actor: Text


class TickBody(_Body):
    """A clock tick for every member of the partition it is written to."""

    type: Literal["tick"] = "tick"
    now: AwareDatetime


AnyBody = (
    PurchaseMessage
    | RefundMessage
    | RedemptionBody
    | CancelBody
    | AdjustmentBody
    | TierBody
    | EnrolBody
    | ProfileBody
    | EraseBody
    | TickBody
)
CommandBody = Annotated[AnyBody, Field(discriminator="type")]
# Every body's `type`: the union's tags, which pydantic puts in an error's location.
BODY_TYPES = frozenset(body.model_fields["type"].default for body in get_args(AnyBody))


class CommandMessage(BaseModel):
    """The value of a loyalty.commands.v1 record."""

    model_config = ConfigDict(frozen=True)

    command_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    correlation_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    issued_at: AwareDatetime
    body: CommandBody
    # Sent under a caller's Idempotency-Key, which the correlation id names (domain.commands).
    keyed: bool = False


class Tick(BaseModel):
    """A parsed clock tick: not a member's command, it reaches every member that has something due."""

    command_id: str
    correlation_id: str
    now: datetime


ReplyStatus = Literal["applied", "duplicate", "rejected"]


class CommandReply(BaseModel):
    """What the processor decided about a command from the API, written in the same transaction."""

    command_id: str
    member_id: str
    status: ReplyStatus
    original_command_id: str | None = None
    code: str | None = None
    detail: str | None = None
    events: list[dict[str, Any]] = []
    sequence: int
    available: int
    pending: int
    tier: str


_inbound: TypeAdapter[PurchaseMessage | RefundMessage] = TypeAdapter(InboundMessage)
_command: TypeAdapter[CommandMessage] = TypeAdapter(CommandMessage)


def parse_command_record(value: bytes | None, received_at: datetime) -> Command | Tick:
    """`received_at`: the record's timestamp, when it reached the log (for both inputs alike)."""
    message = _validate(_command, value)
    return _or_invalid(lambda: _parse_command(message, received_at))


def _parse_command(message: CommandMessage, received_at: datetime) -> Command | Tick:
    if isinstance(message.body, TickBody):
        return Tick(
            command_id=message.command_id,
            correlation_id=message.correlation_id,
            now=message.body.now.astimezone(UTC),
        )
    return to_command(
        message.body,
        message.command_id,
        message.correlation_id,
        message.issued_at,
        received_at,
        keyed=message.keyed,
    )


def parse_inbound_record(value: bytes | None, received_at: datetime) -> Command:
    """A bare purchase or refund; its command id is derived from its business id (and a purchase's
    facts: the same id with another amount or date is another command, decided on its own)."""
    message = _validate(_inbound, value)
    return _or_invalid(lambda: _inbound_command(message, received_at))


def _or_invalid(build: Callable[[], R]) -> R:
    """What `build` makes of a valid message, or InvalidRecord for a value it cannot take (a time
    no calendar arithmetic can hold): never an exception that would stop the processor."""
    try:
        return build()
    except (ValueError, OverflowError) as error:
        raise InvalidRecord("invalid_message", str(error)) from None


def _inbound_command(message: PurchaseMessage | RefundMessage, received_at: datetime) -> Command:
    if isinstance(message, PurchaseMessage):
        when = message.occurred_at.astimezone(UTC).isoformat()
        key = f"purchase:{message.purchase_id}:{to_minor(message.amount)}:{when}"
    else:
        key = f"refund:{message.refund_id}"
    command_id = derived_id(INBOUND_NAMESPACE, f"{message.member_id}:{key}")
    return to_command(message, command_id, command_id, message.occurred_at, received_at)


def to_command(
    body: BaseModel,
    command_id: str,
    correlation_id: str,
    issued_at: datetime,
    received_at: datetime,
    keyed: bool = False,
) -> Command:
    """The domain command of a message. `issued_at` is the time of the commands the API sends;
    `received_at` (when the record reached the log) is what a purchase's or a refund's own date is
    judged against."""
    ids: dict[str, Any] = {"command_id": command_id, "correlation_id": correlation_id, "keyed": keyed}
    match body:
        case PurchaseMessage():
            return RecordPurchase(
                **ids,
                member_id=body.member_id,
                occurred_at=body.occurred_at.astimezone(UTC),
                received_at=received_at.astimezone(UTC),
                purchase_id=body.purchase_id,
                amount_minor=to_minor(body.amount),
                currency=body.currency,
                store_id=body.store_id,
                channel=body.channel,
                items=tuple(body.items or ()),
            )
        case RefundMessage():
            return RefundPurchase(
                **ids,
                member_id=body.member_id,
                occurred_at=body.occurred_at.astimezone(UTC),
                received_at=received_at.astimezone(UTC),
                refund_id=body.refund_id,
                purchase_id=body.purchase_id,
                amount_minor=to_minor(body.amount),
                items=tuple(body.items or ()),
            )
    at = issued_at.astimezone(UTC)
    match body:
        case RedemptionBody():
            return RedeemPoints(
                **ids,
                member_id=body.member_id,
                occurred_at=at,
                redemption_id=body.redemption_id,
                points=body.points,
                reward=body.reward,
            )
        case CancelBody():
            return CancelRedemption(
                **ids, member_id=body.member_id, occurred_at=at, redemption_id=body.redemption_id
            )
        case AdjustmentBody():
            return AdjustPoints(
                **ids,
                member_id=body.member_id,
                occurred_at=at,
                adjustment_id=body.adjustment_id,
                points=body.points,
                reason=body.reason,
                actor=body.actor,
            )
        case TierBody():
            return SetTier(
                **ids,
                member_id=body.member_id,
                occurred_at=at,
                tier=body.tier,
                reason=body.reason,
                actor=body.actor,
            )
        case EnrolBody():
            return EnrolMember(**ids, member_id=body.member_id, occurred_at=at, profile=body.profile)
        case ProfileBody():
            return UpdateProfile(**ids, member_id=body.member_id, occurred_at=at, profile=body.profile)
        case EraseBody():
            return ErasePersonalData(**ids, member_id=body.member_id, occurred_at=at, actor=body.actor)
    raise InvalidRecord("unsupported_type", f"{type(body).__name__} is not a command")


def _validate(adapter: TypeAdapter[M], value: bytes | None) -> M:
    if value is None:
        raise InvalidRecord("empty_value", "the record has no value")
    try:
        return adapter.validate_json(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in BODY_TYPES) or "value"
        raise InvalidRecord("invalid_message", f"{where}: {first['msg']}") from None
