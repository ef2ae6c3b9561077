"""A batch's signals are acknowledged before the state that remembers them is written.

State written first and signals lost (a crash, or a stop that cancels the batch while it waits
for the producer) would make the replayed events duplicates in the eyes of the restored state:
the signals would never be sent. Here the batch is cancelled while its signal waits for its
acknowledgement; nothing may be written, and the replay sends the same signal and writes once.
"""

from __future__ import annotations

import asyncio
import json

from models.events import Event
from stream.agents.records import Item
from stream.app import create_app
from stream.settings import Settings

from .recording import use_outputs

KEY = "order-key-0123456789abcdef"
T0 = 1_700_000_000_000


class HeldOutputs:
    """Outputs whose sends are acknowledged only when ``ack`` is set."""

    exactly_once = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.writes: list[bytes] = []
        self.ack = asyncio.Event()

    def send_soon(self, topic, key, value, partition=None, on_ack=None):
        self.sent.append((topic, key, value))

    async def send(self, topic, key, value, partition=None):
        self.sent.append((topic, key, value))
        return asyncio.ensure_future(self.ack.wait())

    async def delivered(self, futures):
        await asyncio.gather(*futures)

    async def send_written(self):
        return None

    def write(self, table, key, value, partition):
        self.writes.append(key)
        table.data[key] = value

    async def commit(self):
        return True


def test_a_batch_cancelled_before_its_signals_are_acknowledged_writes_nothing(tmp_path):
    settings = Settings(data_dir=tmp_path, store="memory://", pseudonym_key=KEY, online_learning=False)
    app = create_app(settings, "127.0.0.1:1")
    app.finalize()
    rt = app.runtime
    user = "a" * 32
    events = [Event.from_dict({"event_id": f"e{i}", "user": user, "type": "click", "ts": T0 + i * 1_000,
                               "item_id": f"i{i}", "category_id": "c1"}) for i in range(3)]  # fmt: skip

    def items():
        return [Item(0, ev, None, rt.router.partition_event(0)) for ev in events]

    async def scenario() -> tuple[list, list, list, bytes | None]:
        held = use_outputs(rt, HeldOutputs())
        batch = asyncio.ensure_future(rt.processor.process_items(items()))
        while not any(t in settings.signal_topics().values() for t, _k, _v in held.sent):
            await asyncio.sleep(0.01)
        batch.cancel()  # a stop, while the signal waits for the broker
        await asyncio.gather(batch, return_exceptions=True)
        first = [v for t, _k, v in held.sent if t in settings.signal_topics().values()]
        written_before = list(held.writes)

        replay = use_outputs(rt, HeldOutputs())  # the replay, with a broker that answers
        replay.ack.set()
        await rt.processor.process_items(items())
        second = [v for t, _k, v in replay.sent if t in settings.signal_topics().values()]
        return first, written_before, second, rt.table.data.get(user.encode())

    first, written_before, second, record = asyncio.run(scenario())
    assert first, "the batch sent no signal"
    assert written_before == [], "state written before its signals were acknowledged"
    ids = lambda values: sorted(json.loads(v)["signal_id"] for v in values)  # noqa: E731
    assert ids(second) == ids(first), "the replay did not send the same signals"
    assert record is not None, "the replay wrote no state"
