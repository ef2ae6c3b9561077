"""Where a worker's outputs go, and how they are committed with the input they follow from.

Everything a worker writes passes through one :class:`Outputs`: signals, dead letters, the internal
topic's packs and the tables' updates. Two kinds, chosen by ``INTENTSTREAM_PROCESSING_GUARANTEE``:

* :class:`FaustOutputs` (``at_least_once``): Faust's producer and tables, as Faust does it. Each
  consumer commits its own offsets after a producer flush; a crash replays the uncommitted tail,
  which the state's de-duplication absorbs, and signals may come twice (same ``signal_id``).
* :class:`TransactionalOutputs` (``exactly_once``): one Kafka transaction at a time per worker
  holds every output of the batches since the last commit *and* the input offsets they follow
  from (both consumer groups: the raw ingest's and Faust's), and commits them together. A table
  update goes to the local store and, as its changelog record, into the transaction (not through
  Faust's changelog path). A crash aborts the open transaction: a ``read_committed`` consumer
  sees no output twice, and the replayed input meets a state rebuilt from the committed changelog
  (``stream/local_state.py``). The transactional id is the worker's own
  (``<app_id>-<worker_id>``), so a restarted worker fences its previous incarnation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

OnAck = Callable[[int], None]  # called with the offset a record was written at


class OutputsFailed(Exception):
    """An output could not be written as the guarantee requires; the worker must stop (a restart
    recovers from what was committed). Never caught by the per-event retry."""


class FaustOutputs:
    """At-least-once: Faust's producer and Faust's tables' stores and changelogs. Signals and
    changelog records are handed to the producer at once, not through Faust's send buffer, which
    sends one message per turn of the event loop: a batch's thousand table updates then waited,
    the loop mostly idle, for the next flush."""

    exactly_once = False

    def __init__(self, app: Any, topics: Mapping[str, Any]) -> None:
        self.app, self.topics = app, topics
        self._changelog: list[tuple[Any, bytes, bytes | None, int]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def send_soon(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
                  on_ack: OnAck | None = None) -> None:  # fmt: skip
        callback = None if on_ack is None else (lambda fut: on_ack(fut.result().offset))
        self.topics[topic].send_soon(key=key, value=value, partition=partition, callback=callback)

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        """Hand a record to the producer at once; returns its delivery future."""
        return await self.topics[topic].send(key=key, value=value, partition=partition, force=True)

    async def delivered(self, futures: list[Any]) -> None:
        """Wait until the records of :meth:`send` are acknowledged. A record that cannot be
        delivered stops the worker (:class:`OutputsFailed`): a restart replays its input."""
        if not futures:
            return
        try:
            await asyncio.gather(*futures)
        except Exception as exc:  # noqa: BLE001
            raise OutputsFailed(f"a signal was not delivered: {type(exc).__name__}: {exc}") from exc

    def write(self, table: Any, key: bytes, value: bytes | None, partition: int) -> None:
        """A table update (``None`` deletes) in the local store now, under the Faust event of
        ``partition`` (``as_current``); its changelog record goes out with :meth:`send_written`."""
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        self._changelog.append((table, key, value, partition))

    async def send_written(self) -> None:
        """Hand the changelog records of :meth:`write` to the producer. Once the newest record of
        a table partition is acknowledged, its store learns how far the changelog goes (what
        Faust's own changelog callback does, once per record)."""
        if not self._changelog:
            return
        queued, self._changelog = self._changelog, []
        send = self.app.producer.send
        newest: dict[tuple[Any, int], tuple[str, Any]] = {}
        try:
            for table, key, value, partition in queued:
                topic = table.changelog_topic.get_topic_name()
                newest[(table, partition)] = (topic, await send(topic, key, value, partition, None, None))
        except Exception as exc:  # noqa: BLE001 - the store is ahead of its changelog: restart
            raise OutputsFailed(f"a changelog record was not sent: {type(exc).__name__}: {exc}") from exc
        for (table, partition), (topic, fut) in newest.items():
            fut.add_done_callback(functools.partial(_persisted, table, topic, partition))

    def track(self, group: str, offsets: Mapping[Any, int]) -> None:
        """Consumers commit their own offsets here."""

    async def commit(self) -> bool:
        return True

    async def flush(self, within: float = 5.0) -> bool:
        """Flush until Faust's send buffer is empty (its own flush gives up when no message has
        left the buffer for 0.1 s, which a busy loop can cause); False if it is still not empty
        after ``within`` seconds, and then nothing may be committed on its strength."""
        await self.send_written()
        producer = self.app.producer
        deadline = time.monotonic() + within
        await producer.flush()
        while producer.buffer.size:
            if time.monotonic() > deadline:
                return False
            await producer.flush()
        return True


class TransactionalOutputs:
    """Exactly-once: every output and the offsets it follows from in one transaction (see the
    module docstring). Callers hold the worker's processing lock around a batch's outputs and its
    :meth:`track`, and around :meth:`commit`, so that a transaction never ends inside a batch."""

    exactly_once = True

    def __init__(self, producer_config: Mapping[str, Any], transactional_id: str, topics: list[str], *,
                 on_fatal: Callable[[BaseException], None]) -> None:  # fmt: skip
        self.config = dict(producer_config)
        self.topics = list(topics)
        self.transactional_id = transactional_id
        self.on_fatal = on_fatal
        self.producer: Any = None
        self._failed: BaseException | None = None  # after a failure nothing more is sent or committed
        self._open = False
        self._queued: list[tuple[str, bytes | None, bytes | None, int | None, OnAck | None]] = []
        self._sent: list[tuple[asyncio.Future, OnAck | None]] = []
        self._offsets: dict[str, dict[Any, int]] = {}
        self._changelog: dict[tuple[Any, int], int] = {}  # (table, partition) -> newest offset written
        self._beginning = asyncio.Lock()  # begin_transaction awaits: two callers must not both begin
        self.commits = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            **self.config, transactional_id=self.transactional_id, enable_idempotence=True, acks="all"
        )
        await self.producer.start()  # InitProducerId: fences an earlier incarnation, aborts its open transaction
        # Track every output topic's metadata from the start: aiokafka 0.14 adds a topic to the
        # metadata it refreshes only if the topic was unknown at its first send, so a topic first
        # seen in an all-topics answer drops out at the next refresh and its batches then wait
        # for a leader forever (the sender refreshes metadata in a tight loop meanwhile).
        await self.producer.client.set_topics(self.topics)
        log.info("exactly-once: transactional producer %s started", self.transactional_id)

    async def stop(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    def send_soon(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
                  on_ack: OnAck | None = None) -> None:  # fmt: skip
        self._queued.append((topic, key, value, partition, on_ack))

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self._queued.append((topic, key, value, partition, None))
        await self._drain()

    async def delivered(self, futures: list[Any]) -> None:
        """Nothing to wait for: the transaction's commit delivers everything or nothing."""

    async def send_written(self) -> None:
        """The changelog records of :meth:`write`, into the open transaction."""
        await self._drain()

    def write(self, table: Any, key: bytes, value: bytes | None, partition: int) -> None:
        """The local store now; the changelog record with the transaction."""
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        self._queued.append((table.changelog_topic.get_topic_name(), key, value, partition, _Changelog(self, table, partition)))

    def track(self, group: str, offsets: Mapping[Any, int]) -> None:
        """Input offsets (next offset to read) to commit under ``group`` with this transaction."""
        if offsets:
            self._offsets.setdefault(group, {}).update(offsets)

    async def _begin(self) -> None:
        if self._failed is not None:
            raise OutputsFailed(f"an earlier transaction failed: {self._failed!r}")
        if self._open:
            return
        async with self._beginning:
            if not self._open:
                await self.producer.begin_transaction()
                self._open = True

    async def _drain(self) -> None:
        if not self._queued:
            return
        try:
            await self._begin()
            queued, self._queued = self._queued, []
            for topic, key, value, partition, on_ack in queued:
                fut = await self.producer.send(topic, value=value, key=key, partition=partition)
                self._sent.append((fut, on_ack))
        except Exception as exc:  # noqa: BLE001 - any failure here breaks the transaction
            self._fail("send", exc)

    async def flush(self, within: float = 5.0) -> bool:
        await self._drain()
        return True

    async def commit(self) -> bool:
        """Commit the open transaction with the offsets tracked since the last one. Nothing to
        commit: True at once. A failure stops the worker (:class:`OutputsFailed`)."""
        if not (self._queued or self._sent or self._offsets):
            return True
        from aiokafka import TopicPartition

        await self._drain()
        try:
            await self._begin()
            if self._queued:  # sent by another task while this one waited
                await self._drain()
            for group, offsets in self._offsets.items():
                await self.producer.send_offsets_to_transaction(
                    {TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()}, group
                )
            await self.producer.commit_transaction()
        except Exception as exc:  # noqa: BLE001
            self._fail("commit", exc)
        self._open = False
        self._offsets = {}
        sent, self._sent = self._sent, []
        for fut, on_ack in sent:
            if on_ack is not None and fut.done() and not fut.exception():
                on_ack(fut.result().offset)
        self._persist_changelog_offsets()
        self.commits += 1
        return True

    def _persist_changelog_offsets(self) -> None:
        """Tell each table's store how far the committed changelog goes, so that a clean restart
        reads only what follows (Faust does this itself for the changelog records it sends)."""
        from faust.types import TP

        done, self._changelog = self._changelog, {}
        for (table, partition), offset in done.items():
            table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), partition), offset)

    def _fail(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, OutputsFailed):
            raise exc
        self._failed = exc
        log.error("exactly-once: the transaction's %s failed (%s: %s); stopping the worker: a restart "
                  "recovers from what was committed", what, type(exc).__name__, exc)  # fmt: skip
        self.on_fatal(exc)
        raise OutputsFailed(f"transaction {what} failed: {type(exc).__name__}: {exc}") from exc


def _persisted(table: Any, topic: str, partition: int, fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        from faust.types import TP

        table.data.set_persisted_offset(TP(topic, partition), fut.result().offset)


class _Changelog:
    """The acknowledgement of a changelog record: where the table's committed changelog ends."""

    __slots__ = ("outputs", "table", "partition")

    def __init__(self, outputs: TransactionalOutputs, table: Any, partition: int) -> None:
        self.outputs, self.table, self.partition = outputs, table, partition

    def __call__(self, offset: int) -> None:
        key = (self.table, self.partition)
        self.outputs._changelog[key] = max(offset, self.outputs._changelog.get(key, -1))
