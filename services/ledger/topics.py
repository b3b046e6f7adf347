"""Creating the ledger's topics at start, with the configs of DESIGN.md."""

from __future__ import annotations

import contextlib
import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.topics import KafkaSettings

log = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the missing topics; existing ones are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="loyalty-topics")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
            for name, configs in settings.topic_configs().items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance was quicker
                admin.create_topics(missing)
            log.info("topics created", extra={"topics": [topic.name for topic in missing]})
    finally:
        admin.close()
