"""The member's partition, as Kafka's default partitioner computes it for key = member_id.

Inputs, events and the state changelog share partition counts, so this one number says which
processor instance owns a member everywhere.
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2


def partition_for(member_id: str, partitions: int) -> int:
    return int(murmur2(member_id.encode()) & 0x7FFFFFFF) % partitions
