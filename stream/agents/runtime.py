"""The thin Faust shell around the pipeline step: one worker's stages, wired to Faust.

* **ingest** (:mod:`stream.agents.ingest`) reads ``shop.events``, validates and pseudonymises each
  record, dead-letters the bad ones with their reason and forwards the good ones to the internal
  topic, partitioned by the pseudonymous user and packed (:mod:`stream.logic.packing`), so that the
  second hop pays Faust's per-record cost once per pack.
* **process** reads that topic and calls :meth:`~stream.agents.process.Processor.process_items`: load each user's record
  once per batch, run :meth:`~stream.logic.pipeline.Pipeline.step` (the whole algorithm, the
  sequence model of :mod:`stream.agents.serving` included), send the signals, write each changed
  record back once.
* **local processing** (:mod:`stream.agents.router`): an event whose internal partition this
  worker owns is processed by the raw ingest itself instead of taking the detour through the
  internal topic; it still goes there as a ``DONE_KEY`` pack, so the topic stays the history.

At least once (the default), a batch's signals are acknowledged before its state is written, and
offsets are committed only after the producer is flushed: a crash replays the uncommitted tail,
which re-emits signals with the same ids (consumers drop repeats) and meets state that either
holds the events (duplicates, dead-lettered as such) or does not (applied again). Exactly once,
everything a batch writes and the offsets it follows from commit in one transaction
(:mod:`stream.agents.outputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import CollectorRegistry

from models.archive import EventArchive
from models.features.state import StateConfig
from stream import lag, local_state
from stream.agents.gaps import GapFiller
from stream.agents.ingest import Ingest
from stream.agents.outputs import FaustOutputs, TransactionalOutputs
from stream.agents.process import Processor
from stream.agents.records import raw_message
from stream.agents.router import LocalRouter
from stream.agents.serving import ModelServer
from stream.agents.upkeep import Archiver, OnlineModels, freeze_heap, torch_threads
from stream.health import Health, register_views
from stream.logic.pipeline import Pipeline, PipelineConfig
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.signals import Task
from stream.metrics import Metrics

if TYPE_CHECKING:
    from stream.app import Topics
    from stream.settings import Settings

log = logging.getLogger(__name__)


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
    """One worker: the pipeline and the stages around it, registered on a Faust app."""

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
        self.app, self.settings, self.topics, self.table = app, settings, topics, table
        self.bootstrap = bootstrap
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.health = Health(metrics=self.metrics)
        self.health.add_probe("recovery", lambda: "table recovery in progress" if app.in_recovery else None)
        self.server = ModelServer(settings, self.metrics, self.health) if settings.sequence_serving else None
        self.health.set_condition("model_loaded", self.server is None)
        torch_threads(settings.sequence_threads)
        self.outputs = self._outputs()
        self.online = OnlineModels(settings, models, self.outputs, self.metrics)
        self.pipeline = Pipeline(
            pipeline_config(settings), RuleScorer(settings.churn_after_ms),
            learners=self.online.restore if settings.online_learning else None,
        )  # fmt: skip
        self.online.pipeline = self.pipeline
        self.archiver = Archiver(EventArchive(settings.archive_root) if settings.archive_root else None,
                                 settings.archive_flush_s)  # fmt: skip
        self._processing = asyncio.Lock()  # one batch at a time, whichever stage started it
        self.router = LocalRouter(
            app, settings, topics, self.metrics, self.outputs, self._processing, bootstrap=bootstrap,
            enabled=settings.local_processing and settings.ingest == "raw" and bootstrap is not None,
            process=None,  # type: ignore[arg-type]  # the processor's, set below
        )  # fmt: skip
        self.ingest = Ingest(
            app, settings, self.metrics, self.outputs, self.router, self._processing, bootstrap=bootstrap
        )
        self.gaps = GapFiller(topics.by_user.get_topic_name(), self.router.committed, self._gap_reader)
        self.processor = Processor(
            settings, topics, table, self.metrics, self.pipeline, outputs=self.outputs, lock=self._processing,
            router=self.router, ingest=self.ingest, gaps=self.gaps, online=self.online, archiver=self.archiver,
            server=self.server,
        )  # fmt: skip
        self.router.process = self.processor.process_items
        self._ingest_task: asyncio.Task | None = None
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
            persisted = {
                t: local_state.persisted_offsets(self.tabledir, t) for t in self.settings.changelog_topics()
            }
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
                await self.ingest.run()

        else:

            @app.agent(self.topics.events, name="ingest")
            async def ingest(stream: faust.StreamT) -> None:
                async for batch in stream.take_events(s.batch_size, within=within):
                    self.ingest.guarded([raw_message(fe.message) for fe in batch])

        @app.agent(self.topics.by_user, name="process")
        async def process(stream: faust.StreamT) -> None:
            async for batch in stream.take_events(s.batch_size, within=within):
                await self.processor.process_packs(batch)

        if self.server is not None:
            server = self.server

            @app.timer(interval=s.model_poll_s, on_leader=False)
            async def poll_models() -> None:
                await server.poll()

            @app.task
            async def first_model_poll() -> None:
                await server.poll()

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
            self.router.assigned = mine
            self.pipeline.forget_partitions(mine)
            self.processor.index_stale = True
            self.gaps.reset()

        # Consumer lag, rebalance count and assigned partitions (stream.lag keeps them current).
        # Faust's consumer reads the internal topic, and shop.events unless the raw ingest does
        # (which publishes its own lag in refresh_gauges).
        lag.install(
            app,
            self.metrics,
            topics={s.repartition_topic} if raw_ingest else {s.events_topic, s.repartition_topic},
        )

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
                self.metrics.set_pending_labels(Task.of_head(task), n)
            self.online.publish_quality()
            await self.ingest.refresh_lag()
            self.archiver.add([])  # flush a quiet stream's archive buffer too

        register_views(app, self.metrics, self.health)
        from stream.api import register_api

        self.api = register_api(app, self)

    def _describe(self) -> str:
        """What an operator checks first: where the worker reads, answers and what it serves."""
        s, server = self.settings, self.server
        active = server.active if server is not None else None
        sequence = active.name if active is not None else ("none yet" if server is not None else "off")
        return (f"bootstrap servers {self.bootstrap}, web port {s.web_port}, {s.processing_guarantee}, "
                f"sequence model {sequence}, online models {'on' if s.online_learning else 'off'} "
                f"(rule until warm), ingest {s.ingest}")  # fmt: skip

    # ------------------------------------------------------------------ stopping
    async def before_stop(self) -> None:
        """First step of a stop: end the raw ingest (its last commit follows a producer flush), so
        that nothing writes to a table once Faust stops them."""
        with contextlib.suppress(Exception):
            await self.api.feed.close()
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
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.router.close(), timeout=5.0)
        if clean and self.tabledir is not None:
            local_state.mark_clean(self.tabledir)
