"""Fixtures that start real things: a local Apache Kafka broker and worker processes.

Clients on the test side are confluent-kafka (librdkafka), independent of the aiokafka client
inside the worker, so a test passing here says something about Kafka, not about one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, create_topics, free_port
from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key-0123456789abcdef"


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker.for_settings(Settings(), tmp_path_factory.mktemp("broker")) as b:
        yield b


class Worker:
    """A worker subprocess (``python -m stream.cli worker``) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.web_port = env, log, int(env["INTENTSTREAM_WEB_PORT"])
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=self.env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        while time.monotonic() - t0 < ready_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {ready_timeout} s:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process_group(self.proc, timeout, sig)


@pytest.fixture
def system(broker, tmp_path):
    """A fresh application id (own topics namespace for internal topics, own consumer group), its
    topics created, and a factory for workers. Every worker is stopped at teardown."""
    app_id = f"it-{uuid.uuid4().hex[:8]}"
    env_settings = {
        "INTENTSTREAM_APP_ID": app_id,
        "INTENTSTREAM_EVENTS_TOPIC": f"{app_id}.shop.events",
        "INTENTSTREAM_DLQ_TOPIC": f"{app_id}.shop.events.dlq",
        "INTENTSTREAM_INTENT_TOPIC": f"{app_id}.signals.purchase_intent",
        "INTENTSTREAM_CHURN_TOPIC": f"{app_id}.signals.churn_risk",
        "INTENTSTREAM_LATENT_TOPIC": f"{app_id}.signals.latent_needs",
        "INTENTSTREAM_PSEUDONYM_KEY": KEY,
        "INTENTSTREAM_STORE": "memory://",
        "INTENTSTREAM_BATCH_WAIT_MS": "20",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
    }
    settings = Settings(**{k.removeprefix("INTENTSTREAM_").lower(): v for k, v in env_settings.items()
                           if k.startswith("INTENTSTREAM_")}, kafka_bootstrap_servers=broker.bootstrap)  # fmt: skip
    asyncio.run(create_topics(settings, broker.bootstrap))
    workers: list[Worker] = []

    def new_worker(**extra: str) -> Worker:
        env = {**os.environ, **env_settings, "INTENTSTREAM_WEB_PORT": str(free_port()),
               "INTENTSTREAM_DATA_DIR": str(tmp_path / f"w{len(workers)}"), **extra}  # fmt: skip
        w = Worker(env, tmp_path / f"worker{len(workers)}.log")
        workers.append(w)
        return w

    yield settings, new_worker
    for w in workers:
        w.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in messages:
        p.produce(topic, key=key, value=value)
    assert p.flush(30) == 0, "messages left unsent"


def consume(bootstrap: str, topics: list[str], *, until, timeout: float = 60.0) -> list:
    """Read ``topics`` from the start until ``until(messages)`` is true or the timeout passes."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe(topics)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        c.close()
    return out


def jsonl(msgs) -> list[dict]:
    return [json.loads(m.value()) for m in msgs]


# ---------------------------------------------------------------------------------------------------
# Reliability helpers (tests/integration/test_reliability*.py): read topics to their end, watch the
# application's committed offsets, and compute the expected outcome of a run with the pure pipeline.


def read_all(bootstrap: str, topics: list[str], timeout: float = 60.0) -> list:
    """Every committed message of ``topics``, from the start to each partition's end as of the call.

    Unlike :func:`consume` it knows when it is done (the end of each partition), so it needs no
    guessed count. ``read_committed`` (librdkafka's default): records of aborted transactions are
    skipped, and a partition whose last records are transaction markers still ends.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})  # fmt: skip
    try:
        todo: set[tuple[str, int]] = set()
        for t in topics:
            for p in c.list_topics(t, timeout=10).topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if hi > lo:
                    todo.add((t, p))
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in todo])
        out: list = []
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topics} to their ends: {sorted(todo)} left")
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard((msg.topic(), msg.partition()))
                continue
            if (msg.topic(), msg.partition()) in todo:
                out.append(msg)
        return out
    finally:
        c.close()


