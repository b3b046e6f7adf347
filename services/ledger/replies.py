"""The ledger API's view of the processor's answers, followed from the replies topic.

Replies are written in the same Kafka transaction as the events they describe and read with
read_committed, so an answer is never given for a decision that was rolled back.

It also tells when the processor is behind in a partition: a command this worker sent there is
still unanswered past the command budget while answers keep coming (the processor is alive, so
more arrives than it decides). Commands sent then would only queue behind it, each waiting
longer; they are shed instead. A processor that answers nothing (stopped, restoring) sheds
nothing: its commands wait in the log and are answered 202, as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict

from kafka import TopicPartition
from pydantic import ValidationError

from services.kafka_offsets import committed_reader
from services.ledger.command_messages import CommandReply
from services.ledger.partitioning import partition_for
from services.ledger.settings import LedgerSettings

log = logging.getLogger(__name__)

REMEMBERED = 100_000
# How recent the partition's last answer must be for its processor to count as answering.
ANSWERING_S = 1.0


class ReplyTracker:
    def __init__(self, settings: LedgerSettings) -> None:
        self._topic = settings.topic_replies
        # A long poll: the broker answers as soon as a reply is committed, and an idle follower
        # costs nothing (asking every 5 ms cost a fifth of a core per worker, idle).
        self._consumer = committed_reader(
            settings.kafka_bootstrap, "loyalty-ledger-api-replies", fetch_max_wait_ms=500
        )
        # Replies as the bytes read: one object each, not a tree the cycle collector walks.
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._expected: OrderedDict[str, None] = OrderedDict()
        self._changed = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[CommandReply]]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="reply-tracker", daemon=True)
        self._budget_s = settings.command_budget_ms / 1000
        self._forget_s = max(settings.command_timeout_s, self._budget_s)
        # By partition: the commands this worker sent and has no answer to yet, with when (the
        # oldest first), and when the partition's last answer to anyone came.
        self._unanswered: dict[int, OrderedDict[str, float]] = {}
        self._answered_at: dict[int, float] = {}

    def start(self) -> None:
        """Start at the end of the topic; positions are fixed before any command is sent."""
        deadline = time.monotonic() + 30
        while not (partitions := self._consumer.partitions_for_topic(self._topic) or set()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self._topic} has no partitions")
            time.sleep(0.2)
        self._unanswered = {partition: OrderedDict() for partition in partitions}
        tps = [TopicPartition(self._topic, partition) for partition in sorted(partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:
            self._consumer.position(tp)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()

    def expect(self, command_id: str, partition: int, sent_at: float) -> None:
        """Remember that this instance sent the command (to `partition`, at `sent_at`, monotonic),
        so that it reads as pending until answered. The answer can come before the broker's
        acknowledgement does."""
        with self._changed:
            self._expected[command_id] = None
            while len(self._expected) > REMEMBERED:
                self._expected.popitem(last=False)
            if command_id not in self._replies:
                self._unanswered[partition][command_id] = sent_at

    def behind(self, member_id: str) -> bool:
        """Whether the member's partition is behind (see the module's doc)."""
        partition, now = partition_for(member_id, len(self._unanswered)), time.monotonic()
        with self._changed:
            unanswered = self._unanswered[partition]
            # One sent past its timeout no longer counts: it was answered 202, and its answer
            # may never reach this worker (a reply read before a restart of the follower).
            while unanswered and now - next(iter(unanswered.values())) > self._forget_s:
                unanswered.popitem(last=False)
            oldest = next(iter(unanswered.values()), now)
            return now - oldest > self._budget_s and now - self._answered_at.get(partition, 0.0) < ANSWERING_S

    def expected(self, command_id: str) -> bool:
        with self._changed:
            return command_id in self._expected

    def get(self, command_id: str) -> CommandReply | None:
        with self._changed:
            known = self._replies.get(command_id)
        return None if known is None else CommandReply.model_validate_json(known)

    async def wait(self, command_id: str, timeout_s: float) -> CommandReply | None:
        """The reply, or None past the timeout; waits on the event loop, holding no thread."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[CommandReply] = loop.create_future()
        with self._changed:
            known = self._replies.get(command_id)
            if known is None:
                self._waiters.setdefault(command_id, []).append((loop, waiter))
        if known is not None:
            return CommandReply.model_validate_json(known)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None
        finally:
            with self._changed:
                waiting = self._waiters.get(command_id, [])
                if (loop, waiter) in waiting:
                    waiting.remove((loop, waiter))
                if not waiting:
                    self._waiters.pop(command_id, None)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._consumer.poll(timeout_ms=100)
            except Exception:  # keep following: a missed reply only turns an answer into a 202
                log.exception("reading replies failed")
                self._stop.wait(1)
                continue
            replies = []
            for records in batch.values():
                for record in records:
                    try:
                        reply = CommandReply.model_validate_json(record.value)
                        replies.append((reply, record.value, record.partition))
                    except ValidationError:
                        log.error(
                            "unreadable reply", extra={"partition": record.partition, "offset": record.offset}
                        )
            if replies:
                now = time.monotonic()
                with self._changed:
                    for reply, raw, partition in replies:
                        self._answered_at[partition] = now
                        self._unanswered[partition].pop(reply.command_id, None)
                        # A retry's "duplicate" must not hide what the command originally did.
                        if reply.command_id not in self._replies or reply.status != "duplicate":
                            self._replies[reply.command_id] = raw
                        self._replies.move_to_end(reply.command_id)
                        waiting = self._waiters.pop(reply.command_id, [])
                        if not waiting:
                            continue
                        stored = self._replies[reply.command_id]
                        answer = reply if stored is raw else CommandReply.model_validate_json(stored)
                        for loop, waiter in waiting:
                            loop.call_soon_threadsafe(_resolve, waiter, answer)
                    while len(self._replies) > REMEMBERED:
                        self._replies.popitem(last=False)


def _resolve(waiter: asyncio.Future[CommandReply], reply: CommandReply) -> None:
    if not waiter.done():
        waiter.set_result(reply)
