"""``INTENTSTREAM_INGEST=raw``: the ingest stage on a batched aiokafka consumer, one worker, real
broker. Bad input is dead-lettered, good input reaches signals, and the ingest group commits every
offset of ``shop.events`` once its outputs are flushed. (With two workers its group meets the
embedded broker's group-coordinator defect: docs/BENCHMARKS.md; that is why it is opt-in.)"""

import json
import time

import pytest

from stream.logic.ingest import Pseudonymizer

from .conftest import KEY, consume, group_lag, jsonl, produce

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000


def test_raw_ingest_forwards_dead_letters_and_commits(system):
    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    worker = new_worker(INTENTSTREAM_INGEST="raw")
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
    group = f"{settings.app_id}-ingest"
    deadline = time.monotonic() + 30
    while (lag := group_lag(bootstrap, group, [settings.events_topic])[settings.events_topic]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lag == 0, "every input offset committed by the ingest group"
    series = f'intentstream_consumer_lag{{partition="0",topic="{settings.events_topic}"}}'
    deadline = time.monotonic() + 20  # refreshed every 5 s with the other gauges
    while series not in (text := worker.metrics()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert series in text, "the ingest consumer's lag is exported"
    worker.stop()
