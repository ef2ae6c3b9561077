"""The raw ingest's router follows every pack it forwards, so that a gate never opens before this
worker's own packs are processed (stream.logic.routing).

With exactly-once, packs forwarded while a rebalance was under way sit in the worker's open
transaction when the gate is armed: the end offset the gate is armed with (a ``read_committed``
end offset, the last stable offset) is below them, and they are acknowledged only at the commit.
A gate that opened on the end offset would let events read after those packs be processed here
first; the packs' events would then come second and be dead-lettered as ``late_event``, lost from
the state.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from stream.agents.records import DONE_KEY, PACK_KEY
from stream.agents.router import LocalRouter
from stream.settings import Settings


class TransactionOutputs:
    """Records sends; acknowledges them (with their offsets) only at :meth:`commit`."""

    exactly_once = True

    def __init__(self) -> None:
        self.pending: list = []

    def send_soon(self, topic, key, value, partition=None, on_ack=None) -> None:
        self.pending.append((partition, key, on_ack))

    def commit(self, first_offset: int) -> None:
        pending, self.pending = self.pending, []
        for offset, (_partition, _key, on_ack) in enumerate(pending, start=first_offset):
            if on_ack is not None:
                on_ack(offset)


def router(outputs: TransactionOutputs) -> LocalRouter:
    topics = SimpleNamespace(by_user=SimpleNamespace(get_topic_name=lambda: "it-events-by-user"))
    app = SimpleNamespace(rebalancing=True, rebalancing_count=1)
    return LocalRouter(app, Settings(pseudonym_key="gates-key-0123456789abcdef"), topics, None,  # type: ignore[arg-type]
                       outputs, asyncio.Lock(), enabled=True, bootstrap=None, process=None)  # type: ignore[arg-type]  # fmt: skip


def test_a_pack_forwarded_during_the_rebalance_holds_the_gate_until_it_is_processed():
    outputs = TransactionOutputs()
    r = router(outputs)
    route = r.routing
    route.reset(1)  # a rebalance is under way: every partition is closed, no gate armed yet
    r.send_packed([(2, b"pack")], PACK_KEY)  # forwarded to our own partition, in the open transaction
    r.send_packed([(2, b"done")], DONE_KEY)  # history only: nothing waits for it
    assert route.arm(1, {2: 10})  # the last stable offset stops before the open transaction's pack
    assert route.open({2: 10}) == set(), "the pack is not even committed"
    outputs.commit(first_offset=12)  # the pack at 12, the history record at 13
    assert route.open({2: 12}) == set(), "committed but not processed"
    assert route.open({2: 13}) == {2}
    assert route.local == {2}


def test_a_pack_in_the_open_transaction_holds_the_gate_whatever_was_acknowledged_before():
    """A pack forwarded before arming is acknowledged after it (at the next commit); a later pack
    is still in the open transaction when the group has processed everything committed. The gate
    waits for the later pack too."""
    outputs = TransactionOutputs()
    r = router(outputs)
    route = r.routing
    route.reset(1)
    r.send_packed([(2, b"before arming")], PACK_KEY)
    assert route.arm(1, {2: 10})
    outputs.commit(first_offset=12)
    r.send_packed([(2, b"after arming")], PACK_KEY)  # in the open transaction, offset unknown yet
    assert route.open({2: 13}) == set(), "a pack of ours is neither committed nor processed"
    outputs.commit(first_offset=15)
    assert route.open({2: 15}) == set()
    assert route.open({2: 16}) == {2}
