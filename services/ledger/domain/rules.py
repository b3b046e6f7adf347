"""The program rules a decision is taken under."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    version: int = 1
    points_per_cny: int = 1
