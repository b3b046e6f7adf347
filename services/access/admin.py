"""`loyalty keys`: create, list and revoke API keys. A new key's token is shown once, never stored."""

from __future__ import annotations

import argparse

import psycopg

from services.access import store
from services.access.keys import SCOPES
from services.access.settings import AccessSettings
from services.migrations import migrate, schema_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key and print its token (shown only this once)")
    create.add_argument("--name", required=True, help="who or what holds it, e.g. 'checkout-service'")
    create.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="a scope it holds (repeat for more)"
    )
    actions.add_parser("list", help="every key: id, name, scopes, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key (takes effect within LOYALTY_KEY_CACHE_S)")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    settings = AccessSettings()
    migrate(settings.database_url, store.PRIVATE_SCHEMA, "services.access")
    with psycopg.connect(settings.database_url, options=schema_options(store.PRIVATE_SCHEMA)) as conn:
        if args.action == "create":
            key = store.create(conn, args.name, args.scope)
            print(f"key id: {key.key_id}")
            print(f"token:  {key.token}")
            print("Keep the token now: only its hash is stored.")
        elif args.action == "list":
            for key_id, name, scopes, created, revoked in store.listing(conn):
                state = f"revoked {revoked:%Y-%m-%d %H:%M}" if revoked else "active"
                print(f"{key_id}  {name}  {','.join(scopes)}  created {created:%Y-%m-%d %H:%M}  {state}")
        elif not store.revoke(conn, args.key_id):
            print(f"loyalty keys revoke: no active key {args.key_id!r}")
            return 1
        else:
            print(f"revoked {args.key_id}")
    return 0
