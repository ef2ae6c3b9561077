"""Training windows for the sequence model, built from the same records the stream keeps.

There is one feature definition: :func:`window_features` turns a list of
:class:`~models.features.recent.RecentEvent` (what the stream keeps per user as ``recent``) into
model inputs. Training cuts each user's history (``RecentEvent.from_event`` over their events)
into windows of ``max_len`` events and calls the same function, so training equals serving.

Features of the event at position ``i`` use only positions ``<= i`` of the same window. Besides
hashed ids they include repeat signals (has this item been viewed/carted/bought earlier in the
window, how often this category came up), which carry most of the short-term purchase signal.

Labels (per event at time ``t``, from the user's full history, never from features):

* intent: a purchase in ``(t, t + intent_ms]``; only non-purchase events with
  ``t + intent_ms <= data_end``.
* churn: no event at all in ``(t, t + churn_ms]``; only events with ``t + churn_ms <= data_end``.
* next type / next category: of the user's next event (self-supervised, no horizon needed).

>>> from models.events import Event
>>> evs = [Event("a", "u", "click", 1_000, item_id="i1", category_id="c1"),
...        Event("b", "u", "add_to_cart", 61_000, item_id="i1", category_id="c1"),
...        Event("c", "u", "purchase", 121_000, item_id="i1", category_id="c1")]
>>> cfg = SeqConfig(max_len=4)
>>> rec = [RecentEvent.from_event(e) for e in evs]
>>> f = window_features(rec, cfg)
>>> [round(float(v), 4) for v in f["num"][:, NUM_FEATURES.index("item_seen")]]  # log1p(earlier same-item events)
[0.0, 0.6931, 1.0986]
>>> lab = history_labels(rec, cfg, data_end_ms=121_000 + cfg.intent_ms)
>>> lab["intent"].tolist(), lab["intent_mask"].tolist()
([1.0, 1.0, 0.0], [True, True, False])
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from models.events import EVENT_TYPES, TYPE_INDEX, Event
from models.features.recent import RecentEvent
from models.sequence.config import DAY_MS, SeqConfig

# Bumped whenever window_features changes meaning: a checkpoint with another version is refused.
FEATURE_SCHEMA_VERSION = 1

NUM_FEATURES: tuple[str, ...] = (
    "log_price",
    "item_seen",  # log1p(earlier events on the same item in the window)
    "item_carted",  # the item was added to cart earlier in the window
    "item_bought",
    "item_since",  # log1p(seconds since the last event on the same item) / 10, 0 if none
    "same_item_as_prev",
    "cat_seen",  # log1p(earlier events in the same category)
    "cat_carted",
    "same_cat_as_prev",
    "recent_events",  # log1p(events in the last session_gap_ms, this one included)
    "recent_carts",  # log1p(carts in the last session_gap_ms, this one included)
    "open_carts",  # log1p(items carted earlier in the window and not bought since)
    "purchases",  # log1p(purchases earlier in the window): the user's propensity to buy
    "purchase_recency",  # exp(-hours since the last earlier purchase), 0 if none
    "cart_recency",  # exp(-hours since the last earlier cart), 0 if none
    "hour_sin",  # UTC hour of day: shopping and buying follow a daily rhythm
    "hour_cos",
)
N_NUM = len(NUM_FEATURES)
PURCHASE = TYPE_INDEX["purchase"]
CART = TYPE_INDEX["add_to_cart"]
N_TYPES = len(EVENT_TYPES)


def hash_bucket(h: int, n: int) -> int:
    """Bucket in [1, n) for a non-zero stable hash; 0 stays 0 ("absent")."""
    return 0 if h == 0 else 1 + h % (n - 1)


def gap_bucket(gap_ms: int | None, n: int) -> int:
    """0 for "no previous event", else 1 + floor(log2(1 + gap in seconds)), capped at n - 1."""
    if gap_ms is None:
        return 0
    return min(n - 1, 1 + int(math.log2(1 + max(gap_ms, 0) / 1000)))


def window_features(window: Sequence[RecentEvent], cfg: SeqConfig) -> dict[str, np.ndarray]:
    """Model inputs for one window (at most ``max_len`` events, oldest first).

    Returns int64 arrays ``type`` (event type + 1; 0 is padding), ``item``, ``cat``, ``query``
    (hash buckets), ``gap`` (log-bucketed gap to the previous event) and a float32 ``num``
    array of shape (len, N_NUM) with the features named in :data:`NUM_FEATURES`.
    """
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


def history_labels(history: Sequence[RecentEvent], cfg: SeqConfig, data_end_ms: int) -> dict[str, np.ndarray]:
    """Per-event labels for one user's time-sorted history; see the module docstring."""
    n = len(history)
    ts = [e.ts for e in history]
    buys = [e.ts for e in history if e.type == PURCHASE]
    intent = np.zeros(n, np.float32)
    intent_mask = np.zeros(n, bool)
    churn = np.zeros(n, np.float32)
    churn_mask = np.zeros(n, bool)
    next_type = np.full(n, -1, np.int64)
    next_cat = np.full(n, -1, np.int64)
    for i, e in enumerate(history):
        t = e.ts
        if e.type != PURCHASE and t + cfg.intent_ms <= data_end_ms:
            j = bisect.bisect_right(buys, t)
            intent[i] = j < len(buys) and buys[j] <= t + cfg.intent_ms
            intent_mask[i] = True
        if t + cfg.churn_ms <= data_end_ms:
            j = bisect.bisect_right(ts, t)
            churn[i] = not (j < n and ts[j] <= t + cfg.churn_ms)
            churn_mask[i] = True
        if i + 1 < n:
            nxt = history[i + 1]
            next_type[i] = nxt.type
            if nxt.category:
                next_cat[i] = hash_bucket(nxt.category, cfg.category_buckets)
    return {
        "intent": intent,
        "intent_mask": intent_mask,
        "churn": churn,
        "churn_mask": churn_mask,
        "next_type": next_type,
        "next_cat": next_cat,
    }


