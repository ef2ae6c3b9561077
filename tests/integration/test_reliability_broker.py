"""Broker restart: the Kafka broker goes down mid-replay and comes back on the same port with the
same data directory; the workers reconnect and resume, and the outcome equals a clean run.

Twice: the broker stopped with SIGTERM (a clean shutdown) and killed with SIGKILL (no shutdown at
all: what it acknowledged is in the operating system's page cache and must survive). This module
has its own ``broker`` fixture (it overrides the session one for the tests here, and the
``system`` fixture picks it up): restarting the shared broker would break the other tests. The
checks are the ones of ``test_reliability.py`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from stream.broker import EmbeddedBroker, free_port
from stream.settings import Settings

from . import test_reliability as rel  # a module import, so that its tests are not collected twice

pytestmark = pytest.mark.integration

N_EVENTS = 15_000
OUTAGE_S = 8.0  # seconds with no broker: every client connection fails, the clients must reconnect


@pytest.fixture
def broker(tmp_path):
    """A broker of this test's own, on a fixed port so that it can come back at the same address."""
    with EmbeddedBroker.for_settings(Settings(), tmp_path / "broker", port=free_port()) as b:
        yield b


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_broker_restart_during_replay_loses_nothing(broker, system, how):
    settings, new_worker = system
    events = rel.simulated(N_EVENTS)
    w1, w2 = new_worker(), new_worker()
    w1.start()
    w2.start()
    rel.produce_events(settings.kafka_bootstrap_servers, settings.events_topic, events)
    at_stop = rel.wait_until(
        lambda: (n := rel.processed(settings)) >= N_EVENTS // 3 and n, "a third processed", [w1, w2], 240
    )

    if how == "sigterm":
        broker.stop()  # SIGTERM: Kafka's controlled shutdown
    else:
        broker.kill()  # SIGKILL: no shutdown, no flush
    time.sleep(OUTAGE_S)  # the outage (not an assertion: the workers must ride it out)
    assert w1.proc.poll() is None and w2.proc.poll() is None, "a worker died while the broker was down"
    broker.start()
    assert broker.bootstrap == settings.kafka_bootstrap_servers

    rel.wait_drained(settings, [w1, w2], timeout=300)
    rel.check_run(
        settings,
        events,
        f"broker-{how}",
        faults={f"broker_{how}": 1},
        committed_at_stop=at_stop,
        outage_s=OUTAGE_S,
    )


@pytest.mark.slow
def test_store_ahead_of_changelog_is_rebuilt_after_a_crash(broker, system):
    """The window between a table write and its changelog record, made wide on purpose.

    Faust writes RocksDB at once and the changelog through the producer. The broker is frozen
    (SIGSTOP) while the worker still has fetched events to process: it applies them to its store,
    but none of their changelog records or offset commits can leave. Then the worker is
    SIGKILLed, the broker thawed, and the worker restarted on the same data directory. Its input
    is replayed from the last commit; if it reopened its store, those events would be dropped as
    duplicates of what the store holds and the changelog left behind (``stream/local_state.py``).
    The outcome must equal a clean run.

    A batch that emits signals waits for their acknowledgement before it writes its state, so the
    window is open for batches without signals only. So the events after the first 3,000 are
    those of users already seen, and the policy emits nothing for them: latent needs once per user
    (a cooldown longer than the run), purchase intent above 0.9999 only. They are produced while the
    worker is paused, and it works through them in small batches, so that the broker freezes while
    the worker has a backlog.
    """
    import os
    import signal

    settings, new_worker = system
    quiet = {"cooldown_ms": 30 * 86_400_000, "intent_threshold": 0.9999}
    settings = settings.model_copy(update=quiet)
    events = rel.simulated(40_000, seed=rel.SEED + 3)
    head, seen = events[:3_000], {e["user_id"] for e in events[:3_000]}
    events = head + [e for e in events[3_000:] if e["user_id"] in seen]
    store = {"INTENTSTREAM_STORE": "rocksdb://", "INTENTSTREAM_BATCH_SIZE": "50",
             **{f"INTENTSTREAM_{k.upper()}": str(v) for k, v in quiet.items()}}  # fmt: skip
    # No offset commit in the window either: its producer flush would stop the worker at once.
    w = new_worker(**store, INTENTSTREAM_COMMIT_INTERVAL_MS="600000")
    w.start()
    rel.produce_events(settings.kafka_bootstrap_servers, settings.events_topic, head)
    rel.wait_until(lambda: rel.consumed(w) >= 3_000, "3,000 applied", [w], 240)
    os.kill(w.proc.pid, signal.SIGSTOP)  # the rest arrives at once: a backlog when the broker freezes
    try:
        rel.produce_events(settings.kafka_bootstrap_servers, settings.events_topic, events[3_000:])
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    rel.wait_until(lambda: rel.consumed(w) > 3_000, "the next events applied", [w], 240, poll=0.05)

    os.killpg(broker.process.pid, signal.SIGSTOP)
    try:
        at_freeze = rel.consumed(w)
        time.sleep(3.0)  # the worker works through what it had fetched; nothing reaches the broker
        applied_while_frozen = rel.consumed(w) - at_freeze
        w.stop(signal.SIGKILL)
    finally:
        os.killpg(broker.process.pid, signal.SIGCONT)
    assert applied_while_frozen > 0, "the premise: the worker applied events the broker never heard of"

    w2 = rel.restart(new_worker, **store, INTENTSTREAM_DATA_DIR=w.env["INTENTSTREAM_DATA_DIR"])
    rebuilt = rel.metric_total(w2, 'intentstream_state_rebuilds_total{cause="unclean_shutdown"}')
    rel.wait_drained(settings, [w2])
    rel.check_run(settings, events, "store-ahead-of-changelog", faults={"broker_frozen_then_worker_sigkill": 1},
                  applied_while_frozen=applied_while_frozen, rebuilt=rebuilt)  # fmt: skip
    assert rebuilt == 1


