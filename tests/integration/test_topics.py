"""The ledger's topics: made with their configs, kept in line when made by someone else, and a
config the broker refuses stops the start instead of being ignored."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from services.ledger import topics
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated
from tests.waiting import eventually


def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return {name: config["value"] for name, config in described["topic"][topic].items()}


def test_topics_made_earlier_without_configs_are_brought_in_line(isolated: Isolated) -> None:
    settings = isolated.ledger()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:  # as an operator, or an older version, made them: no configs of the ledger's
        admin.create_topics(
            [
                NewTopic(name, settings.partitions, 1)
                for name in (settings.topic_state, settings.topic_purchases)
            ]
        )
    finally:
        admin.close()
    ensure_topics(settings)
    # The broker's view of a topic's configs follows the controller's a moment later.
    eventually(
        lambda: _configs(settings.kafka_bootstrap, settings.topic_state).get("cleanup.policy") == "compact",
        what="the changelog compacted",
    )
    eventually(
        lambda: (
            _configs(settings.kafka_bootstrap, settings.topic_purchases).get("message.timestamp.type")
            == "LogAppendTime"
        ),
        what="the purchases stamped by the broker",
    )


def test_a_config_the_broker_refuses_stops_the_start(
    isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated.ledger()
    ensure_topics(settings)
    monkeypatch.setattr(topics, "INPUT_STAMP", {"message.timestamp.type": "NoSuchTime"})
    with pytest.raises(RuntimeError, match="cannot be brought in line"):
        ensure_topics(settings)
