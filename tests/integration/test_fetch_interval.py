"""The embedded broker answers an idle fetch at once instead of holding it for fetch.max.wait.ms,
so an idle aiokafka consumer spins. ``install_fetch_min_interval`` (installed by every worker;
``fetch_min_interval`` for a block) leaves a least interval between fetches. Checked against the real broker: the fetch requests an
idle consumer sends in a second, that a record produced into the quiet topic still arrives, and
that a backlog still comes in a few large fetches."""

import asyncio
import collections
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import AIOKafkaConnection

from stream.broker import fetch_min_interval

pytestmark = pytest.mark.integration


async def _idle_fetches(
    bootstrap: str, topic: str, seconds: float, backlog: int = 1
) -> tuple[int, bytes | None, int, int]:
    """(fetch requests sent while the topic is idle for ``seconds``, the first of ``backlog``
    records produced afterwards, how many of them were read, fetch requests that took)."""
    sent: collections.Counter[str] = collections.Counter()
    send = AIOKafkaConnection.send

    def counting(self, request, *a, **kw):  # type: ignore[no-untyped-def]
        sent[type(request).__name__] += 1
        return send(self, request, *a, **kw)

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=500)  # assignment and first fetches done
        AIOKafkaConnection.send = counting  # type: ignore[method-assign]
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await consumer.getmany(timeout_ms=100)
        finally:
            AIOKafkaConnection.send = send  # type: ignore[method-assign]
        idle = sent["FetchRequest"]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        for i in range(backlog):
            await producer.send(topic, b"hello" if i == 0 else b"x" * 100, partition=0)
        await producer.flush()
        await producer.stop()
        sent.clear()
        AIOKafkaConnection.send = counting  # type: ignore[method-assign]
        values: list[bytes] = []
        try:
            end = time.monotonic() + 20
            while len(values) < backlog and time.monotonic() < end:
                got = await consumer.getmany(timeout_ms=1_000)
                values += [m.value for msgs in got.values() for m in msgs]
        finally:
            AIOKafkaConnection.send = send  # type: ignore[method-assign]
        return idle, values[0] if values else None, len(values), sent["FetchRequest"]
    finally:
        await consumer.stop()


async def _topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()


def test_an_idle_consumer_slows_down_and_a_backlog_still_comes_in_large_fetches(broker):
    bs = broker.bootstrap
    asyncio.run(_topic(bs, "idle.a"))
    asyncio.run(_topic(bs, "idle.b"))
    with fetch_min_interval(0):  # off: the broker's own behaviour
        spinning, _, _, _ = asyncio.run(_idle_fetches(bs, "idle.a", 1.0))
    with fetch_min_interval(100):
        calm, record, read, fetches = asyncio.run(_idle_fetches(bs, "idle.b", 1.0, backlog=5_000))
    # With at least 100 ms between fetches, one broker connection is asked at most ~10 times in
    # a second (plus the fetch in flight); without it, the embedded broker is asked hundreds or
    # thousands of times.
    assert calm <= 15 < 100 <= spinning, (calm, spinning)
    assert record == b"hello" and read == 5_000
    # 5,000 records of ~100 bytes: a handful of fetches, not one per record batch of the producer.
    assert fetches <= 30, fetches


async def _stop_while_waiting(bootstrap: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=500)  # the idle topic's fetch came back empty
        await asyncio.sleep(0.2)  # ... and its task now waits out the 5 s interval
    finally:
        await consumer.stop()


def test_a_consumer_stops_cleanly_while_its_fetch_waits_out_the_interval(broker):
    """aiokafka cancels the fetch task when a consumer stops (or loses its partitions) and expects
    it to end quietly, as its own fetch does; the interval's wait used to raise CancelledError out
    of ``consumer.stop()``."""
    asyncio.run(_topic(broker.bootstrap, "idle.stop"))
    with fetch_min_interval(5_000):
        asyncio.run(_stop_while_waiting(broker.bootstrap, "idle.stop"))


async def _read_first(bootstrap: str, topic: str, wait_ms: int) -> list[bytes]:
    """Produce one record, then start a consumer and read for up to ``wait_ms``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(topic, b"first", partition=0)
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=wait_ms)
        return [m.value for msgs in got.values() for m in msgs]
    finally:
        await consumer.stop()


def test_fetched_records_reach_the_reader_before_the_interval_is_waited_out(broker):
    """aiokafka hands a fetch's records to its readers only when the fetch task returns, and the
    interval is waited out inside that task; the wrapper wakes the readers as soon as a fetch
    brings records. With a 30 s interval, the first fetch brings the record and the reader has it
    long before the 30 s are over (before the fix: only after them)."""
    asyncio.run(_topic(broker.bootstrap, "early.wake"))
    with fetch_min_interval(30_000):
        assert asyncio.run(_read_first(broker.bootstrap, "early.wake", 10_000)) == [b"first"]
