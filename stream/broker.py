"""The embedded Kafka-protocol broker, and topic creation.

The choice of broker lives here and nowhere else. We embed **noida-db** (MIT, a single binary
shipped inside the ``noida-db`` package on PyPI) and not Tansu, because on these machines noida-db
returns correct end offsets (Faust changelog recovery and consumer lag depend on them), supports
idempotent and transactional producers, and persists to disk across restarts; Tansu's
ListOffsets(latest) is wrong and it lost a table update on failover (see ../shared/PLATFORM.md).
noida-db's quirks: auto-created topics get one partition, so :func:`create_topics` creates
every topic explicitly; and it answers a fetch at once even when there is nothing to read (it does
not hold it for ``fetch.max.wait.ms``), so an idle consumer spins, ~3,600 fetch round trips a
second, costing most of a core in the client and more in the broker; a trickling partition
likewise costs one round trip per few records.
:func:`install_fetch_min_interval` makes every aiokafka consumer in the process leave at least a
few milliseconds between two fetches to one broker, as a conforming broker would have held them.

``KAFKA_BOOTSTRAP_SERVERS`` bypasses all of this and points every command at an external Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from stream.procs import stop_process_group
from stream.settings import Settings

log = logging.getLogger(__name__)

BROKER_NAME = "noida-db"

_min_interval_s = 0.0  # read by the wrapper below on every fetch; set by install_fetch_min_interval


def install_fetch_min_interval(ms: int) -> None:
    """Leave at least ``ms`` between the start of one fetch request and the next to the same
    broker, in every aiokafka consumer of this process (Faust's included): the fetch task waits out
    the rest of the interval after the response. So a broker is asked at most ~1000/ms times a
    second per consumer, whether its partitions are idle (empty answers) or trickling (a few
    records per answer); a backlog still moves at up to the fetch size per partition per request.
    A broker that holds fetches for ``fetch.max.wait.ms`` and ``fetch.min.bytes``, as Kafka does,
    mostly answers later than that anyway. A record waits at most ``ms`` longer to be fetched.

    aiokafka wakes the readers waiting for records only when the fetch task returns, and the
    interval is waited out inside that task; so the wrapper wakes them itself as soon as a fetch
    brings records. Otherwise every fetched record would also sit out the rest of the interval:
    one hop through the embedded broker (5 ms linger, 10 ms interval, 100 records/s) took 22 ms
    at p50 that way and takes 11 ms now (``python -m benchmarks.hop_latency``, docs/BENCHMARKS.md).
    Idempotent; ``0`` turns it off."""
    global _min_interval_s
    from aiokafka.consumer.fetcher import Fetcher

    _min_interval_s = ms / 1000
    if getattr(Fetcher._proc_fetch_request, "_intentstream_min_interval", False):
        return
    fetch = Fetcher._proc_fetch_request

    async def proc_fetch_request(self, assignment, node_id, request):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        got_records = await fetch(self, assignment, node_id, request)
        rest = _min_interval_s - (time.monotonic() - t0)
        if rest > 0:
            if got_records:  # hand them over now; aiokafka's own wake-up after the wait is a no-op
                for waiter in list(getattr(self, "_fetch_waiters", ())):
                    if not waiter.done():
                        waiter.set_result(None)
            try:
                await asyncio.sleep(rest)
            except asyncio.CancelledError:
                # As aiokafka's own fetch does: a cancelled fetch (consumer closing, partitions
                # revoked) ends quietly. Raising here made ``consumer.stop()`` raise.
                return got_records
        return got_records

    proc_fetch_request._intentstream_min_interval = True  # type: ignore[attr-defined]
    Fetcher._proc_fetch_request = proc_fetch_request


@contextlib.contextmanager
def fetch_min_interval(ms: int) -> Iterator[None]:
    """:func:`install_fetch_min_interval` for a block; the interval before it is restored after."""
    before = round(_min_interval_s * 1000)
    install_fetch_min_interval(ms)
    try:
        yield
    finally:
        install_fetch_min_interval(before)


def install_uncommitted_seek_to_beginning() -> None:
    """Make aiokafka's ``seek_to_committed`` rewind partitions the group has not committed yet.

    Faust drops records it has fetched but cannot hand to a stream at that moment (a partition
    paused for table recovery, a rebalance under way: ``Consumer.getmany``), and relies on seeking
    every partition back to its committed offset when the rebalance or recovery completes. But
    aiokafka's ``seek_to_committed`` seeks only where the committed offset is above 0: a partition
    a new group has not committed yet keeps its fetch position, after the dropped records, and they
    are never read. The benchmark caught it: one event in 20,000 missing from the internal topic
    in about one run in four, an early one, with no error and consumer lag 0.

    With this patch such partitions (no committed offset, or 0) go back to their beginning when
    the consumer's reset policy is ``earliest`` (Faust's default, and ours): what was fetched and
    dropped is read again; what was already handled comes again too, and is absorbed by the
    state's de-duplication, as after any at-least-once replay. Table changelogs (``*-changelog``)
    are left alone: the group never commits them, Faust positions them itself. Idempotent."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import OffsetResetStrategy

    if getattr(AIOKafkaConsumer.seek_to_committed, "_intentstream_rewind", False):
        return
    seek = AIOKafkaConsumer.seek_to_committed

    async def seek_to_committed(self, *partitions):  # type: ignore[no-untyped-def]
        committed = await seek(self, *partitions)
        # Table changelogs are not consumed by the group (Faust keeps their offsets itself).
        unseeked = [tp for tp, offset in committed.items() if (not offset or offset <= 0) and not tp.topic.endswith("-changelog")]
        if unseeked and self._fetcher._default_reset_strategy == OffsetResetStrategy.EARLIEST:
            await self.seek_to_beginning(*unseeked)
        return committed

    seek_to_committed._intentstream_rewind = True  # type: ignore[attr-defined]
    seek_to_committed.original = seek  # type: ignore[attr-defined]  # for tests: aiokafka's own
    AIOKafkaConsumer.seek_to_committed = seek_to_committed


