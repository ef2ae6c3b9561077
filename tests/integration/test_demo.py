"""The README's first command, end to end: ``intentstream demo`` as a newcomer runs it (without a
terminal, so it prints each signal as a line), on its own local Kafka broker.

It must show signals of the online model and then of the sequence model its background training run
hot-swaps into the worker, dead-letter the malformed events it injects, leave no process behind,
and leave its broker's data whole: every event it sent is on the events topic and committed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stream.broker import EmbeddedBroker, topic_partitions
from stream.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 120  # the training run starts after 40 s and needs up to ~45 s more to promote its model


def _ours(data_dir: Path) -> list[psutil.Process]:
    """Processes still running that belong to a demo under ``data_dir`` (its broker, worker, trainer)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(data_dir) in " ".join(p.info["cmdline"] or ()) or \
                    p.environ().get("INTENTSTREAM_DATA_DIR", "").startswith(str(data_dir)):  # fmt: skip
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def _offsets(settings: Settings, bootstrap: str) -> dict[str, dict]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        topics = [settings.events_topic, settings.repartition_topic, *settings.changelog_topics().values()]
        tps = [TopicPartition(t, p) for t in topics for p in sorted(await topic_partitions(consumer, t))]
        committed = {}
        for _ in range(60):  # a restarted broker answers offset fetches once its coordinator has loaded
            for group in (settings.app_id, settings.ingest_group):
                committed.update({tp: om.offset for tp, om in (await admin.list_consumer_group_offsets(group)).items()})
            if any(tp.topic == settings.events_topic for tp in committed):
                break
            await asyncio.sleep(0.5)
        return {"begin": await consumer.beginning_offsets(tps), "end": await consumer.end_offsets(tps),
                "committed": committed}  # fmt: skip
    finally:
        await consumer.stop()
        await admin.close()


def test_demo_shows_live_signals_hot_swaps_the_model_and_cleans_up(tmp_path):
    env = {**os.environ, "INTENTSTREAM_DATA_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "demo", "--seconds", str(SECONDS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=SECONDS + 120)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = [line for line in out.splitlines() if re.match(r"\s+\d\d-\d\d \d\d:\d\d\s+\w+\s+user [0-9a-f]{8}", line)]
    tasks = {line.split()[2] for line in lines}
    assert {"purchase_intent", "latent_needs"} <= tasks, out[-3000:]
    assert any("seq-000001" in line for line in lines), "no signal names the hot-swapped sequence model"
    assert "sequence model seq-000001 (hot-swapped into the running worker)" in out
    assert re.search(r"live page http://127\.0\.0\.1:\d+/ui/", out), "the demo names the worker's page"
    assert "user_id" not in out and not re.search(r"\bu\d{3,}\b", out), "a raw user id reached the screen"

    final = out[out.rindex("elapsed") :]
    assert int(re.search(r"dead-lettered (\d[\d,]*)", final)[1].replace(",", "")) > 0
    sent = int(re.search(r"events sent (\d[\d,]*)", final)[1].replace(",", ""))
    assert sent > 1_000

    assert _ours(tmp_path) == [], "the demo left processes running"

    # The broker keeps its data: reopen it. Every simulated event (and the injected bad ones) is on
    # the events topic, and the worker committed its progress on every partition.
    settings = Settings(data_dir=tmp_path)
    with EmbeddedBroker.for_settings(settings, tmp_path / "demo" / "broker") as broker:
        o = asyncio.run(_offsets(settings, broker.bootstrap))
    begin, end, committed = o["begin"], o["end"], o["committed"]
    events = [tp for tp in end if tp.topic == settings.events_topic]
    assert sum(end[tp] - begin[tp] for tp in events) >= sent
    assert all(0 < committed.get(tp, -1) <= end[tp] for tp in events), {tp: (committed.get(tp), end[tp]) for tp in events}


def test_a_broker_that_dies_during_the_demo_stops_it_with_one_line(tmp_path):
    """The demo watches its broker: when the broker dies, the demo says so in one line and exits
    with an error within seconds, and leaves nothing running."""
    env = {**os.environ, "INTENTSTREAM_DATA_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "demo", "--seconds", "300"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first signal line: everything runs
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if re.match(r"\s+\d\d-\d\d \d\d:\d\d\s+\w+\s+user [0-9a-f]{8}", line) or proc.poll() is not None:
                break
        assert proc.poll() is None, "the demo ended before the broker was killed"
        jvms = [p for p in _ours(tmp_path) if "kafka.Kafka" in " ".join(p.cmdline())]
        assert jvms, "no broker found"
        for p in jvms:
            p.kill()
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "the Kafka broker exited" in err.strip().splitlines()[-1]
    assert stopped_s < 30, f"the demo took {stopped_s:.0f} s to stop"
    deadline = time.monotonic() + 10
    while _ours(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours(tmp_path) == [], "the demo left processes running"
