"""API keys in Postgres, in a schema of their own that replays and schema switches never touch."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import psycopg
from psycopg import AsyncConnection

from services.access.keys import NewKey, Scope, new_key

PRIVATE_SCHEMA = "loyalty_private"


def create(conn: psycopg.Connection, name: str, scopes: Iterable[Scope]) -> NewKey:
    key = new_key()
    conn.execute(
        "INSERT INTO api_keys (key_id, name, scopes, secret_hash) VALUES (%s, %s, %s, %s)",
        (key.key_id, name, sorted(set(scopes)), key.secret_hash),
    )
    return key


def listing(conn: psycopg.Connection) -> list[tuple[str, str, list[str], datetime, datetime | None]]:
    rows = conn.execute(
        "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
    ).fetchall()
    return [(str(k), str(n), list(s), c, r) for k, n, s, c, r in rows]


def revoke(conn: psycopg.Connection, key_id: str) -> bool:
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
    )
    return cur.rowcount == 1


async def active(conn: AsyncConnection, key_id: str) -> tuple[list[str], str] | None:
    """(scopes, secret hash) of a key that is not revoked."""
    cur = await conn.execute(
        "SELECT scopes, secret_hash FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
    )
    row = await cur.fetchone()
    return None if row is None else (list(row[0]), str(row[1]))
