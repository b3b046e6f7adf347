"""What the read API answers: the response models that /docs documents."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Segment = Literal["active", "silent", "churned", "new"]


class Balance(BaseModel):
    """lifetime_earned + adjusted - redeemed - expired - reversed = available + pending."""

    available: int = Field(
        description="points that can be redeemed now; below zero after a refund of spent points"
    )
    pending: int = Field(description="points earned but still in the return window")
    lifetime_earned: int = Field(description="points earned on purchases")
    adjusted: int = Field(description="points added (or removed, below zero) by hand")
    redeemed: int = Field(description="points redeemed, less cancelled redemptions")
    expired: int
    reversed: int = Field(description="points taken back by refunds")
    debt: int = Field(
        description="reversed points that were already spent and that later earnings have not repaid "
        "yet; `available` counts them"
    )


class BalanceAt(Balance):
    member_id: str
    as_of: datetime | None = Field(description="business time the balance is computed at; null means now")
    known_at: datetime | None = Field(description="only events recorded by then are counted")
    position: str = Field(description="the read models include the member's events up to this position")


class NextTier(BaseModel):
    tier: str
    spend_needed_minor: int
    purchases_needed: int


class TierStatus(BaseModel):
    tier: str
    benefit: str
    since: datetime | None
    next_evaluation_at: datetime | None
    qualifying_spend_minor: int = Field(description="net spend in the rolling qualifying window")
    purchase_count: int = Field(description="purchases in the window not refunded in full")
    window_start: datetime
    next: NextTier | None = Field(description="what is missing to reach the next tier; null at the top")


class ProfileFields(BaseModel):
    """A profile, in clear (`/profile`, scope pii:read) or masked (`GET /v1/members/{id}`)."""

    erased: bool = Field(default=False, description="the personal data was erased: nothing can be read")
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    birthday: str | None = None


class ProfileView(ProfileFields):
    member_id: str


class Member(BaseModel):
    member_id: str
    enrolled_at: datetime
    balance: Balance
    tier: TierStatus
    segment: Segment
    favourite_category: str | None
    last_purchase_at: datetime | None
    last_activity_at: datetime
    profile: ProfileFields | None = Field(description="masked; null when the member has no profile")
    position: str


class TierChange(BaseModel):
    sequence: int
    occurred_at: datetime
    from_tier: str
    to_tier: str
    reason: str
    qualifying_spend_minor: int
    purchase_count: int
    note: str | None
    actor: str | None


class TierView(TierStatus):
    member_id: str
    history: list[TierChange] = Field(description="newest first")


class Lot(BaseModel):
    lot_id: str
    points: int
    expires_at: datetime | None
    matures_at: datetime | None = Field(description="set while the points are pending")


class Lots(BaseModel):
    member_id: str
    lots: list[Lot] = Field(description="soonest expiry first")


class ActivityItem(BaseModel):
    sequence: int
    type: str
    occurred_at: datetime
    points: int = Field(description="change in available plus pending points")
    amount_minor: int | None
    reference: str | None = Field(description="the purchase, refund, redemption, adjustment or lot concerned")


class Page(BaseModel):
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class Activity(Page):
    member_id: str
    items: list[ActivityItem] = Field(description="newest first")


class History(Page):
    member_id: str
    events: list[dict[str, Any]] = Field(
        description="the member's events as in the log, in sequence, at the current version of their type"
    )


class SegmentMember(BaseModel):
    member_id: str
    tier: str
    last_purchase_at: datetime | None


class SegmentMembers(Page):
    segment: str
    members: list[SegmentMember] = Field(description="by member id")


class PeriodMetrics(BaseModel):
    start: date
    end: date = Field(description="exclusive")
    members_at_start: int
    members_at_end: int
    new_members: int
    growth_rate: float | None = Field(description="(members at end - at start) / at start")
    active_members: int = Field(description="members with a purchase in the period")
    activity_rate: float | None = Field(description="active members / members at end")
    purchases: int
    spend_minor: int
    refunded_minor: int
    spend_per_active_member_minor: int | None = Field(description="net spend / active members")
    points_earned: int
    points_redeemed: int
    points_expired: int
    points_reversed: int
    points_adjusted: int = Field(description="points added less points removed by hand")
    breakage_rate: float | None = Field(description="expired / earned in the period")
    lifetime_breakage_rate: float | None = Field(description="expired / earned up to the end")
    liability_points: int = Field(
        description="points owed to members at the end: the sum of balances (available + pending) above "
        "zero; one member's debt is not netted against another's points"
    )
    liability_minor: int = Field(
        description="their redemption value, CNY minor units, at the value of a point in force at the end"
    )
    owed_by_members_points: int = Field(
        description="the sum of balances below zero at the end (refunds of points already spent); "
        "liability_points - owed_by_members_points is the net outstanding"
    )
    promotions: int
    demotions: int
    tier_distribution: dict[str, int] = Field(description="members per tier at the end")


class ProgramMetrics(BaseModel):
    period: Literal["day", "month"]
    currency: str = "CNY"
    rules_version: int
    periods: list[PeriodMetrics]


class Health(BaseModel):
    status: str
    lag: int | None = None
