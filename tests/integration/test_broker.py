"""The local Apache Kafka broker (stream/broker.py): it keeps what it acknowledged across a clean
stop and a SIGKILL, leaves nothing running when the command that started it dies, and answers
each way it can fail with one line that names the cause and the fix, within seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from stream.broker import KAFKA_VERSION, STAMP, EmbeddedBroker, free_port
from stream.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    full.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The failure is exit code 2 and one line on stderr that contains every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = lines[-1]
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def _produce(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for i in range(start, start + n):
        p.produce(topic, key=b"k%d" % (i % 16), value=b"v%d" % i)
    assert p.flush(30) == 0


def _count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _create(bootstrap: str, topic: str, partitions: int = 4) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def _jvms_under(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(path) in " ".join(p.info["cmdline"] or ()) and "kafka.Kafka" in " ".join(p.info["cmdline"] or ()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_acknowledged_records_survive_a_clean_stop_and_a_sigkill(tmp_path):
    broker = EmbeddedBroker.for_settings(Settings(), tmp_path / "broker", port=free_port())
    with broker:
        assert broker.start_s is not None and broker.start_s < 60
        _create(broker.bootstrap, "durable")
        _produce(broker.bootstrap, "durable", 20_000)
        broker.stop()  # SIGTERM: controlled shutdown
        broker.start()
        assert _count(broker.bootstrap, "durable") == 20_000
        _produce(broker.bootstrap, "durable", 20_000, start=20_000)
        broker.kill()  # SIGKILL right after the last acknowledgement: the page cache holds it
        assert not _jvms_under(tmp_path / "broker")
        broker.start()
        assert _count(broker.bootstrap, "durable") == 40_000
    assert not _jvms_under(tmp_path / "broker"), "stop() leaves no JVM behind"


def test_killing_the_broker_command_leaves_no_broker_running(tmp_path):
    env = {"INTENTSTREAM_DATA_DIR": str(tmp_path)}
    full = {**os.environ, **env}
    full.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "broker"], env=full, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        bootstrap = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and bootstrap is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("KAFKA_BOOTSTRAP_SERVERS="):
                bootstrap = line.strip().split("=", 1)[1]
        assert bootstrap, "the broker command printed no address"
        assert _jvms_under(tmp_path)
        proc.kill()  # SIGKILL: no clean-up code of ours runs
        proc.wait(10)
        deadline = time.monotonic() + 30
        while _jvms_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _jvms_under(tmp_path), "the broker outlived the command that started it"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _jvms_under(tmp_path):
            p.kill()


def test_no_java_or_an_old_one_is_named_with_the_fix(tmp_path):
    none = tmp_path / "nojava"
    none.mkdir()
    t0 = time.monotonic()
    _one_clear_line(_cli(["broker"], {"JAVA_HOME": str(none), "INTENTSTREAM_DATA_DIR": str(tmp_path / "d")}),
                    "Java not found", "OpenJDK 17")  # fmt: skip
    old = tmp_path / "java11"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.21" 2023-10-17\' >&2\n')
    (old / "bin" / "java").chmod(0o755)
    _one_clear_line(_cli(["broker"], {"JAVA_HOME": str(old), "INTENTSTREAM_DATA_DIR": str(tmp_path / "d")}),
                    "Java 11", f"Kafka {KAFKA_VERSION} needs Java 17")  # fmt: skip
    assert time.monotonic() - t0 < 30


def test_kafka_not_installed_and_a_failed_maven_fetch_are_named_with_the_fix(tmp_path):
    home = tmp_path / "kafka-home"
    _one_clear_line(_cli(["broker"], {"INTENTSTREAM_KAFKA_HOME": str(home), "INTENTSTREAM_DATA_DIR": str(tmp_path / "d")}),
                    f"Kafka {KAFKA_VERSION} is not installed", "make kafka")  # fmt: skip

    # A PATH with Java but without Maven, then with a Maven that cannot reach the registry.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(shutil.which("java"))
    env = {"INTENTSTREAM_KAFKA_HOME": str(home), "PATH": str(bin_dir)}
    env_no_java_home = {**env, "JAVA_HOME": ""}
    _one_clear_line(_cli(["broker", "install"], env_no_java_home), "Maven (mvn) not found", "apt-get install maven")
    (bin_dir / "mvn").write_text("#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not transfer artifact "
                                 "org.apache.kafka:kafka_2.13: Network is unreachable'\nexit 1\n")  # fmt: skip
    (bin_dir / "mvn").chmod(0o755)
    line = _one_clear_line(_cli(["broker", "install"], env_no_java_home), "Maven could not fetch Kafka", "make kafka")
    assert "Network is unreachable" in line
    assert not (home / "libs").exists(), "a failed install leaves nothing half done"


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        _one_clear_line(_cli(["broker", "--port", str(port)], {"INTENTSTREAM_DATA_DIR": str(tmp_path)}),
                        f"127.0.0.1:{port} is already in use")  # fmt: skip
        assert time.monotonic() - t0 < 30


def test_a_data_dir_of_another_version_cluster_or_program_is_refused_and_left_as_it_is(tmp_path):
    env = {"INTENTSTREAM_DATA_DIR": str(tmp_path)}
    data = tmp_path / "broker"
    broker = EmbeddedBroker.for_settings(Settings(), data)
    with broker:
        _create(broker.bootstrap, "kept")
        _produce(broker.bootstrap, "kept", 100)
    stamp = json.loads((data / STAMP).read_text())
    meta = data / "kraft" / "meta.properties"
    original_meta = meta.read_text()

    (data / STAMP).write_text(json.dumps({**stamp, "kafka_version": "3.9.0"}))
    _one_clear_line(_cli(["broker"], env), "written by Kafka 3.9.0", f"this is Kafka {KAFKA_VERSION}", "rm -rf")
    (data / STAMP).write_text(json.dumps(stamp))

    meta.write_text(re.sub(r"cluster\.id=\S+", "cluster.id=AAAAAAAAAAAAAAAAAAAAAA", original_meta))
    _one_clear_line(_cli(["broker"], env), "another Kafka cluster", "AAAAAAAAAAAAAAAAAAAAAA")
    meta.write_text(original_meta)

    foreign = tmp_path / "other"
    (foreign / "broker").mkdir(parents=True)
    (foreign / "broker" / "state.json").write_text("{}")
    _one_clear_line(_cli(["broker"], {"INTENTSTREAM_DATA_DIR": str(foreign)}), "not this project's Kafka data")
    assert (foreign / "broker" / "state.json").exists()

    # Nothing was touched: the broker comes back with its data.
    with EmbeddedBroker.for_settings(Settings(), data) as again:
        assert _count(again.bootstrap, "kept") == 100


def test_a_broker_that_dies_is_reported_by_the_broker_command(tmp_path):
    env = {**os.environ, "INTENTSTREAM_DATA_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "broker"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _jvms_under(tmp_path):
            time.sleep(0.2)
        while time.monotonic() < deadline and "KAFKA_BOOTSTRAP_SERVERS=" not in proc.stdout.readline():  # type: ignore[union-attr]
            pass
        for jvm in _jvms_under(tmp_path):
            jvm.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert "the broker exited on its own" in err.strip().splitlines()[-1]
