"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from schemas.rules import ProgramRules
from services.ledger.api import create_app as create_ledger_app
from services.ledger.processor import Processor
from services.projector.api import create_app as create_read_app
from services.projector.projector import Projector
from tests.conftest import Isolated, Running


@pytest.fixture
def system(isolated: Isolated, running: Running) -> Iterator[tuple[TestClient, TestClient]]:
    """Ledger API, processor, projector and read API on one test's topics and database."""
    with (
        TestClient(create_ledger_app(isolated.ledger()), headers=isolated.headers) as ledger,
        TestClient(create_read_app(isolated.projector()), headers=isolated.headers) as read,
    ):
        running.start(Processor(isolated.ledger(), ProgramRules()).run)
        running.start(Projector(isolated.projector()).run)
        yield ledger, read
