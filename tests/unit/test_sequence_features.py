"""The vectorised sequence-model inputs (``batch_features``) against the event-by-event loop that
first defined them, kept here as the reference: a checkpoint trained on either must score the same."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features.recent import RecentEvent
from models.sequence.config import DAY_MS, SeqConfig
from models.sequence.data import CART, N_NUM, PURCHASE, batch_features, window_features

T0 = 1_700_000_000_000


def reference_features(window, cfg: SeqConfig) -> dict[str, np.ndarray]:
    """The loop the features were first defined by (one window, one event at a time)."""
    typ: list[int] = []
    item: list[int] = []
    cat: list[int] = []
    query: list[int] = []
    gap: list[int] = []
    rows: list[list[float]] = []
    nb_item, nb_cat, nb_query, nb_gap = (
        cfg.item_buckets - 1,
        cfg.category_buckets - 1,
        cfg.query_buckets - 1,
        cfg.gap_buckets - 1,
    )
    log1p, exp = math.log1p, math.exp
    item_count: dict[int, int] = defaultdict(int)
    item_last_ts: dict[int, int] = {}
    carted: set[int] = set()
    bought: set[int] = set()
    cat_count: dict[int, int] = defaultdict(int)
    cat_carted: set[int] = set()
    lo = 0  # first index inside the session_gap_ms look-back (two pointers: O(n) per window)
    carts_before_lo = 0
    cart_prefix = 0
    cart_prefix_at: list[int] = []
    open_carts: set[int] = set()
    n_purchases = 0
    last_purchase_ts: int | None = None
    last_cart_ts: int | None = None
    prev: RecentEvent | None = None
    # Plain Python lists, converted once at the end: this runs per scored event in the stream,
    # and per-element numpy writes cost more than the arithmetic.
    for i, e in enumerate(window):
        et, eitem, ecat, ets = e.type, e.item, e.category, e.ts
        typ.append(et + 1)
        item.append(1 + eitem % nb_item if eitem else 0)
        cat.append(1 + ecat % nb_cat if ecat else 0)
        query.append(1 + e.query % nb_query if e.query else 0)
        gap.append(0 if prev is None else min(nb_gap, 1 + int(math.log2(1 + max(ets - prev.ts, 0) / 1000))))
        row = [0.0] * N_NUM
        row[0] = log1p(max(e.price, 0.0))
        if eitem:
            row[1] = log1p(item_count[eitem])
            row[2] = float(eitem in carted)
            row[3] = float(eitem in bought)
            if eitem in item_last_ts:
                row[4] = log1p(max(ets - item_last_ts[eitem], 0) / 1000) / 10
            row[5] = float(prev is not None and prev.item == eitem)
        if ecat:
            row[6] = log1p(cat_count[ecat])
            row[7] = float(ecat in cat_carted)
            row[8] = float(prev is not None and prev.category == ecat)
        cart_prefix += et == CART
        cart_prefix_at.append(cart_prefix)
        while window[lo].ts < ets - cfg.session_gap_ms:
            carts_before_lo = cart_prefix_at[lo]
            lo += 1
        row[9] = log1p(i - lo + 1)
        row[10] = log1p(cart_prefix - carts_before_lo)
        row[11] = log1p(len(open_carts))
        row[12] = log1p(n_purchases)
        if last_purchase_ts is not None:
            row[13] = exp(-max(ets - last_purchase_ts, 0) / 3_600_000)
        if last_cart_ts is not None:
            row[14] = exp(-max(ets - last_cart_ts, 0) / 3_600_000)
        angle = 2 * math.pi * (ets % DAY_MS) / DAY_MS
        row[15] = math.sin(angle)
        row[16] = math.cos(angle)
        rows.append(row)
        # Update the running state only after the row is written: features see earlier events only.
        if eitem:
            item_count[eitem] += 1
            item_last_ts[eitem] = ets
            if et == CART:
                carted.add(eitem)
                open_carts.add(eitem)
            elif et == PURCHASE:
                bought.add(eitem)
                open_carts.discard(eitem)
        if ecat:
            cat_count[ecat] += 1
            if et == CART:
                cat_carted.add(ecat)
        if et == PURCHASE:
            n_purchases += 1
            last_purchase_ts = ets
        elif et == CART:
            last_cart_ts = ets
        prev = e
    return {
        "type": np.array(typ, np.int64),
        "item": np.array(item, np.int64),
        "cat": np.array(cat, np.int64),
        "query": np.array(query, np.int64),
        "gap": np.array(gap, np.int64),
        "num": np.array(rows, np.float32).reshape(len(rows), N_NUM),
    }


def random_window(rng: random.Random, n: int) -> list[RecentEvent]:
    ts, out = T0 + rng.randrange(DAY_MS), []
    items, cats = [rng.randrange(1, 2**32) for _ in range(4)], [rng.randrange(1, 2**32) for _ in range(3)]
    for _ in range(n):
        ts += rng.choice([0, 0, 1_000, 40_000, 600_000, 2_000_000, 3 * DAY_MS])  # ties and session breaks
        t = rng.choice([0, 0, 1, 2, 3])
        item = rng.choice([0, *items])
        cat = rng.choice([0, *cats])
        price = rng.choice([0.0, 9.5, 120.0])
        out.append(RecentEvent(t, item, cat, price, ts, rng.choice([0, 7, 2**31])))
    return out


@pytest.mark.parametrize("max_len", [2, 5, 16])
def test_batch_features_equal_the_reference_loop(max_len):
    cfg = SeqConfig(max_len=max_len)
    rng = random.Random(max_len)
    windows = [random_window(rng, rng.randint(1, max_len)) for _ in range(300)]
    got = batch_features(windows, cfg)
    assert got["length"].tolist() == [len(w) for w in windows]
    for b, w in enumerate(windows):
        want = reference_features(w, cfg)
        n = len(w)
        for key, arr in want.items():
            np.testing.assert_allclose(got[key][b, :n], arr, rtol=1e-6, atol=1e-7, err_msg=key)
            assert not got[key][b, n:].any(), f"{key}: padding must be zero"
        single = window_features(w, cfg)
        assert all(np.array_equal(single[k], got[k][b, :n]) for k in want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), lookback=st.integers(1, 12))
def test_features_of_a_long_window_are_those_of_each_events_ring(seed, n, lookback):
    """Position ``i`` of a long window gets exactly the features it has as the newest event of
    its ring ``window[i - lookback + 1 : i + 1]``, what the stream scores it on."""
    cfg = SeqConfig(max_len=40, lookback=lookback)
    w = random_window(random.Random(seed), n)
    long = batch_features([w], cfg)
    rings = [w[max(0, i - lookback + 1) : i + 1] for i in range(n)]
    ring = batch_features(rings, cfg, width=min(lookback, n))
    last = np.array([len(r) - 1 for r in rings])
    for key in ("type", "item", "cat", "query", "gap", "num"):
        np.testing.assert_array_equal(long[key][0, :n], ring[key][np.arange(n), last], err_msg=key)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lookback=st.integers(1, 16), width=st.sampled_from([None, 16]))
def test_last_only_features_are_the_full_calls_at_each_windows_last_event(seed, lookback, width):
    """What a recurrence step from a stored state reads: the newest event's features alone."""
    cfg = SeqConfig(max_len=16, lookback=lookback)
    rng = random.Random(seed)
    windows = [random_window(rng, rng.randint(1, 16)) for _ in range(40)]
    full = batch_features(windows, cfg, width=width)
    last = batch_features(windows, cfg, width=width, last_only=True)
    at = (np.arange(len(windows)), full["length"] - 1)
    assert last["length"].tolist() == [1] * len(windows)
    for key in ("type", "item", "cat", "query", "gap", "num"):
        assert last[key].shape[1] == 1
        np.testing.assert_array_equal(last[key][:, 0], full[key][at], err_msg=key)


