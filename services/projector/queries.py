"""The read API's SQL: one function per question, each answering from the read models."""

from __future__ import annotations

from dataclasses import fields
from datetime import date, datetime
from typing import Any, LiteralString

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from schemas.rules import ProgramRules
from services.projector.fold import ProgramTotals

ACTIVITY_TYPES = [
    "MemberEnrolled",
    "PurchaseRecorded",
    "PointsEarned",
    "PointsMatured",
    "PurchaseRefunded",
    "PointsReversed",
    "PointsRedeemed",
    "RedemptionCancelled",
    "PointsRestored",
    "PointsAdjusted",
    "PointsExpired",
    "TierChanged",
]


async def rules(conn: AsyncConnection) -> ProgramRules:
    """The rules in force as the log recorded them; the defaults before any was recorded."""
    cur = await conn.execute("SELECT rules FROM program_rules ORDER BY version DESC LIMIT 1")
    row = await cur.fetchone()
    return ProgramRules() if row is None else ProgramRules.model_validate(row[0])


async def recorded_rules(conn: AsyncConnection) -> list[tuple[datetime, ProgramRules]]:
    """Every version of the rules with when it was recorded, oldest first."""
    cur = await conn.execute("SELECT occurred_at, rules FROM program_rules ORDER BY occurred_at, version")
    return [(recorded_at, ProgramRules.model_validate(rules)) for recorded_at, rules in await cur.fetchall()]


async def applied_sequence(conn: AsyncConnection, member_id: str) -> int | None:
    """The last applied sequence of an enrolled member; None for an unknown member."""
    cur = await conn.execute(
        "SELECT last_sequence FROM members WHERE member_id = %s AND enrolled_at IS NOT NULL", (member_id,)
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def balance_now(conn: AsyncConnection, member_id: str) -> dict[str, Any] | None:
    """The member's current balance and last applied sequence: one row, kept by the projector."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT last_sequence, available, pending, lifetime_earned, redeemed, expired, reversed, "
        "adjusted, debt FROM members WHERE member_id = %s AND enrolled_at IS NOT NULL",
        (member_id,),
    )
    return await cur.fetchone()


async def stream_sequence(conn: AsyncConnection, stream: str) -> int:
    cur = await conn.execute("SELECT last_sequence FROM members WHERE member_id = %s", (stream,))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def member(
    conn: AsyncConnection, member_id: str, window_start: datetime, now: datetime
) -> dict[str, Any] | None:
    """The member's row with the qualifying window at `now` and the favourite category."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        SELECT m.*, w.spend AS window_spend, w.purchases AS window_purchases, f.category AS favourite,
               pr.fields AS profile_fields, pr.erased AS profile_erased
        FROM members m
        LEFT JOIN member_profiles pr ON pr.member_id = m.member_id
        LEFT JOIN LATERAL (
            SELECT coalesce(sum(p.amount_minor - p.refunded_minor), 0)::bigint AS spend, count(*) AS purchases
            FROM member_purchases p
            WHERE p.member_id = m.member_id AND p.occurred_at > %(start)s AND p.occurred_at <= %(now)s
              AND p.amount_minor > p.refunded_minor
        ) w ON true
        LEFT JOIN LATERAL (
            SELECT c.category FROM member_categories c WHERE c.member_id = m.member_id AND c.spend_minor > 0
            ORDER BY c.spend_minor DESC, c.category LIMIT 1
        ) f ON true
        WHERE m.member_id = %(member)s AND m.enrolled_at IS NOT NULL
        """,
        {"member": member_id, "start": window_start, "now": now},
    )
    return await cur.fetchone()


async def profile(conn: AsyncConnection, member_id: str) -> tuple[dict[str, str], bool] | None:
    """(sealed fields, erased) of a member's profile; None when the member never had one."""
    cur = await conn.execute("SELECT fields, erased FROM member_profiles WHERE member_id = %s", (member_id,))
    row = await cur.fetchone()
    return None if row is None else (dict(row[0]), bool(row[1]))


async def balance_at(
    conn: AsyncConnection, member_id: str, as_of: datetime | None, known_at: datetime | None
) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        SELECT coalesce(sum(available), 0)::bigint AS available,
               coalesce(sum(pending), 0)::bigint AS pending,
               coalesce(sum(lifetime_earned), 0)::bigint AS lifetime_earned,
               coalesce(sum(redeemed), 0)::bigint AS redeemed,
               coalesce(sum(expired), 0)::bigint AS expired,
               coalesce(sum(reversed), 0)::bigint AS reversed,
               coalesce(sum(adjusted), 0)::bigint AS adjusted,
               coalesce(sum(debt), 0)::bigint AS debt
        FROM member_events
        WHERE member_id = %(member)s
          AND (%(as_of)s::timestamptz IS NULL OR occurred_at <= %(as_of)s)
          AND (%(known_at)s::timestamptz IS NULL OR recorded_at <= %(known_at)s)
        """,
        {"member": member_id, "as_of": as_of, "known_at": known_at},
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def tier_history(conn: AsyncConnection, member_id: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT sequence, occurred_at, from_tier, to_tier, reason, qualifying_spend_minor, purchase_count, "
        "note, actor FROM tier_history WHERE member_id = %s ORDER BY sequence DESC",
        (member_id,),
    )
    return await cur.fetchall()


async def lots(conn: AsyncConnection, member_id: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT lot_id, points, expires_at, matures_at FROM member_lots WHERE member_id = %s "
        "ORDER BY expires_at NULLS LAST, lot_id",
        (member_id,),
    )
    return await cur.fetchall()


async def activity(
    conn: AsyncConnection, member_id: str, before: int | None, limit: int
) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        SELECT sequence, type, occurred_at, available + pending AS points, amount_minor, reference
        FROM member_events
        WHERE member_id = %s AND type = ANY(%s) AND (%s::bigint IS NULL OR sequence < %s)
        ORDER BY sequence DESC LIMIT %s
        """,
        (member_id, ACTIVITY_TYPES, before, before, limit),
    )
    return await cur.fetchall()


