"""Stopping and restarting the processor and the projector loses nothing and repeats nothing."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from schemas.rules import ProgramRules
from services.ledger.processor import Processor
from services.projector.api import create_app as create_read_app
from services.projector.projector import Projector
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import await_events, publish, read_all, send_purchase
from tests.integration.test_pipeline import balance_of
from tests.integration.test_processor_guarantees import all_events, assert_chains_intact
from tests.waiting import eventually


def test_a_restarted_processor_continues_each_members_chain(isolated: Isolated, running: Running) -> None:
    settings = isolated.ledger()
    members = ("m-1", "m-2")
    running.start(Processor(settings, ProgramRules()).run)
    for member in members:
        send_purchase(settings, member, "o-1", "3")
    before = {member: await_events(settings, member, 3) for member in members}
    running.stop_all()  # fails here if the first processor is still running

    # Sent while no processor runs, so only the restarted one can record them.
    for member in members:
        # o-1 again, as sent before: the restored state remembers it, so nothing is appended.
        for purchase_id, amount in (("o-1", "3"), ("o-2", "4")):
            send_purchase(settings, member, purchase_id, amount)
    running.start(Processor(settings, ProgramRules()).run)
    for member in members:
        events = await_events(settings, member, 5)
        assert events[:3] == before[member], "the restart left the recorded events as they were"
        assert [e["data"].get("purchase_id") for e in events] == [None, "o-1", "o-1", "o-2", "o-2"]
    assert_chains_intact(all_events(isolated))


def test_the_projector_resumes_from_its_checkpoint_and_skips_duplicates(
    isolated: Isolated, running: Running
) -> None:
    ledger = isolated.ledger()
    running.start(Processor(ledger, ProgramRules()).run)
    with TestClient(create_read_app(isolated.projector()), headers=isolated.headers) as read:
        running.start(Projector(isolated.projector()).run)
        send_purchase(ledger, "m-2", "o-1", "10")
        eventually(lambda: balance_of(read, "m-2", 10), what="balance 10")

        # The same events delivered again, as a re-sent batch would deliver them.
        for record in read_all(ledger.kafka_bootstrap, ledger.topic_events):
            publish(
                ledger.kafka_bootstrap,
                ledger.topic_events,
                record.key,
                record.value,
                partition=record.partition,
            )
        send_purchase(ledger, "m-2", "o-2", "1")
        eventually(lambda: balance_of(read, "m-2", 11), what="balance 11, duplicates skipped")

        running.stop_all()
        send_purchase(ledger, "m-2", "o-3", "5")
        running.start(Processor(ledger, ProgramRules()).run)
        running.start(Projector(isolated.projector()).run)
        eventually(lambda: balance_of(read, "m-2", 16), what="balance 16 after restart")

    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT lifetime_earned, last_sequence FROM members WHERE member_id = 'm-2'")
        assert row.fetchone() == (16, 7)
