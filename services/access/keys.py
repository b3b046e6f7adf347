"""API keys: an id anyone may see, and a secret only its holder knows; we keep the secret's hash.

A token reads `lk_<key id>_<secret>`. The secret is 256 random bits, so a plain SHA-256 is a
sound way to store it (no password stretching needed), and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

Scope = Literal["commands", "read", "pii:read", "audit", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
BOOTSTRAP_KEY_ID = "bootstrap-admin"
PREFIX = "lk"


@dataclass(frozen=True)
class Principal:
    """The caller, as far as the ledger knows: a key id and what it may do."""

    key_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class NewKey:
    key_id: str
    token: str
    secret_hash: str


def new_key() -> NewKey:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return NewKey(key_id=key_id, token=f"{PREFIX}_{key_id}_{secret}", secret_hash=hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret or len(token) > 200:
        return None
    return key_id, secret


def matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def same_token(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
