"""Why a command is refused. Each maps to one problem type at the edges."""

from __future__ import annotations


class LedgerError(Exception):
    code = "ledger_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InsufficientPoints(LedgerError):
    code = "insufficient_points"


class RefundExceedsPurchase(LedgerError):
    code = "refund_exceeds_purchase"


class UnknownPurchase(LedgerError):
    code = "unknown_purchase"


class UnknownRedemption(LedgerError):
    code = "unknown_redemption"


class UnknownMember(LedgerError):
    code = "unknown_member"


class UnknownTier(LedgerError):
    code = "unknown_tier"


class RulesChangedWithoutNewVersion(LedgerError):
    code = "rules_changed_without_new_version"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class PurchaseTooOld(LedgerError):
    code = "purchase_too_old"


class MemberExists(LedgerError):
    code = "member_exists"


class PersonalDataWasErased(LedgerError):
    code = "personal_data_erased"


class DuplicatePurchase(LedgerError):
    """A purchase id the member still remembers, with other facts: a reused id, not a retry."""

    code = "duplicate_purchase"


class PurchaseInFuture(LedgerError):
    code = "purchase_in_future"


class RefundInFuture(LedgerError):
    """A refund dated past the tolerance after it arrived: its date would expire other lots early."""

    code = "refund_in_future"


class RefundWindowClosed(LedgerError):
    code = "refund_window_closed"


class IdempotencyKeyReused(LedgerError):
    """An Idempotency-Key sent again with another request: a retry must repeat the request exactly.

    Not a decision about the member: nothing is recorded, the caller is told.
    """

    code = "idempotency_key_reused"