def broker_binary() -> Path:
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise RuntimeError(f"embedded broker binary not found at {path}: reinstall with `pip install noida-db`")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"broker did not open {host}:{port} within {timeout:.0f} s")


@dataclass
class EmbeddedBroker:
    """A noida-db process serving Kafka on 127.0.0.1:``port``, data kept in ``data_dir``.

    Started in its own process group so that stopping it (or our own exit) leaves nothing behind.
    """

    data_dir: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = [
            str(broker_binary()), "start", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
            "--only", "kafka", "--kafka-port", str(self.port),
        ]  # fmt: skip
        logfile = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        logfile.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        log.info("embedded %s broker on %s (data in %s)", BROKER_NAME, self.bootstrap, self.data_dir)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def kafka_for(settings: Settings, *, port: int = 0) -> Iterator[str]:
    """Yield a bootstrap address: the configured external Kafka, or a freshly started embedded broker."""
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers
        return
    with EmbeddedBroker(settings.data_dir / "broker", port=port) as broker:
        yield broker.bootstrap


def topic_specs(settings: Settings) -> dict[str, int]:
    """Every topic the application reads or writes, with its partition count."""
    specs = {
        settings.events_topic: settings.events_partitions,
        settings.repartition_topic: settings.events_partitions,
        settings.dlq_topic: settings.events_partitions,
    }
    for topic in settings.signal_topics().values():
        specs[topic] = settings.signal_partitions
    return specs


