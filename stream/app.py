"""The Faust application: settings wiring, topics, the user-state table and the agents.

Built by :func:`create_app` from a :class:`~stream.settings.Settings` and a bootstrap address
(a local Kafka broker or ``KAFKA_BOOTSTRAP_SERVERS``), so tests can build as many as they like.

Flow (each arrow is a batched agent, see stream/agents/):

    shop.events --ingest--> <app>-events-by-user --process--> signals.* (+ user-state table)
          \\--> shop.events.dlq <------------------------/ (duplicates, late events)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faust
from prometheus_client import CollectorRegistry

from stream import local_state, patches
from stream.broker import topic_specs
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.agents.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Topics:
    events: faust.TopicT
    by_user: faust.TopicT
    dlq: faust.TopicT
    signals: dict[str, faust.TopicT]


def _credentials(settings: Settings) -> object | None:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if proto == "SSL":
            return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context,
    )


class App(faust.App):
    """faust.App, with the runtime's own steps at the start and the end of a stop."""

    runtime: Runtime | None = None

    async def on_start(self) -> None:
        if self.runtime is not None:
            await self.runtime.check_local_store()
            await self.runtime.outputs.start()
        await super().on_start()

    async def on_stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.before_stop()
        await super().on_stop()
        if self.runtime is not None:
            await self.runtime.after_stop()


def create_app(settings: Settings, bootstrap: str, *, registry: CollectorRegistry | None = None) -> App:
    """A ready-to-run Faust app with its topics, table, agents and web views registered."""
    patches.install()
    specs = topic_specs(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=[f"kafka://{hp}" for hp in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir / "faust"),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url,  # where other workers forward lookups (stream/api.py)
        autodiscover=False,
        topic_partitions=settings.events_partitions,
        topic_replication_factor=settings.replication_factor,
        # Our own topics are created explicitly with their partition counts (stream.broker.create_topics).
        topic_allow_declare=True,
        # Batching: let the producer coalesce sends and the consumer fetch in big chunks.
        producer_linger=0.005,
        producer_max_batch_size=262_144,
        producer_max_request_size=settings.max_record_bytes,
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(4096, 4 * settings.batch_size),
        broker_commit_every=10_000,
        broker_commit_interval=settings.commit_interval_ms / 1000,
        # Faster group joins than the defaults; still tolerant of short GC pauses.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        table_standby_replicas=settings.standby_replicas,
        logging_config=None,
        # exactly_once: Faust's consumers read committed records only and its table recovery
        # steps over transaction markers; the transactions themselves are the runtime's own
        # (stream/agents/outputs.py), since Faust's assume co-partitioned outputs.
        processing_guarantee=settings.processing_guarantee,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    topics = Topics(
        events=app.topic(settings.events_topic, partitions=specs[settings.events_topic], **raw),
        by_user=app.topic(settings.repartition_topic, partitions=specs[settings.repartition_topic], **raw),
        dlq=app.topic(settings.dlq_topic, partitions=specs[settings.dlq_topic], **raw),
        signals={
            task: app.topic(name, partitions=settings.signal_partitions, **raw)
            for task, name in settings.signal_topics().items()
        },
    )
    table = app.Table(
        "user-state",
        default=None,
        partitions=settings.events_partitions,
        # Keys are pseudonyms, values our own compact binary records (stream.logic.pipeline.UserRecord);
        # bytes types make Faust use the raw codec in the changelog and in the RocksDB store alike.
        key_type=bytes,
        value_type=bytes,
    )
    # The online models of each input partition, checkpointed here so they move with the
    # partition on a rebalance and survive restarts (docs/ONLINE.md). Key: partition number.
    models = app.Table(
        "online-models",
        default=None,
        partitions=settings.events_partitions,
        key_type=bytes,
        value_type=bytes,
    )
    from stream.agents.runtime import Runtime

    runtime = Runtime(app, settings, topics, table, models, bootstrap=bootstrap, registry=registry)
    if runtime.tabledir is not None:
        reason = local_state.claim(runtime.tabledir)
        if reason:
            log.warning("local table store discarded (%s): rebuilding it from the changelog", reason)
            runtime.metrics.count_state_rebuild(reason)
    runtime.register()
    app.runtime = runtime
    return app
