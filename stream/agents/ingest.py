"""The ingest stage: validate and pseudonymise input records, dead-letter the bad ones, and hand
the good ones on, packed per internal partition (:mod:`stream.agents.router` says where to).

By default it runs on a plain aiokafka consumer (:meth:`Ingest.run`), without Faust's per-record
machinery: ingest keeps no state, and Faust's per-record stream work was the larger half of the
worker's cost per event (docs/BENCHMARKS.md). ``INTENTSTREAM_INGEST=faust`` makes it a Faust agent
that calls :meth:`Ingest.guarded` per batch instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from models.events import InvalidEvent
from stream import lag
from stream.agents.outputs import OutputsFailed
from stream.agents.records import (
    DONE_KEY,
    PACK_KEY,
    Item,
    Packs,
    RawMessage,
    add_to_pack,
    ingest_partitions,
    partition_for,
    raw_message,
)
from stream.logic.batching import Linger
from stream.logic.ingest import DeadLetter, Pseudonymizer, ingest_one

if TYPE_CHECKING:
    from stream.agents.outputs import FaustOutputs, TransactionalOutputs
    from stream.agents.router import LocalRouter
    from stream.metrics import Metrics
    from stream.settings import Settings

log = logging.getLogger(__name__)

IDLE_WAIT_MS = 500  # the raw ingest's longest wait for input when it holds none


def _now_ms() -> float:
    """Wall-clock time in ms, the clock of Kafka's record timestamps."""
    return time.time() * 1000


