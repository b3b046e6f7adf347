"""The read models in Postgres: batch writes together with the projector's checkpoint."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from services.projector.fold import Folded, MemberChange, ProgramTotals


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
    # One round trip; unnest yields the partitions in the array's order, so locks are always taken
    # in ascending order and two writers cannot deadlock.
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext(%s), p) FROM unnest(%s::int[]) AS p",
        (topic, sorted(partitions)),
    )


def applied(conn: psycopg.Connection, member_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(last applied sequence, available + pending) of the members that have a row."""
    rows = conn.execute(
        "SELECT member_id, last_sequence, available + pending FROM members WHERE member_id = ANY(%s)",
        (list(member_ids),),
    ).fetchall()
    return {str(member): (int(sequence), int(balance)) for member, sequence, balance in rows}


def write(
    conn: psycopg.Connection,
    folded: Folded,
    topic: str,
    batch: dict[int, tuple[int, int]],
    started: float,
) -> None:
    """Read models and checkpoint in the caller's transaction: both land, or neither.

    `batch` maps each partition to (next offset, records read); `started` is when the batch
    began (time.monotonic), for the apply-time statistics. Events and new rows go by COPY, the
    rest in one pipeline. A member's rows are written only under its partition's lock; the rows
    partitions share (program quarter hours) are written in key order, so two instances cannot deadlock.
    """
    with conn.cursor() as cur:
        copy_events(cur, folded)
        _copy_new_rows(cur, folded)
        with conn.pipeline():
            _members(cur, folded)
            _lots(cur, folded)
            _purchases(cur, folded)
            _tiers(cur, folded)
            _profiles(cur, folded)
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


def advance(conn: psycopg.Connection, topic: str, next_offsets: dict[int, int]) -> None:
    """Move checkpoints past offsets that hold no events (transaction markers)."""
    conn.cursor().executemany(
        "UPDATE projector_checkpoints SET next_offset = %s, updated_at = now() "
        "WHERE topic = %s AND partition = %s AND next_offset < %s",
        [(offset, topic, partition, offset) for partition, offset in sorted(next_offsets.items())],
    )


# The member rows of a batch, from one array per column (see `_columns`), as `u`.
MEMBER_ROWS = """
    FROM unnest(%b::text[], %b::bigint[], %b::timestamptz[], %b::timestamptz[], %b::bigint[],
        %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
        %b::text[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::bigint[],
        %b::bigint[], %b::bigint[], %b::bigint[], %b::timestamptz[], %b::boolean[])
        AS u(member_id, last_sequence, last_event_at, enrolled_at, available, pending,
             lifetime_earned, redeemed, expired, reversed, adjusted, tier, tier_changed_at,
             next_evaluation_at, last_purchase_at, purchases, spend_minor, refunded_minor, debt,
             last_kept_purchase_at, evaluation_set)
"""


def _members(cur: psycopg.Cursor, folded: Folded) -> None:
    """Known members incremented, in one set-based statement over column arrays."""
    known = [
        (*_member_row(member, change), change.evaluation_set)
        for member, change in sorted(folded.members.items())
        if member in folded.known
    ]
    if known:
        cur.execute(
            """
            UPDATE members AS m SET
                last_sequence = u.last_sequence,
                last_event_at = GREATEST(m.last_event_at, u.last_event_at),
                enrolled_at = COALESCE(m.enrolled_at, u.enrolled_at),
                available = m.available + u.available,
                pending = m.pending + u.pending,
                lifetime_earned = m.lifetime_earned + u.lifetime_earned,
                redeemed = m.redeemed + u.redeemed,
                expired = m.expired + u.expired,
                reversed = m.reversed + u.reversed,
                adjusted = m.adjusted + u.adjusted,
                tier = COALESCE(u.tier, m.tier),
                tier_changed_at = COALESCE(u.tier_changed_at, m.tier_changed_at),
                next_evaluation_at = CASE WHEN u.evaluation_set THEN u.next_evaluation_at
                                          ELSE m.next_evaluation_at END,
                last_purchase_at = GREATEST(m.last_purchase_at, u.last_purchase_at),
                purchases = m.purchases + u.purchases,
                spend_minor = m.spend_minor + u.spend_minor,
                refunded_minor = m.refunded_minor + u.refunded_minor,
                debt = m.debt + u.debt,
                last_kept_purchase_at = GREATEST(m.last_kept_purchase_at, u.last_kept_purchase_at)
            """
            + MEMBER_ROWS
            + "WHERE m.member_id = u.member_id",
            _columns(known),
        )


