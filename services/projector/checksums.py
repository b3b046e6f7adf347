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
    "member_profiles",
)


def table_checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """(rows, checksum) per read-model table.

    The checksum is the sum of the rows' hashes (the first 64 bits of the MD5 of each row's text),
    so it needs no sort and does not depend on the order rows are stored in; equal tables give
    equal sums, and a changed, missing or extra row changes it.
    """
    result = {}
    for table in READ_MODEL_TABLES:
        query = sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint), 0)::text "
            "FROM {} t"
        ).format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        result[table] = (int(row[0]), str(row[1]))
    return result
