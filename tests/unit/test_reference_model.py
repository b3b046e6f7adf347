"""The real core against the reference model over random hostile histories (issue 14)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.reference.histories import LedgerAgainstReference

LedgerAgainstReference.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestTheLedgerAgreesWithTheReference = LedgerAgainstReference.TestCase
