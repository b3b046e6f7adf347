"""Tests run at once (pytest-xdist), so each has every topic and consumer group of its own."""

from __future__ import annotations

from services.ledger.settings import LedgerSettings
from services.projector.settings import ProjectorSettings
from tests.conftest import Isolated


def test_every_topic_and_group_is_the_tests_own(isolated: Isolated) -> None:
    # Two tests sharing the status topic overwrote each other's processor announcements, and each
    # ledger API then answered /readyz 503 beside a processor that owned every partition.
    for settings in (isolated.ledger(), isolated.projector()):
        fields = type(settings).model_fields
        shared = [
            name
            for name, field in fields.items()
            if (name.startswith("topic_") or name.endswith("_group"))
            and getattr(settings, name) == field.default
        ]
        assert not shared, f"{type(settings).__name__}: {shared} are shared with every other test"


def test_the_settings_the_check_finds_by_name_are_named_so() -> None:
    names = {*LedgerSettings.model_fields, *ProjectorSettings.model_fields}
    assert {"topic_replies", "topic_status", "processor_group", "projector_group"} <= names
