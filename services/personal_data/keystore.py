"""Members' data keys in Postgres (private schema), wrapped by the master key."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import psycopg
from psycopg import AsyncConnection

from services.personal_data.crypto import InvalidKey, MasterKey, new_data_key, unwrap, wrap


async def data_key(
    conn: AsyncConnection, masters: dict[str, MasterKey], member_id: str
) -> tuple[str, bytes] | None:
    """(key id, data key) of the member; None once erased (or never made)."""
    cur = await conn.execute(
        "SELECT key_id, wrapped, master_key_id FROM member_keys WHERE member_id = %s", (member_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return None
    key_id, wrapped, master_id = row
    master = masters.get(master_id)
    if master is None:
        raise InvalidKey(f"data keys are wrapped by master key {master_id!r}, which is not configured")
    return str(key_id), unwrap(master, bytes(wrapped), member_id)


async def data_key_made(conn: AsyncConnection, master: MasterKey, member_id: str) -> tuple[str, bytes]:
    """The member's data key, made now if there is none yet."""
    key = new_data_key()
    await conn.execute(
        "INSERT INTO member_keys (member_id, key_id, wrapped, master_key_id) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (member_id) DO NOTHING",
        (member_id, f"dk-{secrets.token_hex(8)}", wrap(master, key, member_id), master.key_id),
    )
    found = await data_key(conn, {master.key_id: master}, member_id)
    assert found is not None
    return found


async def destroy(conn: AsyncConnection, member_id: str) -> bool:
    cur = await conn.execute("DELETE FROM member_keys WHERE member_id = %s", (member_id,))
    return cur.rowcount == 1


def rewrap(conn: psycopg.Connection, current: MasterKey, previous: Iterable[MasterKey]) -> int:
    """Wrap every data key under `current`; the keys themselves, and so the log, are unchanged."""
    masters = {key.key_id: key for key in (*previous, current)}
    moved = 0
    rows = conn.execute(
        "SELECT member_id, wrapped, master_key_id FROM member_keys WHERE master_key_id <> %s FOR UPDATE",
        (current.key_id,),
    ).fetchall()
    for member_id, wrapped, master_id in rows:
        if master_id not in masters:
            raise InvalidKey(
                f"master key {master_id!r} is needed to rewrap; pass it in LOYALTY_PREVIOUS_MASTER_KEYS"
            )
        key = unwrap(masters[master_id], bytes(wrapped), member_id)
        conn.execute(
            "UPDATE member_keys SET wrapped = %s, master_key_id = %s WHERE member_id = %s",
            (wrap(current, key, member_id), current.key_id, member_id),
        )
        moved += 1
    return moved
