"""decide(account, command, rules) -> event data: the ledger's only decision function.

Each handler checks first and raises a LedgerError, or returns the complete list of what
happens; it never mutates the account. An empty list means the command was already decided.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import singledispatch

from schemas.events import (
    EventData,
    LotPoints,
    MemberEnrolled,
    PersonalDataErased,
    PointsAdjusted,
    PointsEarned,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsRestored,
    PointsReversed,
    ProfileUpdated,
    ProgramRulesChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    RedemptionCancelled,
    TierChanged,
    TierRetained,
)
from schemas.money import CURRENCY
from schemas.rules import ProgramRules
from services.ledger.domain import lots as lot_ops
from services.ledger.domain.account import Account, Purchase
from services.ledger.domain.calendar import add_days, add_months
from services.ledger.domain.commands import (
    AdjustPoints,
    AdvanceClock,
    CancelRedemption,
    Command,
    EnrolMember,
    ErasePersonalData,
    RecordPurchase,
    RecordRules,
    RedeemPoints,
    RefundPurchase,
    SetTier,
    UpdateProfile,
)
from services.ledger.domain.earning import points_for
from services.ledger.domain.errors import (
    DuplicatePurchase,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidAmount,
    MemberExists,
    PersonalDataWasErased,
    PurchaseInFuture,
    PurchaseTooOld,
    RefundExceedsPurchase,
    RefundInFuture,
    RefundWindowClosed,
    RulesChangedWithoutNewVersion,
    UnknownMember,
    UnknownPurchase,
    UnknownRedemption,
    UnknownTier,
)
from services.ledger.domain.lots import Lot
from services.ledger.domain.refunds import points_to_reverse
from services.ledger.domain.tiers import current_index, qualified_index, window_at


def decide(account: Account, command: Command, rules: ProgramRules) -> list[EventData]:
    if original_command(account, command) is not None:
        return []
    return _decide(command, account, rules)


def original_command(account: Account, command: Command) -> str | None:
    """The id of the command that already did what `command` asks, if any.

    Raises IdempotencyKeyReused for a command whose Idempotency-Key another request was sent under.
    """
    if command.command_id in account.outcomes:
        return command.command_id
    if command.keyed:
        key = command.correlation_id
        if key in account.outcomes:  # decided before requests were told apart: taken as this one
            return key
        if any(outcome.key == key for outcome in account.outcomes.values()):
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for another request to this member; a retry must "
                "repeat the original request exactly, and a new request needs a new key"
            )
    match command:
        case RecordPurchase() if _same_purchase(account.purchases.get(command.purchase_id), command):
            return account.purchases[command.purchase_id].command_id
        case RefundPurchase() if command.refund_id in account.refunds:
            return account.refunds[command.refund_id]
        case RedeemPoints() if command.redemption_id in account.redemptions:
            return account.redemptions[command.redemption_id].command_id
        case AdjustPoints() if command.adjustment_id in account.adjustments:
            return account.adjustments[command.adjustment_id]
    return None


def _same_purchase(known: Purchase | None, command: RecordPurchase) -> bool:
    """A purchase sent again (same id, amount and date) is a retry; the same id with other facts
    is a reused id, and is rejected as long as the member remembers the first purchase."""
    return (
        known is not None
        and known.amount_minor == command.amount_minor
        and known.occurred_at == command.occurred_at
    )


@singledispatch
def _decide(command: Command, account: Account, rules: ProgramRules) -> list[EventData]:
    raise TypeError(f"no decision for {type(command).__name__}")


@_decide.register
def _purchase(command: RecordPurchase, account: Account, rules: ProgramRules) -> list[EventData]:
    if command.purchase_id in account.purchases:
        raise DuplicatePurchase(
            f"purchase {command.purchase_id!r} is already recorded with another amount or date; "
            "a purchase id can be used again once the member's refund and qualifying windows forgot it"
        )
    latest = command.received_at + timedelta(hours=rules.future_tolerance_hours)
    if command.occurred_at > latest:
        raise PurchaseInFuture(
            f"the purchase is dated {command.occurred_at.isoformat()}, after {latest.isoformat()}: "
            f"more than {rules.future_tolerance_hours} hours after it arrived"
        )
    if account.forgotten_before is not None and command.occurred_at < account.forgotten_before:
        raise PurchaseTooOld(
            f"purchases before {account.forgotten_before.isoformat()} are past the refund and qualifying "
            "windows and can no longer be recorded"
        )
    events: list[EventData] = []
    if not account.enrolled:
        events.append(MemberEnrolled(via="purchase", tier=rules.tiers[0].name))
    tier_index = current_index(account, rules)
    events.append(
        PurchaseRecorded(
            purchase_id=command.purchase_id,
            amount_minor=command.amount_minor,
            currency=command.currency,
            store_id=command.store_id,
            channel=command.channel,
            items=command.items,
            forget_before=_forget_before(account, command, rules),
        )
    )
    # The tier in force when the purchase is made sets its multiplier; a promotion it causes
    # counts from the next purchase.
    points, rule = points_for(command, rules.tiers[tier_index], rules)
    if points > 0:
        pending = rules.pending_days > 0
        expires_at = add_months(command.occurred_at, rules.expiry_months)
        # Points of a late purchase whose lot is already past its expiry cannot be spent, and
        # repaying a debt is spending them: they wait for their expiry like any lapsed lot.
        spendable = not pending and expires_at > command.received_at
        events.append(
            PointsEarned(
                purchase_id=command.purchase_id,
                # Every earning is its own lot, named after the event that opens it.
                lot_id=f"purchase:{command.purchase_id}@{account.sequence + len(events) + 1}",
                points=points,
                expires_at=expires_at,
                matures_at=add_days(command.occurred_at, rules.pending_days) if pending else None,
                debt_repaid=min(account.debt, points) if spendable else 0,
                rule=rule,
            )
        )
    if tier_index == len(rules.tiers) - 1:  # no promotion above the top: the window is not needed
        return events
    # The window as it stands when the purchase is known, not at its own date: a purchase that
    # arrives after later ones still counts with them.
    purchases = {
        **account.purchases,
        command.purchase_id: Purchase(
            command_id=command.command_id, amount_minor=command.amount_minor, occurred_at=command.occurred_at
        ),
    }
    now = max(command.occurred_at, command.received_at)
    window = window_at(purchases, now, rules)
    qualified = qualified_index(window, rules)
    if qualified > tier_index:
        events.append(
            TierChanged(
                from_tier=rules.tiers[tier_index].name,
                to_tier=rules.tiers[qualified].name,
                reason="promotion",
                qualifying_spend_minor=window.spend_minor,
                purchase_count=window.purchases,
                next_evaluation_at=add_months(now, rules.evaluation_months),
            )
        )
    return events


def _forget_before(account: Account, command: RecordPurchase, rules: ProgramRules) -> datetime:
    """The oldest instant the account still needs: refunds, the window of the pending evaluation,
    this purchase.

    It follows the clock of arrival, never a purchase's own date: one purchase dated years ahead
    must not make the member's real purchases too old to record or refund.
    """
    needed = [
        add_months(command.received_at, -rules.qualifying_window_months),
        add_days(command.received_at, -rules.refund_window_days),
        command.occurred_at,
    ]
    if account.next_evaluation_at is not None:
        needed.append(add_months(account.next_evaluation_at, -rules.qualifying_window_months))
    horizon = min(needed)
    return horizon if account.forgotten_before is None else max(horizon, account.forgotten_before)


@_decide.register
def _refund(command: RefundPurchase, account: Account, rules: ProgramRules) -> list[EventData]:
    purchase = account.purchases.get(command.purchase_id)
    if purchase is None:
        raise UnknownPurchase(
            f"member has no purchase {command.purchase_id!r} (or it is past the refund window)"
        )
    if command.amount_minor <= 0:
        raise InvalidAmount("a refund amount must be positive")
    latest = command.received_at + timedelta(hours=rules.future_tolerance_hours)
    if command.occurred_at > latest:
        # Its date is when lapsed lots expire: one dated ahead would expire other points early.
        raise RefundInFuture(
            f"the refund is dated {command.occurred_at.isoformat()}, after {latest.isoformat()}: "
            f"more than {rules.future_tolerance_hours} hours after it arrived"
        )
    closed = add_days(purchase.occurred_at, rules.refund_window_days)
    if command.occurred_at > closed:
        raise RefundWindowClosed(
            f"purchase {command.purchase_id!r} could be refunded until {closed.isoformat()} "
            f"({rules.refund_window_days} days)"
        )
    refundable = purchase.amount_minor - purchase.refunded_minor
    if command.amount_minor > refundable:
        raise RefundExceedsPurchase(
            f"refund of {command.amount_minor} exceeds the {refundable} still refundable "
            f"on {command.purchase_id!r}"
        )
    live, lapsed = lot_ops.lapse(account.lots, command.occurred_at)
    events = _expired(lapsed)
    events.append(
        PurchaseRefunded(
            refund_id=command.refund_id,
            purchase_id=command.purchase_id,
            amount_minor=command.amount_minor,
            refunded_total_minor=purchase.refunded_minor + command.amount_minor,
            items=command.items,
        )
    )
    own_lapsed = sum(item.points for item in lapsed if item.lot_id == purchase.lot_id)
    to_reverse = points_to_reverse(purchase, command, own_lapsed)
    if to_reverse > 0:
        events.append(_reversal(account, live, purchase.lot_id, command, to_reverse))
    return events


def _reversal(
    account: Account, live: tuple[Lot, ...], lot_id: str, command: RefundPurchase, points: int
) -> PointsReversed:
    """Take the points back: still-pending ones first, then the purchase's own lot, then the oldest lots.

    Whatever cannot be taken was already spent; it becomes debt, and the balance goes below zero.
    """
    pending = [
        LotPoints(lot_id=lot.lot_id, points=lot.points, expires_at=lot.expires_at)
        for lot in account.pending
        if lot.lot_id == lot_id
    ]
    from_pending, _ = lot_ops.split_front(pending, points)
    remaining = points - sum(item.points for item in from_pending)
    own_first = sorted(live, key=lambda lot: lot.lot_id != lot_id)
    from_lots = lot_ops.take_oldest(tuple(own_first), remaining)
    remaining -= sum(item.points for item in from_lots)
    return PointsReversed(
        refund_id=command.refund_id,
        purchase_id=command.purchase_id,
        points=points,
        from_pending=from_pending,
        from_lots=from_lots,
        debt_added=remaining,
    )


def _expired(lapsed: tuple[LotPoints, ...]) -> list[EventData]:
    """Lots past their expiry expire before a decision spends or takes back points."""
    return [PointsExpired(points=sum(item.points for item in lapsed), lots=lapsed)] if lapsed else []


@_decide.register
def _redeem(command: RedeemPoints, account: Account, rules: ProgramRules) -> list[EventData]:
    _require_member(account)
    if command.points <= 0:
        raise InvalidAmount("a redemption needs a positive number of points")
    live, lapsed = lot_ops.lapse(account.lots, command.occurred_at)
    available = sum(lot.points for lot in live) - account.debt
    if command.points > available:
        raise InsufficientPoints(f"{command.points} points requested, {max(available, 0)} available")
    return [
        *_expired(lapsed),
        PointsRedeemed(
            redemption_id=command.redemption_id,
            points=command.points,
            reward=command.reward,
            value_minor=command.points * rules.redemption_value_minor_per_point,
            currency=CURRENCY,
            from_lots=lot_ops.take_oldest(live, command.points),
        ),
    ]


@_decide.register
def _cancel(command: CancelRedemption, account: Account, rules: ProgramRules) -> list[EventData]:
    redemption = account.redemptions.get(command.redemption_id)
    if redemption is None:
        raise UnknownRedemption(
            f"member has no redemption {command.redemption_id!r} (a redemption is forgotten once "
            "its points would have expired, and can no longer be cancelled)"
        )
    if redemption.cancelled:
        return []
    now = command.occurred_at
    returned = sorted(redemption.from_lots, key=lambda item: (item.expires_at, item.lot_id))
    # Only points still alive repay a debt; those of a lot that expired meanwhile go back to it
    # and straight on to expiry.
    live = [item for item in returned if item.expires_at > now]
    repaying, restored = lot_ops.split_front(live, account.debt)
    to_lots = tuple(
        sorted(
            [*restored, *(item for item in returned if item.expires_at <= now)],
            key=lambda item: (item.expires_at, item.lot_id),
        )
    )
    events: list[EventData] = [
        RedemptionCancelled(redemption_id=command.redemption_id, points=redemption.points),
        PointsRestored(
            redemption_id=command.redemption_id,
            points=redemption.points,
            to_lots=to_lots,
            debt_repaid=sum(item.points for item in repaying),
        ),
    ]
    lapsed = tuple(item for item in to_lots if item.expires_at <= now)
    if lapsed:
        events.append(PointsExpired(points=sum(item.points for item in lapsed), lots=lapsed))
    return events


@_decide.register
def _adjust(command: AdjustPoints, account: Account, rules: ProgramRules) -> list[EventData]:
    _require_member(account)
    if command.points == 0:
        raise InvalidAmount("an adjustment needs a non-zero number of points")
    if command.points > 0:
        return [
            PointsAdjusted(
                adjustment_id=command.adjustment_id,
                points=command.points,
                reason=command.reason,
                actor=command.actor,
                lot_id=f"adjustment:{command.adjustment_id}@{account.sequence + 1}",
                expires_at=add_months(command.occurred_at, rules.expiry_months),
                debt_repaid=min(account.debt, command.points),
            )
        ]
    live, lapsed = lot_ops.lapse(account.lots, command.occurred_at)
    available = sum(lot.points for lot in live) - account.debt
    if -command.points > available:
        raise InsufficientPoints(f"cannot remove {-command.points} points, {max(available, 0)} available")
    return [
        *_expired(lapsed),
        PointsAdjusted(
            adjustment_id=command.adjustment_id,
            points=command.points,
            reason=command.reason,
            actor=command.actor,
            from_lots=lot_ops.take_oldest(live, -command.points),
        ),
    ]


@_decide.register
def _set_tier(command: SetTier, account: Account, rules: ProgramRules) -> list[EventData]:
    _require_member(account)
    names = [tier.name for tier in rules.tiers]
    if command.tier not in names:
        raise UnknownTier(f"unknown tier {command.tier!r}; the tiers are {', '.join(names)}")
    current = rules.tiers[current_index(account, rules)].name
    if command.tier == current:
        return []
    window = window_at(account.purchases, command.occurred_at, rules)
    return [
        TierChanged(
            from_tier=current,
            to_tier=command.tier,
            reason="manual",
            qualifying_spend_minor=window.spend_minor,
            purchase_count=window.purchases,
            next_evaluation_at=(
                add_months(command.occurred_at, rules.evaluation_months) if command.tier != names[0] else None
            ),
            note=command.reason,
            actor=command.actor,
        )
    ]


@_decide.register
def _advance_clock(command: AdvanceClock, account: Account, rules: ProgramRules) -> list[EventData]:
    now = command.occurred_at
    events: list[EventData] = []
    debt = account.debt
    matured: list[LotPoints] = []
    for lot in sorted(account.pending, key=lambda lot: (lot.matures_at, lot.lot_id)):
        if lot.matures_at <= now:
            # A lot that matures past its expiry (ticks were missed) expires without repaying.
            repaid = min(debt, lot.points) if lot.expires_at > now else 0
            debt -= repaid
            events.append(PointsMatured(lot_id=lot.lot_id, points=lot.points, debt_repaid=repaid))
            matured.append(
                LotPoints(lot_id=lot.lot_id, points=lot.points - repaid, expires_at=lot.expires_at)
            )
    lapsed = tuple(
        LotPoints(lot_id=lot.lot_id, points=lot.points, expires_at=lot.expires_at)
        for lot in lot_ops.add(account.lots, matured)
        if lot.expires_at <= now
    )
    if lapsed:
        events.append(PointsExpired(points=sum(item.points for item in lapsed), lots=lapsed))
    evaluation = account.next_evaluation_at
    tier_index = current_index(account, rules)
    if evaluation is not None and evaluation <= now and tier_index > 0:
        window = window_at(account.purchases, evaluation, rules)
        following = add_months(evaluation, rules.evaluation_months)
        if qualified_index(window, rules) < tier_index:
            events.append(
                TierChanged(
                    from_tier=rules.tiers[tier_index].name,
                    to_tier=rules.tiers[tier_index - 1].name,
                    reason="demotion",
                    qualifying_spend_minor=window.spend_minor,
                    purchase_count=window.purchases,
                    next_evaluation_at=following if tier_index > 1 else None,
                )
            )
        else:
            events.append(
                TierRetained(
                    tier=rules.tiers[tier_index].name,
                    qualifying_spend_minor=window.spend_minor,
                    purchase_count=window.purchases,
                    next_evaluation_at=following,
                )
            )
    return events


@_decide.register
def _record_rules(command: RecordRules, account: Account, rules: ProgramRules) -> list[EventData]:
    fingerprint = rules.fingerprint()
    if rules.version == account.rules_version and fingerprint == account.rules_fingerprint:
        return []
    if rules.version <= account.rules_version:
        raise RulesChangedWithoutNewVersion(
            f"the rules differ from version {account.rules_version} recorded in the log; "
            "give them a new version"
        )
    return [
        ProgramRulesChanged(
            version=rules.version, fingerprint=fingerprint, rules=rules.model_dump(mode="json")
        )
    ]


@_decide.register
def _enrol(command: EnrolMember, account: Account, rules: ProgramRules) -> list[EventData]:
    """A new member with a profile; a member a purchase enrolled gets the profile as an update."""
    if account.erased:
        raise PersonalDataWasErased(f"the personal data of {account.member_id!r} was erased")
    if not account.enrolled:
        return [MemberEnrolled(via="api", tier=rules.tiers[0].name, profile=command.profile)]
    if account.has_profile:
        raise MemberExists(f"{account.member_id!r} is already enrolled with a profile")
    return [ProfileUpdated(profile=command.profile)]


@_decide.register
def _update_profile(command: UpdateProfile, account: Account, rules: ProgramRules) -> list[EventData]:
    _require_member(account)
    if account.erased:
        raise PersonalDataWasErased(f"the personal data of {account.member_id!r} was erased")
    return [ProfileUpdated(profile=command.profile)]


@_decide.register
def _erase(command: ErasePersonalData, account: Account, rules: ProgramRules) -> list[EventData]:
    _require_member(account)
    return [] if account.erased else [PersonalDataErased(actor=command.actor)]


def _require_member(account: Account) -> None:
    if not account.enrolled:
        raise UnknownMember(f"no member {account.member_id!r}")
