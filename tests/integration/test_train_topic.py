"""Training history from Kafka (``train/refresh --from-topic``, ``stream/history.py``) on the real broker.

The records are written by confluent-kafka (librdkafka), independent of the aiokafka reader under
test, in the shape the ingest agent writes them: ``Event.to_dict()`` JSON of simulated shoppers,
pseudonymised with the pipeline's own ingest code, keyed and partitioned by the pseudonym.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from models.registry import Registry
from stream import cli
from stream.agents.records import partition_for
from stream.broker import create_topics
from stream.history import read_topic_events, read_topic_history
from stream.logic.ingest import Pseudonymizer, ingest_one
from stream.logic.simulator import ShopperSimulator
from stream.settings import DAY_MS, Settings

from .conftest import KEY, ROOT

pytestmark = pytest.mark.integration

PARTITIONS = 3
TINY = ["max_len=8", "d_model=8", "item_buckets=256", "category_buckets=128", "query_buckets=32",
        "batch_size=16", "max_epochs=2"]  # fmt: skip


def app_settings(broker) -> Settings:
    """A fresh application id (its own internal topic), its topics created on the broker."""
    app_id = f"tt-{uuid.uuid4().hex[:8]}"
    s = Settings(app_id=app_id, events_topic=f"{app_id}.shop.events", dlq_topic=f"{app_id}.shop.events.dlq",
                 intent_topic=f"{app_id}.i", churn_topic=f"{app_id}.c", latent_topic=f"{app_id}.l",
                 events_partitions=PARTITIONS, pseudonym_key=KEY, kafka_bootstrap_servers=broker.bootstrap)  # fmt: skip
    asyncio.run(create_topics(s, broker.bootstrap))
    return s


def simulated(n: int, users: int, seed: int, start_ms: int) -> list:
    """``n`` simulated events, validated and pseudonymised exactly as the ingest agent does."""
    ps = Pseudonymizer(KEY.encode())
    return [
        ingest_one(json.dumps(r).encode(), ps)
        for r in ShopperSimulator(seed=seed, users=users, start_ms=start_ms).take(n)
    ]


def record(ev) -> tuple[bytes, bytes]:
    return ev.user.encode(), json.dumps(ev.to_dict(), separators=(",", ":")).encode()


def produce_events(
    bootstrap: str, topic: str, events: list, extra: list[tuple[int, bytes | None, bytes | None]] = ()
) -> None:
    """Each event to its user's partition (as ``ingest_batch`` does), then ``extra`` (partition, key, value)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for ev in events:
        key, value = record(ev)
        p.produce(topic, key=key, value=value, partition=partition_for(ev.user, PARTITIONS))
    for partition, key, value in extra:
        p.produce(topic, key=key, value=value, partition=partition)
    assert p.flush(30) == 0, "messages left unsent"


def by_id(events) -> list:
    return sorted(events, key=lambda e: (e.ts, e.event_id))


def test_reads_exactly_the_pseudonymised_events_sorted_and_counts_bad_records(broker):
    s = app_settings(broker)
    now = time.time_ns() // 1_000_000
    events = simulated(400, users=25, seed=11, start_ms=now - DAY_MS)
    raw = ShopperSimulator(seed=11, users=25, start_ms=now - DAY_MS).take(1)[0]
    old = events[0].replace(event_id="too-old", ts=now - 40 * DAY_MS)
    bad = [
        (0, b"k", b'{"event_id": "x1", "type": '),  # malformed JSON
        (1, b"k", b"\xff\xfe not utf-8"),  # undecodable bytes
        (2, b"k", None),  # tombstone
        (0, b"k", json.dumps(raw).encode()),  # a raw input event (user_id): not this topic's shape
        (1, b"k", json.dumps({**events[1].to_dict(), "ts": "2026-01-01T00:00:00Z"}).encode()),  # wrong type
        (2, b"k", b"[1, 2]"),  # not an object
    ]
    dup = events[5]  # a redelivered batch: the same record twice
    produce_events(broker.bootstrap, s.repartition_topic, events, [*bad, (partition_for(dup.user, PARTITIONS), *record(dup)),
                                                                   (partition_for(old.user, PARTITIONS), *record(old))])  # fmt: skip

    got, info = read_topic_history(s, broker.bootstrap, days=30, now_ms=now, progress=None)

    assert len(got) == 400
    assert by_id(got) == by_id(events)  # the exact events, all fields
    assert [e.ts for e in got] == sorted(e.ts for e in got)
    assert len({e.event_id for e in got}) == 400 and "too-old" not in {e.event_id for e in got}
    assert not {e.user for e in got} & {f"u{i:06d}" for i in range(100)}, "raw ids in the history"
    rep = info[f"topic:{s.repartition_topic}"]
    assert rep["records"] == 400 + len(bad) + 2 and rep["events"] == 400 and rep["partitions"] == PARTITIONS
    assert rep["undecodable"] == len(bad)
    assert rep["skipped"] == {
        "malformed_json": 2,
        "tombstone": 1,
        "unknown_field": 1,
        "wrong_type": 1,
        "not_an_object": 1,
    }
    assert rep["duplicates"] == 1 and rep["outside_time_range"] == 1 and rep["days"] == 30

    # Without a time bound the old event is history too.
    got_all, _ = read_topic_history(s, broker.bootstrap, days=None, now_ms=now, progress=None)
    assert len(got_all) == 401 and got_all[0].event_id == "too-old"


