"""The thin Faust shell: batched agents that decode, call the pure pipeline, write state, emit.

Two stages, each working on whole batches so that per-record costs are paid once per batch where
they can be (a table write and an awaited send per event cost far more than the work itself):

* ``ingest`` reads ``shop.events`` (raw bytes, any key), validates and pseudonymises each message
  (:mod:`stream.logic.ingest`), dead-letters the bad ones with their reason, and forwards the good
  ones to the internal topic *partitioned* by the pseudonymous user, packed: one record per
  partition and batch (:mod:`stream.logic.packing`), so that the second hop pays Faust's
  per-record cost once per pack instead of once per event. By default it is a plain aiokafka
  consumer on the input partitions that go with the worker's Faust assignment
  (:meth:`Runtime.run_raw_ingest`); ``INTENTSTREAM_INGEST=faust`` makes it an agent.
* ``process`` reads that topic, loads each user's record once per batch, runs
  :class:`~stream.logic.pipeline.Pipeline`, writes each changed record back once, and sends the
  signals. Between the pipeline's two steps the sequence model scores every event of the batch
  (the user's window as of that event) in one call (chunks of ``sequence_max_batch``), on the
  event-loop thread by default (:meth:`Runtime._score_call` says why); signals that include it
  are explained by occlusion in one more call. A newly promoted model is loaded by another thread and swapped in
  between batches (:mod:`stream.logic.serving`).
* **Local processing**: an event whose internal partition this worker owns is processed by the
  raw ingest itself, right after validation, instead of taking the detour through the internal
  topic (``INTENTSTREAM_LOCAL_PROCESSING``; :mod:`stream.logic.routing` says when that is safe).
  With one worker that is every event; with N, about one in N. Such events still go to the
  internal topic too, as ``DONE_KEY`` packs that ``process`` skips (the topic is the history).

Signals are sent to the producer as soon as a batch's table writes are done (not through Faust's
send buffer, which a busy event loop drains one message per turn).

Delivery is at-least-once: ``take_events`` acknowledges a batch only after the agent has handled
it, and Faust flushes the producer (signals, dead letters, changelog) before it commits offsets;
the raw ingest commits its offsets once a second, each time after flushing its packs and dead
letters.
A crash replays the uncommitted tail; state de-duplicates events by ``event_id`` and signal ids
are deterministic, so consumers can drop repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import faust
from faust.streams import _current_event  # see _as_current(): Faust tables key writes by it
from prometheus_client import CollectorRegistry

from models.archive import EventArchive
from models.events import Event, InvalidEvent
from models.features.recent import RecentEvent
from models.features.state import StateConfig
from models.online.learner import IncompatibleCheckpoint, PartitionLearners
from models.sequence import explain
from stream import lag, local_state
from stream.agents.gaps import GapFiller
from stream.agents.outputs import FaustOutputs, OutputsFailed, TransactionalOutputs
from stream.health import Health, register_views
from stream.logic import packing
from stream.logic.batching import Linger
from stream.logic.ingest import DeadLetter, Pseudonymizer, ingest_one
from stream.logic.pipeline import BatchResult, Pipeline, PipelineConfig, SeqView, UserRecord, records_to_bytes
from stream.logic.policy import PolicyRule
from stream.logic.routing import LocalRouting
from stream.logic.scoring import RuleScorer
from stream.logic.serving import SequenceServing, Served, pick_device
from stream.metrics import Metrics

if TYPE_CHECKING:
    from stream.app import Topics
    from stream.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SCAN_PER_BATCH = 5_000  # bounds the latency a churn scan can add to one batch
RECORD_OVERHEAD = 1024  # room for a record's key, headers and batch framing under the producer's limit
IDLE_WAIT_MS = 500  # the raw ingest's longest wait for input when it holds none
GATE_CHECK_S = 0.5  # least time between two reads of the committed offsets a closed partition waits for


def partition_for(user: str, partitions: int) -> int:
    """Partition of a pseudonymous user on the internal topic (uniform: the id is an HMAC)."""
    return int(user[:8], 16) % partitions


def ingest_partitions(assigned: set[int], n_input: int, n_internal: int) -> set[int]:
    """The input partitions a worker ingests: those whose events it would have received had the
    input been co-partitioned with the internal topic (``p % n_internal`` is one of its
    ``assigned`` internal partitions). Across the workers of a group, every input partition is
    read by exactly one.

    >>> sorted(ingest_partitions({0, 3}, 8, 4))
    [0, 3, 4, 7]
    """
    return {p for p in range(n_input) if p % n_internal in assigned}


class RawMessage(NamedTuple):
    """An input record, from aiokafka or from Faust (their timestamps differ in unit)."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


def _now_ms() -> float:
    """Wall-clock time in ms, the clock of Kafka's record timestamps."""
    return time.time() * 1000


def _raw(msg, *, ms: bool = False) -> RawMessage:
    """aiokafka ``ConsumerRecord`` (``ms=True``: timestamp in ms) or Faust ``Message`` (seconds)."""
    ts = msg.timestamp
    return RawMessage(msg.value, msg.key, msg.topic, msg.partition, msg.offset,
                      (int(ts) if ms else int(ts * 1000)) if ts else None)  # fmt: skip


@dataclasses.dataclass(slots=True)
class Item:
    """One event to process: from the internal topic, with the record (a pack) that carried it, or
    ingested here (``fe`` is then the partition's :class:`_PartitionEvent`, ``source`` the input)."""

    partition: int
    event: Event
    kafka_ts: float | None  # the original producer timestamp, epoch seconds
    fe: faust.EventT
    source: RawMessage | None = None


# Keys of the internal topic's records. A "pack" is for the partition's owner to process; a "done"
# pack holds events already processed where they were ingested: the process agent skips it, and it
# is there so that the topic stays the complete pseudonymised event history (train --from-topic).
PACK_KEY = b"pack"
DONE_KEY = b"done"

# Events bound for the internal topic: per partition, the event dicts and their producer timestamps (ms).
Packs = dict[int, tuple[list[dict], list[int | None]]]


def _add_to_pack(packs: Packs, partition: int, event: dict, kafka_ts_ms: int | None) -> None:
    evs, kts = packs.setdefault(partition, ([], []))
    evs.append(event)
    kts.append(kafka_ts_ms)


