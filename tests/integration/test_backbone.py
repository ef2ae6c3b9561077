"""The backbone end to end on the real broker: events in -> state -> signals and dead letters out."""

import base64
import json
import shutil
import subprocess

import pytest

from stream.logic.ingest import Pseudonymizer

from .conftest import KEY, consume, jsonl, produce

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
RAW_USER = "alice@example.com"


def ev(i, typ, user=RAW_USER, **kw):
    return json.dumps({"event_id": f"e{i}", "user_id": user, "type": typ, "ts": T0 + i * 15_000, **kw}).encode()


BAD = {
    "malformed_json": b'{"event_id": "x1", "type": ',
    "invalid_utf8": b'{"event_id": "x2", "user_id": "\xff\xfe"}',
    "unknown_type": json.dumps({"event_id": "x3", "user_id": "bob", "type": "refund", "ts": T0}).encode(),
    "missing_field": json.dumps({"event_id": "x4", "user_id": "bob", "type": "click", "ts": T0}).encode(),
    "timestamp_too_old": json.dumps({"event_id": "x5", "user_id": "bob", "type": "click", "ts": 1_700_000_000, "item_id": "i"}).encode(),
    "oversized": json.dumps({"event_id": "x6", "user_id": "bob", "type": "search", "ts": T0, "query": "q" * 40_000}).encode(),
}


