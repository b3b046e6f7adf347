"""Opaque pagination cursors: where the previous page stopped, tagged with the list it belongs to."""

from __future__ import annotations

import base64
import binascii

from services.problems import Problem


def encode_cursor(kind: str, value: str | int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    """The value in a cursor from the same kind of list; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    found, _, value = raw.partition(":")
    if found != kind or not value or "\x00" in value:
        raise Problem(
            422, "invalid_cursor", "The cursor is not valid here", "pass back a next_cursor of this list"
        )
    return value


def decode_int_cursor(kind: str, cursor: str) -> int:
    value = decode_cursor(kind, cursor)
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise Problem(
            422, "invalid_cursor", "The cursor is not valid here", "pass back a next_cursor of this list"
        )
    return int(value)
