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


class Erased(Exception):
    """The member's personal data was erased: no key will be made for them again."""


async def _lock(conn: AsyncConnection, member_id: str) -> None:
    # Making a key and erasing one, for the same member, never interleave.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('member-key'), hashtext(%s))", (member_id,))


async def data_key_made(
    conn: AsyncConnection, current: MasterKey, masters: dict[str, MasterKey], member_id: str
) -> tuple[str, bytes]:
    """The member's data key, made now (wrapped by `current`) if there is none yet."""
    # A key that is there is the member's: erasure deletes it in the transaction that marks the
    # member erased, so only a missing key needs the lock and the erasure check.
    found = await data_key(conn, masters, member_id)
    if found is not None:
        return found
    async with conn.transaction():
        await _lock(conn, member_id)
        cur = await conn.execute("SELECT 1 FROM erased_members WHERE member_id = %s", (member_id,))
        if await cur.fetchone() is not None:
            raise Erased(member_id)
        key = new_data_key()
        await conn.execute(
            "INSERT INTO member_keys (member_id, key_id, wrapped, master_key_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (member_id) DO NOTHING",
            (member_id, f"dk-{secrets.token_hex(8)}", wrap(current, key, member_id), current.key_id),
        )
        found = await data_key(conn, masters, member_id)
    assert found is not None
    return found


async def erase(conn: AsyncConnection, member_id: str) -> str:
    """Destroy the member's data key for good; the erase id (the same on every repeat)."""
    async with conn.transaction():
        await _lock(conn, member_id)
        await conn.execute(
            "INSERT INTO erased_members (member_id, erase_id) VALUES (%s, %s) "
            "ON CONFLICT (member_id) DO NOTHING",
            (member_id, secrets.token_hex(16)),
        )
        await conn.execute("DELETE FROM member_keys WHERE member_id = %s", (member_id,))
        cur = await conn.execute("SELECT erase_id FROM erased_members WHERE member_id = %s", (member_id,))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def forget_erasure(conn: AsyncConnection, member_id: str) -> None:
    """Undo the mark of an erasure the ledger refused (no such member): there was nothing to erase."""
    await conn.execute("DELETE FROM erased_members WHERE member_id = %s", (member_id,))


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
