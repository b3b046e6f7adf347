"""One changelog partition mirrored in SQLite on local disk, with the changelog offset it reflects.

The changelog is the truth; this copy only saves reading it all again. It is written after the
Kafka transaction it mirrors has committed, so it is never ahead of the changelog: a crash leaves
it behind, and the restore reads the tail from its position. Write-ahead logging without a sync
per commit is enough for the same reason (a lost commit is read again from Kafka).

Compaction drops a tombstone `delete.retention.ms` after it was written; a copy older than that
may have missed one, so it is thrown away and rebuilt (`stale`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from services.ledger import state_records
from services.ledger.state_records import Change

SCHEMA_VERSION = "1"
# Member ids start with a letter or digit; the processor's own keys start with '/', below '0'.
FIRST_MEMBER_KEY = "0"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS due (member TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS due_at ON due (at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class PartitionStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if self._meta("schema") not in (None, SCHEMA_VERSION):
            self.wipe()
        self._set_meta("schema", SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    @property
    def position(self) -> int:
        """The changelog offset to read from next: everything before it is in this copy."""
        return int(self._meta("position") or 0)

    def stale(self, tombstone_retention_ms: int) -> bool:
        written = self._meta("written_at")
        return written is not None and (time.time() - float(written)) * 1000 > tombstone_retention_ms / 2

    def apply(self, changes: Iterable[Change], position: int) -> None:
        """Mirror changelog records (a tombstone deletes) up to `position`, in one local transaction.

        Keys without '/' (whole-account records of earlier versions) are the caller's to expand.
        """
        latest = {key: value for key, value in changes if "/" in key}  # a later record of a key wins
        upserts = [(key, value) for key, value in latest.items() if value is not None]
        deletes = [(key,) for key, value in latest.items() if value is None]
        due_set: list[tuple[str, int]] = []
        due_cleared: list[tuple[str]] = []
        for key, value in latest.items():
            if not key.startswith("/") and (due := state_records.due_of(key, value)) is not None:
                member_id, at = due
                if at is None:
                    due_cleared.append((member_id,))
                else:
                    due_set.append((member_id, at))
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM records WHERE key = ?", deletes)
            db.executemany(
                "INSERT INTO records (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                upserts,
            )
            db.executemany("DELETE FROM due WHERE member = ?", due_cleared)
            db.executemany(
                "INSERT INTO due (member, at) VALUES (?, ?) "
                "ON CONFLICT (member) DO UPDATE SET at = excluded.at",
                due_set,
            )
            self._set_meta("position", str(position))
            self._set_meta("written_at", repr(time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def member(self, member_id: str) -> list[tuple[str, bytes]]:
        low, high = state_records.member_range(member_id)
        return self._db.execute(
            "SELECT key, value FROM records WHERE key >= ? AND key < ? ORDER BY key", (low, high)
        ).fetchall()

    def member_from(self, low: str) -> str | None:
        """The first member whose records start at or after the key `low`; None past the last."""
        row = self._db.execute(
            "SELECT key FROM records WHERE key >= ? ORDER BY key LIMIT 1", (max(low, FIRST_MEMBER_KEY),)
        ).fetchone()
        return None if row is None else str(row[0]).split("/", 1)[0]

    def due(self, until_micros: int) -> list[str]:
        rows = self._db.execute("SELECT member FROM due WHERE at <= ? ORDER BY at", (until_micros,))
        return [member for (member,) in rows]

    def input_offsets(self) -> dict[str, int]:
        """How far the transactions this copy reflects consumed each input topic."""
        prefix = state_records.INPUT_PREFIX
        rows = self._db.execute(
            "SELECT key, value FROM records WHERE key >= ? AND key < ?", (prefix, prefix[:-1] + "0")
        )
        return {key[len(prefix) :]: int(value) for key, value in rows}

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def wipe(self) -> None:
        self._db.executescript("DELETE FROM records; DELETE FROM due; DELETE FROM meta;")

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
