"""Projecting a crafted log: sealed events published as the processor would, then the real projector."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from kafka import KafkaProducer

from schemas.events import Event
from services.ledger.topics import ensure_topics
from services.projector.api import create_app
from services.projector.projector import Projector
from tests.conftest import Isolated, Running
from tests.waiting import eventually


def publish_events(isolated: Isolated, events: list[Event] | list[dict[str, Any]]) -> None:
    """Events keyed by member, as the processor publishes them; a dict goes exactly as written."""
    settings = isolated.ledger()
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for event in events:
            if isinstance(event, Event):
                key, value = event.member_id, event.to_bytes()
            else:
                key, value = event["member_id"], json.dumps(event).encode()
            producer.send(settings.topic_events, key=key.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def caught_up(read: TestClient) -> bool:
    response = read.get("/readyz")
    return response.status_code == 200 and response.json()["lag"] == 0


@contextmanager
def projected(
    isolated: Isolated, running: Running, events: list[Event] | list[dict[str, Any]]
) -> Iterator[TestClient]:
    """The read API over the projection of `events`, once every one of them is applied."""
    publish_events(isolated, events)
    with TestClient(create_app(isolated.projector()), headers=isolated.headers) as read:
        running.start(Projector(isolated.projector()).run)
        eventually(lambda: caught_up(read), what="projector caught up")
        yield read
