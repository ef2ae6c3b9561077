"""The update: :func:`apply_event` applies one event to a user's state, in place.

It is the only code that changes a state, and it keeps every part *as of* the user's newest event
time, so that the same set of applied events gives the same state in any arrival order within the
lateness (decayed floats up to rounding; the package docstring explains each part). Each float32
field is rounded as it changes, so a state in memory equals the same state stored and read back.

An event is recognised by a 32-bit CRC of its id: two different ids among one user's 32 newest
events collide with a probability of about 1e-8 per event, and the second would be reported as a
duplicate.
"""

from __future__ import annotations

import math
import zlib
from array import array
from functools import lru_cache

from models.events import TYPE_INDEX, Event
from models.features.hashing import stable_hash
from models.features.recent import RecentEvent, as_float32
from models.features.state.cart import cart_add, compact_cart, purchase
from models.features.state.layout import _KEY, _REC, N_TYPES
from models.features.state.record import APPLIED, DUPLICATE, LATE, StateConfig, UserState

_PURCHASE = TYPE_INDEX["purchase"]
_CART = TYPE_INDEX["add_to_cart"]
_SEARCH = TYPE_INDEX["search"]
_MAX_TERMS_PER_QUERY = 8
_U32 = 0xFFFF_FFFF


def apply_event(state: UserState, ev: Event, cfg: StateConfig) -> str:
    """Apply one event to ``state`` in place; return ``"applied"``, ``"duplicate"`` or ``"late"``.

    Duplicates and late events leave the state unchanged. See the package docstring for the
    semantics of each part; the result does not depend on arrival order within the lateness.

    >>> st = UserState.new()
    >>> apply_event(st, Event("e1", "u", "click", 1_700_000_000_000, item_id="i1"), StateConfig())
    'applied'
    >>> apply_event(st, Event("e1", "u", "click", 1_700_000_000_000, item_id="i1"), StateConfig())
    'duplicate'
    """
    h = event_id_hash(ev.event_id)
    seen = state.seen
    if seen and _has_id(seen, h.to_bytes(4, "big")):
        return DUPLICATE
    ts = ev.ts
    last = state.last_ts
    key = _KEY.pack(ts >> 32, ts & _U32, h)
    counts = state.counts
    if len(counts) != N_TYPES * len(cfg.horizons_ms):
        if last:
            raise ValueError("state was built with a different number of horizons than this config")
        state.counts = counts = [0.0] * (N_TYPES * len(cfg.horizons_ms))  # empty state made without cfg
    if last == 0:
        # First event: the reference time starts here, so it takes the "same time" path below.
        state.first_seen = state.last_ts = state.sess_start = last = ts
        state.n_sessions = 1
    elif ts < last - cfg.allowed_lateness_ms or (
        len(seen) >= cfg.dedupe_n * _KEY.size and key < seen[: _KEY.size]
    ):
        return LATE

    t = TYPE_INDEX[ev.type]
    rec = _recent_event(ev, t)
    rates, cat_rate, term_rate = cfg._rates  # type: ignore[attr-defined]
    if ts > last:
        # Newest event: move the reference time forward, decaying everything held "as of last_ts".
        d = ts - last
        for base, r in zip(range(0, len(counts), N_TYPES), rates, strict=True):
            f = math.exp(-d * r)
            for i in range(base, base + N_TYPES):  # one counter per event type at this horizon
                counts[i] *= f
            counts[base + t] += 1.0
        if state.categories:
            state.categories = _decayed(state.categories, math.exp(-d * cat_rate))
        if state.terms:
            state.terms = _decayed(state.terms, math.exp(-d * term_rate))
        cat_w = term_w = 1.0
        if d > cfg.session_gap_ms:  # a new session; the current one becomes the previous
            state.prev_start, state.prev_end = state.sess_start, last
            state.prev_counts, state.prev_value = state.sess_counts, state.sess_value
            state.sess_start, state.sess_counts, state.sess_value = ts, [0] * N_TYPES, 0.0
            state.n_sessions += 1
        state.last_ts = last = ts
    else:
        # In the past (within the lateness): add the weight the event has as of last_ts.
        d = last - ts
        if d:
            for hi, r in enumerate(rates):
                counts[hi * N_TYPES + t] += math.exp(-d * r)
            cat_w, term_w = math.exp(-d * cat_rate), math.exp(-d * term_rate)
        else:
            for i in range(t, len(counts), N_TYPES):
                counts[i] += 1.0
            cat_w = term_w = 1.0
        if ts < state.sess_start:
            # Lateness < gap, so the event is within the gap of the current session's start: it
            # extends that session back, and merges the previous one if it bridges the gap.
            state.sess_start = ts
            if state.prev_end and ts - state.prev_end <= cfg.session_gap_ms:
                state.sess_start = state.prev_start
                state.sess_counts = [a + b for a, b in zip(state.sess_counts, state.prev_counts, strict=True)]
                state.sess_value += state.prev_value
                state.n_sessions -= 1
                state.prev_end = 0
        if ts < state.first_seen:
            state.first_seen = ts
    state.totals[t] += 1
    state.sess_counts[t] += 1

    _remember(state, key, rec, cfg)
    if ev.category_id:
        w = cfg.category_weights[t] * cat_w
        if w:
            # NUL separates names in the record; an id containing one is stored with U+FFFD instead.
            name = ev.category_id.replace("\x00", "\ufffd")
            _bump(state.categories, name, w, cfg.top_k_categories)
    if t == _SEARCH and ev.query:
        for token in sorted(set(ev.query.lower().split()))[:_MAX_TERMS_PER_QUERY]:
            _bump(state.terms, _cached_hash(token), term_w, cfg.top_k_terms)
    if t == _CART:
        cart_add(state, ts, rec.item, ev.quantity or 1, float(ev.price or 0.0), cfg)  # money: float64
    elif t == _PURCHASE:
        purchase(state, ts, rec.item, ev, cfg)

    state.counts = array("f", counts).tolist()  # held as stored (see the codec's docstring)
    state.sess_value = as_float32(state.sess_value)
    horizon = last - cfg.allowed_lateness_ms  # nothing older than this can be applied any more
    if state.prev_end and state.sess_start <= horizon:
        state.prev_end = 0  # no late event can reach the previous session any more
    if state.prev_end == 0:
        state.prev_start, state.prev_counts, state.prev_value = 0, [0] * N_TYPES, 0.0
    if state.prev_occasion_end and state.occasion_start <= horizon:
        state.occasion_start = state.prev_occasion_end = 0  # no late purchase can bridge them any more
    if state.removed:
        state.removed = {it: r for it, r in state.removed.items() if r >= horizon}
    if len(state.cart) > 1:
        compact_cart(state, horizon)
    return APPLIED


