"""The canonical JSON form that event hashes are computed over (see schemas/README.md)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

GENESIS_HASH = "0" * 64


def canonical_json(document: dict[str, Any]) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace (schemas/README.md).

    orjson writes exactly what `reference_canonical_json` writes for the documents the ledger
    produces (strings, integers, booleans, null, objects, arrays), at a tenth of the cost: it
    runs for every event the processor seals.
    """
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def reference_canonical_json(document: dict[str, Any]) -> bytes:
    """The definition, in the standard library: what a verifier in any language reproduces."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def event_hash(document: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an event envelope without its own `hash` field."""
    body = {key: value for key, value in document.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()
