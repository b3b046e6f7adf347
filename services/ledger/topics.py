"""Creating the ledger's topics at start, with the configs of DESIGN.md."""

from __future__ import annotations

import contextlib
import logging

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.topics import INPUT_STAMP, KafkaSettings

log = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the missing topics; of existing ones, only the changelog's compaction and the
    inputs' timestamps are brought in line.

    The changelog's settings decide how much a restore from scratch reads, and the inputs' stamp
    what a purchase's date is judged against, so topics created by an earlier version get them
    too (the inputs' one config alone: their retention is the operator's to tune).
    """
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
        if settings.topic_state in existing:
            compaction = settings.topic_configs()[settings.topic_state]
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic_state, compaction)])
        # Both, created now or not: a topic another client made meanwhile was not "missing".
        inputs = [
            ConfigResource(ConfigResourceType.TOPIC, topic, dict(INPUT_STAMP))
            for topic in (settings.topic_purchases, settings.topic_commands)
        ]
        # kafka-python reports a refusal per topic in the result, not by raising.
        refused = {
            topic: outcome
            for topic, outcome in admin.alter_configs(inputs, incremental=True)["topic"].items()
            if outcome != "OK"
        }
        if refused:
            raise RuntimeError(f"the input topics cannot be stamped by the broker: {refused}")
    finally:
        admin.close()
