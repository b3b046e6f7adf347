"""The fast canonical JSON is byte for byte the documented one."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import canonical_json, reference_canonical_json

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500)
@given(st.dictionaries(TEXT, VALUES, max_size=8))
def test_canonical_json_matches_its_definition(document: dict[str, Any]) -> None:
    assert canonical_json(document) == reference_canonical_json(document)
