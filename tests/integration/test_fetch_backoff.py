"""The embedded broker answers an idle fetch at once instead of holding it for fetch.max.wait.ms,
so an idle aiokafka consumer spins. ``install_idle_fetch_backoff`` (installed by every worker)
pauses after empty fetches. Checked against the real broker: the fetch requests an idle consumer
sends in a second, and that a record produced into the quiet topic still arrives."""

import asyncio
import collections
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import AIOKafkaConnection

from stream.broker import install_idle_fetch_backoff

pytestmark = pytest.mark.integration


async def _idle_fetches(bootstrap: str, topic: str, seconds: float) -> tuple[int, bytes | None]:
    """(fetch requests sent while the topic is idle for ``seconds``, a record produced afterwards)."""
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
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        await producer.send_and_wait(topic, b"hello")
        await producer.stop()
        got = await consumer.getmany(timeout_ms=10_000)
        values = [m.value for msgs in got.values() for m in msgs]
        return sent["FetchRequest"], values[0] if values else None
    finally:
        await consumer.stop()


async def _topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()


def test_an_idle_consumer_backs_off_and_still_receives(broker):
    bs = broker.bootstrap
    asyncio.run(_topic(bs, "idle.a"))
    asyncio.run(_topic(bs, "idle.b"))
    try:
        install_idle_fetch_backoff(0)  # off: the broker's own behaviour
        spinning, _ = asyncio.run(_idle_fetches(bs, "idle.a", 1.0))
        install_idle_fetch_backoff(100)
        calm, record = asyncio.run(_idle_fetches(bs, "idle.b", 1.0))
    finally:
        install_idle_fetch_backoff(0)
    # With a pause of 100 ms after each empty fetch, one broker connection asks at most ~10 times
    # in a second (plus the fetch in flight); without it, the embedded broker is asked hundreds
    # or thousands of times.
    assert calm <= 15 < 100 <= spinning, (calm, spinning)
    assert record == b"hello"
