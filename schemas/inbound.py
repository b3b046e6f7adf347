"""Messages that commerce services publish to loyalty.purchases.v1 (and POST to the ledger API)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.money import Amount, Currency

MEMBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
MemberId = Annotated[str, StringConstraints(pattern=MEMBER_ID_PATTERN)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class PurchaseItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    quantity: int = Field(ge=1, le=100_000)
    amount: Amount


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _plausible(moment: datetime) -> datetime:
    # Far dates cannot be a purchase, and the ledger's calendar arithmetic (expiry, windows,
    # years ahead and behind) must stay within what a datetime can hold.
    if not EARLIEST <= moment < LATEST:
        raise ValueError("occurred_at must be between 1970-01-01 and 2200-01-01")
    return moment


OccurredAt = Annotated[AwareDatetime, AfterValidator(_plausible)]


class PurchaseMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["purchase"] = "purchase"
    purchase_id: ExternalId
    member_id: MemberId
    amount: Amount
    currency: Currency
    occurred_at: OccurredAt
    store_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    channel: Annotated[str, StringConstraints(max_length=32)] | None = None
    items: list[PurchaseItem] | None = Field(default=None, max_length=500)


class RefundMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["refund"] = "refund"
    refund_id: ExternalId
    purchase_id: ExternalId
    member_id: MemberId
    amount: Amount
    currency: Currency
    occurred_at: OccurredAt
    # The items returned, as the purchase listed them: their points are reversed, category bonuses
    # included. Without items, the refund takes its share in proportion to the amount.
    items: list[PurchaseItem] | None = Field(default=None, max_length=500)


InboundMessage = Annotated[PurchaseMessage | RefundMessage, Field(discriminator="type")]
