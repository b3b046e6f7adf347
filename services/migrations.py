"""Versioned SQL migrations, applied in order at start, each set into a Postgres schema of its own."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Any constant: it only keeps two starting instances from migrating at the same time.
MIGRATION_LOCK = 7_348_201


def schema_options(schema: str) -> str:
    """libpq `options` that make a connection's unqualified names mean the tables in `schema`."""
    return f"-c search_path={schema}"


def migrate(database_url: str, schema: str = "public", package: str = "services.projector") -> list[str]:
    """Apply `package`'s migrations not yet applied in `schema`; return their names.

    The read models (services.projector) live in the read schema, which a replay can swap;
    API keys and member data keys (services.access) live in a private schema it never touches.
    """
    scripts = sorted(
        (entry.name, entry.read_text())
        for entry in resources.files(package).joinpath("migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    applied: list[str] = []
    with psycopg.connect(database_url, options=schema_options(schema)) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for name, script in scripts:
            if name in done:
                continue
            conn.execute(script.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (name,))
            applied.append(name)
    if applied:
        log.info("migrations applied", extra={"migrations": applied, "schema": schema})
    return applied