def _member_row(member: str, c: MemberChange) -> tuple[Any, ...]:
    """A member's row in the order of MEMBER_COLUMNS (and of MEMBER_ROWS, less evaluation_set)."""
    return (
        member,
        c.last_sequence,
        c.last_event_at,
        c.enrolled_at,
        c.available,
        c.pending,
        c.lifetime_earned,
        c.redeemed,
        c.expired,
        c.reversed,
        c.adjusted,
        c.tier,
        c.tier_changed_at,
        c.next_evaluation_at,
        c.last_purchase_at,
        c.purchases,
        c.spend_minor,
        c.refunded_minor,
        c.debt,
        c.last_kept_purchase_at,
    )


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows turned into one list per column: the arrays that `unnest` turns back into rows."""
    return [list(column) for column in zip(*rows, strict=True)]


# Columns as COPY sends them: binary, which Postgres reads without parsing text (times above all).
# The event goes as "text": its bytes as they are, which the json column takes in binary form too
# ("json" would encode the string again).
# fmt: off
EVENT_COLUMNS = (
    ("member_id", "text"), ("sequence", "int8"), ("type", "text"), ("occurred_at", "timestamptz"),
    ("recorded_at", "timestamptz"), ("available", "int8"), ("pending", "int8"),
    ("lifetime_earned", "int8"), ("redeemed", "int8"), ("expired", "int8"), ("reversed", "int8"),
    ("amount_minor", "int8"), ("reference", "text"), ("event", "text"), ("adjusted", "int8"),
    ("debt", "int8"),
)
MEMBER_COLUMNS = (
    ("member_id", "text"), ("last_sequence", "int8"), ("last_event_at", "timestamptz"),
    ("enrolled_at", "timestamptz"), ("available", "int8"), ("pending", "int8"),
    ("lifetime_earned", "int8"), ("redeemed", "int8"), ("expired", "int8"), ("reversed", "int8"),
    ("adjusted", "int8"), ("tier", "text"), ("tier_changed_at", "timestamptz"),
    ("next_evaluation_at", "timestamptz"), ("last_purchase_at", "timestamptz"), ("purchases", "int8"),
    ("spend_minor", "int8"), ("refunded_minor", "int8"), ("debt", "int8"),
    ("last_kept_purchase_at", "timestamptz"),
)
LOT_COLUMNS = (
    ("member_id", "text"), ("lot_id", "text"), ("points", "int8"), ("expires_at", "timestamptz"),
    ("matures_at", "timestamptz"),
)
PURCHASE_COLUMNS = (
    ("member_id", "text"), ("sequence", "int8"), ("purchase_id", "text"), ("occurred_at", "timestamptz"),
    ("amount_minor", "int8"),
)
CATEGORY_COLUMNS = (
    ("member_id", "text"), ("category", "text"), ("spend_minor", "int8"), ("purchases", "int8"),
)
PURCHASE_CATEGORY_COLUMNS = (
    ("member_id", "text"), ("sequence", "int8"), ("category", "text"), ("spend_minor", "int8"),
)
# fmt: on


def _copy(
    cur: psycopg.Cursor, table: str, columns: tuple[tuple[str, str], ...], rows: list[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    with cur.copy(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns)
        )
    ) as copy:
        copy.set_types([kind for _, kind in columns])
        for row in rows:
            copy.write_row(row)


def _copy_new_rows(cur: psycopg.Cursor, folded: Folded) -> None:
    """Rows no earlier batch can have written go by COPY, several times cheaper than the set-based
    statements over arrays that known rows need: new members with their lots and categories (a
    lot already used up is never written), and every purchase.
    """
    _copy(
        cur,
        "members",
        MEMBER_COLUMNS,
        [
            _member_row(member, change)
            for member, change in folded.members.items()
            if member not in folded.known
        ],
    )
    _copy(
        cur,
        "member_lots",
        LOT_COLUMNS,
        [
            (member, lot_id, lot.points, lot.expires_at, lot.matures_at)
            for (member, lot_id), lot in folded.lots.items()
            if member not in folded.known and lot.points > 0
        ],
    )
    _copy(
        cur,
        "member_purchases",
        PURCHASE_COLUMNS,
        [
            (member, sequence, p.purchase_id, p.occurred_at, p.amount_minor)
            for (member, sequence), p in folded.purchases.items()
        ],
    )
    _copy(
        cur,
        "member_purchase_categories",
        PURCHASE_CATEGORY_COLUMNS,
        [
            (member, sequence, category, spend)
            for (member, sequence), p in folded.purchases.items()
            for category, spend in p.categories.items()
        ],
    )
    _copy(
        cur,
        "member_categories",
        CATEGORY_COLUMNS,
        [
            (member, category, spend, n)
            for (member, category), (spend, n) in folded.categories.items()
            if member not in folded.known
        ],
    )


def copy_events(cur: psycopg.Cursor, folded: Folded) -> None:
    """The batch's events into member_events; they are then no longer needed in memory."""
    _copy(
        cur,
        "member_events",
        EVENT_COLUMNS,
        [
            (
                row.event.member_id,
                row.event.sequence,
                row.event.type,
                row.event.occurred_at,
                row.event.recorded_at,
                row.change.available,
                row.change.pending,
                row.change.lifetime_earned,
                row.change.redeemed,
                row.change.expired,
                row.change.reversed,
                row.amount_minor,
                row.reference,
                row.raw,
                row.change.adjusted,
                row.change.debt,
            )
            for row in folded.events
        ],
    )
    folded.events.clear()


