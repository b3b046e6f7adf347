"""`loyalty datakeys rewrap`: wrap every member's data key under the current master key.

For a master key rotation: set LOYALTY_MASTER_KEY to the new key and LOYALTY_PREVIOUS_MASTER_KEYS
to the old ones, run this, then drop the old ones. The data keys, and so every ciphertext in the
log, stay as they are.
"""

from __future__ import annotations

import argparse
import sys

import psycopg

from services.access import store
from services.access.settings import AccessSettings
from services.migrations import migrate, schema_options
from services.personal_data import keystore
from services.personal_data.crypto import InvalidKey


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("rewrap", help="wrap every data key under LOYALTY_MASTER_KEY")


def run(args: argparse.Namespace) -> int:
    settings = AccessSettings()
    current, every = settings.master_keys()
    if current is None:
        print("loyalty datakeys: set LOYALTY_MASTER_KEY to the master key to wrap under", file=sys.stderr)
        return 2
    migrate(settings.database_url, store.PRIVATE_SCHEMA, "services.access")
    with psycopg.connect(settings.database_url, options=schema_options(store.PRIVATE_SCHEMA)) as conn:
        try:
            moved = keystore.rewrap(conn, current, every.values())
        except InvalidKey as error:
            print(f"loyalty datakeys rewrap: {error}", file=sys.stderr)
            return 1
    print(f"rewrapped {moved} data key(s) under master key {current.key_id}")
    return 0
