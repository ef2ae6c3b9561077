"""Broker restart: the embedded broker goes down mid-replay and comes back on the same port with
the same data directory; the workers reconnect and resume, and the outcome equals a clean run.

This module has its own ``broker`` fixture (it overrides the session one for the tests here, and
the ``system`` fixture picks it up): restarting the shared broker would break the other tests.
The checks are the ones of ``test_reliability.py`` (see its docstring).

Status (2026-11-22, noida-db 0.2.3): the group either stalls (the coordinator defect) or recovers
and the check finds signals lost across the restart while the state is exact: the broker dropped
acknowledged records. Both are the broker's defects (docs/RELIABILITY.md, "Losses found"), so the
test is an expected failure on this broker; it stays as the proof to run against a real Kafka.
"""

from __future__ import annotations

import time

import pytest

from stream.broker import EmbeddedBroker, free_port

from . import test_reliability as rel  # a module import, so that its tests are not collected twice

pytestmark = pytest.mark.integration

N_EVENTS = 15_000
OUTAGE_S = 8.0  # seconds with no broker: every client connection fails, the clients must reconnect


@pytest.fixture
def broker(tmp_path):
    """A broker of this test's own, on a fixed port so that it can come back at the same address."""
    with EmbeddedBroker(tmp_path / "broker", port=free_port()) as b:
        yield b


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="noida-db 0.2.3 defects, reproduced outside the project (docs/RELIABILITY.md): its consumer group "
    "stalls after a restart, and it loses acknowledged records across a restart. The check itself is "
    "unchanged: against a broker without these defects the test must pass.",
)
def test_broker_restart_during_replay_loses_nothing(broker, system):
    settings, new_worker = system
    events = rel.simulated(N_EVENTS)
    w1, w2 = new_worker(), new_worker()
    w1.start()
    w2.start()
    rel.produce_events(settings.kafka_bootstrap_servers, settings.events_topic, events)
    at_stop = rel.wait_until(
        lambda: (n := rel.processed(settings)) >= N_EVENTS // 3 and n, "a third processed", [w1, w2], 240
    )

    broker.stop()  # SIGTERM to the broker process group
    time.sleep(OUTAGE_S)  # the outage (not an assertion: the workers must ride it out)
    assert w1.proc.poll() is None and w2.proc.poll() is None, "a worker died while the broker was down"
    broker.start()
    assert broker.bootstrap == settings.kafka_bootstrap_servers

    rel.wait_drained(settings, [w1, w2], timeout=300)
    rel.check_run(
        settings,
        events,
        "broker-restart",
        faults={"broker_restart": 1},
        committed_at_stop=at_stop,
        outage_s=OUTAGE_S,
    )
