"""The online feature definition: names, finiteness, read time, and a worked example per feature."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import Event
from models.features.online import FEATURE_NAMES, feature_names, online_features
from models.features.state import DAY_MS, StateConfig, UserState, apply_event

CFG = StateConfig()
T0 = 1_700_000_000_000
H5M, H1H, H24H, H7D = CFG.horizons_ms
TAU_CAT = CFG.category_tau_ms


@st.composite
def event_lists(draw: st.DrawFn) -> list[Event]:
    """A user's events in ts order: every type, gaps from ties to days."""
    ts, out = T0, []
    for i in range(draw(st.integers(1, 25))):
        ts += draw(st.sampled_from([0, 1_000, 50_000, 31 * 60_000, DAY_MS, 9 * DAY_MS]))
        etype = draw(st.sampled_from(["click", "search", "add_to_cart", "purchase"]))
        item = draw(st.sampled_from([None, "i1", "i2"])) if etype == "purchase" else "i1"
        out.append(Event(
            f"e{i}", "u", etype, ts,
            item_id=None if etype == "search" else item,
            category_id=draw(st.sampled_from([None, "shoes", "lamps"])),
            price=draw(st.sampled_from([None, 0.0, 19.99, 1e7])),
            quantity=draw(st.sampled_from([None, 1, 10_000])),
            query="Red shoes" if etype == "search" else None,
        ))  # fmt: skip
    return out


def decayed(age_ms: float, tau: float) -> float:
    return math.exp(-age_ms / tau)


def build(events: list[Event]) -> UserState:
    state = UserState.new()
    for e in events:
        assert apply_event(state, e, CFG) == "applied"
    return state


# The worked example: a click, a search, a cart add of two units, a click in another category,
# all within three minutes, read five minutes after the last event.
BROWSE = [
    Event("e1", "u", "click", T0, item_id="i1", category_id="shoes", price=50.0),
    Event("e2", "u", "search", T0 + 60_000, query="Red shoes"),
    Event("e3", "u", "add_to_cart", T0 + 120_000, item_id="i1", category_id="shoes", price=50.0, quantity=2),
    Event("e4", "u", "click", T0 + 180_000, item_id="i2", category_id="books", price=10.0),
]
NOW = T0 + 480_000
AGES = {"click": [480_000, 300_000], "search": [420_000], "add_to_cart": [360_000], "purchase": []}
SHOES = decayed(480_000, TAU_CAT) + 3 * decayed(360_000, TAU_CAT)  # click weight 1, cart weight 3
BOOKS = decayed(300_000, TAU_CAT)

EXPECTED: dict[str, float] = {
    **{
        f"{t}_{label}": sum(decayed(a, h) for a in AGES[t])
        for label, h in zip(["5m", "1h", "24h", "7d"], [H5M, H1H, H24H, H7D], strict=True)
        for t in AGES
    },
    "log1p_click_total": math.log1p(2),
    "log1p_search_total": math.log1p(1),
    "log1p_add_to_cart_total": math.log1p(1),
    "log1p_purchase_total": 0.0,
    "cart_per_click": 1 / 3,
    "purchase_per_cart": 0.0,
    "secs_since_last_event": 300.0,
    "days_since_first_seen": 480_000 / DAY_MS,
    "log1p_sessions": math.log1p(1),
    "session_open": 1.0,
    "session_events": 4.0,
    "session_minutes": 3.0,
    "session_clicks": 2.0,
    "session_searches": 1.0,
    "session_carts": 1.0,
    "session_purchases": 0.0,
    "log1p_session_cart_value": math.log1p(100.0),
    "cart_lines": 1.0,
    "cart_items": 2.0,
    "log1p_cart_value": math.log1p(100.0),
    "minutes_since_cart_add": 6.0,
    "has_purchased": 0.0,
    "days_since_purchase": 365.0,
    "log1p_spend": 0.0,
    "avg_order_value": 0.0,
    "log1p_days_since_purchase": math.log1p(365.0),
    "log1p_days_since_first_purchase": 0.0,
    "log1p_repeat_occasions": 0.0,
    "log1p_mean_purchase_gap_days": 0.0,
    "log_recency_over_gap": 0.0,
    "last_purchase_age_share": 0.0,
    "categories_tracked": 2.0,
    "top_category_score": SHOES,
    "top_category_share": SHOES / (SHOES + BOOKS),
    "search_terms_tracked": 2.0,  # "red", "shoes"
    "top_term_share": 0.5,
    "recent_events": 4.0,
    "recent_distinct_item_share": 2 / 3,  # i1, i1, i2 (the search has no item)
    "recent_mean_gap_s": 60.0,
    "recent_mean_price": 110 / 3,
    "last_is_click": 1.0,
    "last_is_search": 0.0,
    "last_is_add_to_cart": 0.0,
    "last_is_purchase": 0.0,
}

# A second example for what the first leaves at zero: the cart item is bought, then the user goes
# quiet for two days (the session is closed, the purchase is two days old).
BOUGHT = [*BROWSE, Event("e5", "u", "purchase", T0 + 240_000, item_id="i1", price=50.0, quantity=2)]
LATER = T0 + 240_000 + 2 * DAY_MS
EXPECTED_AFTER_PURCHASE: dict[str, float] = {
    "purchase_per_cart": 0.5,
    "has_purchased": 1.0,
    "days_since_purchase": 2.0,
    "log1p_spend": math.log1p(100.0),
    "avg_order_value": 100.0,
    "log1p_days_since_purchase": math.log1p(2.0),
    "log1p_days_since_first_purchase": math.log1p(2.0),
    "log1p_repeat_occasions": 0.0,  # one occasion: no rhythm yet
    "log1p_mean_purchase_gap_days": 0.0,
    "log_recency_over_gap": 0.0,
    "last_purchase_age_share": 0.0,
    "cart_lines": 0.0,
    "cart_items": 0.0,
    "log1p_cart_value": 0.0,
    "minutes_since_cart_add": 0.0,
    "session_open": 0.0,
    "session_events": 0.0,
    "session_minutes": 0.0,
    "session_purchases": 0.0,
    "log1p_session_cart_value": 0.0,
    "purchase_7d": decayed(2 * DAY_MS, H7D),
    "last_is_purchase": 1.0,
    "last_is_click": 0.0,
}

