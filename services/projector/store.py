"""The read models in Postgres: batch writes together with the projector's checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from services.projector.fold import Folded


def checkpoints(conn: psycopg.Connection, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM projector_checkpoints WHERE topic = %s AND partition = ANY(%s)",
        (topic, list(partitions)),
    ).fetchall()
    return {int(partition): int(offset) for partition, offset in rows}


def last_sequences(conn: psycopg.Connection, member_ids: Iterable[str]) -> dict[str, int]:
    """The members' last applied sequences, locking their rows until the batch commits."""
    rows = conn.execute(
        "SELECT member_id, last_sequence FROM member_balances WHERE member_id = ANY(%s) FOR UPDATE",
        (list(member_ids),),
    ).fetchall()
    return {str(member): int(sequence) for member, sequence in rows}


def write(conn: psycopg.Connection, folded: Folded, topic: str, next_offsets: dict[int, int]) -> None:
    """Read models and checkpoint in the caller's transaction: both land, or neither."""
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO member_balances (member_id, available, pending, lifetime_earned, redeemed, expired,
                                         reversed, last_sequence, last_event_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (member_id) DO UPDATE SET
                available = member_balances.available + EXCLUDED.available,
                pending = member_balances.pending + EXCLUDED.pending,
                lifetime_earned = member_balances.lifetime_earned + EXCLUDED.lifetime_earned,
                redeemed = member_balances.redeemed + EXCLUDED.redeemed,
                expired = member_balances.expired + EXCLUDED.expired,
                reversed = member_balances.reversed + EXCLUDED.reversed,
                last_sequence = EXCLUDED.last_sequence,
                last_event_at = GREATEST(member_balances.last_event_at, EXCLUDED.last_event_at)
            """,
            [
                (
                    member,
                    change.available,
                    change.pending,
                    change.lifetime_earned,
                    change.redeemed,
                    change.expired,
                    change.reversed,
                    change.last_sequence,
                    change.last_event_at,
                )
                for member, change in folded.balances.items()
            ],
        )
        cur.executemany(
            """
            INSERT INTO projector_checkpoints (topic, partition, next_offset, updated_at)
            VALUES (%s, %s, %s, now())
            ON CONFLICT (topic, partition) DO UPDATE SET
                next_offset = GREATEST(projector_checkpoints.next_offset, EXCLUDED.next_offset),
                updated_at = EXCLUDED.updated_at
            """,
            [(topic, partition, offset) for partition, offset in next_offsets.items()],
        )
