"""The query API on real workers and a real Kafka: any worker answers for any user (the owner
directly, the other by forwarding), the answers agree with the signals on the topics, the token
is enforced, and schemathesis finds nothing against the served OpenAPI document."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from stream.agents.records import partition_for
from stream.logic.ingest import Pseudonymizer
from stream.logic.simulator import ShopperSimulator

from .conftest import KEY, consume, jsonl, produce_events, read_all

pytestmark = pytest.mark.integration

TOKEN = "integration-api-token-0123456789"


def simulated(seed: int, users: int, n: int) -> list[dict]:
    """Simulated raw events moved in time so that the last is a second ago (the worker rejects
    events from more than an hour ahead)."""
    raw = ShopperSimulator(seed=seed, users=users, start_ms=0).take(n)
    shift = int(time.time() * 1000) - 1_000 - raw[-1]["ts"]
    return [{**e, "ts": e["ts"] + shift} for e in raw]


def call(port: int, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def settled(workers, n_partitions: int, timeout: float = 60.0) -> dict[int, int]:
    """Wait until the workers' partitions are disjoint and cover all; partition -> owner's port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = {w.web_port: call(w.web_port, "/v1/status")[1].get("partitions", []) for w in workers}
        flat = [p for ps in owned.values() for p in ps]
        if sorted(flat) == list(range(n_partitions)) and all(owned.values()):
            return {p: port for port, ps in owned.items() for p in ps}
        time.sleep(0.5)
    raise TimeoutError(f"partitions never settled: {owned}")


def test_any_worker_answers_for_any_user_and_agrees_with_the_signals(system):
    settings, new_worker = system
    w1, w2 = new_worker(INTENTSTREAM_API_TOKEN=TOKEN), new_worker(INTENTSTREAM_API_TOKEN=TOKEN)
    w1.start()
    w2.start()
    owner_of = settled([w1, w2], settings.events_partitions)
    raw = simulated(seed=4, users=30, n=1500)
    produce_events(settings.kafka_bootstrap_servers, settings.events_topic, raw)
    topics = list(settings.signal_topics().values())
    consume(settings.kafka_bootstrap_servers, topics, until=lambda m: len(m) >= 40, timeout=90)
    time.sleep(5)  # the last batches processed and their records written
    signals = jsonl(read_all(settings.kafka_bootstrap_servers, topics))
    last = {}
    for s in signals:
        last[(s["user"], s["task"])] = s["signal_id"]

    pseudo = Pseudonymizer(KEY.encode())
    users = sorted({e["user_id"] for e in raw})
    for raw_id in users:
        p = partition_for(pseudo(raw_id), settings.events_partitions)
        answers = [call(w.web_port, f"/v1/users/{urllib.request.quote(raw_id, safe='')}") for w in (w1, w2)]
        assert [s for s, _ in answers] == [200, 200], answers
        a, b = answers[0][1], answers[1][1]
        assert a["served_by"] == b["served_by"] == f"http://127.0.0.1:{owner_of[p]}"
        assert a["user"] == pseudo(raw_id) and a["partition"] == p
        for task, got in a["last_signals"].items():
            if (a["user"], task) in last:
                assert got is not None and got["signal_id"] == last[(a["user"], task)], (raw_id, task)
    assert len(users) >= 20
    m1, m2 = w1.metrics(), w2.metrics()
    assert 'intentstream_api_requests_total{result="forwarded"}' in m1
    total_fwd = sum(float(line.split()[-1]) for m in (m1, m2) for line in m.splitlines()
                    if line.startswith('intentstream_api_requests_total{result="forwarded"}'))  # fmt: skip
    assert total_fwd == len(users), "each user asked of both workers: the one not owning it forwarded"
    assert call(w1.web_port, "/v1/users/nobody-at-all")[0] == 404
    assert call(w2.web_port, "/v1/users/nobody-at-all")[0] == 404

    # The token: missing or wrong is 401 on either worker, before any forwarding.
    assert call(w1.web_port, f"/v1/users/{users[0]}", token=None)[0] == 401
    assert call(w2.web_port, f"/v1/users/{users[0]}", token="not-the-token-000000000")[0] == 401
    assert 'intentstream_api_requests_total{result="unauthorized"} 1.0' in w2.metrics()
    for w in (w1, w2):
        w.stop()
        log = w.log.read_text()
        assert not any(u in log for u in users), "a raw user id in a worker's log"


def test_schemathesis_against_a_running_worker(system):
    import hypothesis
    import schemathesis

    settings, new_worker = system
    w = new_worker(INTENTSTREAM_API_TOKEN=TOKEN)
    w.start()
    raw = simulated(seed=9, users=10, n=300)
    produce_events(settings.kafka_bootstrap_servers, settings.events_topic, raw)
    users = sorted({e["user_id"] for e in raw})
    deadline = time.monotonic() + 60
    while call(w.web_port, f"/v1/users/{users[-1]}")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    url = f"http://127.0.0.1:{w.web_port}"
    schema = schemathesis.openapi.from_url(url + "/v1/openapi.json")
    op = schema["/v1/users/{user_id}"]["GET"]
    seen: dict[int, int] = {}

    @hypothesis.settings(max_examples=80, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
    @hypothesis.given(case=op.as_strategy(), known=hypothesis.strategies.sampled_from([None, *users]))
    def check(case, known) -> None:
        if known is not None:
            case.path_parameters = {"user_id": known}
        r = case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1

    check()
    assert seen.get(200, 0) >= 5 and seen.get(404, 0) >= 5 and not any(s >= 500 for s in seen), seen
    w.stop()