def test_events_in_signals_and_dead_letters_out(system):
    settings, new_worker = system
    worker = new_worker()
    ready_s = worker.start()
    print(f"worker ready after {ready_s:.1f} s")

    session = [("click", "i1"), ("click", "i2"), ("search", None), ("add_to_cart", "i2"), ("add_to_cart", "i1"), ("click", "i3")]
    good = [
        (RAW_USER.encode(), ev(i, typ, item_id=item, category_id="shoes", price=30.0, query="running shoes" if typ == "search" else None))
        for i, (typ, item) in enumerate(session)
    ]
    messages = good[:3] + [(b"bob", v) for v in BAD.values()] + good[3:] + [good[4]]  # last: a duplicate event_id
    produce(settings.kafka_bootstrap_servers, settings.events_topic, messages)

    bootstrap = settings.kafka_bootstrap_servers
    dead = jsonl(consume(bootstrap, [settings.dlq_topic], until=lambda m: len(m) >= len(BAD) + 1))
    by_reason = {d["reason"]: d for d in dead}
    assert set(by_reason) == {*BAD, "duplicate_event_id"}
    for reason, original in BAD.items():
        d = by_reason[reason]
        assert base64.b64decode(d["original_b64"]) == original, "the original bytes are kept"
        assert d["topic"] == settings.events_topic and d["offset"] >= 0 and d["detail"]

    topics = list(settings.signal_topics().values())
    signals = jsonl(consume(bootstrap, topics, until=lambda m: {s["task"] for s in jsonl(m)} >= {"purchase_intent", "latent_needs"}))
    user = Pseudonymizer(KEY.encode())(RAW_USER)
    intent = [s for s in signals if s["task"] == "purchase_intent"]
    assert len(intent) == 1 and intent[0]["user"] == user
    assert intent[0]["event_id"] in {"e3", "e4"} and intent[0]["score"] >= intent[0]["threshold"]
    assert any(r["feature"] == "session_carts" for r in intent[0]["reasons"])
    latent = [s for s in signals if s["task"] == "latent_needs"]
    assert latent[0]["categories"][0]["category_id"] == "shoes"

    # Privacy: the raw id appears in no signal, no signal key, and not in the worker's metrics or log.
    every = consume(bootstrap, topics, until=lambda m: len(m) >= len(signals), timeout=10)
    assert all(RAW_USER.encode() not in (m.value() or b"") + (m.key() or b"") for m in every)
    text = worker.metrics()
    assert RAW_USER not in text
    assert 'intentstream_events_consumed_total{type="add_to_cart"} 2.0' in text
    assert 'intentstream_invalid_events_total{reason="malformed_json"} 1.0' in text
    assert 'intentstream_signals_emitted_total{task="purchase_intent"} 1.0' in text
    worker.stop()
    log = worker.log.read_text()
    assert RAW_USER not in log
    # An operator's first look: where it reads and answers, and no terminal escapes in a log file.
    assert f"bootstrap servers {bootstrap}, web port {worker.web_port}" in log
    assert "\x1b" not in log


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed: run `make tools`")
def test_worker_exposition_passes_promtool(system):
    settings, new_worker = system
    worker = new_worker()
    worker.start()
    produce(settings.kafka_bootstrap_servers, settings.events_topic, [(b"u", ev(1, "click", user="u", item_id="i"))])
    consume(settings.kafka_bootstrap_servers, [settings.latent_topic], until=lambda m: len(m) >= 1, timeout=30)
    res = subprocess.run(["promtool", "check", "metrics"], input=worker.metrics(), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_state_survives_a_worker_restart(system, store):
    """RocksDB state is reloaded from disk; memory state is rebuilt from the changelog topic.

    Either way the restarted worker knows the user: the user's leading category is unchanged, so
    no second latent-needs signal is emitted (a worker that lost the state would see a new user and
    emit one), and the user is counted in state again.
    """
    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    data_dir = None
    w1 = new_worker(INTENTSTREAM_STORE=store)
    data_dir = w1.env["INTENTSTREAM_DATA_DIR"]
    w1.start()
    produce(bootstrap, settings.events_topic, [(b"carol", ev(i, "click", user="carol", item_id=f"i{i}", category_id="garden")) for i in range(3)])
    first = consume(bootstrap, [settings.latent_topic], until=lambda m: len(m) >= 1, timeout=30)
    assert len(first) == 1
    w1.stop()

    w2 = new_worker(INTENTSTREAM_STORE=store, INTENTSTREAM_DATA_DIR=data_dir)
    w2.start()
    produce(bootstrap, settings.events_topic, [(b"carol", ev(i, "click", user="carol", item_id="i9", category_id="garden")) for i in range(3, 6)])
    produce(bootstrap, settings.events_topic, [(b"dave", ev(9, "click", user="dave", item_id="i1", category_id="toys"))])
    # dave's signal proves the batch with carol's events was processed before we look.
    after = jsonl(consume(bootstrap, [settings.latent_topic], until=lambda m: len(m) >= 2, timeout=30))
    users = [s["user"] for s in after]
    assert len(after) == 2 and users.count(first and json.loads(first[0].value())["user"]) == 1
    text = _wait_metric(w2, "intentstream_users_in_state 2.0")
    assert "intentstream_users_in_state 2.0" in text, [ln for ln in text.splitlines() if "users_in_state" in ln]


def _wait_metric(worker, needle, timeout=15.0):
    import time

    deadline = time.monotonic() + timeout
    text = worker.metrics()
    while needle not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        text = worker.metrics()
    return text


def test_validated_events_are_archived_pseudonymised(system):
    from models.archive import EventArchive

    settings, new_worker = system
    worker = new_worker(INTENTSTREAM_ARCHIVE_FLUSH_S="1")
    worker.start()
    produce(settings.kafka_bootstrap_servers, settings.events_topic,
            [(b"frank", ev(i, "click", user="frank", item_id=f"i{i}", category_id="tools")) for i in range(4)]
            + [(b"frank", b"not json")])  # fmt: skip
    consume(settings.kafka_bootstrap_servers, [settings.latent_topic], until=lambda m: len(m) >= 1, timeout=30)
    archive = EventArchive(worker.env["INTENTSTREAM_DATA_DIR"] + "/archive")
    import time

    deadline, got = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(got) < 4:
        time.sleep(0.5)
        got = archive.read(T0 - 1, T0 + 3_600_000)
    assert sorted(e.event_id for e in got) == ["e0", "e1", "e2", "e3"]
    assert {e.user for e in got} == {Pseudonymizer(KEY.encode())("frank")}
