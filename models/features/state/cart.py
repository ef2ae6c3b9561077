"""The cart and the purchase occasions: the parts of the update that a purchase changes.

Both must stay exact when a purchase and the add it removes, or two purchases of one occasion,
arrive out of order within the lateness, so each keeps just enough marks (removed items, the last
cart-emptying purchase, the previous occasion's end) to apply a late event as if it came in order.
"""

from __future__ import annotations

import bisect

from models.events import Event
from models.features.state.record import StateConfig, UserState


def cart_add(state: UserState, ts: int, item: int, qty: int, price: float, cfg: StateConfig) -> None:
    """Add a cart line, unless a purchase at or after ``ts`` already took the item out."""
    state.sess_value += qty * price  # value added counts even if the item was bought since
    if ts <= state.cart_cleared_ts or state.removed.get(item, -1) >= ts:
        return  # a purchase at or after this add already took it out of the cart
    bisect.insort(state.cart, (ts, item, qty, price))
    if len(state.cart) > cfg.max_cart_lines:
        del state.cart[0]


def purchase(state: UserState, ts: int, item: int, ev: Event, cfg: StateConfig) -> None:
    """Count a purchase into spend and occasions, and take what it bought out of the cart: the
    item's lines added at or before ``ts``, or every such line for a purchase without an item."""
    state.spend += (ev.price or 0.0) * (ev.quantity or 1)
    _occasion(state, ts, cfg.session_gap_ms)
    if ts > state.last_purchase_ts:
        state.last_purchase_ts = ts
    if item:
        state.cart = [c for c in state.cart if not (c[1] == item and c[0] <= ts)]
        if state.removed.get(item, -1) < ts:
            state.removed[item] = ts
    else:
        state.cart = [c for c in state.cart if c[0] > ts]
        if ts > state.cart_cleared_ts:
            state.cart_cleared_ts = ts


def _occasion(state: UserState, ts: int, gap: int) -> None:
    """Count the purchase at ``ts`` into the purchase occasions (before ``last_purchase_ts`` moves).

    A purchase more than ``gap`` after the newest one starts an occasion. A purchase at or before
    the newest one is late by less than the lateness, hence by less than ``gap``: it joins the
    newest occasion, unless it falls before that occasion's start, where it either extends the
    occasion back or, if it is within ``gap`` of the previous occasion's last purchase, bridges
    the two into one (the same rule as session merging)."""
    last = state.last_purchase_ts
    if not state.purchase_occasions:
        state.first_purchase_ts, state.purchase_occasions = ts, 1
    elif ts > last:
        if ts - last > gap:
            state.purchase_occasions += 1
            state.occasion_start, state.prev_occasion_end = ts, last
    elif ts < state.first_purchase_ts:
        state.first_purchase_ts = ts  # within the lateness of the first: no occasion before it
    elif state.prev_occasion_end and ts < state.occasion_start:
        if ts - state.prev_occasion_end <= gap:
            state.purchase_occasions -= 1
            state.occasion_start = state.prev_occasion_end = 0
        else:
            state.occasion_start = ts


def compact_cart(state: UserState, horizon: int) -> None:
    """Merge lines of the same item added before ``horizon``: no late purchase can split them."""
    old = [c for c in state.cart if c[0] < horizon]
    if len(old) < 2 or len({c[1] for c in old}) == len(old):
        return
    merged: dict[int, tuple[int, int, int, float]] = {}
    for ts, item, qty, price in old:
        m = merged.get(item)
        if m is None:
            merged[item] = (ts, item, qty, price)
        else:
            # Newest add sets the unit price; the larger price breaks a tie so the result is canonical.
            newest = max((ts, price), (m[0], m[3]))
            merged[item] = (newest[0], item, m[2] + qty, newest[1])
    state.cart = sorted([*merged.values(), *(c for c in state.cart if c[0] >= horizon)])
