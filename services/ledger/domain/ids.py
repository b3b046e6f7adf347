"""Derived ids: the same inputs always give the same id, so a retried decision repeats itself."""

from __future__ import annotations

import hashlib
import uuid


def derived_id(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, at a third of the cost: it runs for every event."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