def _lots(cur: psycopg.Cursor, folded: Folded) -> None:
    """Lots of known members incremented (or opened), matured ones marked, used-up ones deleted."""
    known = sorted((key, lot) for key, lot in folded.lots.items() if key[0] in folded.known)
    if not known:
        return
    # A known lot used up in the batch and credited again has the expiry of that credit.
    reopened = [
        (m, lot_id, lot.low, lot.expires_at) for (m, lot_id), lot in known if lot.low < 0 and lot.expires_at
    ]
    if reopened:
        cur.execute(
            "UPDATE member_lots AS l SET expires_at = u.expires_at "
            "FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::timestamptz[]) "
            "AS u(m, lot, low, expires_at) "
            "WHERE l.member_id = u.m AND l.lot_id = u.lot AND l.points + u.low <= 0",
            _columns(reopened),
        )
    cur.execute(
        """
        INSERT INTO member_lots AS l (member_id, lot_id, points, expires_at, matures_at)
        SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::timestamptz[], %b::timestamptz[])
        ON CONFLICT (member_id, lot_id) DO UPDATE SET
            points = l.points + EXCLUDED.points,
            expires_at = COALESCE(l.expires_at, EXCLUDED.expires_at),
            matures_at = COALESCE(EXCLUDED.matures_at, l.matures_at)
        """,
        _columns(
            [(member, lot_id, lot.points, lot.expires_at, lot.matures_at) for (member, lot_id), lot in known]
        ),
    )
    matured = [key for key, lot in known if lot.matured]
    if matured:
        cur.execute(
            "UPDATE member_lots AS l SET matures_at = NULL FROM unnest(%b::text[], %b::text[]) AS u(m, lot) "
            "WHERE l.member_id = u.m AND l.lot_id = u.lot",
            _columns(matured),
        )
    cur.execute(
        "DELETE FROM member_lots WHERE member_id = ANY(%s) AND points <= 0",
        (sorted({member for (member, _), _ in known}),),
    )


def _purchases(cur: psycopg.Cursor, folded: Folded) -> None:
    """Refunded totals set (purchases themselves are new rows), known members' categories
    incremented, then what the refunds take back."""
    if folded.refunds:
        cur.execute(
            """
            UPDATE member_purchases AS p SET refunded_minor = u.total
            FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[])
                AS u(m, purchase, recorded, total, refunded_at)
            WHERE p.member_id = u.m AND p.purchase_id = u.purchase
              AND p.sequence = coalesce(u.recorded, (
                  SELECT max(q.sequence) FROM member_purchases q
                  WHERE q.member_id = u.m AND q.purchase_id = u.purchase AND q.sequence < u.refunded_at
              ))
            """,
            _columns(
                [
                    (m, purchase, recorded, total, refunded_at)
                    for (m, purchase, recorded), (total, refunded_at) in sorted(
                        folded.refunds.items(), key=lambda i: i[0][:2]
                    )
                ]
            ),
        )
    known = sorted((key, totals) for key, totals in folded.categories.items() if key[0] in folded.known)
    if known:
        cur.execute(
            """
            INSERT INTO member_categories AS c (member_id, category, spend_minor, purchases)
            SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[])
            ON CONFLICT (member_id, category) DO UPDATE SET
                spend_minor = c.spend_minor + EXCLUDED.spend_minor,
                purchases = c.purchases + EXCLUDED.purchases
            """,
            _columns([(m, category, spend, n) for (m, category), (spend, n) in known]),
        )
    if folded.refunds:
        _after_refunds(cur, sorted({member for member, _, _ in folded.refunds}))


