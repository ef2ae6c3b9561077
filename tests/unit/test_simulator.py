"""The synthetic shopper simulator: schema, determinism, realism bands, churn, drift, pacing.

The realism bands are the documented behaviour of the default knobs (module docstring of
``stream.logic.simulator``); they are wide enough to hold for any seed, narrow enough to catch a
funnel that stopped converting or a clock that stopped moving.
"""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import parse_event
from stream.logic.simulator import DEFAULT_START_MS, ShopperSimulator, paced

HOUR = 3_600_000
DAY = 24 * HOUR
USERS = 250


@pytest.fixture(scope="module")
def stream() -> list[dict]:
    """300k events of 250 users (about 5 simulated days: long enough to see churn)."""
    return ShopperSimulator(seed=3, users=USERS).take(300_000)


@pytest.fixture(scope="module")
def sessions(stream: list[dict]) -> dict[str, list[dict]]:
    by_session: dict[str, list[dict]] = collections.defaultdict(list)
    for e in stream:
        by_session[e["session_id"]].append(e)
    # The last few hours hold sessions cut off by the end of the sample; leave them out.
    end = stream[-1]["ts"] - 3 * HOUR
    return {s: evs for s, evs in by_session.items() if evs[-1]["ts"] < end}


def test_same_seed_same_events_and_different_seed_different_events():
    a = ShopperSimulator(seed=11, users=200).take(5_000)
    assert a == ShopperSimulator(seed=11, users=200).take(5_000)
    # events() restarts the stream: a second iterator on the same simulator replays it.
    sim = ShopperSimulator(seed=11, users=200)
    assert list(itertools.islice(sim.events(), 100)) == list(itertools.islice(sim.events(), 100))
    b = ShopperSimulator(seed=12, users=200).take(5_000)
    assert [e["user_id"] for e in a] != [e["user_id"] for e in b]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}


def test_every_event_parses_with_exactly_the_fields_of_its_type(stream):
    allowed = {
        "click": {"item_id", "category_id", "price"},
        "search": {"query"},
        "add_to_cart": {"item_id", "category_id", "price", "quantity"},
        "purchase": {"item_id", "category_id", "price", "quantity"},
    }
    common = {"event_id", "user_id", "type", "ts", "session_id"}
    for e in stream[:50_000]:
        ev = parse_event(e, now_ms=e["ts"])
        assert ev.type == e["type"]
        assert set(e) == common | allowed[e["type"]]
        assert e["user_id"].startswith("u") and e["user_id"][1:].isdigit()
        if e["type"] == "search":
            assert ev.query
        else:
            assert e["price"] > 0


def test_clock_moves_forward_and_ids_are_unique(stream):
    ts = [e["ts"] for e in stream]
    assert ts[0] >= DEFAULT_START_MS
    assert all(a <= b for a, b in itertools.pairwise(ts))
    assert len({e["event_id"] for e in stream}) == len(stream)
    # Sessions belong to one user.
    owners: dict[str, str] = {}
    for e in stream:
        assert owners.setdefault(e["session_id"], e["user_id"]) == e["user_id"]


