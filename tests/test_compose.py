"""docker-compose.yml cannot run here; it must at least read the settings the services read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.cli import COMPONENTS
from services.ledger.settings import LedgerSettings
from services.projector.settings import ProjectorSettings

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
SETTINGS: dict[str, type[BaseSettings]] = {
    "ledger-api": LedgerSettings,
    "processor": LedgerSettings,
    "scheduler": LedgerSettings,
    "projector": ProjectorSettings,
    "read-api": ProjectorSettings,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_every_component_is_a_service_running_its_command(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(COMPONENTS) <= set(services)
    for component in COMPONENTS:
        assert services[component]["command"] == ["loyalty", component]
        assert {"kafka", "postgres"} <= set(services[component]["depends_on"])


@pytest.mark.parametrize("component", COMPONENTS)
def test_environment_names_are_settings_the_service_reads(compose: dict[str, Any], component: str) -> None:
    environment = compose["services"][component]["environment"]
    fields = SETTINGS[component].model_fields
    for name in environment:
        assert name.startswith("LOYALTY_"), name
        assert name.removeprefix("LOYALTY_").lower() in fields, f"{component} does not read {name}"
    assert environment["LOYALTY_KAFKA_BOOTSTRAP"] == "kafka:9092"
    if "database_url" in fields:
        assert environment["LOYALTY_DATABASE_URL"].startswith("postgresql://loyalty:loyalty@postgres:5432/")


def test_published_ports_match_the_services_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["ledger-api"]["ports"] == [
        f"127.0.0.1:8000:{services['ledger-api']['environment']['LOYALTY_LEDGER_PORT']}"
    ]
    assert services["read-api"]["ports"] == [
        f"127.0.0.1:8001:{services['read-api']['environment']['LOYALTY_READ_PORT']}"
    ]
    assert LedgerSettings.model_fields["ledger_port"].default == 8000
    assert ProjectorSettings.model_fields["read_port"].default == 8001


def test_kafka_is_a_kraft_broker_and_every_server_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("kafka", "postgres", "ledger-api", "read-api"):
        assert services[name]["healthcheck"]["test"], name