def _after_refunds(cur: psycopg.Cursor, members: list[str]) -> None:
    """What refunds take back from the members they concern, once the categories of the batch are
    counted: a purchase refunded in full no longer makes its member recent, and each category keeps
    the spend its items kept (refunds name no items: each takes the refunded share of every
    category of its purchase, as it takes the points back in proportion)."""
    cur.execute(
        """
        UPDATE members AS m SET last_kept_purchase_at = (
            SELECT max(p.occurred_at) FROM member_purchases p
            WHERE p.member_id = m.member_id AND p.amount_minor > p.refunded_minor
        )
        WHERE m.member_id = ANY(%s)
        """,
        (members,),
    )
    cur.execute(
        """
        UPDATE member_categories AS c SET spend_minor = n.spend
        FROM (
            SELECT i.member_id, i.category,
                   sum(div(i.spend_minor::numeric * (p.amount_minor - p.refunded_minor), p.amount_minor))
                       AS spend
            FROM member_purchase_categories i
            JOIN member_purchases p ON p.member_id = i.member_id AND p.sequence = i.sequence
            WHERE i.member_id = ANY(%s) AND p.amount_minor > 0
            GROUP BY i.member_id, i.category
        ) n
        WHERE c.member_id = n.member_id AND c.category = n.category
        """,
        (members,),
    )


def _profiles(cur: psycopg.Cursor, folded: Folded) -> None:
    if not folded.profiles:
        return
    cur.executemany(
        """
        INSERT INTO member_profiles AS p (member_id, key_id, fields, erased) VALUES (%s, %s, %s, %s)
        ON CONFLICT (member_id) DO UPDATE SET
            key_id = CASE WHEN EXCLUDED.erased THEN NULL ELSE COALESCE(EXCLUDED.key_id, p.key_id) END,
            fields = CASE WHEN EXCLUDED.erased THEN '{}'::jsonb ELSE p.fields || EXCLUDED.fields END,
            erased = p.erased OR EXCLUDED.erased
        """,
        [
            (member, change.key_id, Jsonb(change.fields), change.erased)
            for member, change in sorted(folded.profiles.items())
        ],
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


# The program totals' columns, as ProgramTotals names them.
TOTALS = tuple(f.name for f in fields(ProgramTotals))


def _program(cur: psycopg.Cursor, folded: Folded) -> None:
    """Program totals incremented per quarter hour, in one statement over column arrays."""
    if folded.quarter_hours:
        names = sql.SQL(", ").join(map(sql.Identifier, TOTALS))
        cur.execute(
            sql.SQL(
                "INSERT INTO program_quarter_hours AS q (starts_at, {names}) "
                "SELECT * FROM unnest(%b::timestamptz[], {arrays}) "
                "ON CONFLICT (starts_at) DO UPDATE SET {increments}"
            ).format(
                names=names,
                arrays=sql.SQL(", ").join(sql.SQL("%b::bigint[]") for _ in TOTALS),
                increments=sql.SQL(", ").join(
                    sql.SQL("{0} = q.{0} + EXCLUDED.{0}").format(sql.Identifier(name)) for name in TOTALS
                ),
            ),
            _columns(
                [
                    (when, *(getattr(totals, name) for name in TOTALS))
                    for when, totals in sorted(folded.quarter_hours.items())
                ]
            ),
        )
    if folded.tier_quarter_hours:
        cur.execute(
            """
            INSERT INTO program_tier_quarter_hours AS t (starts_at, tier, members)
            SELECT * FROM unnest(%b::timestamptz[], %b::text[], %b::bigint[])
            ON CONFLICT (starts_at, tier) DO UPDATE SET members = t.members + EXCLUDED.members
            """,
            _columns([(when, tier, n) for (when, tier), n in sorted(folded.tier_quarter_hours.items())]),
        )
    for event, data in folded.rules:
        cur.execute(
            "INSERT INTO program_rules (version, fingerprint, rules, occurred_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (version) DO NOTHING",
            (data.version, data.fingerprint, Jsonb(data.rules), event.occurred_at),
        )