def test_stops_at_the_end_offsets_of_the_start_on_a_live_topic(broker):
    s = app_settings(broker)
    now = time.time_ns() // 1_000_000
    first = simulated(300, users=20, seed=12, start_ms=now - DAY_MS)
    produce_events(broker.bootstrap, s.repartition_topic, first)
    later = simulated(5000, users=20, seed=13, start_ms=now - DAY_MS)
    stop = threading.Event()

    def keep_producing() -> None:  # a live pipeline writing while we read
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1})
        for ev in later:
            if stop.is_set():
                break
            key, value = record(ev)
            p.produce(s.repartition_topic, key=key, value=value, partition=partition_for(ev.user, PARTITIONS))
            p.poll(0)
            time.sleep(0.002)
        p.flush(10)

    t = threading.Thread(target=keep_producing, daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the writer is running before the read starts
        t0 = time.monotonic()
        got, info = asyncio.run(read_topic_events(s, broker.bootstrap, s.repartition_topic, progress=None))
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join(15)
    ids = {e.event_id for e in got}
    assert {e.event_id for e in first} <= ids  # everything before the start
    assert ids <= {e.event_id for e in first} | {e.event_id for e in later}
    assert info["undecodable"] == 0 and took < 30, f"read took {took:.1f} s"
    print(f"live topic: {len(got)} events read in {took:.2f} s, {len(got) - len(first)} written meanwhile")


def test_empty_missing_and_raw_topics(broker):
    s = app_settings(broker)
    from stream.history import TopicReadError

    got, info = read_topic_history(s, broker.bootstrap, progress=None)  # created, never written
    assert got == [] and info[f"topic:{s.repartition_topic}"]["records"] == 0

    with pytest.raises(TopicReadError, match="does not exist"):
        asyncio.run(read_topic_events(s, broker.bootstrap, f"nope-{uuid.uuid4().hex[:6]}", progress=None))
    for raw_topic in (s.events_topic, s.dlq_topic):
        with pytest.raises(ValueError, match="raw user ids"):
            read_topic_history(s, broker.bootstrap, raw_topic, progress=None)


def cli_env(s: Settings, broker, tmp_path) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "INTENTSTREAM_APP_ID": s.app_id,
            "INTENTSTREAM_EVENTS_TOPIC": s.events_topic, "INTENTSTREAM_DLQ_TOPIC": s.dlq_topic,
            "INTENTSTREAM_PSEUDONYM_KEY": KEY, "INTENTSTREAM_DATA_DIR": str(tmp_path / "data"),
            "INTENTSTREAM_MODEL_DIR": str(tmp_path / "models"), "INTENTSTREAM_LOG_LEVEL": "WARNING"}  # fmt: skip


def test_cli_train_and_refresh_from_the_topic(broker, tmp_path, monkeypatch, capsys):
    s = app_settings(broker)
    now = time.time_ns() // 1_000_000
    events = simulated(600, users=30, seed=14, start_ms=now - DAY_MS)
    produce_events(broker.bootstrap, s.repartition_topic, events, [(0, b"k", b"not json")])
    env = cli_env(s, broker, tmp_path)
    sets = sum((["--set", x] for x in TINY), [])

    # The real entry point, as an operator runs it.
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "train", "--from-topic", "--device", "cpu", *sets],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        out["version"] == "000001" and out["events"] == 600 and out["users"] == len({e.user for e in events})
    )
    history = next(json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"history"'))
    rep = history["history"][f"topic:{s.repartition_topic}"]
    assert rep["events"] == 600 and rep["undecodable"] == 1 and rep["skipped"] == {"malformed_json": 1}
    reg = Registry(tmp_path / "models" / "sequence")
    assert [m["version"] for m in reg.list()] == ["000001"] and reg.metadata("000001")["train_events"] == 600

    # refresh, in process, naming the topic explicitly: a second version, promoted (none was current).
    for k, v in env.items():
        if k.startswith(("INTENTSTREAM_", "KAFKA_")):
            monkeypatch.setenv(k, v)
    assert cli.main(["refresh", "--from-topic", s.repartition_topic, "--device", "cpu", *sets]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == "000002" and out["promoted"] and reg.current() == "000002"

    # A raw topic is refused with a message, not a traceback; so is mixing sources.
    assert cli.main(["train", "--from-topic", s.events_topic, *sets]) == 2
    assert "raw user ids" in capsys.readouterr().err
    assert cli.main(["train", "--from-topic", "--archive", str(tmp_path), *sets]) == 2
    capsys.readouterr()
    empty = app_settings(broker).repartition_topic
    assert cli.main(["train", "--from-topic", empty, *sets]) == 2
    assert f"no events in topic:{empty}" in capsys.readouterr().err