# A third example for the purchase rhythm: a two-item checkout (one occasion), then purchases 10
# and 30 days later, read 60 days after the first: three occasions, mean gap 15 days, 30 days
# of silence (twice the user's own gap), the last purchase half-way through the buying life.
REPEAT = [
    Event("r1", "u", "purchase", T0, item_id="i1", price=10.0),
    Event("r2", "u", "purchase", T0 + 1_000, item_id="i2", price=10.0),
    Event("r3", "u", "purchase", T0 + 10 * DAY_MS, price=20.0),
    Event("r4", "u", "purchase", T0 + 30 * DAY_MS, price=20.0),
]
READ_REPEAT = T0 + 60 * DAY_MS
EXPECTED_REPEAT: dict[str, float] = {
    "log1p_purchase_total": math.log1p(4),
    "days_since_purchase": 30.0,
    "log1p_days_since_purchase": math.log1p(30.0),
    "log1p_days_since_first_purchase": math.log1p(60.0),
    "log1p_repeat_occasions": math.log1p(2),
    "log1p_mean_purchase_gap_days": math.log1p(15.0),
    "log_recency_over_gap": math.log1p(30.0) - math.log1p(15.0),
    "last_purchase_age_share": 0.5,
}


def test_the_worked_example_covers_every_feature():
    assert set(EXPECTED) == set(FEATURE_NAMES)


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_worked_example(name):
    features = online_features(build(BROWSE), NOW, CFG)
    assert features[name] == pytest.approx(EXPECTED[name], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", sorted(EXPECTED_AFTER_PURCHASE))
def test_worked_example_after_a_purchase(name):
    features = online_features(build(BOUGHT), LATER, CFG)
    assert features[name] == pytest.approx(EXPECTED_AFTER_PURCHASE[name], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", sorted(EXPECTED_REPEAT))
def test_worked_example_of_a_repeat_buyer(name):
    features = online_features(build(REPEAT), READ_REPEAT, CFG)
    assert features[name] == pytest.approx(EXPECTED_REPEAT[name], rel=1e-6, abs=1e-12)


def test_rhythm_features_use_only_purchases_up_to_the_read_time():
    # Read at the third purchase: the fourth has not happened, so it changes nothing.
    at = T0 + 10 * DAY_MS
    f = online_features(build(REPEAT[:3]), at, CFG)
    assert f["log1p_repeat_occasions"] == pytest.approx(math.log1p(1))
    assert f["log1p_mean_purchase_gap_days"] == pytest.approx(math.log1p(10.0))
    assert f["log_recency_over_gap"] == pytest.approx(-math.log1p(10.0))  # just bought
    assert f["last_purchase_age_share"] == pytest.approx(1.0)


def test_features_are_the_same_after_a_storage_round_trip():
    state = build(BOUGHT)
    direct = online_features(state, LATER, CFG)
    stored = online_features(UserState.from_bytes(state.to_bytes()), LATER, CFG)
    assert stored == pytest.approx(direct, rel=1e-6)


def test_an_empty_state_has_every_feature_and_they_are_finite():
    features = online_features(UserState.new(), T0, CFG)
    assert tuple(features) == FEATURE_NAMES
    assert all(math.isfinite(v) for v in features.values())


@settings(max_examples=100, deadline=None)
@given(event_lists(), st.integers(-120_000, 30 * DAY_MS))
def test_features_are_finite_floats_with_stable_names(events, offset_ms):
    state = build(events)
    features = online_features(state, state.last_ts + offset_ms, CFG)
    assert tuple(features) == FEATURE_NAMES
    assert all(type(v) is float and math.isfinite(v) for v in features.values())
    assert 0.0 <= features["last_purchase_age_share"] <= 1.0
    assert 0.0 <= features["log1p_days_since_purchase"] <= math.log1p(365.0)


@settings(max_examples=100, deadline=None)
@given(event_lists(), st.integers(0, 30 * DAY_MS))
def test_decayed_features_never_grow_while_time_passes(events, wait_ms):
    state = build(events)
    before = online_features(state, state.last_ts, CFG)
    after = online_features(state, state.last_ts + wait_ms, CFG)
    decaying = [n for n in FEATURE_NAMES if n.split("_")[-1] in {"5m", "1h", "24h", "7d"}]
    decaying.append("top_category_score")
    assert all(after[n] <= before[n] for n in decaying)


def test_reading_before_the_newest_event_never_undoes_decay():
    state = build(BROWSE)
    at_last = online_features(state, state.last_ts, CFG)
    assert online_features(state, state.last_ts - 50_000, CFG) == at_last


def test_feature_names_follow_the_configured_horizons():
    cfg = StateConfig(horizons_ms=(90_000, 2 * DAY_MS))
    names = feature_names(cfg)
    assert names[:8] == (
        "click_90000ms", "search_90000ms", "add_to_cart_90000ms", "purchase_90000ms",
        "click_2d", "search_2d", "add_to_cart_2d", "purchase_2d",
    )  # fmt: skip
    assert tuple(online_features(UserState.new(), T0, cfg)) == names  # empty, made without cfg
    state = UserState.new(cfg)
    apply_event(state, BROWSE[0], cfg)
    assert tuple(online_features(state, T0, cfg)) == names
