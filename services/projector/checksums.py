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
    "member_purchase_categories",
    "tier_history",
    "member_events",
    "program_quarter_hours",
    "program_tier_quarter_hours",
    "program_rules",
    "member_profiles",
)


def table_checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """(rows, checksum) of every read-model table, in the caller's transaction."""
    return {table: table_checksum(conn, table) for table in READ_MODEL_TABLES}


def table_checksum(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """(rows, checksum) of one table.

    The checksum is the sum of the rows' 64-bit hashes (Postgres' own text hash of each row's
    text form), so it needs no sort and does not depend on the order rows are stored in; equal
    tables give equal sums, and a changed, missing or extra row changes it. It compares two
    projections in one database; it is no seal against someone who means to forge one.
    """
    query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {} t").format(
        sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])
