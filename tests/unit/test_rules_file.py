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
        'time_zone = "Asia/Peking Standard Time"\n',
    ],
    ids=["version-0", "not-a-number", "typo", "no-entry-tier", "silent-before-active", "unknown-zone"],
)
def test_a_bad_rules_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        load_rules(path)


def test_the_program_calendar_is_beijing_time_unless_the_file_says_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('version = 2\ntime_zone = "Europe/Paris"\n')
    assert str(load_rules(None).zone) == "Asia/Shanghai"
    assert str(load_rules(path).zone) == "Europe/Paris"


def test_a_rule_added_later_leaves_the_recorded_fingerprint_alone_at_its_default() -> None:
    """A log whose rules were recorded before `time_zone` existed needs no new version to start."""
    before_time_zone = "bbac5259cdf5b87dc1c557a5b944503518fac243f991f413be1ba3e71446749f"
    assert ProgramRules().fingerprint() == before_time_zone
    assert ProgramRules(time_zone="UTC").fingerprint() != before_time_zone
