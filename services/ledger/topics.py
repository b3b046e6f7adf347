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
        # Created now or not (a topic another client made meanwhile was not "missing"), and
        # incrementally: whatever else an operator set on these topics stays.
        kept = {
            settings.topic_state: settings.topic_configs()[settings.topic_state],
            settings.topic_purchases: dict(INPUT_STAMP),
            settings.topic_commands: dict(INPUT_STAMP),
        }
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs) for name, configs in kept.items()
        ]
        # kafka-python reports a refusal per topic in the result, not by raising. Its own check of
        # the names (raise_on_unknown) describes the topic's current overrides first, and a topic
        # created a moment ago may not show them yet: it refused names the broker accepts.
        outcomes = admin.alter_configs(resources, incremental=True, raise_on_unknown=False)["topic"]
        refused = {name: outcome for name, outcome in outcomes.items() if outcome != "OK"}
        if refused:
            raise RuntimeError(f"the topics' configs cannot be brought in line: {refused}")
    finally:
        admin.close()
