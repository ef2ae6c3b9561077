"""Ingest: validation reasons, pseudonymisation, and that every message is accounted for."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import InvalidEvent, parse_event
from stream.logic.ingest import REASONS, Pseudonymizer, ingest_one

KEY = b"test-key-0123456789abcdef"
P = Pseudonymizer(KEY)
NOW = 1_800_000_000_000


def good(**kw):
    ev = {"event_id": "e1", "user_id": "alice", "type": "click", "ts": 1_700_000_000_000, "item_id": "i1"}
    ev.update(kw)
    return json.dumps(ev).encode()


def reason(raw, **kw):
    with pytest.raises(InvalidEvent) as exc:
        ingest_one(raw, P, now_ms=NOW, **kw)
    return exc.value.reason


def test_valid_event_is_pseudonymised_with_a_keyed_hash():
    ev = ingest_one(good(), P, now_ms=NOW)
    assert ev.user != "alice" and len(ev.user) == 32
    assert ev.user == Pseudonymizer(KEY)("alice")  # stable across instances
    assert ev.user != Pseudonymizer(b"another-key-0123456789")("alice")  # keyed
    assert "alice" not in json.dumps(ev.to_dict())
    assert "test-key" not in repr(P)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"event_id": 1', "malformed_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (good(type="refund"), "unknown_type"),
        (good(type=None), "missing_field"),
        (json.dumps({"user_id": "a", "type": "click", "ts": 1_700_000_000_000, "item_id": "i"}).encode(), "missing_field"),
        (good(item_id=None), "missing_field"),
        (good(type="search", item_id=None), "missing_field"),
        (good(price="cheap"), "wrong_type"),
        (good(price=-1), "out_of_range"),
        (good(quantity=0), "out_of_range"),
        (good(quantity=1.5), "wrong_type"),
        (good(item_id={"a": 1}), "wrong_type"),
        (good(item_id="x" * 200), "field_too_long"),
        (good(ts=1_700_000_000), "timestamp_too_old"),  # epoch seconds
        (good(ts="2023-11-14T22:13:20"), "bad_timestamp"),  # no zone
        (good(ts="yesterday"), "bad_timestamp"),
        (good(ts=NOW + 2 * 3_600_000), "timestamp_in_future"),
        (good(ts=True), "wrong_type"),
        (None, "missing_field"),
    ],
)
def test_bad_input_is_rejected_with_a_named_reason(raw, expected):
    assert reason(raw) == expected
    assert expected in REASONS


def test_oversized_payload():
    assert reason(good(query="q" * 100), max_bytes=64) == "oversized"


def test_view_is_an_alias_of_click_and_rfc3339_is_accepted():
    ev = ingest_one(good(type="view", ts="2023-11-14T22:13:20+00:00"), P, now_ms=NOW)
    assert ev.type == "click" and ev.ts == 1_700_000_000_000


def test_required_fields_per_type():
    base = {"event_id": "e", "user_id": "u", "ts": 1_700_000_000_000}
    assert parse_event({**base, "type": "purchase"}).type == "purchase"  # order-level feeds have no item
    assert parse_event({**base, "type": "search", "query": "  red shoes "}).query == "red shoes"
    assert parse_event({**base, "type": "add_to_cart", "item_id": 7, "quantity": 2.0}).quantity == 2


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
objects = st.dictionaries(
    st.sampled_from(["event_id", "user_id", "type", "ts", "item_id", "price", "quantity", "query", "x"]),
    st.one_of(values, st.sampled_from(["click", "view", "search", "add_to_cart", "purchase"]),
              st.integers(1_600_000_000_000, 1_800_000_000_000)),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(objects.map(lambda o: json.dumps(o).encode()), st.binary(max_size=64)))
def test_any_input_is_either_an_event_or_a_known_reason(raw):
    try:
        ev = ingest_one(raw, P, now_ms=NOW)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
    else:
        assert ev.type in ("click", "search", "add_to_cart", "purchase") and len(ev.user) == 32


def test_each_input_partition_is_ingested_by_exactly_one_worker():
    """The raw ingest reads the input partitions that go with a worker's internal ones: however
    Faust splits the internal partitions among workers, every input partition has one reader,
    also when the input topic has more or fewer partitions than the internal one."""
    import random

    from stream.agents.records import ingest_partitions

    rng = random.Random(5)
    for _ in range(200):
        n_internal, n_input, workers = rng.randint(1, 12), rng.randint(1, 30), rng.randint(1, 5)
        owner = {p: rng.randrange(workers) for p in range(n_internal)}
        readers = [ingest_partitions({p for p, w in owner.items() if w == k}, n_input, n_internal) for k in range(workers)]
        assert sorted(p for r in readers for p in r) == list(range(n_input))
