"""Derived ids are standard UUIDv5s."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.ledger.domain.ids import derived_id

NAMESPACE = uuid.UUID("6f1c3a52-4b8e-4f0e-9a57-2d3c1b0e8a11")


@given(st.text(max_size=200))
def test_derived_id_is_uuid5(name: str) -> None:
    assert derived_id(NAMESPACE, name) == str(uuid.uuid5(NAMESPACE, name))