@dataclasses.dataclass
class Windows:
    """Stacked, right-padded windows: every array has shape (n_windows, max_len[, N_NUM]).

    ``target`` marks the positions whose predictions count (each event is a target in exactly
    one window; earlier positions of later windows are context only).
    """

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays["type"])

    @property
    def n_targets(self) -> int:
        return int(self.arrays["target"].sum())

    def subset(self, idx: np.ndarray) -> Windows:
        return Windows({k: v[idx] for k, v in self.arrays.items()})


def user_histories(events: Iterable[Event]) -> dict[str, list[RecentEvent]]:
    """Each user's events as RecentEvent records, sorted by time (ties keep input order)."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user].append(e)
    return {
        u: [RecentEvent.from_event(e) for e in sorted(evs, key=lambda e: e.ts)] for u, evs in by_user.items()
    }


def build_windows(
    histories: dict[str, list[RecentEvent]],
    cfg: SeqConfig,
    data_end_ms: int,
    target_from_ms: int | None = None,
) -> Windows:
    """Cut histories into windows of ``max_len`` with stride ``max_len // 2``.

    Every event is the target of one window, and (apart from a user's first events) has at least
    ``max_len // 2`` earlier events of context, like a stream holding the last ``max_len``.
    Only events with ``ts >= target_from_ms`` are targets (the validation part of a time split);
    earlier events still serve as context.
    """
    L = cfg.max_len
    stride = max(1, L // 2)
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for hist in histories.values():
        if not hist:
            continue
        labels = history_labels(hist, cfg, data_end_ms)
        n = len(hist)
        covered = 0  # events [0, covered) already are targets of an earlier window
        end = min(L, n)
        while covered < n:
            start = max(0, end - L)
            target = np.zeros(L, bool)
            target[covered - start : end - start] = True
            if target_from_ms is not None:
                target[: end - start] &= np.array([e.ts >= target_from_ms for e in hist[start:end]])
            covered = end
            if target.any():
                feats = window_features(hist[start:end], cfg)
                for k, v in list(feats.items()) + [(k, v[start:end]) for k, v in labels.items()]:
                    pad = np.zeros((L,) + v.shape[1:], v.dtype)
                    if k in ("next_type", "next_cat"):
                        pad[:] = -1
                    pad[: end - start] = v
                    out[k].append(pad)
                out["target"].append(target)
                out["length"].append(np.array(end - start))
            end = min(end + stride, n)
    if not out:
        raise ValueError("no windows: no events, or none in the target time range")
    return Windows({k: np.stack(v) for k, v in out.items()})


def time_split(events: Sequence[Event], cfg: SeqConfig) -> tuple[Windows, Windows, int]:
    """Train/validation windows split at a time cutoff (the last ``val_fraction`` of the range).

    Training sees only events before the cutoff, with labels that end before it, so nothing
    from the validation period leaks into training. Validation targets are events at or after
    the cutoff, with the full history as context. Returns (train, validation, cutoff_ms).
    """
    t0 = min(e.ts for e in events)
    t1 = max(e.ts for e in events)
    cutoff = int(t0 + (1.0 - cfg.val_fraction) * (t1 - t0))
    before = [e for e in events if e.ts < cutoff]
    train = build_windows(user_histories(before), cfg, data_end_ms=cutoff - 1)
    val = build_windows(user_histories(events), cfg, data_end_ms=t1, target_from_ms=cutoff)
    return train, val, cutoff


def category_vocab(events: Iterable[Event], cfg: SeqConfig) -> dict[int, str]:
    """bucket -> the most frequent category_id in that bucket, so a top-k bucket names a category."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.category_id:
            counts[hash_bucket(RecentEvent.from_event(e).category, cfg.category_buckets)][e.category_id] += 1
    return {b: c.most_common(1)[0][0] for b, c in counts.items()}
