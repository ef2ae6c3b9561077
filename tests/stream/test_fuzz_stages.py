"""Property-based fuzz of the worker's two stages, as the raw ingest and the process agent run them.

Hypothesis makes batches of input records: arbitrary bytes, JSON nested thousands deep, records of
up to a few MB, valid events with one field replaced by any JSON value or by a Unicode edge case
(lone surrogates, NUL, non-characters, long multi-byte ids), and plain valid events. Each batch goes
through ``Ingest.guarded`` and the packs it forwards through ``process_items``, with
every output captured. Whatever the batch holds, each record must end in exactly one place, every
produced record must fit the producer's limit, and nothing may end as ``processing_error`` (that
reason is for our own bugs).
"""

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import Event
from stream.agents.records import PACK_KEY, Item, RawMessage
from stream.app import create_app
from stream.logic.ingest import REASONS
from stream.logic.packing import unpack
from stream.settings import Settings

from .recording import use_outputs

KEY = "fuzz-key-0123456789abcdef"
T0 = 1_700_000_000_000
TYPES = ["click", "view", "search", "add_to_cart", "cart", "purchase", "refund", 7, None]
EDGE_TEXT = [
    "\ud800", "a\udfffb", "\x00", "\uffff", "\U0010ffff", "\u202e", "e\u0301", "😀" * 128, "é" * 129, " ",
    "x" * 1000, "",
]  # fmt: skip


def valid(run: int, i: int, user: str, rng: int) -> dict:
    typ = ["click", "search", "add_to_cart", "purchase"][rng % 4]
    ev = {"event_id": f"e{run}-{i}", "user_id": user, "type": typ, "ts": T0 + run * 60_000 + i * 1_000}
    if typ == "search":
        ev["query"] = f"shoes {rng % 7}"
    else:
        ev.update(item_id=f"i{rng % 13}", category_id=f"c{rng % 5}", price=float(rng % 50) + 0.5)
    return ev


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["event_id", "user_id", "type", "ts", "item_id", "category_id", "price", "quantity", "query", "session_id"]


@st.composite
def record(draw: st.DrawFn, run: int, i: int) -> bytes:
    user = draw(st.sampled_from(["alice", "bob", "carol", "dave", "😀" * 40]))
    kind = draw(st.sampled_from(["valid", "valid", "bytes", "nested", "size", "field", "unicode"]))
    ev = valid(run, i, user, draw(st.integers(0, 10_000)))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "nested":
        depth = draw(st.integers(1, 20_000))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return (opener * depth + "1" + closer * depth).encode()
    if kind == "size":
        n = draw(st.integers(0, 3_000_000))
        ev[draw(st.sampled_from(["query", "item_id", "pad"]))] = "x" * n
    elif kind == "field":
        ev[draw(st.sampled_from(FIELDS))] = draw(json_values)
    elif kind == "unicode":
        ev[draw(st.sampled_from(FIELDS))] = draw(st.sampled_from(EDGE_TEXT))
    return json.dumps(ev).encode()


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    n, run = draw(st.integers(1, 30)), draw(st.integers(0, 100_000))  # run: event ids and times of its own
    return [draw(record(run, i)) for i in range(n)]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), store="memory://", pseudonym_key=KEY)
    app = create_app(settings_, "127.0.0.1:1")
    app.finalize()
    rt = app.runtime
    sent: list[tuple[str, bytes | None, bytes]] = []

    class Recording:
        """The runtime's outputs, kept in a list; table writes go to the table's store."""

        exactly_once = False

        def send_soon(self, topic, key, value, partition=None, on_ack=None):
            sent.append((topic, key, value))

        async def send(self, topic, key, value, partition=None):
            sent.append((topic, key, value))

        async def delivered(self, futures):
            return None

        async def send_written(self):
            return None

        def write(self, table, key, value, partition):
            sent.append(("changelog", key, value or b""))
            if value is None:
                table.data.pop(key, None)
            else:
                table.data[key] = value

    use_outputs(rt, Recording())
    return rt, sent


