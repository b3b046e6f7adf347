"""AES-256-GCM from `cryptography`: data keys wrapped by a master key, profile fields sealed by data keys.

Associated data binds each ciphertext to its place (the member, the field), so a ciphertext
copied onto another member or field does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    secret: bytes

    @classmethod
    def parse(cls, text: str) -> MasterKey:
        """`<id>:<base64 of 32 bytes>`, as in LOYALTY_MASTER_KEY."""
        key_id, _, encoded = text.strip().partition(":")
        try:
            secret = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            secret = b""
        if not key_id or len(secret) != 32:
            raise InvalidKey("a master key reads <id>:<base64 of 32 random bytes>")
        return cls(key_id, secret)

    @classmethod
    def generate(cls, key_id: str) -> MasterKey:
        return cls(key_id, AESGCM.generate_key(bit_length=256))

    def text(self) -> str:
        return f"{self.key_id}:{base64.b64encode(self.secret).decode()}"


def _seal(key: bytes, plain: bytes, context: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plain, context.encode())


def _open(key: bytes, sealed: bytes, context: str) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context.encode())
    except (InvalidTag, ValueError):
        raise InvalidKey(f"cannot open {context}") from None


def _decoded(sealed: str, context: str) -> bytes:
    try:
        return base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"cannot open {context}") from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap(master: MasterKey, data_key: bytes, member_id: str) -> bytes:
    return _seal(master.secret, data_key, f"data-key:{member_id}")


def unwrap(master: MasterKey, wrapped: bytes, member_id: str) -> bytes:
    return _open(master.secret, wrapped, f"data-key:{member_id}")


def seal_field(data_key: bytes, member_id: str, field: str, value: str) -> str:
    return base64.b64encode(_seal(data_key, value.encode(), f"profile:{member_id}:{field}")).decode()


def open_field(data_key: bytes, member_id: str, field: str, sealed: str) -> str:
    context = f"profile:{member_id}:{field}"
    return _open(data_key, _decoded(sealed, context), context).decode()