def event_id_hash(event_id: str) -> int:
    """The 32-bit hash of an event id kept in the de-duplication ring (CRC-32: stable across
    processes like ``stable_hash``, and cheaper, which matters at once per event).

    >>> event_id_hash("e1") == event_id_hash("e1") != event_id_hash("e2")
    True
    """
    return zlib.crc32(event_id.encode("utf-8"))


# Item, category and query ids repeat across users (popular items, a few hundred categories), so a
# bounded memo of their hashes saves most of the hashing cost of an update.
_cached_hash = lru_cache(maxsize=1 << 16)(stable_hash)


def _recent_event(ev: Event, t: int) -> RecentEvent:
    """``RecentEvent.from_event(ev)`` with memoised hashes (the tests check they are equal)."""
    return RecentEvent(
        t,
        _cached_hash(ev.item_id) if ev.item_id else 0,
        _cached_hash(ev.category_id) if ev.category_id else 0,
        as_float32(ev.price or 0.0),
        ev.ts,
        _cached_hash(ev.query.lower()) if ev.query else 0,
    )


def _has_id(seen: bytes, idb: bytes) -> bool:
    """Whether the 4-byte event-id hash ``idb`` is the id field of a key in ``seen``."""
    pos = seen.find(idb, 6)
    while pos != -1:
        if pos % _KEY.size == 6:  # aligned on an id field, not straddling a timestamp
            return True
        pos = seen.find(idb, pos + 1)
    return False


def _remember(state: UserState, key: bytes, rec: RecentEvent, cfg: StateConfig) -> None:
    """Insert the event into the de-duplication ring and, if among the newest, the recent ring."""
    size = _KEY.size
    seen = state.seen
    n = len(seen) // size
    if not seen or key > seen[-size:]:
        i = n  # in-order arrival, the common case
    else:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if seen[mid * size : (mid + 1) * size] < key:
                lo = mid + 1
            else:
                hi = mid
        i = lo
    blob = state.recent_blob
    off = n - len(blob) // _REC.size  # the recent ring is the newest tail of the seen ring
    if i >= off:
        j = (i - off) * _REC.size
        blob = blob[:j] + _REC.pack(rec.type, rec.item, rec.category, rec.price, rec.query) + blob[j:]
        if len(blob) > cfg.recent_n * _REC.size:
            blob = blob[_REC.size :]
        state.recent_blob = blob
    seen = seen[: i * size] + key + seen[i * size :]
    if len(seen) > cfg.dedupe_n * size:
        seen = seen[size:]
    state.seen = seen


# Decayed scores are stored as float32, which flushes to zero below ~1e-45: after ~150 half-lives
# of silence every score would be 0 and their order lost. They are scaled up to this floor instead.
_SCORE_FLOOR = 1e-30


def _decayed(scores: dict, f: float) -> dict:
    """``scores`` times ``f``; if the largest would fall below :data:`_SCORE_FLOOR`, all are scaled
    so that it equals the floor: the ranking survives any silence, the values stay ~0.

    The values are rounded to float32, as the record stores them.

    >>> _decayed({"a": 2.0, "b": 1.0}, 0.1)
    {'a': 0.20000000298023224, 'b': 0.10000000149011612}
    >>> _decayed({"a": 2.0, "b": 1.0}, 1e-40) == {"a": as_float32(1e-30), "b": as_float32(5e-31)}
    True
    """
    out = [s * f for s in scores.values()]
    if max(out) < _SCORE_FLOOR:
        scale = _SCORE_FLOOR / max(max(scores.values()), 1e-300)
        out = [s * scale for s in scores.values()]
    return dict(zip(scores, array("f", out).tolist(), strict=True))


def _bump(scores: dict, key: object, w: float, k: int) -> None:
    """Add ``w`` to ``scores[key]``; keep at most ``k`` keys by evicting the lowest other score."""
    if key in scores:
        scores[key] = as_float32(scores[key] + w)  # as stored (see the codec's docstring)
        return
    if len(scores) >= k:
        victim = min(scores.items(), key=lambda kv: (kv[1], kv[0]))[0]
        del scores[victim]
    scores[key] = as_float32(w)
