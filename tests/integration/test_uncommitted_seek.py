"""A new consumer group must not lose records Faust fetched and dropped during a rebalance.

Faust drops fetched records it cannot hand to a stream (a partition paused for table recovery, a
rebalance under way) and then seeks every partition back to its committed offset. aiokafka's
``seek_to_committed`` does nothing for a partition without a committed offset (or at 0), so a new
group kept reading after the dropped records: the benchmark lost one event in 20,000 in about a
quarter of its runs. ``install_uncommitted_seek_to_beginning`` (installed by ``create_app``) rewinds
such partitions. Checked here against the real broker, with aiokafka's own function beside it.
"""

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.patches import install_uncommitted_seek_to_beginning

pytestmark = pytest.mark.integration


async def _positions_after_seek(bootstrap: str, topic: str, *, patched: bool, commit: int | None) -> tuple[int, int]:
    """(position after reading all 10 records, position after seek_to_committed) of a new group."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    tp = TopicPartition(topic, 0)
    try:
        read = 0
        for _ in range(50):
            got = await consumer.getmany(timeout_ms=200)
            read += sum(len(v) for v in got.values())
            if read >= 10:
                break
        assert read == 10
        if commit is not None:
            await consumer.commit({tp: commit})
        before = await consumer.position(tp)
        seek = type(consumer).seek_to_committed
        await (seek(consumer) if patched else seek.original(consumer))
        return before, await consumer.position(tp)
    finally:
        await consumer.stop()


async def _setup(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for t in topics:
            for i in range(10):
                await producer.send(t, str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def test_a_partition_the_group_never_committed_is_read_again_from_its_beginning(broker):
    install_uncommitted_seek_to_beginning()
    topic, changelog = f"rewind-{uuid.uuid4().hex[:6]}", f"app-table-{uuid.uuid4().hex[:6]}-changelog"
    asyncio.run(_setup(broker.bootstrap, [topic, changelog]))
    bs = broker.bootstrap
    # aiokafka alone: no committed offset, no seek; the position stays after what was fetched.
    assert asyncio.run(_positions_after_seek(bs, topic, patched=False, commit=None)) == (10, 10)
    # Patched: back to the beginning, so records fetched and dropped are read again.
    assert asyncio.run(_positions_after_seek(bs, topic, patched=True, commit=None)) == (10, 0)
    assert asyncio.run(_positions_after_seek(bs, topic, patched=True, commit=0)) == (10, 0)
    # A committed offset is honoured as before.
    assert asyncio.run(_positions_after_seek(bs, topic, patched=True, commit=4)) == (10, 4)
    # Table changelogs are Faust's to position: left where they are.
    assert asyncio.run(_positions_after_seek(bs, changelog, patched=True, commit=None)) == (10, 10)
