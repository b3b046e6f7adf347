"""Which processor reads which input partitions: co-partitioned, sticky, and cooperative.

Partition *p* of every input topic goes to one member, as its state (the changelog's partition
*p*) is kept by one member. A rebalance moves only the partition numbers that must move to keep
the members balanced, and moves them in two rounds (KIP-429, incremental cooperative
rebalancing): the old owner gives a number up in the first, and the new owner gets it in the
next, so no two members ever hold one. Every other partition keeps being read throughout: an
eager rebalance stopped every partition of every member, which then restored and warmed them all.

kafka-python's cooperative-sticky assignor balances topic partitions one by one, so it could give
partition *p* of the two inputs to different members; hence this one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor, RebalanceProtocol
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

# ConsumerProtocolSubscription v1 carries the partitions a member owns (KIP-429).
SUBSCRIPTION_VERSION = 1


def plan(numbers: Sequence[int], owned: dict[str, set[int]]) -> dict[str, set[int]]:
    """This round's partition numbers per member, given what each member says it owns.

    Every member ends with a fair share (the counts differ by at most one), keeping as much of
    what it owns as its share allows. A number owned by another member (it is moving) or
    claimed by two (one of them is out of date) is given to nobody this round: its owners give
    it up, which starts the next round, where it is unowned.
    """
    if not owned:
        return {}
    members = sorted(owned, key=lambda member: (-len(owned[member] & set(numbers)), member))
    share, extra = divmod(len(numbers), len(members))
    claims: dict[int, list[str]] = defaultdict(list)
    for member in members:
        for number in owned[member]:
            claims[number].append(member)
    owner = {number: claimants[0] for number, claimants in claims.items() if len(claimants) == 1}

    target: dict[str, set[int]] = {}
    for rank, member in enumerate(members):
        quota = share + (rank < extra)
        target[member] = set(sorted(n for n in numbers if owner.get(n) == member)[:quota])
    placed = set().union(*target.values())
    spare = iter(n for n in sorted(numbers) if n not in placed)
    for rank, member in enumerate(members):
        quota = share + (rank < extra)
        while len(target[member]) < quota:
            target[member].add(next(spare))
    # Given now only when nobody else claims it.
    return {
        member: {n for n in given if claims.get(n, [member]) == [member]} for member, given in target.items()
    }


class CoPartitionedCooperative(AbstractPartitionAssignor):  # type: ignore[misc]
    """The plan above, spoken in kafka-python's assignor protocol.

    One instance per consumer: it reports in each join what its consumer owns. That is the last
    assignment, less what the rebalance listener has since given up (`release`), so that a
    member that lost its partitions (dropped from the group) does not claim them.
    """

    name = "loyalty-copartitioned-cooperative"
    version = SUBSCRIPTION_VERSION

    def __init__(self) -> None:
        self._owned: set[TopicPartition] = set()

    def supported_protocols(self) -> list[RebalanceProtocol]:
        return [RebalanceProtocol.COOPERATIVE]

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        self._owned -= set(partitions)

    def metadata(self, topics: Iterable[str]) -> Any:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in self._owned:
            by_topic[tp.topic].append(tp.partition)
        owned = [
            ConsumerProtocolSubscription.TopicPartition(topic=topic, partitions=sorted(partitions))
            for topic, partitions in sorted(by_topic.items())
        ]
        return ConsumerProtocolSubscription(
            version=self.version, topics=sorted(topics), user_data=b"", owned_partitions=owned
        )

    def on_assignment(self, assignment: Any, generation: int) -> None:
        self._owned = set(assignment.partitions())

    def assign(self, cluster: Any, members: Sequence[Any]) -> dict[str, Any]:
        topics = sorted({topic for member in members for topic in member.metadata.topics})
        numbers = sorted({p for topic in topics for p in cluster.partitions_for_topic(topic) or ()})
        owned = {
            member.member_id: {
                p for tp in getattr(member.metadata, "owned_partitions", None) or () for p in tp.partitions
            }
            for member in members
        }
        this_round = plan(numbers, owned)
        partitions = {topic: set(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        return {
            member.member_id: ConsumerProtocolAssignment(
                self.version,
                [(topic, sorted(this_round[member.member_id] & partitions[topic])) for topic in topics],
                b"",
            )
            for member in members
        }
        this_round = plan(numbers, owned)
        return {
            member.member_id: ConsumerProtocolAssignment(
                self.version,
                [
                    (
                        topic,
                        sorted(this_round[member.member_id] & (cluster.partitions_for_topic(topic) or set())),
                    )
                    for topic in sorted(member.metadata.topics)
                ],
                b"",
            )
            for member in members
        }
