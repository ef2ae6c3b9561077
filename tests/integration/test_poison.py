"""Poison input on Kafka: records over 1 MB and a flood of long multi-byte ids neither stop a
worker nor lose anything (each record applied once or dead-lettered once)."""

from __future__ import annotations

import base64
import json
import re
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.integration.conftest import read_all

T0 = int(time.time() * 1000) - 3_600_000
LONG = "😀" * 128  # 128 characters, 512 bytes of UTF-8, 1,536 of JSON escapes


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_records_over_a_megabyte_and_long_ids_are_accounted_for(system):
    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    # Let the input topic take what a careless producer might send (the broker's default is ~1 MB).
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource("topic", settings.events_topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(8 * 2**20), incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)
    worker = new_worker()
    worker.start()

    big = {size: json.dumps({"event_id": f"big{size}", "user_id": "mallory", "type": "search", "ts": T0,
                             "query": "x" * size}).encode() for size in (1_500_000, 3_000_000)}  # fmt: skip
    # 1,000 valid events whose ids make internal packs of several MB if packed 500 at a time.
    long_ids = [json.dumps({"event_id": f"{LONG[:-6]}{i:06d}", "user_id": f"{LONG[:-6]}{i % 50:06d}", "type": "click",
                            "ts": T0 + i, "item_id": LONG, "category_id": LONG}, ensure_ascii=False).encode()
                for i in range(1000)]  # fmt: skip
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "message.max.bytes": 8 * 2**20})
    for value in [big[1_500_000], *long_ids[:500], big[3_000_000], *long_ids[500:]]:
        p.produce(settings.events_topic, key=b"k", value=value)
    assert p.flush(30) == 0

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = worker.metrics()
        if metric(text, "intentstream_events_consumed_total") >= 1002:
            break
        assert worker.proc.poll() is None, f"worker died:\n{worker.log.read_text()[-3000:]}"
        time.sleep(0.5)
    text = worker.metrics()
    assert 'intentstream_events_consumed_total{type="click"} 1000.0' in text
    assert 'intentstream_invalid_events_total{reason="oversized"} 2.0' in text
    assert metric(text, "intentstream_dead_letters_total") == 2

    dead = [json.loads(m.value()) for m in read_all(bootstrap, [settings.dlq_topic])]
    by_length = {len(v): v for v in big.values()}
    assert sorted(d["original_bytes"] for d in dead) == sorted(by_length)
    for d in dead:
        assert d["reason"] == "oversized" and d["original_truncated"] is True
        kept = base64.b64decode(d["original_b64"])
        original = by_length[d["original_bytes"]]
        assert len(kept) == settings.dead_letter_max_bytes and original.startswith(kept)
    internal = read_all(bootstrap, [settings.repartition_topic])
    assert internal, "the events went through the internal topic"
    assert max(len(m.value()) for m in internal) <= settings.max_record_bytes
    assert worker.proc.poll() is None


def test_the_fuzz_corpus_on_kafka_each_record_in_exactly_one_place(system):
    """tests/fuzz_corpus.py through Kafka and one worker: each bad record dead-lettered once, at its
    own offset, with its expected reason; each good one applied; nothing else."""
    from collections import Counter

    from tests.fuzz_corpus import corpus

    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    cases = corpus(seed=23, events=3_000, now_ms=int(time.time() * 1000))
    worker = new_worker()
    worker.start()
    where: dict[tuple[int, int], str] = {}

    def delivered(outcome: str):
        def report(err, msg) -> None:
            assert err is None, err
            where[(msg.partition(), msg.offset())] = outcome

        return report

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for c in cases:
        p.produce(settings.events_topic, key=c.key, value=c.value, on_delivery=delivered(c.outcome))
        p.poll(0)
    assert p.flush(60) == 0 and len(where) == len(cases)

    applied_types = ("click", "search", "add_to_cart", "purchase")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = worker.metrics()
        applied = sum(metric(text, f'intentstream_events_consumed_total{{type="{t}"}}') for t in applied_types)
        if applied + metric(text, "intentstream_dead_letters_total") >= len(cases):
            break
        assert worker.proc.poll() is None, f"worker died:\n{worker.log.read_text()[-3000:]}"
        time.sleep(1.0)

    dead = [json.loads(m.value()) for m in read_all(bootstrap, [settings.dlq_topic])]
    at_ingest = [d for d in dead if d["topic"] == settings.events_topic]
    offsets = [(d["partition"], d["offset"]) for d in at_ingest]
    assert len(offsets) == len(set(offsets)), "a record dead-lettered twice"
    wrong = [(where.get(o), d["reason"]) for o, d in zip(offsets, at_ingest, strict=True) if where.get(o) != d["reason"]]
    assert not wrong, f"{len(wrong)} records dead-lettered with another reason than expected: {Counter(wrong).most_common(5)}"
    expected = Counter(where.values())
    later = Counter(d["reason"] for d in dead if d["topic"] != settings.events_topic)
    assert set(later) <= {"duplicate_event_id", "late_event"}, later
    assert later["duplicate_event_id"] == expected["duplicate_event_id"]
    assert later["late_event"] <= expected["late_or_applied"]
    at_ingest_expected = sum(n for o, n in expected.items() if o not in ("good", "duplicate_event_id", "late_or_applied"))
    assert len(at_ingest) == at_ingest_expected
    text = worker.metrics()
    applied = sum(metric(text, f'intentstream_events_consumed_total{{type="{t}"}}') for t in applied_types)
    assert applied == expected["good"] + expected["late_or_applied"] - later["late_event"]
    assert applied + len(dead) == len(cases)
    assert worker.proc.poll() is None
