"""The whole-account state record of the second layout, as earlier versions wrote it.

The processor only reads these now (a changelog written before keyed records); this writer
makes samples for the tests of that reading.
"""

from __future__ import annotations

import orjson

from services.ledger.domain.account import Account


def second_layout(account: Account) -> bytes:
    a = account
    return orjson.dumps(
        {
            "format": 2,
            "member_id": a.member_id,
            "sequence": a.sequence,
            "last_hash": a.last_hash,
            "enrolled": a.enrolled,
            "has_profile": a.has_profile,
            "erased": a.erased,
            "tier": a.tier,
            "next_evaluation_at": a.next_evaluation_at,
            "lots": [(lot.lot_id, lot.points, lot.expires_at) for lot in a.lots],
            "pending": [(lot.lot_id, lot.points, lot.expires_at, lot.matures_at) for lot in a.pending],
            "debt": a.debt,
            "lifetime_earned": a.lifetime_earned,
            "redeemed": a.redeemed,
            "expired": a.expired,
            "reversed": a.reversed,
            "adjusted": a.adjusted,
            "purchases": {
                purchase_id: (
                    p.command_id,
                    p.amount_minor,
                    p.occurred_at,
                    p.refunded_minor,
                    p.points_earned,
                    p.points_reversed,
                )
                for purchase_id, p in a.purchases.items()
            },
            "refunds": a.refunds,
            "redemptions": {
                redemption_id: (
                    r.command_id,
                    r.points,
                    [(item.lot_id, item.points, item.expires_at) for item in r.from_lots],
                    r.cancelled,
                )
                for redemption_id, r in a.redemptions.items()
            },
            "adjustments": a.adjustments,
            "outcomes": {
                command_id: (o.first_sequence, o.last_sequence, o.rejected)
                for command_id, o in a.outcomes.items()
            },
            "rules_version": a.rules_version,
            "rules_fingerprint": a.rules_fingerprint,
            "forgotten_before": a.forgotten_before,
        }
    )
