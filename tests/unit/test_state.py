"""Per-user state: order independence within the lateness, lateness and duplicates, sessions, cart,
affinity, serialization and migration, and the size budget."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import Event, parse_event
from models.features.online import online_features
from models.features.recent import RecentEvent, as_float32
from models.features.state import (
    APPLIED,
    DUPLICATE,
    LATE,
    MINUTE_MS,
    StateConfig,
    UserState,
    apply_event,
    event_id_hash,
    is_expired,
    top_categories,
)
from models.features.state.layout import _REC, _REC_V3
from tests.state_records import encode_v1, encode_v2, encode_v3, ring_span

T0 = 1_700_000_000_000
CFG = StateConfig()
# Cart cap above the number of events a test draws, so no line is ever evicted (eviction is the
# one documented place where order can matter).
PROP_CFG = dataclasses.replace(CFG, max_cart_lines=64)
GAP = CFG.session_gap_ms
LATENESS = CFG.allowed_lateness_ms


def click(eid: str, ts: int, item: str = "i1", cat: str | None = "c1", price: float | None = 5.0) -> Event:
    return Event(eid, "u", "click", ts, item_id=item, category_id=cat, price=price)


def build(events: list[Event], cfg: StateConfig = CFG) -> tuple[UserState, list[str]]:
    state = UserState.new()
    return state, [apply_event(state, e, cfg) for e in events]


def assert_same_state(a: UserState, b: UserState) -> None:
    """Equal up to float rounding: ints, ids and rings exactly, decayed floats approximately."""
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert _close(sa[key], sb[key]), f"{key}: {sa[key]!r} != {sb[key]!r}"


def _close(x: object, y: object) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-9)  # type: ignore[arg-type]
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_close(p, q) for p, q in zip(x, y, strict=True))
    return x == y


# -- strategies -------------------------------------------------------------------------------------

# Gaps chosen to hit every boundary: ties, the lateness, just under/over the session gap, and the
# 29.5 min + 45 s pair that lets a late event bridge two sessions.
GAPS = [
    0,
    1,
    700,
    45_000,
    LATENESS,
    LATENESS + 1,
    29 * MINUTE_MS + 30_000,
    GAP,
    GAP + 1,
    3_600_000,
    86_400_000,
]


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 30) -> list[Event]:
    """Events of one user in ts order, with unique ids, small id vocabularies (categories and
    terms stay within the top-K capacity) and every event type."""
    n = draw(st.integers(1, max_size))
    ts = T0
    out = []
    for i in range(n):
        ts += draw(st.sampled_from(GAPS))
        etype = draw(st.sampled_from(["click", "click", "search", "add_to_cart", "purchase"]))
        item = draw(st.sampled_from(["i1", "i2", "i3"]))
        kw: dict = {}
        if etype == "search":
            kw["query"] = draw(st.sampled_from(["red shoes", "Shoes", "blue lamp", "lamp shade"]))
        elif etype == "purchase":
            kw["item_id"] = draw(st.sampled_from([None, item]))
            kw["price"] = draw(st.sampled_from([None, 20.0, 9.99]))
            kw["quantity"] = draw(st.sampled_from([None, 2]))
        else:
            kw["item_id"] = item
            kw["price"] = draw(st.sampled_from([None, 9.99, 120.0]))
            if etype == "add_to_cart":
                kw["quantity"] = draw(st.sampled_from([None, 1, 3]))
        if etype != "search" or draw(st.booleans()):
            kw["category_id"] = draw(st.sampled_from(["shoes", "lamps", "books"]))
        out.append(Event(f"e{i}", "u", etype, ts, **kw))
    return out


@st.composite
def shuffled_within_lateness(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """(events in ts order, the same events in an arrival order where none is late).

    Arrival sorted by ts + jitter with jitter in [0, lateness]: an event then never arrives after
    one that is more than the lateness newer than it.
    """
    events = draw(event_lists())
    jitter = draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    order = sorted(range(len(events)), key=lambda i: (events[i].ts + jitter[i], i))
    return events, [events[i] for i in order]


# -- order independence -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(shuffled_within_lateness())
def test_any_arrival_order_within_the_lateness_gives_the_same_state(pair):
    in_order, arrived = pair
    a, status_a = build(in_order, PROP_CFG)
    b, status_b = build(arrived, PROP_CFG)
    assert status_a == status_b == [APPLIED] * len(in_order)
    assert_same_state(a, b)
    assert_same_state(UserState.from_bytes(a.to_bytes()), UserState.from_bytes(b.to_bytes()))
    now = a.last_ts + 90_000
    assert online_features(b, now, PROP_CFG) == pytest.approx(
        online_features(a, now, PROP_CFG), rel=1e-6, abs=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(shuffled_within_lateness())
def test_recent_ring_is_the_newest_events_by_ts_then_id_hash(pair):
    _, arrived = pair
    state, _ = build(arrived, PROP_CFG)
    newest = sorted(arrived, key=lambda e: (e.ts, event_id_hash(e.event_id)))[-CFG.recent_n :]
    assert state.recent == [RecentEvent.from_event(e) for e in newest]
    assert UserState.from_bytes(state.to_bytes()).recent == state.recent


@st.composite
def purchases_within_lateness(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """(purchases in ts order, an arrival order where none is late), spaced by the gaps that
    matter for purchase occasions: ties, under/over the session gap, and the 29.5 min + 45 s pair
    that lets a late purchase bridge two occasions; a click now and then moves ``last_ts``."""
    n = draw(st.integers(1, 25))
    ts, out = T0, []
    for i in range(n):
        ts += draw(st.sampled_from(GAPS))
        kind = draw(st.sampled_from(["purchase", "purchase", "purchase", "click"]))
        if kind == "purchase":
            out.append(Event(f"p{i}", "u", "purchase", ts, price=draw(st.sampled_from([None, 9.5]))))
        else:
            out.append(click(f"c{i}", ts))
    jitter = draw(st.lists(st.integers(0, LATENESS), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: (out[i].ts + jitter[i], i))
    return out, [out[i] for i in order]


def occasions_of(times: list[int]) -> int:
    """Reference: purchases more than the session gap apart start an occasion."""
    times = sorted(times)
    return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > GAP)


@settings(max_examples=300, deadline=None)
@given(purchases_within_lateness())
def test_purchase_rhythm_is_exact_in_any_arrival_order_within_the_lateness(pair):
    in_order, arrived = pair
    a, status_a = build(in_order)
    b, status_b = build(arrived)
    assert status_a == status_b == [APPLIED] * len(in_order)
    assert_same_state(a, b)  # occasion bookkeeping included: the record is canonical
    times = [e.ts for e in in_order if e.type == "purchase"]
    for state in (a, b, UserState.from_bytes(b.to_bytes())):
        assert state.purchase_occasions == occasions_of(times)
        assert state.first_purchase_ts == min(times, default=0)
        assert state.last_purchase_ts == max(times, default=0)


# -- invariants ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(event_lists(), st.integers(0, 10 * 86_400_000))
def test_counts_never_negative_and_decayed_values_never_grow_without_events(events, wait_ms):
    state, _ = build(events)
    assert min(state.totals) >= 0 and min(state.sess_counts) >= 0 and state.n_sessions >= 1
    assert min(state.counts) >= 0 and all(c[2] > 0 for c in state.cart)
    assert sum(state.totals) == len(events)
    later = state.last_ts + wait_ms
    for k in range(1, 4):
        now_scores = dict(top_categories(state, k, state.last_ts))
        later_scores = dict(top_categories(state, k, later))
        assert now_scores.keys() == later_scores.keys()
        assert all(later_scores[c] <= now_scores[c] for c in now_scores)
    # Applying nothing and re-reading never changes the stored counters.
    assert UserState.from_bytes(state.to_bytes()).totals == state.totals


@settings(max_examples=100, deadline=None)
@given(event_lists())
def test_serialization_round_trips(events):
    state, _ = build(events)
    data = state.to_bytes()
    assert data[0] == UserState.SCHEMA_VERSION
    back = UserState.from_bytes(data)
    assert back.to_bytes() == data  # floats are float32 on disk: a second trip is exact
    assert_same_state(back, state)


def test_round_trip_then_update_matches_update_in_memory():
    events = [click(f"e{i}", T0 + i * 20_000, item=f"i{i % 3}", cat=f"c{i % 4}") for i in range(40)]
    in_memory, _ = build(events)
    stored = UserState.new()
    for e in events:
        s = UserState.from_bytes(stored.to_bytes())
        apply_event(s, e, CFG)
        stored = s
    assert_same_state(in_memory, stored)


# -- lateness and duplicates --------------------------------------------------------------------------


def test_late_events_are_reported_and_not_applied():
    state, _ = build([click("a", T0), click("b", T0 + 100_000)])
    before = state.to_bytes()
    assert apply_event(state, click("c", T0 + 100_000 - LATENESS - 1), CFG) == LATE
    assert state.to_bytes() == before
    assert apply_event(state, click("d", T0 + 100_000 - LATENESS), CFG) == APPLIED  # the edge is in
    assert state.totals[0] == 3


def test_duplicates_are_reported_and_not_applied():
    state, _ = build([click("a", T0), click("b", T0 + 1_000)])
    before = state.to_bytes()
    assert apply_event(state, click("a", T0), CFG) == DUPLICATE
    assert apply_event(state, click("b", T0 + 9_000), CFG) == DUPLICATE  # same id, other fields
    assert state.to_bytes() == before


def test_an_event_older_than_a_full_dedupe_ring_is_late_not_double_counted():
    # 33 events within one second: the ring forgets the first, so its replay cannot be told apart
    # from a new event and is refused rather than counted twice.
    events = [click(f"e{i}", T0 + i * 10) for i in range(CFG.dedupe_n + 1)]
    state, _ = build(events)
    assert len(state.seen_keys()) == CFG.dedupe_n
    assert apply_event(state, events[0], CFG) == LATE
    assert apply_event(state, events[1], CFG) == DUPLICATE
    assert state.totals[0] == CFG.dedupe_n + 1


# -- sessions -----------------------------------------------------------------------------------------


def test_a_gap_longer_than_the_session_gap_starts_a_session():
    state, _ = build([click("a", T0), click("b", T0 + GAP), click("c", T0 + 2 * GAP + 1)])
    assert state.n_sessions == 2
    assert state.sess_start == T0 + 2 * GAP + 1 and state.sess_counts == [1, 0, 0, 0]


def test_a_late_event_that_bridges_the_gap_merges_the_two_sessions():
    a, b, x = click("a", T0), click("b", T0 + GAP + 30_000), click("x", T0 + GAP - 10_000)
    out_of_order, _ = build([a, b, x])
    assert out_of_order.n_sessions == 1 and out_of_order.sess_start == T0
    assert out_of_order.sess_counts == [3, 0, 0, 0]
    assert_same_state(out_of_order, build([a, x, b])[0])


def test_the_previous_session_is_forgotten_once_no_late_event_can_reach_it():
    state, _ = build([click("a", T0), click("b", T0 + GAP + 1)])
    assert state.prev_end == T0
    apply_event(state, click("c", T0 + GAP + 1 + LATENESS), CFG)
    assert state.prev_end == 0 and state.n_sessions == 2


# -- purchase rhythm ----------------------------------------------------------------------------------


def test_purchases_within_the_session_gap_are_one_occasion_and_the_mean_gap_spans_occasions():
    day = 86_400_000
    # One checkout: five items a second apart.
    items = [Event(f"a{i}", "u", "purchase", T0 + i * 1_000, item_id=f"i{i}") for i in range(5)]
    state, _ = build([*items, buy("b", T0 + 10 * day), buy("c", T0 + 30 * day)])
    assert state.totals[3] == 7 and state.purchase_occasions == 3
    assert state.first_purchase_ts == T0 and state.last_purchase_ts == T0 + 30 * day
    assert state.mean_purchase_gap_ms() == 15 * day
    assert UserState.new().mean_purchase_gap_ms() is None
    assert build([buy("x", T0)])[0].mean_purchase_gap_ms() is None


def test_a_late_purchase_that_bridges_the_gap_merges_two_occasions():
    a, b, x = buy("a", T0), buy("b", T0 + GAP + 30_000), buy("x", T0 + GAP - 10_000)
    state, _ = build([a, b])
    assert state.purchase_occasions == 2
    assert (state.occasion_start, state.prev_occasion_end) == (T0 + GAP + 30_000, T0)
    apply_event(state, x, CFG)
    assert state.purchase_occasions == 1 and (state.occasion_start, state.prev_occasion_end) == (0, 0)
    assert_same_state(state, build([a, x, b])[0])


def test_the_occasion_bookkeeping_is_dropped_once_no_late_purchase_can_bridge():
    state, _ = build([buy("a", T0), buy("b", T0 + GAP + 1)])
    assert state.prev_occasion_end == T0 and state.to_bytes()[1] & 4  # the 16-byte block is stored
    apply_event(state, click("c", T0 + GAP + 1 + LATENESS), CFG)
    assert (state.occasion_start, state.prev_occasion_end, state.purchase_occasions) == (0, 0, 2)
    assert not state.to_bytes()[1] & 4


# -- cart ---------------------------------------------------------------------------------------------


def cart(eid: str, ts: int, item: str, qty: int | None = None, price: float = 10.0) -> Event:
    return Event(eid, "u", "add_to_cart", ts, item_id=item, price=price, quantity=qty)


def buy(eid: str, ts: int, item: str | None = None, price: float | None = None) -> Event:
    return Event(eid, "u", "purchase", ts, item_id=item, price=price)


def test_purchase_of_an_item_removes_it_and_an_itemless_purchase_empties_the_cart():
    state, _ = build([cart("a", T0, "i1", 2), cart("b", T0 + 1, "i2"), buy("c", T0 + 2, "i1", 20.0)])
    assert [(line[2], line[3]) for line in state.cart] == [(1, 10.0)]
    assert state.spend == 20.0 and state.last_purchase_ts == T0 + 2
    apply_event(state, buy("d", T0 + 3, None, 10.0), CFG)
    assert state.cart == [] and state.spend == 30.0
    apply_event(state, cart("e", T0 + 4, "i3", 3, price=2.5), CFG)
    assert state.cart_items() == 3 and state.cart_value() == 7.5


def test_a_purchase_that_overtakes_its_add_still_removes_it():
    state, statuses = build([buy("p", T0 + 5_000, "i1"), cart("a", T0, "i1"), cart("b", T0 + 6_000, "i1")])
    assert statuses == [APPLIED] * 3
    assert [(line[0], line[2]) for line in state.cart] == [(T0 + 6_000, 1)]  # only the add after it


def test_cart_lines_of_one_item_merge_once_older_than_the_lateness():
    events = [
        cart("a", T0, "i1", 2, 10.0),
        cart("b", T0 + 1_000, "i1", 1, 12.0),
        click("c", T0 + 5 * LATENESS),
    ]
    state, _ = build(events)
    assert state.cart == [(T0 + 1_000, state.cart[0][1], 3, 12.0)]
    assert state.cart_value() == 36.0


# -- affinity, terms, expiry, config ------------------------------------------------------------------


def test_category_affinity_is_weighted_decayed_and_bounded():
    cfg = dataclasses.replace(CFG, top_k_categories=2, category_half_life_ms=60_000)
    events = [click("a", T0, cat="shoes"), cart("b", T0, "i1"), click("c", T0, cat="lamps")]
    events[1] = events[1].replace(category_id="shoes")
    state, _ = build(events, cfg)
    assert top_categories(state, 2, T0, cfg) == [("shoes", 4.0), ("lamps", 1.0)]
    assert top_categories(state, 1, T0 + 60_000, cfg) == [("shoes", pytest.approx(2.0))]  # one half-life
    apply_event(state, click("d", T0 + 60_000, cat="books"), cfg)  # a new category evicts the lowest
    assert [c for c, _ in top_categories(state, 5, T0 + 60_000, cfg)] == ["shoes", "books"]


def test_search_terms_are_lowercased_tokens():
    state, _ = build(
        [Event("a", "u", "search", T0, query="Red  shoes"), Event("b", "u", "search", T0, query="shoes")]
    )
    assert sorted(state.terms.values()) == [1.0, 2.0] and len(state.terms) == 2


def test_is_expired_compares_the_newest_event_to_the_watermark():
    state, _ = build([click("a", T0)])
    assert not is_expired(state, T0 + 1_000, 1_000)
    assert is_expired(state, T0 + 1_001, 1_000)


def test_config_rejects_a_lateness_as_long_as_the_session_gap():
    with pytest.raises(ValueError, match="allowed_lateness_ms"):
        StateConfig(allowed_lateness_ms=GAP)
    with pytest.raises(ValueError, match="recent_n"):
        StateConfig(recent_n=40, dedupe_n=32)


# -- schema versions ----------------------------------------------------------------------------------


def test_version_1_records_migrate():
    old = encode_v1(T0, T0 + 5_000, [7, 2, 1, 1])
    state = UserState.from_bytes(old)
    assert (state.first_seen, state.last_ts, state.totals, state.n_sessions) == (
        T0,
        T0 + 5_000,
        [7, 2, 1, 1],
        1,
    )
    assert (state.last_purchase_ts, state.first_purchase_ts, state.purchase_occasions) == (0, 0, 0)
    assert apply_event(state, click("z", T0 + 6_000), CFG) == APPLIED
    data = state.to_bytes()
    assert data[0] == UserState.SCHEMA_VERSION == 4 and UserState.from_bytes(data).totals == [8, 2, 1, 1]


# A record written by the version-2 code (before the purchase rhythm) for: a click at T0, purchases
# at T0 + 1 min, T0 + 10 d (2 items) and T0 + 30 d. Kept as bytes so the migration is tested
# against what that code really wrote, not against our idea of it.
V2_RECORD = bytes.fromhex(
    "0202040404010000000068e5cf8b0100000030646a8c0100000030646a8c0100000030646a8c0100000030646a8c"
    "010000010000000000000000000000030000000300000000000000000000000000000001000000000000000000000000"
    "804240000065038c010000000065038c01000000000000000000000000000001000000000000000000000000000000"
    "000000000000803f0000000000000000000000000000803f06b7d22900000000000000000000803f8181613c000000"
    "0000000000021d893f0000803a018bcfe56800e8b7be43018bcfe6526071beeff9018c0365000006b9df6f018c6a64"
    "300098dd4acc00ae2a1e7f43f0002300000000000014400000000003ae2a1e7f000000000000000000001440000000"
    "000300000000000000000000000000002940000000000300000000000000000000000000001c40000000006331"
)


def test_version_2_records_migrate_with_an_estimated_purchase_rhythm():
    day = 86_400_000
    events = [
        click("a", T0, cat="c1"),
        Event("b", "u", "purchase", T0 + 60_000, item_id="i1", price=5.0),
        Event("c", "u", "purchase", T0 + 10 * day, price=12.5, quantity=2),
        Event("d", "u", "purchase", T0 + 30 * day, price=7.0),
    ]
    # The version-2 code kept categories with a 3-day half-life (the default then).
    fresh, _ = build(events, dataclasses.replace(CFG, category_half_life_ms=3 * day))
    # The test helper writes the old layout: byte for byte the old code's record until its updates
    # rounded decayed values to float32 once per event instead of once per store (2026-11-24).
    written = encode_v2(fresh)
    assert len(written) == len(V2_RECORD)
    assert_same_state(UserState.from_bytes(written), UserState.from_bytes(V2_RECORD))
    migrated = UserState.from_bytes(V2_RECORD)
    rhythm = ("first_purchase_ts", "purchase_occasions", "occasion_start", "prev_occasion_end")
    old, new = migrated.snapshot(), fresh.snapshot()
    for key in rhythm:
        del old[key], new[key]
    assert old.keys() == new.keys() and all(_close(old[k], new[k]) for k in old)
    # Three purchases a day or more apart: three occasions; the first purchase is estimated as
    # first_seen (the click a minute before it).
    assert (migrated.first_purchase_ts, migrated.purchase_occasions) == (T0, 3)
    assert apply_event(migrated, buy("e", T0 + 40 * day), CFG) == APPLIED
    assert migrated.purchase_occasions == 4 and migrated.to_bytes()[0] == 4


@settings(max_examples=100, deadline=None)
@given(event_lists())
def test_every_version_2_record_loads_and_keeps_all_it_had(events):
    state, _ = build(events)
    migrated = UserState.from_bytes(encode_v2(state))
    purchases = state.totals[3]
    assert migrated.to_bytes()[0] == 4
    assert migrated.purchase_occasions == (0 if not purchases else 1 if purchases == 1 else purchases)
    assert migrated.first_purchase_ts <= migrated.last_purchase_ts == state.last_purchase_ts
    if purchases == 1:
        assert migrated.first_purchase_ts == state.first_purchase_ts
    for key in ("first_purchase_ts", "purchase_occasions", "occasion_start", "prev_occasion_end"):
        setattr(migrated, key, getattr(state, key))
    assert_same_state(migrated, state)


# A record written by the version-3 code (recent prices as float64) for: a click at T0 (19.99), a
# search, a cart add (0.10 x 2), its purchase and a click (1,234.56). Kept as bytes, as above.
V3_RECORD = bytes.fromhex(
    "0300040505020200010068e5cf8b01000090c7e6cf8b0100000068e5cf8b0100006052e6cf8b01000000000000000000"
    "006052e6cf8b010000020000000100000001000000010000000100000001000000020000000100000001000000010000"
    "00cdcc4c3e9a9999999999c93f22d3de3f37d6403f46b94a3f6da3673ff5d6fc3fbf067a3f00127b3f23e07d3fe2ddff"
    "3f8fbf7f3fedca7f3f40e97f3f20fbff3fcaf67f3f6af87f3fc0fc7f3f11cdfd3ffb6d3d400de9172f85e8e82153d37f"
    "3f53d37f3f209ea37d6052e6cf8b010000018bcfe56800e8b7be43018bcfe57b8871beeff9018bcfe5b62006b9df6f01"
    "8bcfe6526098dd4acc018bcfe6c790efda7a5a00ae2a1e7f43f000233d0ad7a370fd3340000000000100000000000000"
    "000000000000000000ea9add3802209ea37d054f7d0d9a9999999999b93f0000000003209ea37d000000009a99999999"
    "99b93f000000000058834f2543f000230ad7a3703d4a9340000000006331006332"
)


def _v3_events() -> list[Event]:
    return [
        Event("a", "u", "click", T0, item_id="i1", category_id="c1", price=19.99),
        Event("b", "u", "search", T0 + 5_000, query="red shoes"),
        Event("c", "u", "add_to_cart", T0 + 20_000, item_id="i2", category_id="c2", price=0.1, quantity=2),
        Event("d", "u", "purchase", T0 + 60_000, item_id="i2", price=0.1, quantity=2),
        Event("e", "u", "click", T0 + 90_000, item_id="i3", category_id="c1", price=1234.56),
    ]


def test_version_3_records_migrate_with_float32_recent_prices():
    fresh, _ = build(_v3_events())
    # The test helper writes the old layout: the old bytes, but for the prices it no longer has.
    start, end = ring_span(fresh.to_bytes())
    end = start + (end - start) * _REC_V3.size // _REC.size
    old_ring = [(*r[:3], as_float32(r[3]), r[4]) for r in _REC_V3.iter_unpack(V3_RECORD[start:end])]
    old = V3_RECORD[:start] + b"".join(_REC_V3.pack(*r) for r in old_ring) + V3_RECORD[end:]
    written = encode_v3(fresh)  # the old layout, up to the float32 rounding per event (see the v2 test)
    assert len(written) == len(old) and written[start:] == old[start:]  # rings, names: exact
    assert_same_state(UserState.from_bytes(written), UserState.from_bytes(old))
    migrated = UserState.from_bytes(V3_RECORD)
    assert_same_state(migrated, fresh)
    assert migrated.recent == fresh.recent == [RecentEvent.from_event(e) for e in _v3_events()]
    prices = [r.price for r in migrated.recent]
    assert prices == [19.989999771118164, 0.0, 0.10000000149011612, 0.10000000149011612, 1234.56005859375]
    assert migrated.spend == 0.2 and migrated.to_bytes()[start:] == fresh.to_bytes()[start:]  # money stays float64
    assert len(V3_RECORD) - len(fresh.to_bytes()) == 4 * len(fresh.recent)


@settings(max_examples=100, deadline=None)
@given(event_lists())
def test_every_version_3_record_loads_and_keeps_all_it_had(events):
    state, _ = build(events)
    migrated = UserState.from_bytes(encode_v3(state))
    assert migrated.to_bytes()[0] == 4
    assert_same_state(migrated, state)
    assert migrated.to_bytes() == state.to_bytes()


def test_unknown_versions_and_empty_records_are_refused():
    with pytest.raises(ValueError, match="unknown state schema version 9"):
        UserState.from_bytes(bytes([9]) + bytes(100))
    with pytest.raises(ValueError, match="empty"):
        UserState.from_bytes(b"")


# -- budget -------------------------------------------------------------------------------------------


def test_state_fits_the_budget_on_the_simulated_mix():
    pytest.importorskip("stream.logic.simulator")
    from stream.logic.simulator import ShopperSimulator

    states: dict[str, UserState] = {}
    for raw in ShopperSimulator(seed=3, users=300).take(6_000):
        ev = parse_event(raw)
        apply_event(states.setdefault(ev.user, UserState.new()), ev, CFG)
    sizes = [len(s.to_bytes()) for s in states.values()]
    assert sum(sizes) / len(sizes) <= 1024


@pytest.mark.bench
def test_state_bench_smoke():
    pytest.importorskip("stream.logic.simulator")
    from benchmarks.state_bench import run

    result = run(users=50, seed=1, events_per_user=4, disorder_ms=LATENESS)
    assert result["events"] == 200 and result["statuses"] == {"applied": 200}
    assert {"users", "bytes_per_user", "updates_per_s"} <= result.keys() and result["bytes_per_user"] > 0


def test_category_ranking_survives_any_silence():
    # Decayed scores are stored as float32: a year of silence at a one-hour half-life would flush
    # them all to zero and lose their order. They are kept at a tiny floor, still ranked.
    year = 365 * 86_400_000
    state, _ = build([click("a", T0, cat="c1"), click("b", T0 + 1, cat="c2"), click("c", T0 + 2, cat="c2")])
    assert apply_event(state, click("d", T0 + year, cat="c3"), CFG) == APPLIED
    loaded = UserState.from_bytes(state.to_bytes())
    assert [c for c, _ in sorted(loaded.categories.items(), key=lambda kv: -kv[1])] == ["c3", "c2", "c1"]
    assert 0 < loaded.categories["c1"] < loaded.categories["c2"] < 1e-29
