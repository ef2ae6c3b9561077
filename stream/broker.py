"""The local Apache Kafka broker, and topic creation.

Every command that needs a broker and finds no ``KAFKA_BOOTSTRAP_SERVERS`` starts a single-node
Apache Kafka here: KRaft mode, broker and controller in one JVM, listening on 127.0.0.1 only, its
data under ``INTENTSTREAM_DATA_DIR``. Its jars come from Maven Central by name
(``stream/kafka_pom.xml``), fetched once by :func:`install_kafka` (``make kafka``) into
``INTENTSTREAM_KAFKA_HOME``; nothing else is downloaded. Heap and thread pools are sized for a
small shared machine (two cores beside the workers).

Every way this can fail (no Java or an old one, no Maven or no network, a port in use, a data
directory written by another Kafka or cluster, a broker that exits) raises :class:`BrokerError`,
whose message is one line naming the cause and the fix.

``KAFKA_BOOTSTRAP_SERVERS`` bypasses all of this and points every command at an external Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
JAVA_MIN = 17  # Kafka 4 brokers need Java 17
MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
STAMP = "intentstream-broker.json"  # which Kafka version and cluster id wrote a data directory
READY_LINE = "Kafka Server started"  # logged by kafka.server.KafkaRaftServer once it serves requests


class BrokerError(RuntimeError):
    """The local broker cannot be installed or started; the message names the cause and the fix."""


def default_kafka_home() -> Path:
    return Path.home() / ".cache" / "intentstream" / f"kafka-{KAFKA_VERSION}"


def _jar(home: Path) -> Path:
    return home / "libs" / f"kafka_2.13-{KAFKA_VERSION}.jar"


def java_command(java_home: Path | None = None) -> str:
    """The ``java`` to run Kafka with (``JAVA_HOME``'s, else the one on PATH), checked to be 17+."""
    java = str(java_home / "bin" / "java") if java_home else shutil.which("java")
    fix = "install OpenJDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS"
    if not java or not Path(java).is_file():
        raise BrokerError(f"Java not found ({'JAVA_HOME=' + str(java_home) if java_home else 'no java on PATH'}): {fix}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"{java} -version failed ({exc}): {fix}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise BrokerError(f"cannot tell the version of {java}: {fix}")
    major = int(m.group(2)) if m.group(1) == "1" else int(m.group(1))  # "1.8.0" is Java 8
    if major < JAVA_MIN:
        raise BrokerError(f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {JAVA_MIN} or newer: {fix}")
    return java


def install_kafka(home: Path | None = None, *, java_home: Path | None = None, timeout: float = 900.0) -> Path:
    """Fetch Kafka's broker jars from Maven Central into ``home``/libs (once; a second call
    returns at once). Maven resolves them from ``stream/kafka_pom.xml``; the copy is made in a
    scratch directory and moved into place, so an interrupted install leaves nothing half done."""
    home = home or default_kafka_home()
    if _jar(home).is_file():
        return home / "libs"
    java_command(java_home)  # Maven needs it too; say so before Maven does, less clearly
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            f"Maven (mvn) not found: it fetches Kafka {KAFKA_VERSION} from Maven Central "
            "(Debian: apt-get install maven), or set KAFKA_BOOTSTRAP_SERVERS to an existing Kafka"
        )
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=".install-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(files("stream").joinpath("kafka_pom.xml").read_text().replace("@KAFKA_VERSION@", KAFKA_VERSION))
        cmd = [mvn, "-B", "-q", "-f", str(pom), f"{MAVEN_PLUGIN}:copy-dependencies",
               f"-DoutputDirectory={tmp}/libs", "-DincludeScope=runtime"]  # fmt: skip
        log.info("fetching Kafka %s from Maven Central into %s", KAFKA_VERSION, home)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"Maven did not fetch Kafka {KAFKA_VERSION} within {timeout:.0f} s: check that "
                              "Maven Central is reachable, then run `make kafka` again") from None  # fmt: skip
        if out.returncode != 0 or not (Path(tmp) / "libs" / _jar(home).name).is_file():
            errors = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "ERROR" in ln] or ["no jar"]
            raise BrokerError(
                f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {out.returncode}: {errors[0][:300]}): check "
                "that Maven Central is reachable, then run `make kafka` again"
            )
        shutil.rmtree(home / "libs", ignore_errors=True)
        (Path(tmp) / "libs").rename(home / "libs")
    return home / "libs"


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them: 16 bytes, URL-safe base64 without padding, never
    starting with '-' (the storage tool's argument parser would read it as an option).

    >>> cid = new_cluster_id()
    >>> len(cid), cid[0] != "-"
    (22, True)
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (the closed connections of a broker that
    just stopped do not count: Kafka binds with SO_REUSEADDR, and so does this check)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing opened {host}:{port} within {timeout:.0f} s")


# Sized for a 2-core machine shared with the workers: Kafka's defaults (8 I/O threads, 10
# background threads, a 128 MiB cleaner buffer, 50 offsets partitions) are for a dedicated server.
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.retention.bytes=1073741824
"""

# Kafka's own lines at WARN and above, plus the one that says it is serving.
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


@dataclass
class EmbeddedBroker:
    """A single-node Apache Kafka (KRaft) on 127.0.0.1:``port``, its data in ``data_dir``.

    The JVM runs in its own process group and gets SIGTERM if the process that started it dies,
    however it dies (``stream.procs.die_with_parent``), so nothing is left running.
    ``port`` 0 picks a free one; a broker restarted on the same ``data_dir`` keeps its port
    unless given another. Start it from the main thread: the kernel ties that signal to the
    thread that started the child.
    """

    data_dir: Path
    port: int = 0
    kafka_home: Path = field(default_factory=default_kafka_home)
    heap_mb: int = 1024
    java_home: Path | None = None
    process: subprocess.Popen | None = None
    start_s: float | None = None  # seconds from launch to serving, of the last start

    @classmethod
    def for_settings(cls, settings: Settings, data_dir: Path | None = None, port: int = 0) -> EmbeddedBroker:
        return cls(data_dir or settings.data_dir / "broker", port=port, kafka_home=settings.kafka_home or default_kafka_home(),
                   heap_mb=settings.broker_heap_mb, java_home=settings.java_home)  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def start(self, timeout: float = 90.0) -> EmbeddedBroker:
        if self.process is not None and self.process.poll() is None:
            return self
        if not _jar(self.kafka_home).is_file():
            raise BrokerError(f"Kafka {KAFKA_VERSION} is not installed in {self.kafka_home}: run `make kafka` "
                              "(or `intentstream broker install`), or set KAFKA_BOOTSTRAP_SERVERS")  # fmt: skip
        java = java_command(self.java_home)
        if self.port and port_in_use(self.port):
            raise BrokerError(f"127.0.0.1:{self.port} is already in use (another broker?): stop what listens there "
                              f"(`ss -ltnp 'sport = :{self.port}'` names it) or choose another port")  # fmt: skip
        stamp = self._prepare_dir()
        self.port = self.port or free_port()
        cport = stamp["controller_port"]
        if port_in_use(cport):
            raise BrokerError(f"the controller port 127.0.0.1:{cport} of {self.data_dir} is in use: is a broker already "
                              f"running on this data directory? Stop it, or use another INTENTSTREAM_DATA_DIR")  # fmt: skip
        props = self._write_config(cport)
        classpath = f"{self.kafka_home / 'libs'}/*"
        if not stamp.get("formatted"):
            self._format(java, classpath, props, stamp)
        cmd = [java, *self._jvm_options(), "-cp", classpath, "kafka.Kafka", str(props)]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        t0 = time.monotonic()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
        try:
            self._wait_ready(offset, t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t0
        log.info("Kafka %s on %s (data in %s, ready in %.1f s)", KAFKA_VERSION, self.bootstrap, self.data_dir, self.start_s)
        return self

    def _jvm_options(self) -> list[str]:
        return [
            f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:ParallelGCThreads=2", "-XX:ConcGCThreads=1", "-XX:CICompilerCount=2", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
        ]  # fmt: skip

    def _prepare_dir(self) -> dict:
        """Check that ``data_dir`` is empty or this project's Kafka data of this version; return its stamp."""
        d = self.data_dir
        reset = f"remove it (rm -rf {d}; its topics are lost) or point INTENTSTREAM_DATA_DIR elsewhere"
        stamp_path = d / STAMP
        if stamp_path.is_file():
            try:
                stamp = json.loads(stamp_path.read_text())
                version, cluster = stamp["kafka_version"], stamp["cluster_id"]
            except (ValueError, KeyError, TypeError):
                raise BrokerError(f"{stamp_path} is unreadable: {reset}") from None
            if version != KAFKA_VERSION:
                raise BrokerError(f"{d} was written by Kafka {version}, this is Kafka {KAFKA_VERSION}: {reset}")
            meta = d / "kraft" / "meta.properties"
            if stamp.get("formatted") and meta.is_file():
                found = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)
                if not found or found.group(1) != cluster:
                    raise BrokerError(f"{d} holds data of another Kafka cluster "
                                      f"({found.group(1) if found else 'none'}, expected {cluster}): {reset}")  # fmt: skip
            elif stamp.get("formatted"):
                raise BrokerError(f"{meta} is missing (the log directory was removed or damaged): {reset}")
            return stamp
        if d.exists() and any(p.name != "broker.log" for p in d.iterdir()):
            raise BrokerError(f"{d} holds files that are not this project's Kafka data (an older embedded broker's?): {reset}")
        d.mkdir(parents=True, exist_ok=True)
        stamp = {"kafka_version": KAFKA_VERSION, "cluster_id": new_cluster_id(), "controller_port": free_port(),
                 "formatted": False}  # fmt: skip
        stamp_path.write_text(json.dumps(stamp))
        return stamp

    def _write_config(self, controller_port: int) -> Path:
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        props = self.data_dir / "server.properties"
        props.write_text(SERVER_PROPERTIES.format(port=self.port, controller_port=controller_port,
                                                  log_dir=self.data_dir / "kraft"))  # fmt: skip
        return props

    def _format(self, java: str, classpath: str, props: Path, stamp: dict) -> None:
        cmd = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}", "-cp", classpath,
               "kafka.tools.StorageTool", "format", "-t", stamp["cluster_id"], "-c", str(props)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()] or ["no output"]
            raise BrokerError(f"formatting {self.data_dir / 'kraft'} failed: {lines[-1][:300]}")
        stamp["formatted"] = True
        (self.data_dir / STAMP).write_text(json.dumps(stamp))

    def _wait_ready(self, offset: int, deadline: float) -> None:
        assert self.process is not None
        while True:
            text = self._log_since(offset)
            if READY_LINE in text:
                return
            code = self.process.poll()
            if code is not None:
                raise BrokerError(f"Kafka exited with code {code} while starting: {_first_error(text)} (log: {self.log_path})")
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka did not start within the time allowed: {_first_error(text)} (log: {self.log_path})")
            time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
        return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Kafka shuts down cleanly, flushing its logs), SIGKILL after ``timeout``."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (acknowledged records are in the OS's page cache and survive)."""
        import signal

        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, 5, signal.SIGKILL)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _first_error(text: str) -> str:
    """The first line of the broker's output that says what went wrong."""
    for pattern in (r"Exception[^\n]*", r"ERROR[^\n]*", r"Error[^\n]*"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip()[:300]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


@contextlib.contextmanager
def kafka_for(settings: Settings, *, port: int = 0) -> Iterator[str]:
    """Yield a bootstrap address: the configured external Kafka, or a freshly started local broker."""
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers
        return
    with EmbeddedBroker.for_settings(settings, port=port) as broker:
        yield broker.bootstrap


async def topic_partitions(consumer: object, topic: str) -> set[int]:
    """The partition ids of ``topic`` (empty if it does not exist), from a fresh metadata request.

    ``AIOKafkaConsumer.topics()`` makes the same all-topics request but keeps the answer apart from
    the consumer's own metadata, so ``partitions_for_topic`` afterwards knows only the topics the
    consumer already tracks: nothing, for a consumer that has not been assigned any yet."""
    cluster = await consumer._client.fetch_all_metadata()  # type: ignore[attr-defined]
    return set(cluster.partitions_for_topic(topic) or ())


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

    The tables' changelogs too (compacted, as Faust would create them): the exactly-once
    producer writes to them from its start, before Faust has declared them.

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
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        compacted = set(settings.changelog_topics().values())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=settings.replication_factor,
                     topic_configs={"cleanup.policy": "compact"} if name in compacted else {})
            for name, n in {**specs, **dict.fromkeys(compacted, settings.events_partitions)}.items()
            if name not in existing
        ]  # fmt: skip
        if new:
            await admin.create_topics(new)
        created = {t.name for t in new}
        while True:  # a new topic's partitions show in the metadata a moment after it is created
            described = await admin.describe_topics(list(specs))
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            if all(counts.get(t, 0) for t in created) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
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