class _PartitionEvent:
    """Stands in for a Faust event of internal partition ``partition`` where an event processed
    locally has none: Faust's table reads and writes only look at ``message.topic`` (which must be
    the table's source topic) and ``message.partition`` (which store and changelog partition)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _PartitionMessage(topic, partition)


class _Refetched(NamedTuple):
    """An internal-topic record read back by :class:`~stream.agents.gaps.GapFiller`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class _PartitionMessage(NamedTuple):
    topic: str
    partition: int
    offset: int = -1
    timestamp: float | None = None


@contextlib.contextmanager
def _as_current(event: faust.EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event for the duration of a table write.

    Faust picks a table write's changelog partition (and the RocksDB partition store) from the
    event being iterated. We write once per user per batch, after the batch, so we name the
    user's last event of the batch explicitly; it came from the user's partition.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _by_partition(
    context: dict[str, faust.EventT], users: Iterable[str] | None = None
) -> Iterable[tuple[faust.EventT, list[str]]]:
    """``users`` (default: all of ``context``) grouped by their event's partition, each group with
    one of its events: a table read or write needs a current event only for its partition, so
    one :func:`_as_current` serves a whole group."""
    groups: dict[int, tuple[faust.EventT, list[str]]] = {}
    for user in context if users is None else users:
        event = context[user]
        group = groups.get(event.message.partition)
        if group is None:
            groups[event.message.partition] = (event, [user])
        else:
            group[1].append(user)
    return groups.values()


MIN_CHECKPOINT_LABELS = 20  # the least learning between two label-count checkpoints


class Checkpoint(NamedTuple):
    """A partition's online models as of a checkpoint: when, labels learned, warm per task."""

    at: float
    learned: int
    warm: tuple[bool, ...]


def checkpoint_due(last: Checkpoint | None, now: Checkpoint, every_s: float, every_labels: int) -> bool:
    """Whether to checkpoint a partition's online models: at its first batch; when a model has
    just become warm (a crash must never bring back the cold rule); once the labels learned since
    the last checkpoint reach a tenth of those learned before it (at least
    :data:`MIN_CHECKPOINT_LABELS`, at most ``every_labels``), so that a crash loses a bounded share
    of the learning; and after ``every_s`` seconds if anything was learned.

    >>> c = Checkpoint(0.0, 1_000, (False, False))
    >>> [checkpoint_due(c, Checkpoint(t, n, w), 30.0, 2_000) for t, n, w in
    ...  [(5.0, 1_099, (False, False)), (5.0, 1_050, (True, False)), (5.0, 1_100, (False, False)),
    ...   (31.0, 1_001, (False, False)), (31.0, 1_000, (False, False))]]
    [False, True, True, True, False]
    >>> checkpoint_due(Checkpoint(0.0, 100_000, (True, True)), Checkpoint(1.0, 102_000, (True, True)), 30.0, 2_000)
    True
    """
    if last is None:
        return True
    step = min(every_labels, max(MIN_CHECKPOINT_LABELS, last.learned // 10))
    if now.warm != last.warm or now.learned - last.learned >= step:
        return True
    return now.at - last.at >= every_s and now.learned != last.learned


def pipeline_config(s: Settings) -> PipelineConfig:
    return PipelineConfig(
        state=StateConfig(allowed_lateness_ms=s.allowed_lateness_ms, session_gap_ms=s.session_gap_ms),
        intent=PolicyRule(s.intent_threshold, s.hysteresis, s.cooldown_ms),
        churn=PolicyRule(s.churn_threshold, s.hysteresis, s.cooldown_ms),
        latent_top_k=s.latent_top_k,
        churn_risk_after_ms=s.churn_risk_after_ms,
        state_ttl_ms=s.state_ttl_ms,
    )


class Runtime:
    """Everything one worker holds besides Faust itself."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        topics: Topics,
        table: faust.Table,
        models: faust.Table,
        *,
        bootstrap: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app, self.settings, self.topics, self.table, self.models = app, settings, topics, table, models
        self.bootstrap = bootstrap
        self.ingest_consumer = None  # the raw ingest's aiokafka consumer while it runs
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.health = Health(metrics=self.metrics)
        # Readiness waits for the first look at the model registry (and the load of its current
        # sequence model, if there is one); with none, the online models serve alone.
        self.serving: SequenceServing | None = None
        if settings.sequence_serving:
            self.serving = SequenceServing(
                settings.registry_dir / "sequence", intent_horizon_ms=settings.intent_horizon_ms,
                churn_horizon_ms=settings.churn_after_ms, device=pick_device(settings.sequence_device),
                max_batch=settings.sequence_max_batch, shadow=settings.sequence_shadow,
            )  # fmt: skip
        self.health.set_condition("model_loaded", self.serving is None)
        self._score_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequence-score")
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequence-load")
        _torch_threads(settings.sequence_threads)
        self.health.add_probe("recovery", lambda: "table recovery in progress" if app.in_recovery else None)
        self.pseudonymize = Pseudonymizer(settings.secret_key())
        self.scorer = RuleScorer(settings.churn_after_ms)
        self.pipeline = Pipeline(
            pipeline_config(settings), self.scorer, learners=self._restore_learners if settings.online_learning else None
        )
        self._checkpointed: dict[int, Checkpoint] = {}
        # Validated, pseudonymised events also go to the Parquet archive that training reads, so
        # training is not limited by the topic's retention. Files are written by one background
        # thread, every archive_flush_s: a crash loses at most that much of the archive (never
        # of the stream), and the archive's atomic writes never leave a half file.
        self.archive = EventArchive(settings.archive_root) if settings.archive_root else None
        self._archive_buffer: list[Event] = []
        self._archive_flushed = time.monotonic()
        self._archive_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")
        self._index_stale = True
        self._assigned: set[int] = set()
        # Local processing (stream.logic.routing): only beside the raw ingest, and only with inline
        # scoring, whose batches wait for nothing but their signals' acknowledgement.
        self.routing = LocalRouting(
            enabled=settings.local_processing and settings.ingest == "raw" and bootstrap is not None
            and settings.sequence_scoring == "inline"
        )  # fmt: skip
        self._partition_events: dict[int, _PartitionEvent] = {}
        self._ingested_here: list[Item] = []  # what the last ingest batch left to process locally
        self._ingested_generation: int | None = None  # the routing generation that decided so
        self._processing = asyncio.Lock()  # one batch at a time, whichever stage started it
        self._admin = None  # reads the group's committed offsets for the gates (started when needed)
        self._gates_checked = 0.0
        self._ingest_task: asyncio.Task | None = None
        self.outputs = self._outputs()
        self.gaps = GapFiller(topics.by_user.get_topic_name(), self._committed, self._gap_reader)
        # The local store's directory when it outlives the process (rocksdb://): see stream.local_state.
        self.tabledir: Path | None = Path(app.conf.tabledir) if settings.store == "rocksdb://" else None

    async def check_local_store(self) -> None:
        """Before the tables open: discard a local store that RocksDB cannot read or that is ahead of
        its changelog (:func:`stream.local_state.ahead_of_changelog`): Faust would fail to start
        with either, at every restart."""
        if self.tabledir is None or not self.tabledir.is_dir():
            return
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from stream.broker import client_config

        try:
            persisted = {t: local_state.persisted_offsets(self.tabledir, t) for t in self.settings.changelog_topics()}
        except Exception as exc:  # noqa: BLE001 - RocksDB could not open or read it: it cannot be trusted
            log.warning("local table store unreadable (%s: %s): discarded, rebuilding it from the changelog",
                        type(exc).__name__, str(exc)[:200])  # fmt: skip
            local_state.discard(self.tabledir)
            self.metrics.count_state_rebuild("unreadable")
            return
        if not any(persisted.values()):
            return
        consumer = AIOKafkaConsumer(**client_config(self.settings, self.bootstrap or ""), group_id=None,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            ahead: dict[str, list[int]] = {}
            for table, topic in self.settings.changelog_topics().items():
                tps = [TopicPartition(topic, p) for p in persisted[table]]
                ends = {tp.partition: n for tp, n in (await consumer.end_offsets(tps)).items()} if tps else {}
                if late := local_state.ahead_of_changelog(persisted[table], ends):
                    ahead[table] = late
        finally:
            await consumer.stop()
        if ahead:
            log.warning("local table store ahead of its changelog (%s): discarded, rebuilding it from the changelog",
                        "; ".join(f"{t} partitions {ps}" for t, ps in ahead.items()))  # fmt: skip
            local_state.discard(self.tabledir)
            self.metrics.count_state_rebuild("ahead_of_changelog")

    def _gap_reader(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        from stream.broker import client_config

        return AIOKafkaConsumer(
            **client_config(self.settings, self.bootstrap or ""), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed" if self.outputs.exactly_once else "read_uncommitted",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )  # fmt: skip

    def _outputs(self) -> FaustOutputs | TransactionalOutputs:
        s, t = self.settings, self.topics
        if s.processing_guarantee == "exactly_once":
            from stream.broker import client_config

            def fatal(exc: BaseException) -> None:
                asyncio.ensure_future(self.app.crash(exc))

            return TransactionalOutputs(
                {**client_config(s, self.bootstrap or ""), "linger_ms": 5, "max_batch_size": 262_144,
                 "max_request_size": s.max_record_bytes, "transaction_timeout_ms": s.transaction_timeout_ms},
                f"{s.app_id}-{s.worker_identity()}",
                [s.dlq_topic, s.repartition_topic, *s.signal_topics().values(), *s.changelog_topics().values()],
                on_fatal=fatal,
            )  # fmt: skip
        by_name = {t.dlq.get_topic_name(): t.dlq, t.by_user.get_topic_name(): t.by_user}
        by_name.update({topic.get_topic_name(): topic for topic in t.signals.values()})
        return FaustOutputs(self.app, by_name)

    # ------------------------------------------------------------------ wiring
    def register(self) -> None:
        app, s = self.app, self.settings
        within = s.batch_wait_ms / 1000

        raw_ingest = s.ingest == "raw" and self.bootstrap is not None
        if raw_ingest:

            @app.task
            async def ingest_loop() -> None:
                self._ingest_task = asyncio.current_task()
                await self.run_raw_ingest()

        else:

            @app.agent(self.topics.events, name="ingest")
            async def ingest(stream: faust.StreamT) -> None:
                async for batch in stream.take_events(s.batch_size, within=within):
                    self.guarded(self.ingest_batch, [_raw(fe.message) for fe in batch])

        @app.agent(self.topics.by_user, name="process")
        async def process(stream: faust.StreamT) -> None:
            async for batch in stream.take_events(s.batch_size, within=within):
                await self.process_packs(batch)

        if self.serving is not None:

            @app.timer(interval=s.model_poll_s, on_leader=False)
            async def poll_models() -> None:
                await self.poll_models()

            @app.task
            async def first_model_poll() -> None:
                await self.poll_models()

        @app.on_partitions_revoked.connect
        async def on_revoked(sender: object, revoked: set, **kwargs: object) -> None:
            # A batch in progress ends (its signals acknowledged, its state written) and, with
            # exactly-once, is committed before the partitions' next owner reads the changelogs
            # and the input.
            async with self._processing:
                if self.outputs.exactly_once:
                    await self.outputs.commit()
                else:
                    await self.outputs.flush()

        @app.on_partitions_assigned.connect
        async def on_assigned(sender: object, assigned: set, **kwargs: object) -> None:
            mine = {tp.partition for tp in assigned if tp.topic == self.topics.by_user.get_topic_name()}
            self._assigned = mine
            self.pipeline.forget_partitions(mine)
            self._index_stale = True
            self.gaps.reset()

        # Consumer lag, rebalance count and assigned partitions (stream.lag keeps them current).
        # Faust's consumer reads the internal topic, and shop.events unless the raw ingest does
        # (which publishes its own lag in refresh_gauges).
        lag.install(app, self.metrics, topics={s.repartition_topic} if raw_ingest else {s.events_topic, s.repartition_topic})

        @app.task
        async def mark_ready() -> None:
            await app.tables.wait_until_recovery_completed()
            freeze_heap()
            self.health.set_condition("tables_recovered", True)
            log.info("worker ready: %s", self._describe())

        @app.timer(interval=5.0)
        async def refresh_gauges() -> None:
            self.metrics.users_in_state.set(len(self.pipeline.activity))
            for task, n in self.pipeline.pending.items():
                self.metrics.set_pending_labels("purchase_intent" if task == "intent" else "churn_risk", n)
            self._publish_online_quality()
            await self._ingest_lag()
            self._archive([], [])  # flush a quiet stream's archive buffer too

        register_views(app, self.metrics, self.health)

    def guarded(self, handle: Callable[[list[RawMessage]], None], batch: list[RawMessage]) -> None:
        """Run ``handle`` on a batch of input messages; if it raises, isolate the culprit.

        An unexpected error (a bug, a record we cannot read) must neither crash the ingest nor
        lose the batch: the messages that fail alone are dead-lettered with reason
        ``processing_error`` and the rest are forwarded normally.
        """
        try:
            handle(batch)
            return
        except OutputsFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to survive anything
            log.error("batch of %d failed (%s: %s); retrying message by message", len(batch), type(exc).__name__, exc)
        for msg in batch:
            try:
                handle([msg])
            except OutputsFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("message at %s[%d]@%d dead-lettered: %s", msg.topic, msg.partition, msg.offset, type(exc).__name__)
                self._dead_letter(
                    DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"[:200], msg.value, msg.topic, msg.partition, msg.offset),
                    msg.key,
                )

    async def run_raw_ingest(self) -> None:
        """The ingest stage on a plain aiokafka consumer, without Faust's per-record machinery.

        Ingest keeps no state, so it needs none of Faust's table machinery, and its per-record
        stream overhead was the larger half of the worker's cost per event (docs/BENCHMARKS.md):
        here a whole ``getmany`` batch is validated, packed and sent. Offsets are committed every
        ``broker_commit_interval`` (1 s, as Faust commits its own), each time after a producer
        flush, so a commit never covers a pack that is not acknowledged (at-least-once: a crash
        re-sends the uncommitted tail, which the state de-duplicates by ``event_id``). A flush and
        a commit per batch had cost a round trip each, and small batches at moderate load made
        them a large share of the ingest's work.

        The consumer joins no group. It reads the input partitions that go with the internal
        partitions Faust assigned this worker (:func:`ingest_partitions`), follows every
        rebalance of Faust's group, and commits its offsets under ``Settings.ingest_group``, so
        that the input is split exactly as the internal topic is. While a partition moves,
        its old and new owner may both read its uncommitted tail: duplicates, never a loss, since
        every commit follows the flush of what it covers.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        from stream.broker import client_config, topic_partitions

        s = self.settings
        eos = self.outputs.exactly_once
        consumer = AIOKafkaConsumer(
            group_id=s.ingest_group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=s.batch_size, fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
            isolation_level="read_committed" if eos else "read_uncommitted",
            **client_config(s, self.bootstrap),  # type: ignore[arg-type]
        )  # fmt: skip
        await consumer.start()
        self.ingest_consumer = consumer
        n_input: int | None = None
        mine: set[int] = set()
        done: dict[TopicPartition, int] = {}  # next offset per partition, forwarded but not committed yet
        committed = time.monotonic()
        interval = s.transaction_commit_ms / 1000 if eos else float(self.app.conf.broker_commit_interval)

        async def commit() -> None:
            nonlocal done, committed
            committed = time.monotonic()
            if eos:  # the open transaction, with every offset tracked since the last
                async with self._processing:
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
                log.warning("ingest commit failed (%s); up to %.1f s of input may be delivered again", exc, interval)

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
                async with self._processing:
                    self.guarded(self.ingest_batch, [_raw(m, ms=True) for m in records])
                    if self._ingested_here:
                        await self._process_here(locked=True)
                    await self.outputs.flush()
                    self.outputs.track(s.ingest_group, offsets)
                await asyncio.sleep(0)
                return
            self.guarded(self.ingest_batch, [_raw(m, ms=True) for m in records])
            if self._ingested_here:
                await self._process_here()
                # getmany returns at once while records are buffered: without a turn of the loop
                # here, the producer's sender would not run between local batches.
                await asyncio.sleep(0)
            done.update(offsets)

        try:
            while True:
                if n_input is None:
                    n_input = len(await topic_partitions(consumer, s.events_topic))
                wanted = ingest_partitions(self._assigned, n_input, s.events_partitions)
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
                if self.routing.enabled and self.app.rebalancing:
                    await ingest_held()
                    # Faust is moving partitions and recovering tables: what the ingest read now it
                    # could only forward, and local processing would wait until the agent caught up.
                    if time.monotonic() - committed >= interval:
                        await commit()
                    await asyncio.sleep(0.05)
                    continue
                if self.routing.enabled:
                    try:
                        await self._update_routing(consumer)
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
            self.ingest_consumer = None
            try:  # a clean stop commits what it forwarded; if it cannot, a restart reads it again
                await asyncio.wait_for(commit(), timeout=5.0)
            except Exception as exc:  # noqa: BLE001
                log.warning("ingest commit at stop failed (%s: %s)", type(exc).__name__, exc)
            finally:
                await consumer.stop()
                if self._admin is not None:
                    admin, self._admin = self._admin, None
                    await admin.close()

    async def _ingest_lag(self) -> None:
        """Consumer lag of the raw ingest's partitions (Faust's lag reader sees only its own)."""
        consumer = self.ingest_consumer
        if consumer is None:
            return
        try:
            found = lag.compute_lag(*await lag.read_offsets(consumer, consumer.assignment()))
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            log.warning("ingest lag refresh failed: %s", exc)
            return
        self.metrics.set_lag({(tp.topic, tp.partition): v for tp, v in found.items()})

    # ------------------------------------------------------------------ sequence model
    async def poll_models(self) -> None:
        """Look at the registry on the loading thread; count each load attempt."""
        if self.serving is None:
            return
        loop = asyncio.get_running_loop()
        try:
            attempts = await loop.run_in_executor(self._load_pool, self.serving.poll)
        except Exception as exc:  # noqa: BLE001 - the registry must never stop the worker
            log.error("model registry poll failed: %s: %s", type(exc).__name__, exc)
            attempts = [("poll", False)]
        for _version, ok in attempts:
            self.metrics.count_model_refresh(ok)
        self.health.set_condition("model_loaded", True)

    def _describe(self) -> str:
        """What an operator checks first: where the worker reads, answers and what it serves."""
        s = self.settings
        active = self.serving.active if self.serving is not None else None
        sequence = active.name if active is not None else ("none yet" if self.serving is not None else "off")
        return (f"bootstrap servers {self.bootstrap}, web port {s.web_port}, {s.processing_guarantee}, "
                f"sequence model {sequence}, online models {'on' if s.online_learning else 'off'} "
                f"(rule until warm), ingest {s.ingest}")  # fmt: skip

    def _swap_model(self) -> Served | None:
        """Between batches: switch to a newly loaded version; the one to score this batch with."""
        if self.serving is None:
            return None
        shadow_before = self.serving.shadow
        new = self.serving.swap()
        if new is not None:
            log.info("now serving sequence model %s", new.name)
            self.metrics.set_sequence_model(new.name)
        if self.serving.shadow is not None and self.serving.shadow is not shadow_before:
            self.metrics.set_shadow_model(self.serving.shadow.name)
        return self.serving.active

    async def _score_call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a scoring function where ``INTENTSTREAM_SEQUENCE_SCORING`` says: on this thread
        (``inline``, the default) or on the scoring thread (``thread``).

        Inline blocks the event loop for the call (a few ms for a small batch, ~100 ms for 1,000
        windows), but on CPython a scoring thread is slower: torch releases the GIL in each op,
        and re-acquiring it waits for the loop thread's switch interval whenever the loop is
        running Python (ingest, Faust). A 40-window call took 6 ms inline and 0.8 s on a thread
        beside a caller running Python (``python -m benchmarks.gil_convoy``, docs/BENCHMARKS.md)."""
        if self.settings.sequence_scoring == "inline":
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._score_pool, fn, *args)

    async def _sequence_views(
        self, served: Served | None, windows: Sequence[Sequence[RecentEvent] | None], latent: list[bool] | None = None
    ) -> list[SeqView | None] | None:
        """Score the windows with the served model (and the shadow) via :meth:`_score_call`, in one
        call per batch; one view per window (None for a missing or empty one). ``latent`` says
        which windows need next categories (default: all); the others' views have none.

        A scoring failure is logged and the online models serve this batch alone: a model must
        never cost an event."""
        todo = [i for i, w in enumerate(windows) if w]
        if served is None or not todo:
            return None
        batch = [windows[i] for i in todo]
        mask = None if latent is None else [latent[i] for i in todo]
        serving = self.serving
        assert serving is not None
        t0 = time.perf_counter()
        try:
            sc = await self._score_call(serving.score, served, batch, None, mask)
        except Exception as exc:  # noqa: BLE001
            log.error("sequence scoring of %d windows failed (%s: %s): online models serve this batch alone",
                      len(batch), type(exc).__name__, exc)  # fmt: skip
            return None
        self.metrics.observe_scoring(len(batch), time.perf_counter() - t0)
        shadow = serving.shadow
        if shadow is not None:
            try:
                sh = await self._score_call(serving.score, shadow, batch, None, [False] * len(batch))
                self.metrics.observe_shadow("purchase_intent", sh.p_intent - sc.p_intent)
                self.metrics.observe_shadow("churn_risk", sh.p_churn - sc.p_churn)
            except Exception as exc:  # noqa: BLE001
                log.error("shadow scoring failed (%s: %s)", type(exc).__name__, exc)
        k = self.settings.latent_top_k
        views: list[SeqView | None] = [None] * len(windows)
        name, tasks = served.name, served.tasks
        for i, pi, pc, top in zip(todo, sc.p_intent.tolist(), sc.p_churn.tolist(), sc.top_categories, strict=True):
            views[i] = SeqView(name, tasks, pi, pc, tuple(c for c in top if c)[:k])
        return views

    async def _explain(self, served: Served | None, result: BatchResult) -> None:
        """Add the sequence model's occlusion attributions to the signals it contributed to."""
        n = self.settings.explain_events
        if served is None or not result.explain or n == 0:
            return
        cfg = served.scorer.config
        for head in ("intent", "churn"):
            items = [(i, w) for i, h, w in result.explain if h == head and w]
            if not items:
                continue
            sigs = [result.signals[i] for i, _ in items]
            windows = [w for _, w in items]
            try:
                attrs = await self._score_call(explain.occlusion, served.scorer, windows, head, n)
            except Exception as exc:  # noqa: BLE001 - a signal without attributions is still a signal
                log.error("explaining %d signals failed (%s: %s)", len(sigs), type(exc).__name__, exc)
                continue
            for sig, lst in zip(sigs, attrs, strict=True):
                extra = []
                for a in lst[:3]:
                    r = explain.describe(a, sig.value["ts"], served.scorer.vocab, cfg.category_buckets, head)
                    r["contribution"] = round(r["contribution"] / 2, 4)  # half: the blend's weight
                    extra.append(r)
                sig.value["reasons"] = sorted(sig.value["reasons"] + extra, key=lambda r: -abs(r["contribution"]))[:6]

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: list[RawMessage]) -> None:
        """Validate and pseudonymise a batch; dead-letter the bad messages; forward the good events
        to the internal topic, packed per partition, except those of partitions this worker
        processes locally, which are left in ``_ingested_here`` for :meth:`_process_here`.

        Nothing is sent until the whole batch has gone through: if it raises, :meth:`guarded`
        retries message by message, and each message's outcome is sent once."""
        s, m = self.settings, self.metrics
        t0 = time.perf_counter()
        now_ms = time.time_ns() // 1_000_000
        packs: Packs = {}
        done: Packs = {}
        local = self.routing.local if self._routing_current() else ()
        here: list[Item] = []
        dead: list[tuple[DeadLetter, bytes | None]] = []
        for msg in batch:
            try:
                ev = ingest_one(
                    msg.value, self.pseudonymize, max_bytes=s.max_event_bytes, now_ms=now_ms,
                    max_future_ms=s.max_future_skew_ms,
                )  # fmt: skip
            except InvalidEvent as exc:
                dead.append((DeadLetter(exc.reason, exc.detail, msg.value, msg.topic, msg.partition, msg.offset), msg.key))
                continue
            partition = partition_for(ev.user, s.events_partitions)
            if partition in local:
                ts = msg.timestamp_ms / 1000 if msg.timestamp_ms else None
                here.append(Item(partition, ev, ts, self._partition_event(partition), msg))  # type: ignore[arg-type]
                _add_to_pack(done, partition, ev.to_dict(), msg.timestamp_ms)
                continue
            # Keep the producer's timestamp so event-to-signal latency spans both hops.
            _add_to_pack(packs, partition, ev.to_dict(), msg.timestamp_ms)
        forward, history = self._packed(packs, PACK_KEY), self._packed(done, DONE_KEY)
        for dl, key in dead:
            self._dead_letter(dl, key)
        self._send_packed(forward, PACK_KEY)
        self._count_forwarded(packs)
        self._send_packed(history, DONE_KEY)
        self._ingested_here.extend(here)
        self._ingested_generation = self.routing.generation
        m.observe_batch(len(batch), time.perf_counter() - t0)

    def _forward(self, packs: Packs) -> None:
        """Send events to the internal topic for their partition's owner to process."""
        self._send_packed(self._packed(packs, PACK_KEY), PACK_KEY)
        self._count_forwarded(packs)

    def _count_forwarded(self, packs: Packs) -> None:
        for evs, _kts in packs.values():
            self.metrics.events_routed.labels(path="forwarded").inc(len(evs))

    def _packed(self, packs: Packs, key: bytes) -> list[tuple[int, bytes]]:
        """The internal topic's records for ``packs``: each small enough for the producer."""
        limit = self.settings.max_record_bytes - RECORD_OVERHEAD
        return [(p, value) for p, (evs, kts) in packs.items() for value in packing.pack_all(evs, kts, limit)]

    def _send_packed(self, records: list[tuple[int, bytes]], key: bytes) -> None:
        """Send packed records to the internal topic under ``key``; follow the packs to be
        processed that a closed partition's gate waits for (:class:`LocalRouting`)."""
        topic, route = self.topics.by_user.get_topic_name(), self.routing
        for partition, value in records:
            on_ack = None
            if key == PACK_KEY and route.tracks(partition):
                route.sent(partition)
                on_ack = functools.partial(self.routing.acked, route.generation, partition)
            self.outputs.send_soon(topic, key, value, partition, on_ack)

    def _partition_event(self, partition: int) -> _PartitionEvent:
        pe = self._partition_events.get(partition)
        if pe is None:
            pe = self._partition_events[partition] = _PartitionEvent(self.topics.by_user.get_topic_name(), partition)
        return pe

    def _routing_current(self) -> bool:
        """Bring the routing up to Faust's rebalance count (a new rebalance closes every partition);
        True when no rebalance is under way, so local partitions may be processed here."""
        app, route = self.app, self.routing
        if route.generation != app.rebalancing_count:
            route.reset(app.rebalancing_count)
            self.metrics.local_partitions.set(0)
        return route.enabled and not app.rebalancing

    async def _process_here(self, locked: bool = False) -> None:
        """Process what the last ingest batch kept for local processing (see ``ingest_batch``);
        ``locked``: the caller holds the processing lock."""
        if locked:
            await self._process_here_locked()
            return
        async with self._processing:
            await self._process_here_locked()

    async def _process_here_locked(self) -> None:
        items, self._ingested_here = self._ingested_here, []
        if not self._routing_current() or self.routing.generation != self._ingested_generation:
            # The assignment changed since the ingest decided (while the agent held the lock, say):
            # those partitions may not be this worker's any more, so the usual way then.
            packs: Packs = {}
            for it in items:  # items ingested here always carry their input record
                _add_to_pack(packs, it.partition, it.event.to_dict(), it.source.timestamp_ms if it.source else None)
            self._forward(packs)
            return
        await self.process_items(items)
        self.metrics.events_routed.labels(path="local").inc(len(items))

    async def _flush_outputs(self) -> bool:
        """Flush the outputs from outside a batch: with transactions, under the processing lock,
        so that the flush never begins or feeds a transaction while a batch or a commit runs."""
        if not self.outputs.exactly_once:
            return await self.outputs.flush()
        async with self._processing:
            return await self.outputs.flush()

    async def _update_routing(self, consumer: object) -> None:
        """Arm and open the gates of :class:`LocalRouting`. Called by the raw ingest between
        batches, once its input partitions follow Faust's current assignment."""
        from aiokafka import TopicPartition

        app, route = self.app, self.routing
        if not self._routing_current() or app.in_recovery:
            return
        generation = route.generation
        if route.needs_arming(generation):  # type: ignore[arg-type]
            # Where this ingest starts reading: an earlier owner committed (after flushing) what it
            # forwarded from below those offsets, so it is below the end offsets read next.
            for tp in consumer.assignment():  # type: ignore[attr-defined]
                await consumer.position(tp)  # type: ignore[attr-defined]
            if not await self._flush_outputs():  # and so is everything this worker forwarded
                return
            internal = self.topics.by_user.get_topic_name()
            ends = await consumer.end_offsets([TopicPartition(internal, p) for p in sorted(self._assigned)])  # type: ignore[attr-defined]
            if self._routing_current() and route.generation == generation:
                route.arm(generation, {tp.partition: offset for tp, offset in ends.items()})
                self._gates_checked = 0.0
        if route.gates and time.monotonic() - self._gates_checked >= GATE_CHECK_S:
            self._gates_checked = time.monotonic()
            committed = await self._committed(sorted(route.gates))
            if self._routing_current() and route.generation == generation:
                opened = route.open(committed)
                if opened:
                    log.info("internal partitions %s are now processed where they are ingested", sorted(opened))
                    self.metrics.local_partitions.set(len(route.local))

    async def _committed(self, partitions: list[int]) -> dict[int, int]:
        """The application group's committed offsets of internal ``partitions`` (-1: none)."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        from stream.broker import client_config

        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_config(self.settings, self.bootstrap))  # type: ignore[arg-type]
            await admin.start()
            self._admin = admin
        internal = self.topics.by_user.get_topic_name()
        found = await self._admin.list_consumer_group_offsets(
            self.settings.app_id, partitions=[TopicPartition(internal, p) for p in partitions]
        )
        return {tp.partition: meta.offset for tp, meta in found.items()}

    # ------------------------------------------------------------------ stopping
    async def before_stop(self) -> None:
        """First step of a stop: end the raw ingest (its last commit follows a producer flush), so
        that nothing writes to a table once Faust stops them."""
        task, self._ingest_task = self._ingest_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(task, timeout=10.0)

    async def after_stop(self) -> None:
        """Last step of a stop, once Faust has stopped the tables: flush (at-least-once) or commit
        (exactly-once) what is left, and if that worked, mark the local store clean
        (:mod:`stream.local_state`) so that the next start reopens it instead of rebuilding it."""
        clean = False
        try:
            if self.outputs.exactly_once:
                async with self._processing:
                    clean = await asyncio.wait_for(self.outputs.commit(), timeout=10.0)
            else:
                clean = await asyncio.wait_for(self.outputs.flush(), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - not clean, whatever the cause
            log.warning("stop: outputs not flushed (%s); the local store will be rebuilt at the next start",
                        type(exc).__name__)  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.outputs.stop(), timeout=10.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.gaps.close(), timeout=5.0)
        if clean and self.tabledir is not None:
            local_state.mark_clean(self.tabledir)

    def _dead_letter(self, dl: DeadLetter, key: bytes | None) -> None:
        self.metrics.count_invalid(dl.reason)
        self.metrics.dead_letters.inc()
        value = json.dumps(dl.to_dict(self.settings.dead_letter_max_bytes), separators=(",", ":")).encode()
        self.outputs.send_soon(self.settings.dlq_topic, key, value)

    # ------------------------------------------------------------------ process
    async def process_packs(self, batch: list[faust.EventT]) -> None:
        """Unpack the internal topic's records and process their events (:meth:`process_items`),
        after any records the consumer skipped before them (:mod:`stream.agents.gaps`)."""
        first: dict[int, faust.EventT] = {}
        for fe in batch:
            first.setdefault(fe.message.partition, fe)
        records: list[tuple[faust.EventT, _PartitionMessage | Any]] = []
        for partition, fe in first.items():
            missing = await self.gaps.before(partition, fe.message.offset)
            self.metrics.records_refetched.inc(len(missing))
            records.extend((fe, _Refetched(fe.message.topic, r.partition, r.offset, r.key, r.value)) for r in missing)
        records.extend((fe, fe.message) for fe in batch)
        items: list[Item] = []
        for fe, msg in records:
            if msg.key == DONE_KEY:  # processed where it was ingested; kept only as history
                continue
            try:
                for d, kts in packing.unpack(msg.value):
                    items.append(Item(msg.partition, Event.from_dict(d), kts / 1000 if kts else None, fe))
            except (ValueError, TypeError) as exc:
                self._dead_letter(DeadLetter("processing_error", f"unreadable internal record: {exc}"[:200], msg.value,
                                             msg.topic, msg.partition, msg.offset), msg.key)  # fmt: skip
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
            async with self._processing:
                if items:
                    await self.process_items(items)
                self.outputs.track(self.settings.app_id, offsets)
                await self.outputs.commit()
            return
        if not items:
            return
        async with self._processing:
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
            log.error("batch of %d events failed (%s: %s); retrying event by event", len(items), type(exc).__name__, exc)
        for it in items:
            try:
                await self.process_batch([it])
            except OutputsFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                msg = it.source or it.fe.message
                log.error("event at %s[%d]@%d dead-lettered: %s", msg.topic, msg.partition, msg.offset, type(exc).__name__)
                self._dead_letter(
                    DeadLetter("processing_error", f"{type(exc).__name__}: {exc}"[:200],
                               json.dumps(it.event.to_dict()).encode(), msg.topic, msg.partition, msg.offset),
                    it.event.user.encode(),
                )  # fmt: skip

    async def process_batch(self, items: list[Item]) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        served = self._swap_model()
        if self._index_stale:
            self._rebuild_index()
        pairs: list[tuple[int, Event]] = []
        last_of_user: dict[str, faust.EventT] = {}
        last_of_partition: dict[int, faust.EventT] = {}
        kafka_ts: dict[str, float] = {}
        for it in items:
            ev = it.event
            pairs.append((it.partition, ev))
            last_of_user[ev.user] = it.fe
            last_of_partition[it.partition] = it.fe
            if it.kafka_ts:
                kafka_ts[ev.event_id] = it.kafka_ts
        records = self._load(last_of_user)
        result = self.pipeline.apply(records, pairs, windows=served is not None)
        views = await self._sequence_views(
            served, [c.window for c in result.candidates], [c.latent_due for c in result.candidates]
        )
        self.pipeline.decide(result, records, views)  # type: ignore[arg-type]
        await self._explain(served, result)

        # Churn risk and expiry for silent users, at each partition's event-time watermark.
        scans: list[tuple[BatchResult, faust.EventT]] = []
        for partition, fe in last_of_partition.items():
            due = self.pipeline.due_for_scan(partition, MAX_SCAN_PER_BATCH)
            if due:
                recs = self._load(dict.fromkeys(due, fe))
                for u in due:  # this batch's own records, not yet written
                    if u in result.records:
                        recs[u] = result.records[u]
                    elif u in result.deleted:
                        recs[u] = None
                scan = self.pipeline.scan_apply(partition, recs)
                silent = list(scan.silent)
                views = await self._sequence_views(
                    served, [recs[u].state.recent_window() for u in silent], [False] * len(silent)  # type: ignore[union-attr]
                )  # churn risk only: no next categories
                by_user = dict(zip(silent, views, strict=True)) if views else None
                self.pipeline.decide_silent(scan, recs, by_user)  # type: ignore[arg-type]
                await self._explain(served, scan)
                scans.append((scan, fe))

        # Outputs only now: a batch that raised above wrote and sent nothing, so the event-by-event
        # retry (process_items) leaves each event's outcome written once. Signals go first and,
        # at least once, are acknowledged before the state that remembers them is written: a
        # crash or a cancelled stop in between replays the events, which re-emit the same
        # signals; state written first would reject the replay as duplicates and lose them.
        outputs = [(result, kafka_ts), *((scan, {}) for scan, _fe in scans)]
        await self._emit(outputs)
        self._write(result, last_of_user)
        for scan, fe in scans:
            self._write(scan, {u: fe for u in scan.records.keys() | set(scan.deleted)})
        for ev in result.rejected:
            (m.duplicate_events if ev.reason == "duplicate_event_id" else m.late_events).inc()
            self._dead_letter(
                DeadLetter(ev.reason, f"event_id {ev.event.event_id}", json.dumps(ev.event.to_dict()).encode(),
                           self.topics.by_user.get_topic_name(), -1, -1),
                ev.event.user.encode(),
            )  # fmt: skip
        for typ, n in result.counts_by_type.items():
            m.count_event(typ, n)
        self._checkpoint(last_of_partition)
        self._archive([ev for _p, ev in pairs], result.rejected)
        m.observe_batch(len(items), time.perf_counter() - t0)

    def _archive(self, events: list[Event], rejected: list) -> None:
        if self.archive is None:
            return
        dropped = {id(r.event) for r in rejected}
        self._archive_buffer.extend(ev for ev in events if id(ev) not in dropped)
        if self._archive_buffer and time.monotonic() - self._archive_flushed >= self.settings.archive_flush_s:
            events, self._archive_buffer = self._archive_buffer, []
            self._archive_flushed = time.monotonic()
            self._archive_pool.submit(self._write_archive, events)

    def _write_archive(self, events: list[Event]) -> None:
        try:
            self.archive.write(events)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the archive must never stop the stream
            log.error("archive write of %d events failed: %s", len(events), exc)

    # ------------------------------------------------------------------ online models
    def _restore_learners(self, partition: int) -> PartitionLearners:
        """The partition's online models from their last checkpoint, or fresh ones."""
        raw = self.models.get(str(partition).encode())
        if raw is not None:
            try:
                return PartitionLearners.from_bytes(raw)
            except IncompatibleCheckpoint as exc:
                log.warning("online models of partition %d not restored (%s): starting fresh", partition, exc)
        s = self.settings
        return PartitionLearners.new(
            state=self.pipeline.cfg.state, intent_horizon_ms=s.intent_horizon_ms, churn_horizon_ms=s.churn_after_ms
        )

    def _checkpoint(self, last_of_partition: dict[int, faust.EventT]) -> None:
        """Write a partition's models to the models table when :func:`checkpoint_due` says so: a
        restart or rebalance loses a bounded amount of learning, and never a warm-up (docs/ONLINE.md)."""
        now, s = time.monotonic(), self.settings
        for partition, fe in last_of_partition.items():
            pl = self.pipeline.learners.get(partition)
            if pl is None:
                continue
            mark = Checkpoint(now, pl.intent.n_learned + pl.churn.n_learned, (pl.intent.warm(), pl.churn.warm()))
            if not checkpoint_due(self._checkpointed.get(partition), mark, s.model_checkpoint_s, s.model_checkpoint_labels):
                continue
            self._checkpointed[partition] = mark
            with _as_current(fe):
                self.outputs.write(self.models, str(partition).encode(), pl.to_bytes(), partition)

    def _publish_online_quality(self) -> None:
        """Progressive-validation quality per task, pooled over this worker's partitions
        (each partition's figure weighted by its number of learned labels)."""
        for task, label in (("intent", "purchase_intent"), ("churn", "churn_risk")):
            learners = [getattr(pl, task) for pl in self.pipeline.learners.values()]
            self.metrics.online_models_warm.labels(task=label).set(sum(lr.warm() for lr in learners))
            self.metrics.online_labels_learned.labels(task=label).set(sum(lr.n_learned for lr in learners))
            rows = [m for pl in self.pipeline.learners.values() if (m := pl.metrics()[task]).get("n")]

            def pooled(key: str, rows: list[dict] = rows) -> float | None:
                vals = [(r[key], r["n"]) for r in rows if r.get(key) is not None]
                return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

            if rows:
                self.metrics.set_online_quality(
                    label, roc_auc=pooled("roc_auc"), log_loss=pooled("log_loss"),
                    calibration_error=pooled("calibration_error"),
                )  # fmt: skip

    def _load(self, context: dict[str, faust.EventT]) -> dict[str, UserRecord | None]:
        """The record of each user of ``context`` (user -> one of the user's events, which names
        the partition to read; without it Faust's RocksDB store looks in every assigned
        partition's database). Read from the table's store: ``Table.get`` looks a present key
        up twice (``in``, then the value: two RocksDB reads)."""
        get = self.table.data.get
        raw: dict[str, bytes | None] = {}
        for event, users in _by_partition(context):
            with _as_current(event):
                for user in users:
                    raw[user] = get(user.encode())
        return {u: UserRecord.from_bytes(r) if r is not None else None for u, r in raw.items()}

    def _write(self, result: BatchResult, context: dict[str, faust.EventT]) -> None:
        table, write = self.table, self.outputs.write
        data = records_to_bytes(result.records)
        self.metrics.observe_records(map(len, data.values()))
        deleted = set(result.deleted)
        for event, users in _by_partition(context, [*data, *(u for u in result.deleted if u not in data)]):
            partition = event.message.partition
            with _as_current(event):
                for user in users:
                    write(table, user.encode(), None if user in deleted else data[user], partition)

    async def _emit(self, outputs: list[tuple[BatchResult, dict[str, float]]]) -> None:
        """Send the signals of a batch and wait until they are acknowledged (at-least-once; see
        :meth:`~stream.agents.outputs.FaustOutputs.delivered`); with exactly-once, into the open
        transaction."""
        m, topics, send = self.metrics, self.settings.signal_topics(), self.outputs.send
        now = time.time()
        pending = []
        for result, kafka_ts in outputs:
            for sig in result.signals:
                value = json.dumps(sig.value, separators=(",", ":")).encode()
                pending.append(await send(topics[sig.task], sig.user.encode(), value))
                m.count_signal(sig.task)
                produced = kafka_ts.get(sig.value["event_id"])
                if produced:
                    m.observe_event_to_signal(produced, now)
        await self.outputs.delivered(pending)

    def _rebuild_index(self) -> None:
        """After a rebalance, index the users of our partitions for the churn scan."""
        self._index_stale = False
        n = self.settings.events_partitions
        for key, raw in self.table.items():
            user = key.decode()
            p = partition_for(user, n)
            if p in self._assigned:
                self.pipeline.remember(user, p, UserRecord.from_bytes(raw))


# The collector's thresholds once the worker is ready (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


def freeze_heap() -> None:
    """Leave everything alive at start-up (torch, Faust, River, the recovered models: some 10^5
    objects) out of the cyclic garbage collector's passes from now on (``gc.freeze``), and let
    the collector run less often (:data:`GC_THRESHOLDS`).

    The worker allocates a few dozen objects per event that die young (by reference counting:
    they form no cycles), so with Python's thresholds the collector ran every ~20 events, and each
    older-generation pass walked every long-lived object. Frozen, the start-up heap is no longer
    walked: in-process, with warm models, the collector had taken about a quarter of the
    pipeline's CPU per event. The thresholds: a young collection every 50,000 net allocations
    instead of 700 cut the collector's time in a worker's backlog from 0.60-0.81 to 0.14-0.19 s per
    40,000 events, its longest pause 23-36 -> 18-19 ms (docs/BENCHMARKS.md). A full collection
    still runs, no more often than every 200 young ones, so cyclic garbage is still reclaimed.
    Reference counting frees everything as before; only cycles among the frozen objects would now
    stay, and the collection just before the freeze clears those."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("garbage collector: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), GC_THRESHOLDS)


def _torch_threads(n: int) -> None:
    """torch's CPU parallelism (process-wide): a small GRU gains little from more threads, and
    every thread competes with the event loop and the broker client for the cores."""
    import torch

    torch.set_num_threads(n)
