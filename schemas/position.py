"""Position tokens: "the read side has applied this member's events up to this sequence".

A command's answer carries one; a read given `min_position` waits until the read models have
applied at least that far. Per-member sequences, unlike Kafka offsets, survive a rebuild of the
read models into a new schema.
"""

from __future__ import annotations

import base64
import binascii


class InvalidPosition(ValueError):
    pass


def encode_position(member_id: str, sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{sequence}:{member_id}".encode()).decode().rstrip("=")


def decode_position(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        sequence, member_id = raw.split(":", 1)
        if not (sequence.isascii() and sequence.isdigit() and len(sequence) <= 18) or "\x00" in member_id:
            raise ValueError(raw)
        return member_id, int(sequence)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPosition(f"not a position token: {token!r}") from None