def pending_after(bootstrap: str, tps_from: dict[tuple[str, int], int], timeout: float = 30.0) -> dict[tuple[str, int], int]:
    """Committed (``read_committed``) records at or after the given offset of each partition, up to
    its end: what a consumer that resumes there will still get. Transaction markers and aborted
    records take offsets but are not records, so with transactions this differs from the offsets'
    difference."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})  # fmt: skip
    try:
        found = dict.fromkeys(tps_from, 0)
        todo = set(tps_from)
        c.assign([TopicPartition(t, p, o) for (t, p), o in tps_from.items()])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard(tp)
                continue
            found[tp] += 1
        if todo:
            raise TimeoutError(f"could not read to the end of {sorted(todo)}")
        return found
    finally:
        c.close()


def group_lag(bootstrap: str, group: str, topics: list[str], *, exact: bool = False) -> dict[str, int]:
    """Messages of each topic not yet covered by ``group``'s committed offsets (end - committed).

    A partition with nothing committed counts all its messages. The application commits only after
    it has handled a batch and flushed its producer, so a lag of 0 means every output is written.
    ``exact``: count the committed records left instead of offsets (:func:`pending_after`), for
    topics written in transactions, whose markers and aborted records never get consumed.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        lag: dict[str, int] = {}
        behind: dict[tuple[str, int], int] = {}
        for t in topics:
            tps = [TopicPartition(t, p) for p in c.list_topics(t, timeout=10).topics[t].partitions]
            committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
            total = 0
            for tp in tps:
                lo, hi = c.get_watermark_offsets(tp, timeout=10)
                done = committed.get(tp.partition, -1)
                start = done if done >= 0 else lo
                total += hi - start
                if exact and hi > start:
                    behind[(t, tp.partition)] = start
            lag[t] = total
    finally:
        c.close()
    if exact:
        lag = dict.fromkeys(topics, 0)
        for (t, _p), n in pending_after(bootstrap, behind).items():
            lag[t] += n
    return lag


def produce_events(bootstrap: str, topic: str, events: list[dict]) -> None:
    """Raw simulator events as JSON, keyed by the raw user id (what a shop's producer does)."""
    produce(bootstrap, topic, [(e["user_id"].encode(), json.dumps(e, separators=(",", ":")).encode()) for e in events])


def expected_outcome(settings: Settings, events: list[dict]):
    """What a correct run over ``events`` must end with, computed by the pure pipeline.

    Returns ``(records, signals)``: the final :class:`UserRecord` of every pseudonymous user and
    ``{signal_id: task}`` of every signal. The workers run the same ``Pipeline`` on the same
    configuration; only batch boundaries and interleaving across users differ, and neither may
    change a user's state or signals (per-user order is kept by the topics' keys; the record is the
    same whatever the batching: ``tests/unit`` and the check in ``assert_same_state`` hold it).
    Churn risk depends on the event-time watermark of each partition; a replay that spans less
    than ``churn_risk_after_ms`` of event time (as these do) has none, which the caller asserts.
    """
    from stream.agents.records import partition_for
    from stream.agents.runtime import pipeline_config
    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.pipeline import Pipeline, UserRecord
    from stream.logic.scoring import RuleScorer

    ps = Pseudonymizer(settings.secret_key())
    pipe = Pipeline(pipeline_config(settings), RuleScorer(settings.churn_after_ms), clock=lambda: 0)
    records: dict[str, UserRecord | None] = {}
    signals: dict[str, str] = {}
    evs = [ingest_one(json.dumps(e).encode(), ps) for e in events]
    pairs = [(partition_for(e.user, settings.events_partitions), e) for e in evs]
    out = pipe.step(records, pairs, lambda _p, users: {u: records.get(u) for u in users})  # the workers' step
    assert not out.rejected, "simulated events are unique and in order"
    for u in out.deleted:
        records.pop(u, None)
    for s in out.signals:
        signals[s.signal_id] = s.task
    # Through the table's codec, as the workers store them (decayed values become float32).
    return {u: UserRecord.from_bytes(r.to_bytes()) for u, r in records.items() if r is not None}, signals


