"""Messages that commerce services publish to loyalty.purchases.v1 (and POST to the ledger API)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

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


class PurchaseMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["purchase"] = "purchase"
    purchase_id: ExternalId
    member_id: MemberId
    amount: Amount
    currency: Currency
    occurred_at: AwareDatetime
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
    occurred_at: AwareDatetime


InboundMessage = Annotated[PurchaseMessage | RefundMessage, Field(discriminator="type")]
