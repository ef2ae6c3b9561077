"""The agents in Faust's own test harness (``Agent.test_context()``, ``memory://`` store).

No broker: the harness feeds events straight into each agent's stream, and what the agents send
to topics is captured. This checks the shell (decode, batching, table writes, sends) around the
pure pipeline; tests/integration runs the same code against a real broker.
"""

import asyncio
import json

import pytest

from stream.agents.records import partition_for
from stream.app import create_app
from stream.logic.ingest import Pseudonymizer
from stream.logic.packing import unpack
from stream.settings import Settings

KEY = "harness-key-0123456789abcdef"
T0 = 1_700_000_000_000


@pytest.fixture
def app(tmp_path):
    settings = Settings(data_dir=tmp_path, store="memory://", pseudonym_key=KEY, batch_wait_ms=10, ingest="faust")
    app = create_app(settings, "127.0.0.1:1")
    app.finalize()
    sent: dict[str, list[tuple]] = {}

    def capture(topic):
        name = topic.get_topic_name()

        def send_soon(*, key=None, value=None, partition=None, **kw):
            sent.setdefault(name, []).append((key, value, partition))

        async def send(*, key=None, value=None, partition=None, **kw):  # signals are sent at once
            send_soon(key=key, value=value, partition=partition)
            acked = asyncio.get_running_loop().create_future()  # the delivery future, acknowledged
            acked.set_result(None)
            return acked

        topic.send_soon = send_soon
        topic.send = send

    rt = app.runtime
    for t in (rt.topics.by_user, rt.topics.dlq, *rt.topics.signals.values()):
        capture(t)
    app.sent = sent
    return app


def raw(i, typ, user="alice", **kw):
    return json.dumps({"event_id": f"e{i}", "user_id": user, "type": typ, "ts": T0 + i * 10_000, **kw}).encode()


async def wait_for(pred, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_ingest_agent_forwards_pseudonymised_and_dead_letters_bad_input(app):
    async def run():
        agent = app.agents["ingest"]
        async with agent.test_context() as a:
            await a.put(raw(1, "click", item_id="i1"), key=b"alice")
            await a.put(b'{"broken', key=b"bob")
            await a.put(raw(2, "refund"), key=b"alice")
            await wait_for(lambda: len(app.sent.get("intentstream-events-by-user", [])) == 1
                           and len(app.sent.get("shop.events.dlq", [])) == 2)

    asyncio.run(run())
    (key, value, partition), = app.sent["intentstream-events-by-user"]
    pseudonym = Pseudonymizer(KEY.encode())("alice")
    (event, _kts), = unpack(value)  # one pack per partition and batch
    assert event["user"] == pseudonym and partition == partition_for(pseudonym, 4)
    assert b"alice" not in value
    reasons = sorted(json.loads(v)["reason"] for _, v, _ in app.sent["shop.events.dlq"])
    assert reasons == ["malformed_json", "unknown_type"]


def test_process_agent_writes_state_once_per_user_and_emits_intent(app):
    user = Pseudonymizer(KEY.encode())("alice")

    def canon(i, typ, **kw):
        return json.dumps({"event_id": f"e{i}", "user": user, "type": typ, "ts": T0 + i * 10_000, **kw}).encode()

    async def run():
        agent = app.agents["process"]
        async with agent.test_context() as a:
            for i, typ in enumerate(["click", "click", "add_to_cart", "add_to_cart", "click"]):
                await a.put(canon(i, typ, item_id=f"i{i % 2}", category_id="shoes", price=20.0), key=user.encode(), partition=0)
            await a.put(canon(3, "add_to_cart", item_id="i1"), key=user.encode(), partition=0)  # duplicate id
            await wait_for(lambda: app.runtime.table.get(user.encode()) is not None
                           and app.sent.get("shop.events.dlq"))

    asyncio.run(run())
    intents = app.sent.get("signals.purchase_intent", [])
    assert len(intents) == 1, "one rising edge, then the cooldown holds"
    sig = json.loads(intents[0][1])
    assert sig["user"] == user and sig["task"] == "purchase_intent" and sig["score"] >= sig["threshold"]
    assert sig["reasons"] and sig["model_versions"]
    assert json.loads(app.sent["shop.events.dlq"][0][1])["reason"] == "duplicate_event_id"
    latent = json.loads(app.sent["signals.latent_needs"][0][1])
    assert latent["categories"][0]["category_id"] == "shoes"


def test_changelog_topic_names_are_faust_s(app):
    """create_topics creates the tables' changelogs itself (stream/broker.py): under Faust's names."""
    settings = app.runtime.settings
    names = {name: t.changelog_topic.get_topic_name() for name, t in app.tables.items()}
    assert names == settings.changelog_topics()