def test_items_have_a_stable_price_and_category(stream):
    seen: dict[str, tuple[str, float]] = {}
    for e in stream:
        if "item_id" in e:
            facts = (e["category_id"], e["price"])
            assert seen.setdefault(e["item_id"], facts) == facts
    prices = sorted(p for _, p in seen.values())
    # Log-normal per category around medians from ~8 to ~900: a wide, positive spread.
    assert prices[len(prices) // 10] < 20 < 200 < prices[9 * len(prices) // 10]


def test_event_density_is_about_ten_events_per_user_hour(stream):
    hours = (stream[-1]["ts"] - stream[0]["ts"]) / HOUR
    per_user_hour = len(stream) / hours / USERS
    assert 7 <= per_user_hour <= 14
    # Stable: the second half is not much sparser or denser than the first.
    mid = len(stream) // 2
    first = (stream[mid]["ts"] - stream[0]["ts"]) / HOUR
    second = (stream[-1]["ts"] - stream[mid]["ts"]) / HOUR
    assert 0.75 <= first / second <= 1.33


def test_type_mix_and_funnel_are_within_documented_bands(stream, sessions):
    mix = collections.Counter(e["type"] for e in stream)
    n = len(stream)
    assert 0.80 <= mix["click"] / n <= 0.92
    assert 0.07 <= mix["search"] / n <= 0.14
    assert 0.01 <= mix["add_to_cart"] / n <= 0.04
    assert 0.003 <= mix["purchase"] / n <= 0.012

    kinds = [{e["type"] for e in evs} for evs in sessions.values()]
    carts = [k for k in kinds if "add_to_cart" in k]
    bought = [k for k in kinds if "purchase" in k]
    assert 0.02 <= len(bought) / len(kinds) <= 0.04
    assert 0.60 <= 1 - len(bought) / len(carts) <= 0.80
    # Purchases only happen after a cart, and buy what was put in it.
    assert all("add_to_cart" in k for k in bought)
    for evs in sessions.values():
        carted = {e["item_id"] for e in evs if e["type"] == "add_to_cart"}
        assert {e["item_id"] for e in evs if e["type"] == "purchase"} <= carted


def test_sessions_are_minutes_long_and_hours_apart(stream, sessions):
    within = sorted(b["ts"] - a["ts"] for evs in sessions.values() for a, b in itertools.pairwise(evs))
    assert 5_000 < within[len(within) // 2] < 2 * 60_000
    last_seen: dict[str, tuple[str, int]] = {}
    between = []
    for e in stream:
        prev = last_seen.get(e["user_id"])
        if prev and prev[0] != e["session_id"]:
            between.append(e["ts"] - prev[1])
        last_seen[e["user_id"]] = (e["session_id"], e["ts"])
    between.sort()
    assert between[len(between) // 2] > 5 * within[len(within) // 2]
    assert between[int(len(between) * 0.99)] > 2 * HOUR  # a long tail of returns hours later


def test_item_popularity_is_skewed_within_a_category(stream):
    clicks = collections.Counter(e["item_id"] for e in stream if e["type"] == "click")
    by_cat: dict[str, list[int]] = collections.defaultdict(list)
    item_cat = {e["item_id"]: e["category_id"] for e in stream if "item_id" in e}
    for item, c in clicks.items():
        by_cat[item_cat[item]].append(c)
    for counts in by_cat.values():
        counts.sort(reverse=True)
        top_tenth = sum(counts[: max(1, 250 // 10)])
        assert top_tenth / sum(counts) > 0.45  # Zipf(1.1) over 250 items: the top 25 get ~60%
        assert counts[0] > 10 * counts[len(counts) // 2]


def test_users_churn_while_others_continue_and_newcomers_arrive(stream):
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for e in stream:
        first.setdefault(e["user_id"], e["ts"])
        last[e["user_id"]] = e["ts"]
    start, end = stream[0]["ts"], stream[-1]["ts"]
    initial = {u for u in first if int(u[1:]) < USERS}
    gone = {u for u in initial if last[u] < end - 2 * DAY}
    staying = {u for u in initial if last[u] > end - 6 * HOUR}
    assert 0.05 * len(initial) < len(gone) < 0.5 * len(initial)
    assert len(staying) > 0.2 * len(initial)
    newcomers = [t for u, t in first.items() if int(u[1:]) >= USERS]
    assert newcomers and min(newcomers) < start + DAY and max(newcomers) > end - DAY
    # The active population stays near `users`: users seen in the last 12 hours.
    recent = {u for u, t in last.items() if t > end - 12 * HOUR}
    assert 0.6 * USERS <= len(recent) <= 1.1 * USERS


def _interest_shift(**knobs) -> float:
    """Mean total-variation distance between each user's category mix in the first and last
    quarter of their clicks."""
    evs = ShopperSimulator(seed=5, users=60, **knobs).take(120_000)
    per_user: dict[str, list[str]] = collections.defaultdict(list)
    for e in evs:
        if e["type"] == "click":
            per_user[e["user_id"]].append(e["category_id"])
    shifts = []
    for cats in per_user.values():
        if len(cats) < 400:
            continue
        q = len(cats) // 4
        a, b = collections.Counter(cats[:q]), collections.Counter(cats[-q:])
        shifts.append(sum(abs(a[c] - b[c]) for c in a | b) / (2 * q))
    assert len(shifts) >= 20
    return sum(shifts) / len(shifts)


def test_category_interests_drift_over_time():
    drifting = _interest_shift()
    frozen = _interest_shift(interest_drift_p=0.0)
    assert frozen < 0.2  # without drift, early and late clicks look alike (sampling noise only)
    assert drifting > frozen + 0.2


def test_unknown_knob_is_an_error():
    with pytest.raises(TypeError):
        ShopperSimulator(clikcs_mean=3)


class FakeClock:
    """Wall clock in ms that only moves when the caller sleeps."""

    def __init__(self, now_ms: float) -> None:
        self.now = now_ms

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds * 1000


def test_paced_replays_the_past_at_rate_then_never_runs_ahead_of_the_clock():
    clock = FakeClock(DEFAULT_START_MS + 30 * DAY)
    sim = ShopperSimulator(seed=2, users=100, start_ms=int(clock.now) - 2 * DAY)
    wall0 = clock.now
    sent = []  # (wall ms when sent, event ts)
    for wait, ev in itertools.islice(paced(sim.events(), clock, rate=1000), 60_000):
        clock.sleep(wait)
        assert ev["ts"] <= clock.now
        sent.append((clock.now, ev["ts"]))
    # Catching up: exactly `rate` events per wall second, simulated time compressed.
    assert sent[5_000][0] - wall0 == pytest.approx(5_000, rel=1e-6)
    assert sent[5_000][1] - sent[0][1] > 2 * HOUR
    # Two simulated days (about 48k events for 100 users) go by in about a wall minute.
    caught_up = next(i for i, (wall, ts) in enumerate(sent) if ts > wall - 1_000)
    assert 30_000 < sent[caught_up][0] - wall0 < 90_000
    # From then on the simulator runs live: never ahead (asserted above), never far behind.
    assert all(wall - ts <= 1_000 for wall, ts in sent[caught_up + 1 :])
    assert sent[-1][0] - sent[caught_up][0] > HOUR  # the rest is real time, not at `rate`


def test_paced_time_scale_compresses_simulated_time():
    clock = FakeClock(DEFAULT_START_MS + 30 * DAY)
    sim = ShopperSimulator(seed=2, users=100, start_ms=int(clock.now) - DAY)
    wall0 = clock.now
    out = []
    for wait, ev in itertools.islice(paced(sim.events(), clock, time_scale=3600.0), 3_000):
        clock.sleep(wait)
        out.append((clock.now - wall0, ev["ts"] - sim.start_ms))
    for wall, sim_ms in out[100::500]:
        # One simulated hour per wall second (the first event sets the origin).
        assert wall == pytest.approx((sim_ms - out[0][1]) / 3600.0, abs=1.0)


def test_paced_does_not_burst_a_backlog_after_a_stall():
    clock = FakeClock(1_000_000.0)
    evs = ({"ts": i} for i in range(100_000))  # all in the past: rate is the only limit
    waits = []
    for i, (wait, _) in enumerate(paced(evs, clock, rate=100, max_burst_ms=500)):
        clock.sleep(wait)
        if i == 10:
            clock.sleep(20.0)  # the sink hung for 20 s
        if i > 10:
            waits.append(wait)
        if i == 200:
            break
    free = list(itertools.takewhile(lambda w: w == 0, waits))
    assert len(free) <= 51  # at most half a second of backlog at 100/s
    assert all(w == pytest.approx(0.01) for w in waits[len(free) + 1 :])


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=200),
    offset=st.integers(min_value=-100_000, max_value=100_000),
    rate=st.floats(min_value=0.5, max_value=10_000),
)
def test_paced_never_sends_the_future_and_respects_the_rate(gaps, offset, rate):
    clock = FakeClock(10_000_000.0)
    ts = list(itertools.accumulate(gaps, initial=int(clock.now) + offset))
    sent = []
    for wait, ev in paced(({"ts": t} for t in ts), clock, rate=rate):
        clock.sleep(wait)
        assert ev["ts"] <= clock.now
        sent.append(clock.now)
    assert len(sent) == len(ts)
    assert all(b - a >= 1000 / rate - 1e-6 for a, b in itertools.pairwise(sent))


def test_paced_rejects_bad_arguments():
    with pytest.raises(ValueError):
        next(paced([{"ts": 1}], lambda: 0.0, rate=0))
    with pytest.raises(ValueError):
        next(paced([{"ts": 1}], lambda: 0.0, time_scale=-1))