@pytest.mark.slow
def test_store_ahead_of_a_changelog_that_lost_records_is_rebuilt_not_crash_looped(broker, system):
    """A cleanly stopped worker's store, then its changelog loses records (here: deleted and made
    again with three records a partition, as after a broker that lost unflushed data). Faust
    would refuse to start on every try (``ConsistencyError``: the store's offset is past the
    changelog's end); the worker must discard the store, say so once and rebuild from the changelog."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from stream.broker import create_topics

    settings, new_worker = system
    bootstrap = settings.kafka_bootstrap_servers
    events = rel.simulated(3_000, seed=rel.SEED + 4)
    store = {"INTENTSTREAM_STORE": "rocksdb://"}
    w = new_worker(**store)
    w.start()
    rel.produce_events(bootstrap, settings.events_topic, events)
    rel.wait_drained(settings, [w])
    w.stop()  # clean: the store is marked for reopening

    changelog = settings.changelog_topics()["user-state"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([changelog])[changelog].result(30)
    deadline = time.monotonic() + 30
    while changelog in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    asyncio.run(create_topics(settings, bootstrap))
    p = Producer({"bootstrap.servers": bootstrap})
    for partition in range(settings.events_partitions):
        for i in range(3):
            p.produce(changelog, key=f"ghost-{i}".encode(), value=None, partition=partition)
    assert p.flush(30) == 0

    w2 = rel.restart(new_worker, **store, INTENTSTREAM_DATA_DIR=w.env["INTENTSTREAM_DATA_DIR"])
    assert rel.metric_total(w2, 'intentstream_state_rebuilds_total{cause="ahead_of_changelog"}') == 1
    assert w2.log.read_text().count("ahead of its changelog") == 1
    time.sleep(3.0)
    assert w2.proc.poll() is None, f"the worker stopped:\n{w2.log.read_text()[-3000:]}"


def test_sigterm_stops_a_worker_in_time_with_the_broker_gone(broker, system):
    """With the broker killed, every flush and commit of a stop waits for client timeouts; the
    worker must still be gone within its configured stop timeout (``INTENTSTREAM_STOP_TIMEOUT_S``)."""
    import signal

    settings, new_worker = system
    w = new_worker(INTENTSTREAM_STOP_TIMEOUT_S="5")
    w.start()
    rel.produce_events(settings.kafka_bootstrap_servers, settings.events_topic, rel.simulated(2_000))
    rel.wait_until(lambda: rel.consumed(w) >= 500, "500 applied", [w], 120)
    broker.kill()
    time.sleep(1.0)
    w.proc.send_signal(signal.SIGTERM)
    try:
        w.proc.wait(timeout=5 + 15)  # the timeout, and room for a loaded machine
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker ignored SIGTERM with the broker gone:\n{w.log.read_text()[-2000:]}")