def test_open_carts_close_on_purchase_and_reopen_on_cart():
    cfg = SeqConfig(max_len=8)
    i1, i2 = 11, 22
    w = [RecentEvent(CART, i1, 1, 1.0, T0, 0), RecentEvent(CART, i2, 1, 1.0, T0 + 1, 0),
         RecentEvent(PURCHASE, i1, 1, 1.0, T0 + 2, 0), RecentEvent(0, i2, 1, 1.0, T0 + 3, 0),
         RecentEvent(CART, i1, 1, 1.0, T0 + 4, 0), RecentEvent(0, 0, 0, 0.0, T0 + 5, 0)]  # fmt: skip
    opened = np.expm1(batch_features([w], cfg)["num"][0, :6, 11]).round().astype(int).tolist()
    assert opened == [0, 1, 2, 1, 1, 2]


def test_windows_longer_than_max_len_or_empty_are_refused():
    with pytest.raises(ValueError, match="events per window"):
        batch_features([[]], SeqConfig(max_len=4, lookback=4))
    with pytest.raises(ValueError, match="events per window"):
        batch_features([random_window(random.Random(0), 5)], SeqConfig(max_len=4, lookback=4))


def test_windows_read_from_the_states_bytes_give_the_same_inputs_as_lists():
    """The stream hands the model ``RecentWindow``s (the state's packed ring, decoded in one go);
    they must give exactly the inputs of the same events as a list, through state round trips,
    slices and rings that have wrapped."""
    from models.events import EVENT_TYPES, Event
    from models.features.state import RecentWindow, StateConfig, UserState, apply_event

    rng = random.Random(3)
    st_cfg = StateConfig()
    cfg = SeqConfig(max_len=st_cfg.recent_n)
    states: dict[str, UserState] = {}
    windows: list[RecentWindow] = []
    ts = T0
    for i in range(3000):
        ts += rng.choice([0, 1_000, 60_000, 4_000_000])
        user = f"u{rng.randrange(40)}"
        st = states.setdefault(user, UserState.new())
        kind = rng.choice(EVENT_TYPES)
        ev = Event(f"e{i}", user, kind, ts - rng.choice([0, 0, 5_000]), item_id=rng.choice([None, "a", "b", f"i{i % 50}"]),
                   category_id=rng.choice([None, "c1", "c2"]), price=rng.choice([None, 3.25, 99.0]),
                   query="shoes" if kind == "search" else None)  # fmt: skip
        if apply_event(st, ev, st_cfg) != "applied":
            continue
        if i % 5 == 0:
            states[user] = st = UserState.from_bytes(st.to_bytes())
        w = st.recent_window()
        assert w == st.recent and list(w[1:]) == st.recent[1:] and list(w[-3:]) == st.recent[-3:]
        windows.append(w if i % 2 else w[max(0, len(w) - rng.randint(1, len(w))) :])
    assert any(len(w) == st_cfg.recent_n for w in windows) and all(type(w) is RecentWindow for w in windows)
    fast = batch_features(windows, cfg)
    slow = batch_features([list(w) for w in windows], cfg)
    assert fast.keys() == slow.keys()
    for key in fast:
        assert fast[key].dtype == slow[key].dtype and np.array_equal(fast[key], slow[key]), key