# Parts of UserState compared exactly (integers, event times, the rings, the cart) and
# approximately (decayed float32 values, sums of prices).
EXACT_STATE = ("first_seen", "last_ts", "totals", "n_sessions", "sess_start", "sess_counts", "prev_start",
               "prev_end", "prev_counts", "last_purchase_ts", "seen", "recent", "cart", "removed",
               "cart_cleared_ts")  # fmt: skip
APPROX_STATE = ("counts", "sess_value", "prev_value", "spend", "categories", "terms")


def state_differences(expected: dict, actual: dict[bytes, bytes]) -> list[str]:
    """Every difference between expected records and the table's changelog (key -> last value).

    Empty when each user's state is the one a clean run gives: exact parts equal, decayed values
    within float32 rounding, policy memory equal, and no user missing or extra.
    """
    from stream.logic.pipeline import UserRecord

    diffs: list[str] = []
    keys = {k.decode() for k in actual}
    for u in sorted(keys - expected.keys()):
        diffs.append(f"{u[:12]}: in the table, not expected")
    for u, exp in sorted(expected.items()):
        raw = actual.get(u.encode())
        if raw is None:
            diffs.append(f"{u[:12]}: missing from the table")
            continue
        got = UserRecord.from_bytes(raw)
        e, g = exp.state.snapshot(), got.state.snapshot()
        for name in EXACT_STATE:
            if e[name] != g[name]:
                diffs.append(f"{u[:12]}: {name} expected {e[name]!r:.120} got {g[name]!r:.120}")
        for name in APPROX_STATE:
            ev, gv = e[name], g[name]
            if isinstance(ev, list) and ev and isinstance(ev[0], tuple):  # sorted dict items
                if [k for k, _ in ev] != [k for k, _ in gv]:
                    diffs.append(f"{u[:12]}: {name} keys expected {[k for k, _ in ev]} got {[k for k, _ in gv]}")
                    continue
                ev, gv = [v for _, v in ev], [v for _, v in gv]
            if gv != pytest.approx(ev, rel=1e-5, abs=1e-9):
                diffs.append(f"{u[:12]}: {name} expected {ev!r:.120} got {gv!r:.120}")
        # The latent-needs policy is a pure function of the state; the intent and churn policies
        # follow the online learners (per partition, order- and batch-dependent): not compared here,
        # see ``unbacked_policy`` for what is checked about them.
        if (exp.policy.latent, exp.policy.latent_emit_ts) != (got.policy.latent, got.policy.latent_emit_ts):
            diffs.append(f"{u[:12]}: latent policy expected {exp.policy} got {got.policy}")
    return diffs


def unbacked_policy(table: dict[bytes, bytes], messages: list) -> list[str]:
    """Users whose policy memory says a signal was emitted that is not on the signal topics.

    Holds whatever model scored the event: ``policy.<task>.last_emit_ts`` is set only together
    with the signal of that event time, so a record (as committed to the changelog) that remembers
    an emission whose signal is missing means the signal was lost.
    """
    from stream.logic.pipeline import UserRecord
    from stream.logic.policy import NEVER

    emitted = {(json.loads(m.value())["user"], json.loads(m.value())["task"], json.loads(m.value())["ts"]) for m in messages}
    out = []
    for key, raw in table.items():
        user, pol = key.decode(), UserRecord.from_bytes(raw).policy
        for task, ts in (("purchase_intent", pol.intent.last_emit_ts), ("latent_needs", pol.latent_emit_ts)):
            if ts != NEVER and (user, task, ts) not in emitted:
                out.append(f"{user[:12]}: {task} at {ts} remembered, not emitted")
    return out


