"""The internal topic's record format and its reader."""

import json

import pytest

from models.events import Event
from stream.history import UndecodableRecord, decode_record
from stream.logic.packing import MAX_EVENTS, pack, unpack


def test_a_pack_round_trips_events_in_order_with_their_timestamps():
    evs = [Event(f"e{i}", "u", "click", 1_700_000_000_000 + i, item_id="i").to_dict() for i in range(3)]
    assert unpack(pack(evs, [1, None, 3])) == list(zip(evs, [1, None, 3], strict=True))
    assert len(pack(evs * (MAX_EVENTS // 3), [None] * (3 * (MAX_EVENTS // 3)))) < 1_000_000


@pytest.mark.parametrize("bad", [b"[1, 2]", b'{"pack": 2, "events": [], "kts": []}', b'{"pack": 1, "events": [{}], "kts": []}'])
def test_what_is_not_a_pack_or_an_event_is_refused(bad):
    with pytest.raises(ValueError):
        unpack(bad)


def test_history_reader_keeps_the_good_events_of_a_pack_and_counts_the_bad_one():
    good = Event("e1", "u", "click", 1_700_000_000_000, item_id="i").to_dict()
    raw = pack([good, {**good, "event_id": "e2", "type": "refund"}], [None, None])
    out = decode_record(raw)
    assert out[0] == Event.from_dict(good)
    assert isinstance(out[1], UndecodableRecord) and out[1].reason == "unknown_type"
    assert decode_record(json.dumps(good).encode()) == [Event.from_dict(good)], "the single-event format"
    assert decode_record(b'{"pack": 1, "events": [1]}')[0].reason == "malformed_pack"
