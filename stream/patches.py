"""Every change this project makes to a third-party library, in one place.

Each patch names the versions it was checked on and why it exists, is idempotent, and is guarded
by a test that fails when upstream changes the code it replaces (tests/unit/test_patches.py), so
that an upgrade is a decision, not an accident. :func:`install` applies them all; ``create_app``
calls it.
"""

from __future__ import annotations

import hashlib
import inspect


def install() -> None:
    install_uncommitted_seek_to_beginning()
    install_committed_highwaters()


def source_digest(fn: object) -> str:
    """A short digest of ``fn``'s source, for the guard tests: a patch is checked against exactly
    the upstream code it was written for."""
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


# aiokafka 0.14.0: AIOKafkaConsumer.seek_to_committed
SEEK_TO_COMMITTED_DIGEST = "f6cd85c8b70a4ccf"
# faust-streaming 0.15.3: faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._highwaters
HIGHWATERS_DIGEST = "a7f4f97d9f32aca2"


def install_uncommitted_seek_to_beginning() -> None:
    """Make aiokafka's ``seek_to_committed`` rewind partitions the group has not committed yet
    (aiokafka 0.14.0, with faust-streaming 0.15.3).

    Faust drops records it has fetched but cannot hand to a stream at that moment (a partition
    paused for table recovery, a rebalance under way: ``Consumer.getmany``), and relies on seeking
    every partition back to its committed offset when the rebalance or recovery completes. But
    aiokafka's ``seek_to_committed`` seeks only where the committed offset is above 0: a partition
    a new group has not committed yet keeps its fetch position, after the dropped records, and they
    are never read. The benchmark caught it: one event in 20,000 missing from the internal topic
    in about one run in four, an early one, with no error and consumer lag 0.

    With this patch such partitions (no committed offset, or 0) go back to their beginning when
    the consumer's reset policy is ``earliest`` (Faust's default, and ours): what was fetched and
    dropped is read again; what was already handled comes again too, and is absorbed by the
    state's de-duplication, as after any at-least-once replay. Table changelogs (``*-changelog``)
    are left alone: the group never commits them, Faust positions them itself. Idempotent."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import OffsetResetStrategy

    if getattr(AIOKafkaConsumer.seek_to_committed, "_intentstream_rewind", False):
        return
    seek = AIOKafkaConsumer.seek_to_committed

    async def seek_to_committed(self, *partitions):  # type: ignore[no-untyped-def]
        committed = await seek(self, *partitions)
        # Table changelogs are not consumed by the group (Faust keeps their offsets itself).
        unseeked = [tp for tp, offset in committed.items() if (not offset or offset <= 0) and not tp.topic.endswith("-changelog")]
        if unseeked and self._fetcher._default_reset_strategy == OffsetResetStrategy.EARLIEST:
            await self.seek_to_beginning(*unseeked)
        return committed

    seek_to_committed._intentstream_rewind = True  # type: ignore[attr-defined]
    seek_to_committed.original = seek  # type: ignore[attr-defined]  # for tests: aiokafka's own
    AIOKafkaConsumer.seek_to_committed = seek_to_committed


def install_committed_highwaters() -> None:
    """Make Faust read a changelog's end from the broker in exactly-once mode (faust-streaming
    0.15.3 with aiokafka 0.14.0).

    With ``processing_guarantee="exactly_once"`` Faust takes the end of each changelog partition,
    where table recovery stops, from ``last_stable_offset`` of its consumer's fetcher: unknown
    (-1) until that partition has been fetched. Recovery then compares the store's persisted
    offset with -1 and crashes the worker with ``ConsistencyError`` ("persisted offset ... is
    higher than the last offset in that topic"), as soon as a rebalance hands a worker a
    partition it has written before. Patched, it asks the broker (ListOffsets; its consumer reads
    committed records, so that is the last stable offset), as it does without transactions.
    Idempotent."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread._highwaters, "_intentstream_lso", False):
        return

    original = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self, partitions):  # type: ignore[no-untyped-def]
        return await self._ensure_consumer().end_offsets(partitions)

    _highwaters._intentstream_lso = True  # type: ignore[attr-defined]
    _highwaters.original = original  # type: ignore[attr-defined]  # for the guard test
    AIOKafkaConsumerThread._highwaters = _highwaters
