"""Both ingest stages, one worker, real broker: ``raw`` (the default: a batched aiokafka consumer
on the input partitions that go with the worker's Faust assignment, offsets under
``<app_id>-ingest``) and ``faust`` (an agent in the app's group). Bad input is dead-lettered, good
input reaches signals, every offset of ``shop.events`` is committed once its outputs are flushed,
and the input lag is exported. Two workers sharing the raw ingest: test_reliability.py."""

import json
import time

import pytest

from stream.logic.ingest import Pseudonymizer

from .conftest import KEY, consume, group_lag, jsonl, produce

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000


@pytest.mark.parametrize("mode", ["raw", "faust"])
def test_ingest_forwards_dead_letters_and_commits(system, mode):
    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    worker = new_worker(INTENTSTREAM_INGEST=mode)
    worker.start()
    kinds = ["click", "add_to_cart", "add_to_cart", "add_to_cart"]
    good = [
        (b"zoe", json.dumps({"event_id": f"z{i}", "user_id": "zoe", "type": t, "ts": T0 + i * 20_000,
                             "item_id": f"i{i}", "category_id": "shoes", "price": 20.0}).encode())  # fmt: skip
        for i, t in enumerate(kinds)
    ]
    produce(bootstrap, settings.events_topic, [*good[:2], (b"x", b'{"broken'), *good[2:]])
    dead = jsonl(consume(bootstrap, [settings.dlq_topic], until=lambda m: len(m) >= 1))
    assert [d["reason"] for d in dead] == ["malformed_json"]
    user = Pseudonymizer(KEY.encode())("zoe")
    signals = jsonl(consume(bootstrap, [settings.intent_topic], until=lambda m: len(m) >= 1))
    assert signals[0]["user"] == user and signals[0]["event_id"] in {"z1", "z2", "z3"}
    group = f"{settings.app_id}-ingest" if mode == "raw" else settings.app_id
    deadline = time.monotonic() + 30
    while (lag := group_lag(bootstrap, group, [settings.events_topic])[settings.events_topic]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lag == 0, f"every input offset committed by {group}"
    series = f'intentstream_consumer_lag{{partition="0",topic="{settings.events_topic}"}}'
    deadline = time.monotonic() + 20  # refreshed every 5 s with the other gauges
    while series not in (text := worker.metrics()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert series in text, "the input topic's lag is exported"
    worker.stop()
