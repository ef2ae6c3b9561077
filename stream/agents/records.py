"""What the worker's stages pass around: input messages, events to process, the internal topic's
packs, and the stand-in for a Faust event that table reads and writes need."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import faust
from faust.streams import _current_event  # see as_current(): Faust tables key writes by it

from models.events import Event

# Keys of the internal topic's records. A "pack" is for the partition's owner to process; a "done"
# pack holds events already processed where they were ingested: the process agent skips it, and it
# is there so that the topic stays the complete pseudonymised event history (train --from-topic).
PACK_KEY = b"pack"
DONE_KEY = b"done"

# Events bound for the internal topic: per partition, the event dicts and their producer timestamps (ms).
Packs = dict[int, tuple[list[dict], list[int | None]]]


def partition_for(user: str, partitions: int) -> int:
    """Partition of a pseudonymous user on the internal topic (uniform: the id is an HMAC)."""
    return int(user[:8], 16) % partitions


def ingest_partitions(assigned: set[int], n_input: int, n_internal: int) -> set[int]:
    """The input partitions a worker ingests: those whose events it would have received had the
    input been co-partitioned with the internal topic (``p % n_internal`` is one of its
    ``assigned`` internal partitions). Across the workers of a group, every input partition is
    read by exactly one.

    >>> sorted(ingest_partitions({0, 3}, 8, 4))
    [0, 3, 4, 7]
    """
    return {p for p in range(n_input) if p % n_internal in assigned}


class RawMessage(NamedTuple):
    """An input record, from aiokafka or from Faust (their timestamps differ in unit)."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


def raw_message(msg, *, ms: bool = False) -> RawMessage:
    """aiokafka ``ConsumerRecord`` (``ms=True``: timestamp in ms) or Faust ``Message`` (seconds)."""
    ts = msg.timestamp
    return RawMessage(msg.value, msg.key, msg.topic, msg.partition, msg.offset,
                      (int(ts) if ms else int(ts * 1000)) if ts else None)  # fmt: skip


@dataclasses.dataclass(slots=True)
class Item:
    """One event to process: from the internal topic, with the record (a pack) that carried it, or
    ingested here (``fe`` is then the partition's :class:`PartitionEvent`, ``source`` the input)."""

    partition: int
    event: Event
    kafka_ts: float | None  # the original producer timestamp, epoch seconds
    fe: faust.EventT
    source: RawMessage | None = None


def add_to_pack(packs: Packs, partition: int, event: dict, kafka_ts_ms: int | None) -> None:
    evs, kts = packs.setdefault(partition, ([], []))
    evs.append(event)
    kts.append(kafka_ts_ms)


class PartitionEvent:
    """Stands in for a Faust event of internal partition ``partition``: Faust's table reads and
    writes only look at ``message.topic`` (which must be the table's source topic) and
    ``message.partition`` (which store and changelog partition)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = PartitionMessage(topic, partition)


class PartitionMessage(NamedTuple):
    topic: str
    partition: int
    offset: int = -1
    timestamp: float | None = None


class Refetched(NamedTuple):
    """An internal-topic record read back by :class:`~stream.agents.gaps.GapFiller`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@contextlib.contextmanager
def as_current(event: faust.EventT | PartitionEvent) -> Iterator[None]:
    """Make ``event`` Faust's current event for the duration of a table read or write: Faust
    picks the changelog partition (and the RocksDB partition store) from the event being iterated,
    and we read and write once per user per batch, outside the iteration."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def by_partition(partitions: dict[str, int], users: Iterable[str] | None = None) -> dict[int, list[str]]:
    """``users`` (default: all of ``partitions``) grouped by partition, so that one
    :func:`as_current` serves a whole group."""
    groups: dict[int, list[str]] = {}
    for user in partitions if users is None else users:
        groups.setdefault(partitions[user], []).append(user)
    return groups