async def history(conn: AsyncConnection, member_id: str, after: int, limit: int) -> list[tuple[int, Any]]:
    cur = await conn.execute(
        "SELECT sequence, event FROM member_events WHERE member_id = %s AND sequence > %s "
        "ORDER BY sequence LIMIT %s",
        (member_id, after, limit),
    )
    return [(int(sequence), event) for sequence, event in await cur.fetchall()]


async def segment_members(
    conn: AsyncConnection, condition: LiteralString, params: dict[str, Any], after: str, limit: int
) -> list[dict[str, Any]]:
    """Enrolled members meeting `condition` (SQL over `m`, and `core`/`fav` columns), by member id."""
    cur = conn.cursor(row_factory=dict_row)
    query = sql.SQL(
        """
        WITH spend AS (
            SELECT member_id, sum(amount_minor - refunded_minor) AS spend FROM member_purchases
            WHERE occurred_at > %(window_start)s AND %(need_spend)s GROUP BY member_id
        ), ranked AS (
            SELECT member_id, rank() OVER (ORDER BY spend DESC) AS place FROM spend WHERE spend > 0
        ), core_size AS (
            SELECT ceil(count(*) * 0.10) AS size FROM members WHERE enrolled_at IS NOT NULL
        )
        SELECT m.member_id, m.tier, m.last_purchase_at
        FROM members m
        LEFT JOIN ranked r ON r.member_id = m.member_id
        LEFT JOIN LATERAL (
            SELECT c.category FROM member_categories c WHERE c.member_id = m.member_id AND c.spend_minor > 0
            ORDER BY c.spend_minor DESC, c.category LIMIT 1
        ) fav ON %(need_favourite)s
        WHERE m.enrolled_at IS NOT NULL AND m.member_id > %(after)s AND ({condition})
        ORDER BY m.member_id LIMIT %(limit)s
        """
    ).format(condition=sql.SQL(condition))
    await cur.execute(query, {**params, "after": after, "limit": limit})
    return await cur.fetchall()


async def program_days(
    conn: AsyncConnection, zone: str, end: date
) -> tuple[dict[date, ProgramTotals], dict[tuple[date, str], int]]:
    """Program totals and tier moves per day of the program's calendar in `zone`, before `end`."""
    cur = conn.cursor(row_factory=dict_row)
    params = {"zone": zone, "end": end}
    await cur.execute(
        sql.SQL(
            """
            SELECT (starts_at AT TIME ZONE %(zone)s)::date AS day, {sums} FROM program_quarter_hours
            WHERE starts_at < %(end)s::timestamp AT TIME ZONE %(zone)s GROUP BY 1
            """
        ).format(
            sums=sql.SQL(", ").join(
                sql.SQL("sum({0})::bigint AS {0}").format(sql.Identifier(f.name))
                for f in fields(ProgramTotals)
            )
        ),
        params,
    )
    days = {row.pop("day"): ProgramTotals(**row) for row in await cur.fetchall()}
    tiers = await conn.execute(
        """
        SELECT (starts_at AT TIME ZONE %(zone)s)::date, tier, sum(members) FROM program_tier_quarter_hours
        WHERE starts_at < %(end)s::timestamp AT TIME ZONE %(zone)s GROUP BY 1, 2
        """,
        params,
    )
    return days, {(day, tier): int(members) for day, tier, members in await tiers.fetchall()}


async def active_members(conn: AsyncConnection, zone: str, starts: list[date]) -> dict[date, int]:
    """Members with a purchase not refunded in full in each period [starts[i], starts[i+1]) of the
    calendar in `zone`: as the recency segments count them."""
    cur = await conn.execute(
        """
        SELECT b.start, count(DISTINCT p.member_id)
        FROM unnest(%s::date[], %s::date[]) AS b(start, stop)
        JOIN member_purchases p
          ON p.occurred_at >= b.start::timestamp AT TIME ZONE %s
         AND p.occurred_at < b.stop::timestamp AT TIME ZONE %s
         AND p.amount_minor > p.refunded_minor
        GROUP BY b.start
        """,
        (starts[:-1], starts[1:], zone, zone),
    )
    return {start: int(count) for start, count in await cur.fetchall()}
