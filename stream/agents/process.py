"""The process stage: batches of the internal topic's events (or of those the ingest kept here)
through :meth:`~stream.logic.pipeline.Pipeline.step`, then their signals and records out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import faust

from models.events import Event
from stream.agents.outputs import OutputsFailed
from stream.agents.records import DONE_KEY, Item, Refetched, as_current, by_partition, partition_for
from stream.logic import packing
from stream.logic.ingest import DeadLetter
from stream.logic.pipeline import StepResult, UserRecord, records_to_bytes

if TYPE_CHECKING:
    from stream.agents.gaps import GapFiller
    from stream.agents.ingest import Ingest
    from stream.agents.outputs import FaustOutputs, TransactionalOutputs
    from stream.agents.router import LocalRouter
    from stream.agents.serving import ModelServer
    from stream.agents.upkeep import Archiver, OnlineModels
    from stream.app import Topics
    from stream.logic.pipeline import Pipeline
    from stream.metrics import Metrics
    from stream.settings import Settings

log = logging.getLogger(__name__)

MAX_SCAN_PER_BATCH = 5_000  # bounds the latency a churn scan can add to one batch


class Processor:
    """Holds ``lock`` (the worker's processing lock) around each batch it is given by Faust."""

    def __init__(self, settings: Settings, topics: Topics, table: Any, metrics: Metrics, pipeline: Pipeline, *,
                 outputs: FaustOutputs | TransactionalOutputs, lock: asyncio.Lock, router: LocalRouter,
                 ingest: Ingest, gaps: GapFiller, online: OnlineModels, archiver: Archiver,
                 server: ModelServer | None) -> None:  # fmt: skip
        self.settings, self.topics, self.table, self.metrics, self.pipeline = (
            settings,
            topics,
            table,
            metrics,
            pipeline,
        )
        self.outputs, self.lock, self.router, self.ingest, self.gaps = outputs, lock, router, ingest, gaps
        self.online, self.archiver, self.server = online, archiver, server
        self.index_stale = True  # after a rebalance: index our partitions' users for the churn scan

    async def process_packs(self, batch: list[faust.EventT]) -> None:
        """Unpack the internal topic's records and process their events (:meth:`process_items`),
        each partition's in offset order with any records the consumer skipped before or between
        them (:mod:`stream.agents.gaps`)."""
        by_partition: dict[int, list[faust.EventT]] = {}
        for fe in batch:
            by_partition.setdefault(fe.message.partition, []).append(fe)
        records: list[tuple[faust.EventT, Any]] = []
        for partition, fes in by_partition.items():
            missing = await self.gaps.skipped(partition, [fe.message.offset for fe in fes])
            self.metrics.records_refetched.inc(len(missing))
            if not missing:
                records.extend((fe, fe.message) for fe in fes)
                continue
            first = fes[0]
            merged = [(r.offset, (first, Refetched(first.message.topic, r.partition, r.offset, r.key, r.value)))
                      for r in missing] + [(fe.message.offset, (fe, fe.message)) for fe in fes]  # fmt: skip
            merged.sort(key=lambda pair: pair[0])
            records.extend(record for _offset, record in merged)
        items: list[Item] = []
        for fe, msg in records:
            if msg.key == DONE_KEY:  # processed where it was ingested; kept only as history
                continue
            try:
                for d, kts in packing.unpack(msg.value):
                    items.append(Item(msg.partition, Event.from_dict(d), kts / 1000 if kts else None, fe))
            except (ValueError, TypeError) as exc:
                self.ingest.dead_letter(DeadLetter("processing_error", f"unreadable internal record: {exc}"[:200],
                                                   msg.value, msg.topic, msg.partition, msg.offset), msg.key)  # fmt: skip
        for fe in batch:
            self.gaps.advance(fe.message.partition, fe.message.offset + 1)
        if self.outputs.exactly_once:
            # Commit this batch's outputs with its offsets before Faust acknowledges it, so that
            # Faust's own commits (of acknowledged offsets) never run ahead of the transaction's.
            from aiokafka import TopicPartition

            offsets: dict[TopicPartition, int] = {}
            for fe in batch:
                tp = TopicPartition(fe.message.topic, fe.message.partition)
                offsets[tp] = max(offsets.get(tp, 0), fe.message.offset + 1)
            async with self.lock:
                if items:
                    await self.process_items(items)
                self.outputs.track(self.settings.app_id, offsets)
                await self.outputs.commit()
            return
        if not items:
            return
        async with self.lock:
            await self.process_items(items)

    async def process_items(self, items: list[Item]) -> None:
        """Process a batch; if it fails, retry event by event and dead-letter only the events that
        fail alone (``processing_error``)."""
        try:
            await self.process_batch(items)
            return
        except OutputsFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to survive anything
            log.error(
                "batch of %d events failed (%s: %s); retrying event by event",
                len(items),
                type(exc).__name__,
                exc,
            )
        for it in items:
            try:
                await self.process_batch([it])
            except OutputsFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                msg = it.source or it.fe.message
                log.error(
                    "event at %s[%d]@%d dead-lettered: %s",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    type(exc).__name__,
                )
                self.ingest.dead_letter(
                    DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"[:200],
                               json.dumps(it.event.to_dict()).encode(), msg.topic, msg.partition, msg.offset),
                    it.event.user.encode(),
                )  # fmt: skip

    async def process_batch(self, items: list[Item]) -> None:
        """One batch through :meth:`Pipeline.step`; outputs only once the step has returned, so a
        batch that raised wrote and sent nothing and the event-by-event retry writes each once."""
        m = self.metrics
        t0 = time.perf_counter()
        model = self.server.for_batch() if self.server is not None else None
        if self.index_stale:
            self._rebuild_index()
        pairs = [(it.partition, it.event) for it in items]
        kafka_ts = {it.event.event_id: it.kafka_ts for it in items if it.kafka_ts}
        records = self._load({it.event.user: it.partition for it in items})
        result = self.pipeline.step(records, pairs, self._lookup, model, MAX_SCAN_PER_BATCH)
        # Signals first and, at least once, acknowledged before the state that remembers them is
        # written: a crash or a cancelled stop in between replays the events, which re-emit the
        # same signals; state written first would reject the replay as duplicates and lose them.
        await self._emit(result, kafka_ts)
        self._write(result)
        for ev in result.rejected:
            (m.duplicate_events if ev.reason == "duplicate_event_id" else m.late_events).inc()
            self.ingest.dead_letter(
                DeadLetter(ev.reason, f"event_id {ev.event.event_id}", json.dumps(ev.event.to_dict()).encode(),
                           self.topics.by_user.get_topic_name(), -1, -1),
                ev.event.user.encode(),
            )  # fmt: skip
        for typ, n in result.counts_by_type.items():
            m.count_event(typ, n)
        self.online.checkpoint({p: self.router.partition_event(p) for p, _ev in pairs})
        await self.outputs.send_written()
        rejected = {id(r.event) for r in result.rejected}
        self.archiver.add([ev for _p, ev in pairs if id(ev) not in rejected])
        m.observe_batch(len(items), time.perf_counter() - t0)

    def _load(self, partitions: dict[str, int]) -> dict[str, UserRecord | None]:
        """The record of each user of ``partitions`` (user -> partition, which names the store to
        read; without it Faust's RocksDB store looks in every assigned partition's database). Read
        from the table's store: ``Table.get`` looks a present key up twice."""
        get = self.table.data.get
        raw: dict[str, bytes | None] = {}
        for partition, users in by_partition(partitions).items():
            with as_current(self.router.partition_event(partition)):
                for user in users:
                    raw[user] = get(user.encode())
        return {u: UserRecord.from_bytes(r) if r is not None else None for u, r in raw.items()}

    def _lookup(self, partition: int, users: list[str]) -> dict[str, UserRecord | None]:
        return self._load(dict.fromkeys(users, partition))

    def _write(self, result: StepResult) -> None:
        table, write = self.table, self.outputs.write
        data = records_to_bytes(result.records)
        self.metrics.observe_records(map(len, data.values()))
        deleted = set(result.deleted)
        for partition, users in by_partition(
            result.partitions, [*data, *(u for u in result.deleted if u not in data)]
        ).items():
            with as_current(self.router.partition_event(partition)):
                for user in users:
                    write(table, user.encode(), None if user in deleted else data[user], partition)

    async def _emit(self, result: StepResult, kafka_ts: dict[str, float]) -> None:
        """Send the batch's signals and wait until they are acknowledged (at least once); with
        exactly-once, into the open transaction."""
        m, topics, send = self.metrics, self.settings.signal_topics(), self.outputs.send
        now = time.time()
        pending = []
        for sig in result.signals:
            pending.append(await send(topics[sig.task], sig.user.encode(), sig.to_json()))
            m.count_signal(sig.task)
            produced = kafka_ts.get(sig.event_id)
            if produced:
                m.observe_event_to_signal(produced, now)
        await self.outputs.delivered(pending)

    def _rebuild_index(self) -> None:
        """After a rebalance, index the users of our partitions for the churn scan."""
        self.index_stale = False
        n, assigned = self.settings.events_partitions, self.router.assigned
        for key, raw in self.table.items():
            user = key.decode()
            p = partition_for(user, n)
            if p in assigned:
                self.pipeline.remember(user, p, UserRecord.from_bytes(raw))
