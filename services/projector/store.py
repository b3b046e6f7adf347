"""The read models in Postgres: batch writes together with the projector's checkpoint."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg
from psycopg.types.json import Jsonb

from services.projector.fold import Folded


def checkpoints(conn: psycopg.Connection, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM projector_checkpoints WHERE topic = %s AND partition = ANY(%s)",
        (topic, list(partitions)),
    ).fetchall()
    return {int(partition): int(offset) for partition, offset in rows}


def lock_partitions(conn: psycopg.Connection, topic: str, partitions: Iterable[int]) -> None:
    """Serialise writers of the same partitions until the transaction ends.

    Two instances hold the same partition only around a rebalance; the lock makes the later one
    see the earlier one's members, so sequence checks catch every duplicate, new members included.
    """
    for partition in sorted(partitions):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (topic, partition))


def last_sequences(conn: psycopg.Connection, member_ids: Iterable[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT member_id, last_sequence FROM members WHERE member_id = ANY(%s)", (list(member_ids),)
    ).fetchall()
    return {str(member): int(sequence) for member, sequence in rows}


def write(
    conn: psycopg.Connection,
    folded: Folded,
    topic: str,
    batch: dict[int, tuple[int, int]],
    started: float,
) -> None:
    """Read models and checkpoint in the caller's transaction: both land, or neither.

    `batch` maps each partition to (next offset, records read); `started` is when the batch
    began (time.monotonic), for the apply-time statistics. The events go by COPY, the rest in
    one pipeline; rows are written in key order so that two instances cannot deadlock.
    """
    with conn.cursor() as cur:
        _events(cur, folded)
        with conn.pipeline():
            _members(cur, folded)
            _lots(cur, folded)
            _purchases(cur, folded)
            _tiers(cur, folded)
            _program(cur, folded)
            cur.executemany(
                "INSERT INTO projector_skips AS s (topic, reason, events) VALUES (%s, %s, %s) "
                "ON CONFLICT (topic, reason) DO UPDATE SET events = s.events + EXCLUDED.events",
                [(topic, reason, n) for reason, n in sorted(folded.skipped.items())],
            )
        # The batch's time is shared among its partitions by their share of its records.
        seconds = time.monotonic() - started
        total = sum(records for _, records in batch.values()) or 1
        cur.executemany(
            """
            INSERT INTO projector_checkpoints (topic, partition, next_offset, updated_at, batches, records,
                                               apply_seconds)
            VALUES (%s, %s, %s, now(), 1, %s, %s)
            ON CONFLICT (topic, partition) DO UPDATE SET
                next_offset = GREATEST(projector_checkpoints.next_offset, EXCLUDED.next_offset),
                updated_at = EXCLUDED.updated_at,
                batches = projector_checkpoints.batches + 1,
                records = projector_checkpoints.records + EXCLUDED.records,
                apply_seconds = projector_checkpoints.apply_seconds + EXCLUDED.apply_seconds
            """,
            [
                (topic, partition, offset, records, seconds * records / total)
                for partition, (offset, records) in sorted(batch.items())
            ],
        )


def _members(cur: psycopg.Cursor, folded: Folded) -> None:
    cur.executemany(
        """
        INSERT INTO members AS m (member_id, last_sequence, last_event_at, enrolled_at, available, pending,
            lifetime_earned, redeemed, expired, reversed, adjusted, tier, tier_changed_at,
            next_evaluation_at, last_purchase_at, purchases, spend_minor, refunded_minor)
        VALUES (%(member)s, %(last_sequence)s, %(last_event_at)s, %(enrolled_at)s, %(available)s,
            %(pending)s, %(lifetime_earned)s, %(redeemed)s, %(expired)s, %(reversed)s, %(adjusted)s,
            %(tier)s, %(tier_changed_at)s, %(next_evaluation_at)s, %(last_purchase_at)s, %(purchases)s,
            %(spend_minor)s, %(refunded_minor)s)
        ON CONFLICT (member_id) DO UPDATE SET
            last_sequence = EXCLUDED.last_sequence,
            last_event_at = GREATEST(m.last_event_at, EXCLUDED.last_event_at),
            enrolled_at = COALESCE(m.enrolled_at, EXCLUDED.enrolled_at),
            available = m.available + EXCLUDED.available,
            pending = m.pending + EXCLUDED.pending,
            lifetime_earned = m.lifetime_earned + EXCLUDED.lifetime_earned,
            redeemed = m.redeemed + EXCLUDED.redeemed,
            expired = m.expired + EXCLUDED.expired,
            reversed = m.reversed + EXCLUDED.reversed,
            adjusted = m.adjusted + EXCLUDED.adjusted,
            tier = COALESCE(EXCLUDED.tier, m.tier),
            tier_changed_at = COALESCE(EXCLUDED.tier_changed_at, m.tier_changed_at),
            next_evaluation_at = CASE WHEN %(evaluation_set)s THEN EXCLUDED.next_evaluation_at
                                      ELSE m.next_evaluation_at END,
            last_purchase_at = GREATEST(m.last_purchase_at, EXCLUDED.last_purchase_at),
            purchases = m.purchases + EXCLUDED.purchases,
            spend_minor = m.spend_minor + EXCLUDED.spend_minor,
            refunded_minor = m.refunded_minor + EXCLUDED.refunded_minor
        """,
        [
            {
                "member": member,
                "last_sequence": c.last_sequence,
                "last_event_at": c.last_event_at,
                "enrolled_at": c.enrolled_at,
                "available": c.available,
                "pending": c.pending,
                "lifetime_earned": c.lifetime_earned,
                "redeemed": c.redeemed,
                "expired": c.expired,
                "reversed": c.reversed,
                "adjusted": c.adjusted,
                "tier": c.tier,
                "tier_changed_at": c.tier_changed_at,
                "evaluation_set": c.evaluation_set,
                "next_evaluation_at": c.next_evaluation_at,
                "last_purchase_at": c.last_purchase_at,
                "purchases": c.purchases,
                "spend_minor": c.spend_minor,
                "refunded_minor": c.refunded_minor,
            }
            for member, c in sorted(folded.members.items())
        ],
    )


def _events(cur: psycopg.Cursor, folded: Folded) -> None:
    with cur.copy(
        "COPY member_events (member_id, sequence, type, occurred_at, recorded_at, available, pending, "
        "lifetime_earned, redeemed, expired, reversed, amount_minor, reference, event) FROM STDIN"
    ) as copy:
        for row in folded.events:
            event, change = row.event, row.change
            copy.write_row(
                (
                    event.member_id,
                    event.sequence,
                    event.type,
                    event.occurred_at,
                    event.recorded_at,
                    change.available,
                    change.pending,
                    change.lifetime_earned,
                    change.redeemed,
                    change.expired,
                    change.reversed,
                    row.amount_minor,
                    row.reference,
                    row.raw,
                )
            )


def _lots(cur: psycopg.Cursor, folded: Folded) -> None:
    if not folded.lots:
        return
    cur.executemany(
        """
        INSERT INTO member_lots AS l (member_id, lot_id, points, expires_at, matures_at)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (member_id, lot_id) DO UPDATE SET
            points = l.points + EXCLUDED.points,
            expires_at = COALESCE(EXCLUDED.expires_at, l.expires_at),
            matures_at = CASE WHEN %s THEN NULL ELSE COALESCE(EXCLUDED.matures_at, l.matures_at) END
        """,
        [
            (member, lot_id, lot.points, lot.expires_at, lot.matures_at, lot.matured)
            for (member, lot_id), lot in sorted(folded.lots.items())
        ],
    )
    cur.execute(
        "DELETE FROM member_lots WHERE member_id = ANY(%s) AND points <= 0",
        (sorted({member for member, _ in folded.lots}),),
    )


def _purchases(cur: psycopg.Cursor, folded: Folded) -> None:
    if folded.purchases:
        cur.executemany(
            "INSERT INTO member_purchases (member_id, purchase_id, occurred_at, amount_minor) "
            "VALUES (%s, %s, %s, %s)",
            [
                (member, purchase_id, p.occurred_at, p.amount_minor)
                for (member, purchase_id), p in sorted(folded.purchases.items())
            ],
        )
    if folded.refunds:
        cur.executemany(
            "UPDATE member_purchases SET refunded_minor = %s WHERE member_id = %s AND purchase_id = %s",
            [(total, member, purchase_id) for (member, purchase_id), total in sorted(folded.refunds.items())],
        )
    if folded.categories:
        cur.executemany(
            """
            INSERT INTO member_categories AS c (member_id, category, spend_minor, purchases)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (member_id, category) DO UPDATE SET
                spend_minor = c.spend_minor + EXCLUDED.spend_minor,
                purchases = c.purchases + EXCLUDED.purchases
            """,
            [(m, category, s, n) for (m, category), (s, n) in sorted(folded.categories.items())],
        )


def _tiers(cur: psycopg.Cursor, folded: Folded) -> None:
    if not folded.tier_history:
        return
    rows = [
        (
            event.member_id,
            event.sequence,
            event.occurred_at,
            data.from_tier,
            data.to_tier,
            data.reason,
            data.qualifying_spend_minor,
            data.purchase_count,
            data.note,
            data.actor,
        )
        for event, data in folded.tier_history
    ]
    cur.executemany(
        "INSERT INTO tier_history (member_id, sequence, occurred_at, from_tier, to_tier, reason, "
        "qualifying_spend_minor, purchase_count, note, actor) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        rows,
    )


def _program(cur: psycopg.Cursor, folded: Folded) -> None:
    if folded.days:
        cur.executemany(
            """
            INSERT INTO program_days AS d (day, enrolments, purchases, spend_minor, refunded_minor,
                points_earned, points_redeemed, points_expired, points_reversed, points_adjusted,
                points_outstanding, promotions, demotions)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (day) DO UPDATE SET
                enrolments = d.enrolments + EXCLUDED.enrolments,
                purchases = d.purchases + EXCLUDED.purchases,
                spend_minor = d.spend_minor + EXCLUDED.spend_minor,
                refunded_minor = d.refunded_minor + EXCLUDED.refunded_minor,
                points_earned = d.points_earned + EXCLUDED.points_earned,
                points_redeemed = d.points_redeemed + EXCLUDED.points_redeemed,
                points_expired = d.points_expired + EXCLUDED.points_expired,
                points_reversed = d.points_reversed + EXCLUDED.points_reversed,
                points_adjusted = d.points_adjusted + EXCLUDED.points_adjusted,
                points_outstanding = d.points_outstanding + EXCLUDED.points_outstanding,
                promotions = d.promotions + EXCLUDED.promotions,
                demotions = d.demotions + EXCLUDED.demotions
            """,
            [
                (
                    day,
                    c.enrolments,
                    c.purchases,
                    c.spend_minor,
                    c.refunded_minor,
                    c.points_earned,
                    c.points_redeemed,
                    c.points_expired,
                    c.points_reversed,
                    c.points_adjusted,
                    c.points_outstanding,
                    c.promotions,
                    c.demotions,
                )
                for day, c in sorted(folded.days.items())
            ],
        )
    if folded.tier_days:
        cur.executemany(
            """
            INSERT INTO program_tier_days AS t (day, tier, members) VALUES (%s, %s, %s)
            ON CONFLICT (day, tier) DO UPDATE SET members = t.members + EXCLUDED.members
            """,
            [(day, tier, n) for (day, tier), n in sorted(folded.tier_days.items())],
        )
    for event, data in folded.rules:
        cur.execute(
            "INSERT INTO program_rules (version, fingerprint, rules, occurred_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (version) DO NOTHING",
            (data.version, data.fingerprint, Jsonb(data.rules), event.occurred_at),
        )
