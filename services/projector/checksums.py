"""Per-table row counts and checksums of the read models: two projections of one log must agree."""

from __future__ import annotations

import psycopg
from psycopg import sql

# Every table a projection writes, except the checkpoints whose batch statistics differ by run.
READ_MODEL_TABLES = (
    "members",
    "member_lots",
    "member_purchases",
    "member_categories",
    "tier_history",
    "member_events",
    "program_days",
    "program_tier_days",
    "program_rules",
)


def table_checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the rows in a fixed order) per read-model table."""
    result = {}
    for table in READ_MODEL_TABLES:
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t"
        ).format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        result[table] = (int(row[0]), str(row[1]))
    return result
