"""Every setting a service reads is in the README's settings table."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ledger.settings import LedgerSettings
from services.projector.settings import ProjectorSettings
from services.supervisor import SupervisorSettings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "name",
    sorted(
        set(LedgerSettings.model_fields)
        | set(ProjectorSettings.model_fields)
        | set(SupervisorSettings.model_fields)
    ),
)
def test_setting_is_documented(name: str) -> None:
    assert f"`LOYALTY_{name.upper()}`" in README
