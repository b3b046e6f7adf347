"""The operator's rules file: TOML, validated before the processor takes any decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.rules import ProgramRules, load_rules


def test_no_file_means_the_default_program() -> None:
    rules = load_rules(None)
    assert [tier.name for tier in rules.tiers] == ["regular", "silver", "gold", "platinum"]
    assert (rules.expiry_months, rules.pending_days, rules.redemption_value_minor_per_point) == (24, 0, 10)


def test_a_rules_file_changes_the_program(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        'version = 2\npending_days = 7\n\n[[category_bonuses]]\ncategory = "beauty"\nmultiplier = "2"\n'
    )
    rules = load_rules(path)
    assert rules.version == 2 and rules.pending_days == 7
    assert str(rules.bonus_for("beauty")) == "2"
    assert rules.fingerprint() != ProgramRules().fingerprint()


@pytest.mark.parametrize(
    "text",
    [
        "version = 0\n",
        'expiry_months = "soon"\n',
        "pendng_days = 3\n",
        '[[tiers]]\nname = "gold"\nqualifying_spend = "100"\n',
        "active_days = 200\nsilent_days = 100\n",
    ],
    ids=["version-0", "not-a-number", "typo", "no-entry-tier", "silent-before-active"],
)
def test_a_bad_rules_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        load_rules(path)
