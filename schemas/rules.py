"""The program rules: validated from the operator's rules file, recorded in the log when they change.

Defaults are the program of domain/README.md. Amounts are CNY decimal strings, multipliers are
decimal strings so that no float ever takes part in a points calculation.
"""

from __future__ import annotations

import hashlib
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from schemas.canonical import canonical_json
from schemas.money import Amount, to_minor

Multiplier = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,2})(\.[0-9]{1,4})?$")]
TierName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tier(_Strict):
    name: TierName
    qualifying_spend: Amount = Field(description="rolling-window spend that qualifies, CNY")
    min_purchases: int = Field(default=0, ge=0, description="purchases in the window, besides the spend")
    multiplier: Multiplier = "1.0"
    benefit: str = ""

    @property
    def qualifying_minor(self) -> int:
        return to_minor(self.qualifying_spend)


class CategoryBonus(_Strict):
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    multiplier: Multiplier


class ProgramRules(_Strict):
    # Rules added after logs were first written: while at their default they stay out of the
    # fingerprint, so that rules recorded before they existed still match (no new version needed).
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"time_zone", "future_tolerance_hours"})

    version: int = Field(default=1, ge=1)
    points_per_cny: Multiplier = "1"
    rounding: Literal["floor", "half_up"] = "floor"
    tiers: tuple[Tier, ...] = (
        Tier(name="regular", qualifying_spend="0", multiplier="1.0", benefit="10% off"),
        Tier(name="silver", qualifying_spend="2000", multiplier="1.2", benefit="15% off, samples"),
        Tier(
            name="gold", qualifying_spend="8000", multiplier="1.5", benefit="birthday gift, priority delivery"
        ),
        Tier(
            name="platinum",
            qualifying_spend="25000",
            min_purchases=12,
            multiplier="2.0",
            benefit="personal advisor, events",
        ),
    )
    qualifying_window_months: int = Field(default=12, ge=1, le=120)
    evaluation_months: int = Field(default=12, ge=1, le=120)
    category_bonuses: tuple[CategoryBonus, ...] = ()
    expiry_months: int = Field(default=24, ge=1, le=1200)
    pending_days: int = Field(default=0, ge=0, le=365)
    refund_window_days: int = Field(default=365, ge=1, le=3650, description="refunds accepted this long")
    future_tolerance_hours: int = Field(
        default=24, ge=0, le=8760, description="how far after it arrives a purchase or a refund may be dated"
    )
    redemption_value_minor_per_point: int = Field(default=10, ge=0, description="100 points = 10 CNY")
    active_days: int = Field(default=30, ge=1)
    silent_days: int = Field(default=180, ge=1)
    time_zone: str = Field(
        default="Asia/Shanghai",
        description="IANA time zone of the program's calendar: days and months of metrics, recency",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}") from None
        return name

    @model_validator(mode="after")
    def _ordered_tiers(self) -> ProgramRules:
        if not self.tiers or self.tiers[0].qualifying_minor != 0:
            raise ValueError("the first tier is the entry tier and needs a qualifying spend of 0")
        spends = [tier.qualifying_minor for tier in self.tiers]
        if spends != sorted(spends) or len(set(spends)) != len(spends):
            raise ValueError("tiers must be listed from lowest to highest qualifying spend")
        if len({tier.name for tier in self.tiers}) != len(self.tiers):
            raise ValueError("tier names must be unique")
        if self.silent_days <= self.active_days:
            raise ValueError("silent_days must be greater than active_days")
        return self

    def tier(self, name: str) -> Tier:
        return next(tier for tier in self.tiers if tier.name == name)

    def tier_index(self, name: str) -> int:
        return next(index for index, tier in enumerate(self.tiers) if tier.name == name)

    def bonus_for(self, category: str) -> Decimal:
        return next(
            (Decimal(b.multiplier) for b in self.category_bonuses if b.category == category), Decimal(1)
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def fingerprint(self) -> str:
        """A rule added after logs were written counts only when set away from its default, so that
        upgrading the ledger is not taken for a change of rules under the same version."""
        later = {
            name for name in self.ADDED_LATER if getattr(self, name) == type(self).model_fields[name].default
        }
        return hashlib.sha256(canonical_json(self.model_dump(mode="json", exclude=later))).hexdigest()


def load_rules(path: Path | None) -> ProgramRules:
    """The rules file (TOML), or the default program when there is none."""
    if path is None:
        return ProgramRules()
    with open(path, "rb") as handle:
        return ProgramRules.model_validate(tomllib.load(handle))
