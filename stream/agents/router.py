"""Where an ingested event is processed: here, right after the ingest, or by its partition's
owner through the internal topic (:mod:`stream.logic.routing` holds the rules and says why).

:class:`LocalRouter` feeds those rules with Faust's rebalances and the group's committed
offsets, sends the internal topic's packs, and processes what the ingest kept here."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stream.agents.records import PACK_KEY, Item, Packs, PartitionEvent, add_to_pack
from stream.logic import packing
from stream.logic.routing import LocalRouting

if TYPE_CHECKING:
    from stream.agents.outputs import FaustOutputs, TransactionalOutputs
    from stream.app import Topics
    from stream.metrics import Metrics
    from stream.settings import Settings

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 1024  # room for a record's key, headers and batch framing under the producer's limit
GATE_CHECK_S = 0.5  # least time between two reads of the committed offsets a closed partition waits for


class LocalRouter:
    """Local processing beside the raw ingest (``INTENTSTREAM_LOCAL_PROCESSING``). ``process``
    processes a batch of items; callers of :meth:`process_here` hold ``lock`` or let it take it."""

    def __init__(self, app: Any, settings: Settings, topics: Topics, metrics: Metrics,
                 outputs: FaustOutputs | TransactionalOutputs, lock: asyncio.Lock, *, enabled: bool,
                 bootstrap: str | None, process: Callable[[list[Item]], Awaitable[None]]) -> None:  # fmt: skip
        self.app, self.settings, self.metrics, self.outputs, self.lock = app, settings, metrics, outputs, lock
        self.topic = topics.by_user.get_topic_name()
        self.bootstrap, self.process = bootstrap, process
        self.routing = LocalRouting(enabled=enabled)
        self.assigned: set[int] = set()  # internal partitions Faust assigned this worker
        self.here: list[Item] = []  # what the last ingest batch left to process locally
        self.here_generation: int | None = None  # the routing generation that decided so
        self._events: dict[int, PartitionEvent] = {}
        self._admin: Any = None  # reads the group's committed offsets (started when needed)
        self._gates_checked = 0.0

    def partition_event(self, partition: int) -> PartitionEvent:
        pe = self._events.get(partition)
        if pe is None:
            pe = self._events[partition] = PartitionEvent(self.topic, partition)
        return pe

    def current(self) -> bool:
        """Bring the routing up to Faust's rebalance count (a new rebalance closes every partition);
        True when no rebalance is under way, so local partitions may be processed here."""
        app, route = self.app, self.routing
        if route.generation != app.rebalancing_count:
            route.reset(app.rebalancing_count)
            self.metrics.local_partitions.set(0)
        return route.enabled and not app.rebalancing

    def local(self) -> set[int] | tuple[()]:
        """The partitions whose events the ingest may keep here now."""
        return self.routing.local if self.current() else ()

    # ------------------------------------------------------------------ sending
    def packed(self, packs: Packs, key: bytes) -> list[tuple[int, bytes]]:
        """The internal topic's records for ``packs``: each small enough for the producer."""
        limit = self.settings.max_record_bytes - RECORD_OVERHEAD
        return [(p, value) for p, (evs, kts) in packs.items() for value in packing.pack_all(evs, kts, limit)]

    def send_packed(self, records: list[tuple[int, bytes]], key: bytes) -> None:
        """Send packed records to the internal topic under ``key``; follow every pack to be
        processed (:class:`LocalRouting`: a gate waits for each, whenever it was sent)."""
        route = self.routing
        for partition, value in records:
            on_ack = None
            if key == PACK_KEY:
                route.sent(partition)
                on_ack = functools.partial(route.acked, partition)
            self.outputs.send_soon(self.topic, key, value, partition, on_ack)

    def count_forwarded(self, packs: Packs) -> None:
        for evs, _kts in packs.values():
            self.metrics.events_routed.labels(path="forwarded").inc(len(evs))

    def forward(self, packs: Packs) -> None:
        """Send events to the internal topic for their partition's owner to process."""
        self.send_packed(self.packed(packs, PACK_KEY), PACK_KEY)
        self.count_forwarded(packs)

    # ------------------------------------------------------------------ processing here
    async def process_here(self, locked: bool = False) -> None:
        """Process what the last ingest batch kept here; ``locked``: the caller holds the lock."""
        if locked:
            await self._process_here()
            return
        async with self.lock:
            await self._process_here()

    async def _process_here(self) -> None:
        items, self.here = self.here, []
        if not self.current() or self.routing.generation != self.here_generation:
            # The assignment changed since the ingest decided (while the agent held the lock, say):
            # those partitions may not be this worker's any more, so the usual way then.
            packs: Packs = {}
            for it in items:  # items ingested here always carry their input record
                add_to_pack(
                    packs, it.partition, it.event.to_dict(), it.source.timestamp_ms if it.source else None
                )
            self.forward(packs)
            return
        await self.process(items)
        self.metrics.events_routed.labels(path="local").inc(len(items))

    # ------------------------------------------------------------------ gates
    async def update(self, consumer: Any) -> None:
        """Arm and open the gates of :class:`LocalRouting`. Called by the raw ingest between
        batches, once its input partitions follow Faust's current assignment."""
        from aiokafka import TopicPartition

        app, route = self.app, self.routing
        if not self.current() or app.in_recovery:
            return
        generation = route.generation
        if route.needs_arming(generation):  # type: ignore[arg-type]
            # Where this ingest starts reading: an earlier owner committed (after flushing) what it
            # forwarded from below those offsets, so it is below the end offsets read next.
            for tp in consumer.assignment():
                await consumer.position(tp)
            # What this worker forwarded is not necessarily below them (exactly-once: not until
            # its transaction commits): the gates follow each of its packs (LocalRouting.sent).
            if not await self.flush():
                return
            ends = await consumer.end_offsets([TopicPartition(self.topic, p) for p in sorted(self.assigned)])
            if self.current() and route.generation == generation:
                route.arm(generation, {tp.partition: offset for tp, offset in ends.items()})
                self._gates_checked = 0.0
        if route.gates and time.monotonic() - self._gates_checked >= GATE_CHECK_S:
            self._gates_checked = time.monotonic()
            committed = await self.committed(sorted(route.gates))
            if self.current() and route.generation == generation:
                opened = route.open(committed)
                if opened:
                    log.info(
                        "internal partitions %s are now processed where they are ingested", sorted(opened)
                    )
                    self.metrics.local_partitions.set(len(route.local))

    async def flush(self) -> bool:
        """Flush the outputs from outside a batch: with transactions, under the processing lock,
        so that the flush never begins or feeds a transaction while a batch or a commit runs."""
        if not self.outputs.exactly_once:
            return await self.outputs.flush()
        async with self.lock:
            return await self.outputs.flush()

    async def committed(self, partitions: list[int]) -> dict[int, int]:
        """The application group's committed offsets of internal ``partitions`` (-1: none)."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        from stream.broker import client_config

        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_config(self.settings, self.bootstrap))  # type: ignore[arg-type]
            await admin.start()
            self._admin = admin
        found = await self._admin.list_consumer_group_offsets(
            self.settings.app_id, partitions=[TopicPartition(self.topic, p) for p in partitions]
        )
        return {tp.partition: meta.offset for tp, meta in found.items()}

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()
