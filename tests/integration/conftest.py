"""Fixtures that start real things: the embedded Kafka-protocol broker and worker processes.

Clients on the test side are confluent-kafka (librdkafka), independent of the aiokafka client
inside the worker, so a test passing here says something about Kafka, not about one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, create_topics, free_port
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key-0123456789abcdef"


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


class Worker:
    """A worker subprocess (``python -m stream.cli worker``) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.web_port = env, log, int(env["INTENTSTREAM_WEB_PORT"])
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=self.env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while time.monotonic() - t0 < ready_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {ready_timeout} s:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def system(broker, tmp_path):
    """A fresh application id (own topics namespace for internal topics, own consumer group), its
    topics created, and a factory for workers. Every worker is stopped at teardown."""
    app_id = f"it-{uuid.uuid4().hex[:8]}"
    env_settings = {
        "INTENTSTREAM_APP_ID": app_id,
        "INTENTSTREAM_EVENTS_TOPIC": f"{app_id}.shop.events",
        "INTENTSTREAM_DLQ_TOPIC": f"{app_id}.shop.events.dlq",
        "INTENTSTREAM_INTENT_TOPIC": f"{app_id}.signals.purchase_intent",
        "INTENTSTREAM_CHURN_TOPIC": f"{app_id}.signals.churn_risk",
        "INTENTSTREAM_LATENT_TOPIC": f"{app_id}.signals.latent_needs",
        "INTENTSTREAM_PSEUDONYM_KEY": KEY,
        "INTENTSTREAM_STORE": "memory://",
        "INTENTSTREAM_BATCH_WAIT_MS": "20",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
    }
    settings = Settings(**{k.removeprefix("INTENTSTREAM_").lower(): v for k, v in env_settings.items()
                           if k.startswith("INTENTSTREAM_")}, kafka_bootstrap_servers=broker.bootstrap)  # fmt: skip
    asyncio.run(create_topics(settings, broker.bootstrap))
    workers: list[Worker] = []

    def new_worker(**extra: str) -> Worker:
        env = {**os.environ, **env_settings, "INTENTSTREAM_WEB_PORT": str(free_port()),
               "INTENTSTREAM_DATA_DIR": str(tmp_path / f"w{len(workers)}"), **extra}  # fmt: skip
        w = Worker(env, tmp_path / f"worker{len(workers)}.log")
        workers.append(w)
        return w

    yield settings, new_worker
    for w in workers:
        w.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in messages:
        p.produce(topic, key=key, value=value)
    assert p.flush(30) == 0, "messages left unsent"


def consume(bootstrap: str, topics: list[str], *, until, timeout: float = 60.0) -> list:
    """Read ``topics`` from the start until ``until(messages)`` is true or the timeout passes."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe(topics)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        c.close()
    return out


def jsonl(msgs) -> list[dict]:
    return [json.loads(m.value()) for m in msgs]
