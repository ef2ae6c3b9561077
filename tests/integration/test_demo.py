"""The README's first command, end to end: ``intentstream demo`` as a newcomer runs it (without a
terminal, so it prints each signal as a line), on its own embedded broker.

It must show signals of the online model and then of the sequence model its background training run
hot-swaps into the worker, dead-letter the malformed events it injects, trim its broker (noida-db
keeps every record: stream/demo.py) without ever deleting a record the worker has yet to commit,
and leave no process behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from stream.broker import EmbeddedBroker
from stream.demo import KEEP_RECORDS
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
        await consumer.topics()
        topics = [settings.events_topic, settings.repartition_topic, *settings.changelog_topics().values()]
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
        committed = {}
        for group in (settings.app_id, settings.ingest_group):
            committed.update({tp: om.offset for tp, om in (await admin.list_consumer_group_offsets(group)).items()})
        return {"begin": await consumer.beginning_offsets(tps), "end": await consumer.end_offsets(tps),
                "committed": committed}  # fmt: skip
    finally:
        await consumer.stop()
        await admin.close()


def test_demo_shows_live_signals_hot_swaps_the_model_trims_its_broker_and_cleans_up(tmp_path):
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
    assert "user_id" not in out and not re.search(r"\bu\d{3,}\b", out), "a raw user id reached the screen"

    final = out[out.rindex("elapsed") :]
    assert int(re.search(r"dead-lettered (\d[\d,]*)", final)[1].replace(",", "")) > 0
    deleted = int(re.search(r"records per partition \((\d[\d,]*) deleted", final)[1].replace(",", ""))
    assert deleted > 0
    assert "trimming the broker failed" not in proc.stderr

    assert _ours(tmp_path) == [], "the demo left processes running"

    # The broker persists its data: reopen it and look at what the trimming kept.
    settings = Settings(data_dir=tmp_path)
    with EmbeddedBroker(tmp_path / "demo" / "broker") as broker:
        o = asyncio.run(_offsets(settings, broker.bootstrap))
    begin, end, committed = o["begin"], o["end"], o["committed"]
    changelog = [tp for tp in begin if tp.topic == settings.changelog_topics()["user-state"]]
    written = sum(end[tp] for tp in changelog)
    held = sum(end[tp] - begin[tp] for tp in changelog)
    assert written > 10 * KEEP_RECORDS * len(changelog), "too few state writes to show the trimming"
    assert held < written / 4, f"the state changelog still holds {held} of {written} records"
    for tp in begin:
        if tp.topic in (settings.events_topic, settings.repartition_topic):
            assert 0 < begin[tp] <= committed[tp], f"{tp}: trimmed to {begin[tp]}, committed {committed.get(tp)}"


def test_trim_topics_keeps_each_partitions_tail_and_all_not_yet_committed(tmp_path):
    """trim_topics on its own broker (it trims every topic there): the plain topic keeps its last
    ``keep`` records, the consumed one nothing past its group's commit (and all of a partition with
    no commit), the skipped and the compacted ones everything."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import OffsetAndMetadata

    from stream.broker import trim_topics

    settings = Settings(data_dir=tmp_path)

    async def run(bootstrap: str) -> tuple[dict, dict]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("plain", 1, 1), NewTopic("consumed", 2, 1), NewTopic("skipped", 1, 1),
                                   NewTopic("compacted", 1, 1, topic_configs={"cleanup.policy": "compact"})])  # fmt: skip
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for i in range(300):
            for topic, partition in (("plain", 0), ("consumed", 0), ("consumed", 1), ("skipped", 0), ("compacted", 0)):
                await producer.send(topic, b"v%d" % i, key=b"k%d" % (i % 7), partition=partition)
        await producer.stop()
        group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=False)
        await group.start()
        group.assign([TopicPartition("consumed", 0)])
        await group.commit({TopicPartition("consumed", 0): OffsetAndMetadata(120, "")})
        await group.stop()
        deleted = await trim_topics(settings, bootstrap, keep=100, groups=["g", "absent"],
                                    consumed=["consumed"], skip=["skipped"])  # fmt: skip
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
        await reader.start()
        tps = [TopicPartition(t, p) for t, p in (("plain", 0), ("consumed", 0), ("consumed", 1), ("skipped", 0),
                                                 ("compacted", 0))]  # fmt: skip
        begin = await reader.beginning_offsets(tps)
        reader.assign([TopicPartition("plain", 0)])
        first = await reader.getone()
        await reader.stop()
        return deleted, {f"{tp.topic}/{tp.partition}": begin[tp] for tp in tps} | {"first plain": first.value}

    with EmbeddedBroker(tmp_path / "broker") as broker:
        deleted, begin = asyncio.run(run(broker.bootstrap))
    assert deleted == {"plain": 200, "consumed": 120}
    assert begin == {"plain/0": 200, "consumed/0": 120, "consumed/1": 0, "skipped/0": 0, "compacted/0": 0,
                     "first plain": b"v200"}  # fmt: skip