# Fields of a signal that are the scoring model's, not the user's: the online learners that score
# purchase intent and churn risk are per partition and keep learning, so a worker that re-applies a
# replayed event after a crash scores it with a learner that moved on (docs/RELIABILITY.md).
LEARNER_FIELDS = frozenset({"score", "model_versions", "reasons", "cold"})
LEARNER_TASKS = frozenset({"purchase_intent", "churn_risk"})


def signal_report(expected: dict[str, str], messages: list) -> dict:
    """Check the signals read from the signal topics against ``{signal_id: task}``.

    Returns counts and the problems found: ``missing`` and ``unexpected`` ids, copies of one id
    that are not the same signal, and signals whose key is not their user. A copy must equal the
    first in everything but ``emitted_at``; for the learner-scored tasks, also but
    :data:`LEARNER_FIELDS` (the emitting worker's learner). ``differing_copies`` lists
    ``(signal_id, fields that differ)``; ``rescored_copies`` counts the ids whose copies differ only
    in learner fields.
    """
    from collections import defaultdict

    copies: dict[str, list[dict]] = defaultdict(list)
    bad_keys = 0
    for m in messages:
        s = json.loads(m.value())
        copies[s["signal_id"]].append(s)
        if m.key() != s["user"].encode():
            bad_keys += 1
    differing, rescored = [], 0
    for sid, group in copies.items():
        first = group[0]
        fields = sorted({k for s in group[1:] for k in first.keys() | s.keys() if k != "emitted_at" and s.get(k) != first.get(k)})
        allowed = LEARNER_FIELDS if first["task"] in LEARNER_TASKS else frozenset()
        if set(fields) - allowed:
            differing.append((sid, fields))
        elif fields:
            rescored += 1
    wrong_task = [sid for sid, g in copies.items() if sid in expected and g[0]["task"] != expected[sid]]
    return {
        "received": len(messages),
        "unique": len(copies),
        "duplicates": len(messages) - len(copies),
        # Exact only for the tasks in ``expected`` (the caller passes the deterministic ones).
        "missing": sorted(expected.keys() - copies.keys()),
        "unexpected": sorted(k for k in copies.keys() - expected.keys() if copies[k][0]["task"] in set(expected.values())),
        "differing_copies": differing,
        "rescored_copies": rescored,
        "wrong_task": wrong_task,
        "bad_keys": bad_keys,
    }


def committed_events(bootstrap: str, group: str, topic: str) -> int:
    """Events (not records: the internal topic packs events, ``stream.logic.packing``) of
    ``topic`` below ``group``'s committed offsets: the events handled for good."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.logic.packing import unpack

    # read_uncommitted: a read_committed consumer asks for stable offsets, which the broker refuses
    # while a killed worker's transaction is open (until it times out); the committed ones are wanted.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_uncommitted"})  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()
    return sum(
        len(unpack(m.value())) for m in read_all(bootstrap, [topic]) if m.offset() < committed.get(m.partition(), -1)
    )


def rewind_group(bootstrap: str, group: str, topics: list[str], by: int) -> int:
    """Move ``group``'s committed offsets of ``topics`` back by ``by`` per partition (not below 0),
    as an operator replaying a tail would; only while no member of the group is running.
    Returns how many messages will be delivered again."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in c.list_topics(t, timeout=10).topics[t].partitions]
        committed = c.committed(tps, timeout=10)
        back = [TopicPartition(tp.topic, tp.partition, max(0, tp.offset - by)) for tp in committed if tp.offset > 0]
        c.commit(offsets=back, asynchronous=False)
        return sum(tp.offset - b.offset for tp, b in zip([t for t in committed if t.offset > 0], back, strict=True))
    finally:
        c.close()
