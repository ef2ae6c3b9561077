"""stream/agents/gaps.py against the broker: what a consumer skipped is read back exactly, from
the offset expected next (or the group's committed offset, or the log's start), and records of
aborted transactions and transaction markers are not records."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from stream.agents.gaps import GapFiller

pytestmark = pytest.mark.integration


def _filler(bootstrap: str, topic: str, group: str) -> GapFiller:
    async def committed(partitions: list[int]) -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group, partitions=[TopicPartition(topic, p) for p in partitions])
        finally:
            await admin.close()
        return {tp.partition: om.offset for tp, om in found.items()}

    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed")

    return GapFiller(topic, committed, make)


async def _topic(bootstrap: str) -> str:
    topic = f"gaps-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    return topic


def test_a_gap_is_read_back_from_where_the_next_record_was_expected(broker):
    async def run() -> None:
        b = broker.bootstrap
        topic = await _topic(b)
        producer = AIOKafkaProducer(bootstrap_servers=b)
        await producer.start()
        for i in range(10):
            await producer.send_and_wait(topic, b"v%d" % i, partition=0)
        await producer.stop()
        group = f"g-{uuid.uuid4().hex[:6]}"
        committer = AIOKafkaConsumer(bootstrap_servers=b, group_id=group, enable_auto_commit=False)
        await committer.start()
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "")})
        await committer.stop()

        gaps = _filler(b, topic, group)
        try:
            assert await gaps.before(0, 3) == []  # the batch starts at the committed offset
            gaps.advance(0, 5)
            got = await gaps.before(0, 8)  # offsets 5, 6, 7 were skipped
            assert [(r.offset, r.value) for r in got] == [(5, b"v5"), (6, b"v6"), (7, b"v7")]
            assert await gaps.before(0, 4) == []  # older than expected: a redelivery, nothing to read
            gaps.reset()
            assert await gaps.before(0, 2) == []  # below the committed offset again
            fresh = _filler(b, topic, f"new-{uuid.uuid4().hex[:6]}")  # nothing committed: from the start
            assert [r.offset for r in await fresh.before(0, 4)] == [0, 1, 2, 3]
            await fresh.close()
        finally:
            await gaps.close()

    asyncio.run(run())


def test_aborted_records_and_markers_are_skipped(broker):
    async def run() -> None:
        b = broker.bootstrap
        topic = await _topic(b)
        p = AIOKafkaProducer(bootstrap_servers=b, transactional_id=f"t-{uuid.uuid4().hex[:6]}")
        await p.start()
        for values, commit in (([b"a", b"b"], True), ([b"x", b"y"], False), ([b"c"], True)):
            await p.begin_transaction()
            for v in values:
                await p.send(topic, v, partition=0)
            await (p.commit_transaction() if commit else p.abort_transaction())
        await p.stop()
        probe = AIOKafkaConsumer(bootstrap_servers=b, group_id=None, isolation_level="read_committed")
        await probe.start()
        end = (await probe.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
        await probe.stop()
        gaps = _filler(b, topic, f"new-{uuid.uuid4().hex[:6]}")
        try:
            assert [r.value for r in await gaps.before(0, end)] == [b"a", b"b", b"c"]
        finally:
            await gaps.close()

    asyncio.run(run())


def test_records_skipped_inside_a_batch_are_read_back(broker):
    """What a restarted worker's first batch held after a SIGKILL (exactly-once): the record at
    the committed offset, then records well after it; the packs between were never processed
    while the offsets were committed past them. Markers between committed records are no gap."""

    async def run() -> None:
        b = broker.bootstrap
        topic = await _topic(b)
        p = AIOKafkaProducer(bootstrap_servers=b, transactional_id=f"t-{uuid.uuid4().hex[:6]}")
        await p.start()
        offsets = []
        for v in (b"p0", b"p1", b"p2", b"p3", b"p4"):  # one transaction each: a marker after each
            await p.begin_transaction()
            offsets.append((await (await p.send(topic, v, partition=0))).offset)
            await p.commit_transaction()
        await p.stop()
        assert offsets == [0, 2, 4, 6, 8]
        gaps = _filler(b, topic, f"new-{uuid.uuid4().hex[:6]}")
        try:
            got = await gaps.skipped(0, [0, 6, 8])  # delivered p0, p3, p4: p1 and p2 were skipped
            assert [(r.offset, r.value) for r in got] == [(2, b"p1"), (4, b"p2")]
            gaps.advance(0, 9)
            assert await gaps.skipped(0, [10]) == [], "a marker is not a record"
        finally:
            await gaps.close()

    asyncio.run(run())
