"""Amounts travel as decimal strings and are integer minor units (fen) inside."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import StringConstraints

Amount = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$")]
"""A non-negative CNY amount with at most two decimals, as a string: "129.90"."""

Currency = Literal["CNY"]
CURRENCY: Currency = "CNY"
"""The program's one currency."""


def to_minor(amount: str) -> int:
    return int(Decimal(amount) * 100)


def from_minor(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{whole}.{cents:02d}"
