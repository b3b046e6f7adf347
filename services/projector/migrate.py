"""Versioned SQL migrations for the read models, applied in order at start."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg
from psycopg import sql

from services.projector.settings import schema_options

log = logging.getLogger(__name__)

# Any constant: it only keeps two starting instances from migrating at the same time.
MIGRATION_LOCK = 7_348_201


def migrate(database_url: str, schema: str = "public") -> list[str]:
    """Apply the migrations not yet applied to the read models in `schema`; return their names."""
    scripts = sorted(
        (entry.name, entry.read_text())
        for entry in resources.files("services.projector").joinpath("migrations").iterdir()
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
