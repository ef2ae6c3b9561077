"""The process agent handles the internal topic's records that Faust skipped inside a batch, in
their place (stream.agents.gaps).

After a SIGKILL with exactly-once, the restarted worker's first batch of a partition held the
record at the group's committed offset and then records 40 offsets on: the packs between were
never processed and, since the batch was committed, never would be. Two packs here: the batch
holds the first and the third; the second must be processed between them.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from models.events import Event
from stream.agents.gaps import GapFiller, Record
from stream.agents.records import PACK_KEY
from stream.app import create_app
from stream.logic.packing import pack
from stream.settings import Settings

KEY = "skipped-key-0123456789abcdef"
T0 = 1_700_000_000_000
TOPIC = "it-events-by-user"


def click(i: int) -> Event:
    return Event.from_dict({"event_id": f"e{i}", "user": "b" * 32, "type": "click", "ts": T0 + i * 1_000,
                            "item_id": f"i{i}", "category_id": "c1"})  # fmt: skip


class LogGaps(GapFiller):
    """Reads the internal partition from a log in memory; the group committed offset 28."""

    def __init__(self, log: dict[int, bytes]) -> None:
        async def committed(partitions: list[int]) -> dict[int, int]:
            return dict.fromkeys(partitions, 28)

        super().__init__(TOPIC, committed, lambda: None)
        self.log = log

    async def _read(self, partition: int, start: int, end: int) -> list[Record]:
        return [Record(partition, o, PACK_KEY, v, None) for o, v in sorted(self.log.items()) if start <= o < end]


def test_a_pack_skipped_inside_a_batch_is_processed_in_its_place(tmp_path):
    settings = Settings(data_dir=tmp_path, store="memory://", pseudonym_key=KEY, online_learning=False)
    app = create_app(settings, "127.0.0.1:1")
    app.finalize()
    rt = app.runtime
    log = {28 + 2 * k: pack([click(3 * k + j).to_dict() for j in range(3)], [None] * 3) for k in range(3)}
    rt.processor.gaps = LogGaps(log)  # offsets 28, 30, 32: markers between
    message = lambda offset: SimpleNamespace(topic=TOPIC, partition=1, offset=offset, key=PACK_KEY,  # noqa: E731
                                             value=log[offset], timestamp=None)  # fmt: skip
    batch = [SimpleNamespace(message=message(28)), SimpleNamespace(message=message(32))]  # 30 was dropped
    processed: list[str] = []

    async def process_items(items) -> None:
        processed.extend(it.event.event_id for it in items)

    rt.processor.process_items = process_items
    asyncio.run(rt.processor.process_packs(batch))
    assert processed == [f"e{i}" for i in range(9)], "the skipped pack, in its place"