def client_config(settings: Settings, bootstrap: str) -> dict[str, object]:
    """aiokafka client keyword arguments, including TLS/SASL when configured."""
    cfg: dict[str, object] = {"bootstrap_servers": bootstrap, "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        cfg["ssl_context"] = create_ssl_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        cfg["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return cfg


async def create_topics(settings: Settings, bootstrap: str, timeout: float = 30.0) -> dict[str, int]:
    """Create every topic with its partition count; existing topics are left as they are.

    Returns the partition count of each topic as the broker reports it afterwards, and fails if an
    existing topic has fewer partitions than configured (co-partitioning would break).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(**client_config(settings, bootstrap), request_timeout_ms=int(timeout * 1000))
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.start()
            break
        except Exception:  # the broker may still be opening its listener
            if time.monotonic() > deadline:
                raise
            await _sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=settings.replication_factor)
            for name, n in specs.items()
            if name not in existing
        ]
        if new:
            await admin.create_topics(new)
        described = await admin.describe_topics(list(specs))
        counts = {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
    for name, n in specs.items():
        if counts.get(name, 0) < n:
            raise RuntimeError(f"topic {name} has {counts.get(name, 0)} partitions, {n} configured")
    return counts


async def create_plain_topics(settings: Settings, bootstrap: str, names: list[str], partitions: int,
                              configs: dict[str, str] | None = None) -> None:  # fmt: skip
    """Create topics ``names`` with ``partitions`` each and the topic ``configs`` given (the
    broker's defaults otherwise)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_config(settings, bootstrap))
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(n, num_partitions=partitions, replication_factor=settings.replication_factor, topic_configs=configs or {})
            for n in names
        ])  # fmt: skip
    finally:
        await admin.close()


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def trim_topics(
    settings: Settings,
    bootstrap: str,
    *,
    keep: int,
    groups: Collection[str] | None = None,
    consumed: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> dict[str, int]:
    """Delete all but the last ``keep`` records of each partition of every topic on the broker
    (DeleteRecords), for a broker that keeps everything: noida-db has no retention and rewrites all
    it holds every few seconds (docs/BENCHMARKS.md), so a long demo would otherwise grow it without
    bound. A partition of a topic in ``consumed`` is never trimmed past the lowest offset one of
    ``groups`` has committed on it, nor at all while none has (by default the application's
    groups and the input and internal topics they read). Topics in ``skip``, the broker's own
    (``__*``) and compacted ones (DeleteRecords is refused there, as by Kafka) are left whole.
    Returns the records deleted per topic. Never point this at a Kafka you care about: it is the
    retention the embedded broker lacks, not a substitute for yours."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete
    from aiokafka.errors import PolicyViolationError

    if groups is None:
        groups = {settings.app_id, settings.ingest_group}
    if consumed is None:
        consumed = (settings.events_topic, settings.repartition_topic)
    admin = AIOKafkaAdminClient(**client_config(settings, bootstrap))
    consumer = AIOKafkaConsumer(**client_config(settings, bootstrap), group_id=None, enable_auto_commit=False)
    deleted: dict[str, int] = {}
    await admin.start()
    try:
        await consumer.start()
        names = [t for t in await admin.list_topics() if not t.startswith("__") and t not in skip]
        await consumer.topics()  # fills the consumer's metadata for partitions_for_topic
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return deleted
        committed: dict[TopicPartition, int] = {}
        for group in groups:
            for tp, om in (await admin.list_consumer_group_offsets(group)).items():
                if tp.topic in consumed and om.offset >= 0:
                    committed[tp] = min(om.offset, committed.get(tp, om.offset))
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        todo: dict[str, dict[TopicPartition, RecordsToDelete]] = {}
        for tp in tps:
            upto = end[tp] - keep
            if tp.topic in consumed:
                upto = min(upto, committed.get(tp, -1))
            if upto > begin[tp]:
                todo.setdefault(tp.topic, {})[tp] = RecordsToDelete(before_offset=upto)
        for topic, parts in todo.items():  # one request per topic: a refusal stays that topic's
            try:
                await admin.delete_records(parts)
            except PolicyViolationError:  # a compacted topic (Kafka refuses those too): left whole
                log.debug("not trimming compacted topic %s", topic)
                continue
            deleted[topic] = sum(r.before_offset - begin[tp] for tp, r in parts.items())
        return deleted
    finally:
        await consumer.stop()
        await admin.close()


@dataclass
class TrimStats:
    """What :func:`trim_periodically` has done so far."""

    keep: int  # records kept per partition
    rounds: int = 0
    failed: int = 0
    deleted: int = 0
    seconds: float = 0.0  # spent in the rounds that succeeded


async def trim_periodically(
    settings: Settings,
    bootstrap: str,
    stats: TrimStats,
    *,
    every_s: float,
    stop: asyncio.Event,
    skip: Callable[[], Collection[str]] = tuple,
) -> None:
    """:func:`trim_topics` (the application's groups, ``stats.keep`` records, the topics ``skip()``
    names left whole) every ``every_s`` until ``stop`` is set, counted in ``stats``. A failed round
    is logged and counted, never raised: a busy broker must not end what runs beside it."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        t = time.perf_counter()
        try:
            deleted = await trim_topics(settings, bootstrap, keep=stats.keep, skip=skip())
        except Exception as exc:  # noqa: BLE001 - logged and counted; the next round tries again
            log.warning("trimming the broker failed (tried again in %.0f s): %r", every_s, exc)
            stats.failed += 1
            continue
        stats.rounds += 1
        stats.deleted += sum(deleted.values())
        stats.seconds += time.perf_counter() - t