def count_applied(rt) -> float:
    return sum(s.value for metric in rt.metrics.events_consumed.collect() for s in metric.samples
               if s.name.endswith("_total") and s.labels["type"] != "invalid")  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])  # fmt: skip
@given(batch=batches())
def test_every_record_ends_in_exactly_one_place(worker, batch):
    rt, sent = worker
    s = rt.settings
    by_user = rt.topics.by_user.get_topic_name()
    sent.clear()
    msgs = [RawMessage(v, b"k", s.events_topic, 0, off, T0) for off, v in enumerate(batch)]
    rt.ingest.guarded(msgs)

    dead = [json.loads(v) for t, _k, v in sent if t == s.dlq_topic]
    packs = [v for t, k, v in sent if t == by_user and k == PACK_KEY]
    forwarded = [(partition_of, d, kts) for v in packs for partition_of in [0] for d, kts in unpack(v)]
    forwarded += [(it.partition, it.event.to_dict(), None) for it in rt.router.here]
    rt.router.here.clear()
    offsets = [d["offset"] for d in dead]
    assert len(offsets) == len(set(offsets)), "a record dead-lettered twice"
    assert len(dead) + len(forwarded) == len(batch), "a record lost or forwarded twice"
    assert all(d["reason"] in REASONS and d["reason"] != "processing_error" for d in dead), dead
    assert all(len(v) <= s.max_record_bytes for _t, _k, v in sent)
    for d in dead:
        assert d["original_bytes"] == len(batch[d["offset"]])
        assert d["original_truncated"] == (len(batch[d["offset"]]) > s.dead_letter_max_bytes)

    # The process stage, as the process agent calls it (the partition only picks the table's store).
    sent.clear()
    applied_before = count_applied(rt)
    items = [Item(p, Event.from_dict(d), None, rt.router.partition_event(p)) for p, d, _kts in forwarded]
    asyncio.run(rt.processor.process_items(items))
    dead = [json.loads(v) for t, _k, v in sent if t == s.dlq_topic]
    assert all(d["reason"] in ("duplicate_event_id", "late_event") for d in dead), dead
    assert count_applied(rt) - applied_before + len(dead) == len(items)
    assert all(len(v) <= s.max_record_bytes for _t, _k, v in sent)


def test_a_thousand_long_multibyte_ids_fit_the_producer_limit(worker):
    """The crash loop the fuzz run found: 128-character multi-byte ids made packs of 1.4-1.9 MB."""
    rt, sent = worker
    s = rt.settings
    sent.clear()
    long = "😀" * 128
    msgs = [RawMessage(json.dumps({"event_id": f"{long[:-6]}{i:06d}", "user_id": f"{long[:-6]}{i % 7:06d}",
                                   "type": "click", "ts": T0 + i, "item_id": long, "category_id": long}).encode(),
                       None, s.events_topic, 1, i, T0) for i in range(1000)]  # fmt: skip
    rt.ingest.guarded(msgs)
    packs = [v for t, k, v in sent if t == rt.topics.by_user.get_topic_name() and k == PACK_KEY]
    assert sum(len(unpack(v)) for v in packs) + len(rt.router.here) == 1000
    rt.router.here.clear()
    assert max(map(len, packs)) <= s.max_record_bytes
    assert sum(map(len, packs)) > 2 * s.max_record_bytes, "the batch is big enough to need splitting"

    # Processed in two halves: the second reads back the records (and the policies' long latent
    # categories) that the first wrote.
    items = [Item(p, Event.from_dict(d), None, rt.router.partition_event(p)) for v in packs for p in [0] for d, _ in unpack(v)]
    sent.clear()
    applied_before = count_applied(rt)
    for half in (items[:500], items[500:]):
        asyncio.run(rt.processor.process_items(half))
    assert [json.loads(v)["reason"] for t, _k, v in sent if t == s.dlq_topic] == []
    assert count_applied(rt) - applied_before == 1000
