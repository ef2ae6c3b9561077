"""Records of the internal topic that Faust skipped, read back before the batch that skips them.

faust-streaming 0.15.3 drops records it has fetched for a partition that is not active at that
moment (paused for table recovery, a rebalance under way) and relies on a seek back to the
committed offset afterwards. When that seek does not come first, the stream goes on after the
dropped records, and since Faust commits what it acknowledged, it commits past them: they are
lost. Seen on Kafka with four workers starting together: the first pack of two partitions was
never processed in one run of nine, while every offset was committed.

So the process agent checks every record of each batch against the offset it expects next per
partition: the offset after the record before it, or, for the first record after an assignment,
the group's committed offset (the log's start if there is none). Anything between is read here
with a consumer of its own and handled in its place. Records that Faust delivers twice (it
rewinds after a rebalance) are simply older than expected: the state's de-duplication absorbs
them as before.

Every record, not only a batch's first: Faust can also skip records *inside* a batch. Seen with
exactly-once after a SIGKILL: the restarted worker's first batch of a partition held the record
at the committed offset, then the records from 40 offsets on; the 14 packs between (2,765 events
of 30 users) were never processed, while the offsets were committed past them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class GapFiller:
    """Per partition of one topic: the next offset expected, and what to read when a batch
    starts later. ``committed(partitions)`` returns the group's committed offsets (-1: none);
    ``make_consumer()`` an unstarted aiokafka consumer without a group (read committed records
    only when the topic is written in transactions)."""

    def __init__(self, topic: str, committed: Callable[[list[int]], Awaitable[dict[int, int]]],
                 make_consumer: Callable[[], Any], *, timeout_s: float = 30.0) -> None:  # fmt: skip
        self.topic = topic
        self.committed = committed
        self.make_consumer = make_consumer
        self.timeout_s = timeout_s
        self.expected: dict[int, int] = {}
        self._consumer: Any = None

    def reset(self) -> None:
        """After an assignment change: expectations are read again from the committed offsets."""
        self.expected.clear()

    def advance(self, partition: int, next_offset: int) -> None:
        if next_offset > self.expected.get(partition, -1):
            self.expected[partition] = next_offset

    async def before(self, partition: int, first_offset: int) -> list[Record]:
        """The records of ``partition`` between the offset expected next and ``first_offset``
        (the first offset of the batch about to be handled); usually none."""
        return await self.skipped(partition, [first_offset])

    async def skipped(self, partition: int, offsets: list[int]) -> list[Record]:
        """The records of ``partition`` that the consumer skipped before or between ``offsets``
        (the offsets of the records of a batch in this partition, in the order delivered): those
        from the offset expected next up to each offset that was not delivered; usually none.
        Transaction markers and aborted records take offsets without being records: a gap of
        those costs one read and returns nothing."""
        start = self.expected.get(partition)
        if start is None:
            try:
                start = (await self.committed([partition])).get(partition, -1)
                if start < 0:
                    start = await self._log_start(partition)
            except Exception as exc:  # noqa: BLE001 - without the broker's answer, check from the next batch on
                log.warning("internal partition %d: could not read where to expect the next record (%s: %s); "
                            "checking from this batch on", partition, type(exc).__name__, exc)  # fmt: skip
                start = offsets[0]
            self.expected[partition] = start
        gaps: list[tuple[int, int]] = []
        expect = start
        for offset in offsets:
            if offset > expect:
                gaps.append((expect, offset))
            expect = max(expect, offset + 1)
        if not gaps:
            return []
        read = await self._read(partition, gaps[0][0], gaps[-1][1])
        records = [r for r in read if any(a <= r.offset < b for a, b in gaps)]
        if records:
            log.warning("internal partition %d: %d records at offsets %d-%d were skipped by the consumer; "
                        "read back and handled in their place", partition, len(records), records[0].offset,
                        records[-1].offset)  # fmt: skip
        return records

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _reader(self) -> Any:
        if self._consumer is None:
            consumer = self.make_consumer()
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _log_start(self, partition: int) -> int:
        from aiokafka import TopicPartition

        tp = TopicPartition(self.topic, partition)
        return (await (await self._reader()).beginning_offsets([tp]))[tp]

    async def _read(self, partition: int, start: int, end: int) -> list[Record]:
        """Records of offsets [start, end): stops at ``end`` (transaction markers and aborted
        records take offsets without being records, so the position, not the count, says when)."""
        from aiokafka import TopicPartition

        consumer = await self._reader()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read back {self.topic}[{partition}] offsets {start}-{end - 1}")
            got = await consumer.getmany(tp, timeout_ms=500)
            for m in got.get(tp, ()):
                if m.offset >= end:
                    return out
                out.append(Record(partition, m.offset, m.key, m.value, m.timestamp))
        return out