class Ingest:
    def __init__(self, app: Any, settings: Settings, metrics: Metrics, outputs: FaustOutputs | TransactionalOutputs,
                 router: LocalRouter, lock: asyncio.Lock, *, bootstrap: str | None) -> None:  # fmt: skip
        self.app, self.settings, self.metrics, self.outputs = app, settings, metrics, outputs
        self.router, self.lock, self.bootstrap = router, lock, bootstrap
        self.pseudonymize = Pseudonymizer(settings.secret_key())
        self.consumer: Any = None  # the raw ingest's aiokafka consumer while it runs

    def dead_letter(self, dl: DeadLetter, key: bytes | None) -> None:
        self.metrics.count_invalid(dl.reason)
        self.metrics.dead_letters.inc()
        value = json.dumps(dl.to_dict(self.settings.dead_letter_max_bytes), separators=(",", ":")).encode()
        self.outputs.send_soon(self.settings.dlq_topic, key, value)

    def guarded(self, batch: list[RawMessage]) -> None:
        """Ingest a batch; if that raises, isolate the culprit. An unexpected error (a bug, a record
        we cannot read) must neither crash the ingest nor lose the batch: the messages that fail
        alone are dead-lettered with reason ``processing_error`` and the rest go on normally."""
        try:
            self.ingest(batch)
            return
        except OutputsFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to survive anything
            log.error(
                "batch of %d failed (%s: %s); retrying message by message",
                len(batch),
                type(exc).__name__,
                exc,
            )
        for msg in batch:
            try:
                self.ingest([msg])
            except OutputsFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error(
                    "message at %s[%d]@%d dead-lettered: %s",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    type(exc).__name__,
                )
                self.dead_letter(
                    DeadLetter(
                        "processing_error",
                        f"{type(exc).__name__}: {exc}"[:200],
                        msg.value,
                        msg.topic,
                        msg.partition,
                        msg.offset,
                    ),
                    msg.key,
                )

    def ingest(self, batch: list[RawMessage]) -> None:
        """Validate and pseudonymise a batch; dead-letter the bad messages; forward the good events
        to the internal topic, packed per partition, except those of partitions this worker
        processes locally, which are left in ``router.here``.

        Nothing is sent until the whole batch has gone through: if it raises, :meth:`guarded`
        retries message by message, and each message's outcome is sent once."""
        s, m, router = self.settings, self.metrics, self.router
        t0 = time.perf_counter()
        now_ms = time.time_ns() // 1_000_000
        packs: Packs = {}
        done: Packs = {}
        local = router.local()
        here: list[Item] = []
        dead: list[tuple[DeadLetter, bytes | None]] = []
        for msg in batch:
            try:
                ev = ingest_one(
                    msg.value, self.pseudonymize, max_bytes=s.max_event_bytes, now_ms=now_ms,
                    max_future_ms=s.max_future_skew_ms,
                )  # fmt: skip
            except InvalidEvent as exc:
                dead.append(
                    (
                        DeadLetter(exc.reason, exc.detail, msg.value, msg.topic, msg.partition, msg.offset),
                        msg.key,
                    )
                )
                continue
            partition = partition_for(ev.user, s.events_partitions)
            if partition in local:
                ts = msg.timestamp_ms / 1000 if msg.timestamp_ms else None
                here.append(Item(partition, ev, ts, router.partition_event(partition), msg))  # type: ignore[arg-type]
                add_to_pack(done, partition, ev.to_dict(), msg.timestamp_ms)
                continue
            # Keep the producer's timestamp so event-to-signal latency spans both hops.
            add_to_pack(packs, partition, ev.to_dict(), msg.timestamp_ms)
        forward, history = router.packed(packs, PACK_KEY), router.packed(done, DONE_KEY)
        for dl, key in dead:
            self.dead_letter(dl, key)
        router.send_packed(forward, PACK_KEY)
        router.count_forwarded(packs)
        router.send_packed(history, DONE_KEY)
        router.here.extend(here)
        router.here_generation = router.routing.generation
        m.observe_batch(len(batch), time.perf_counter() - t0)

    async def run(self) -> None:
        """The raw ingest loop. The consumer joins no group: it reads the input partitions that go
        with the internal partitions Faust assigned this worker (:func:`ingest_partitions`),
        follows every rebalance of Faust's group, and commits its offsets under
        ``Settings.ingest_group``, so that the input is split exactly as the internal topic is.
        While a partition moves, its old and new owner may both read its uncommitted tail:
        duplicates, never a loss, since every commit follows the flush of what it covers.

        At least once, offsets are committed every ``commit_interval_ms`` (as Faust commits its
        own), each time after a producer flush, so a commit never covers a pack that is not
        acknowledged; a crash re-sends the uncommitted tail, which the state de-duplicates by
        ``event_id``. Exactly once, they enter the open transaction with the batch's outputs."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        from stream.broker import client_config, topic_partitions

        s, router = self.settings, self.router
        eos = self.outputs.exactly_once
        consumer = AIOKafkaConsumer(
            group_id=s.ingest_group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=s.batch_size, fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
            isolation_level="read_committed" if eos else "read_uncommitted",
            **client_config(s, self.bootstrap),  # type: ignore[arg-type]
        )  # fmt: skip
        await consumer.start()
        self.consumer = consumer
        n_input: int | None = None
        mine: set[int] = set()
        done: dict[TopicPartition, int] = {}  # next offset per partition, forwarded but not committed yet
        committed = time.monotonic()
        interval = (s.transaction_commit_ms if eos else s.commit_interval_ms) / 1000

        async def commit() -> None:
            nonlocal done, committed
            committed = time.monotonic()
            if eos:  # the open transaction, with every offset tracked since the last
                async with self.lock:
                    await self.outputs.commit()
                return
            if not done:
                return
            if not await self.outputs.flush():  # packs, dead letters and local outputs first
                log.warning("ingest commit postponed: the producer's send buffer did not empty")
                return
            offsets, done = done, {}
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # the next commit covers it; a restart reads the tail again
                log.warning(
                    "ingest commit failed (%s); up to %.1f s of input may be delivered again", exc, interval
                )

        held: Linger[Any] = Linger(s.batch_size, s.batch_linger_ms)

        async def ingest_held() -> None:
            """Ingest the records held back to grow the batch (:mod:`stream.logic.batching`);
            process the local ones at once; mark them all for the next commit."""
            records = held.take()
            if not records:
                return
            offsets = {TopicPartition(m.topic, m.partition): m.offset + 1 for m in records}
            if eos:
                # A batch's outputs and its offsets enter the transaction together: no commit
                # (another stage's, or a rebalance's) may fall between them.
                async with self.lock:
                    self.guarded([raw_message(m, ms=True) for m in records])
                    if router.here:
                        await router.process_here(locked=True)
                    await self.outputs.flush()
                    self.outputs.track(s.ingest_group, offsets)
                await asyncio.sleep(0)
                return
            self.guarded([raw_message(m, ms=True) for m in records])
            if router.here:
                await router.process_here()
                # getmany returns at once while records are buffered: without a turn of the loop
                # here, the producer's sender would not run between local batches.
                await asyncio.sleep(0)
            done.update(offsets)

        try:
            while True:
                if n_input is None:
                    n_input = len(await topic_partitions(consumer, s.events_topic))
                wanted = ingest_partitions(router.assigned, n_input, s.events_partitions)
                if wanted != mine:
                    await ingest_held()  # what was read goes on (forwarded, if the routing closed)
                    await commit()  # what we forwarded from partitions about to move is not read again
                    consumer.assign([TopicPartition(s.events_topic, p) for p in sorted(wanted)])
                    log.info("ingest reads %s partitions %s", s.events_topic, sorted(wanted))
                    mine = wanted
                if not mine:  # no internal partitions yet (or none for this worker)
                    await asyncio.sleep(0.1)
                    if not n_input:
                        n_input = None  # the input topic did not exist: look again
                    continue
                if router.routing.enabled and self.app.rebalancing:
                    await ingest_held()
                    # Faust is moving partitions and recovering tables: what the ingest read now it
                    # could only forward, and local processing would wait until the agent caught up.
                    if time.monotonic() - committed >= interval:
                        await commit()
                    await asyncio.sleep(0.05)
                    continue
                if router.routing.enabled:
                    try:
                        await router.update(consumer)
                    except KafkaError as exc:  # the partitions stay closed: events take the internal topic
                        log.warning("local processing: reading offsets failed (%s); trying again", exc)
                # With nothing held, getmany returns as soon as records arrive: a long wait costs no
                # latency, and an idle worker does not wake up every batch_wait_ms.
                wait_ms = held.wait_ms(_now_ms()) if len(held) else IDLE_WAIT_MS
                batches = await consumer.getmany(timeout_ms=max(1, wait_ms), max_records=held.room())
                now_ms = _now_ms()
                held.add(((m, m.timestamp) for records in batches.values() for m in records), now_ms)
                if held.due(now_ms):
                    await ingest_held()
                if time.monotonic() - committed >= interval:
                    await commit()
        finally:
            self.consumer = None
            try:  # a clean stop commits what it forwarded; if it cannot, a restart reads it again
                await asyncio.wait_for(commit(), timeout=5.0)
            except Exception as exc:  # noqa: BLE001
                log.warning("ingest commit at stop failed (%s: %s)", type(exc).__name__, exc)
            finally:
                await consumer.stop()

    async def refresh_lag(self) -> None:
        """Consumer lag of the raw ingest's partitions (Faust's lag reader sees only its own)."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            found = lag.compute_lag(*await lag.read_offsets(consumer, consumer.assignment()))
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            log.warning("ingest lag refresh failed: %s", exc)
            return
        self.metrics.set_lag({(tp.topic, tp.partition): v for tp, v in found.items()})
