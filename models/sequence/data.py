"""Training windows for the sequence model, built from the same records the stream keeps.

There is one feature definition: :func:`batch_features` turns windows, lists of
:class:`~models.features.recent.RecentEvent` (what the stream keeps per user as ``recent``), into
model inputs (:func:`window_features` is a batch of one). Training calls the same function on the
same windows the stream has, so training equals serving.

Features of the event at position ``i`` use only positions ``j`` of the same window with
``i - lookback < j <= i``: no more than the stream's ring holds. Besides hashed ids they include
repeat signals (has this item been viewed/carted/bought earlier in the window, how often this
category came up), which carry most of the short-term purchase signal.

For the GRU, :func:`build_windows` cuts each user's whole history into consecutive chunks of
``max_len`` events (the hidden state is carried from chunk to chunk in training, as the stream
carries it from event to event), and gives every event its *ring*: the features of the window of
its last ``lookback`` events, exactly what the stream scores that event on. The GRU reads the
ring's newest position and the copy attention reads the whole ring. The transformer keeps
overlapping windows of ``lookback`` events.

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
from functools import lru_cache

import numpy as np

from models.events import EVENT_TYPES, TYPE_INDEX, Event
from models.features.recent import RecentEvent
from models.features.state import RecentWindow
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
    """Model inputs for one window (at most ``cfg.max_window`` events, oldest first, sorted by time).

    Returns int64 arrays ``type`` (event type + 1; 0 is padding), ``item``, ``cat``, ``query``
    (hash buckets), ``gap`` (log-bucketed gap to the previous event) and a float32 ``num``
    array of shape (len, N_NUM) with the features named in :data:`NUM_FEATURES`. It is
    :func:`batch_features` of a batch of one, cut to the window's length.
    """
    n = len(window)
    b = batch_features([window], cfg)
    return {k: v[0, :n] for k, v in b.items() if k != "length"}


@lru_cache(maxsize=16)
def _position_masks(L: int, lookback: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, L, L) read-only masks over (position, other position) pairs of a window: the other is
    earlier (within the look-back), earlier or the same (within it), later. Built once per shape
    instead of three times per call."""
    band = ~np.tri(L, L, -lookback, bool)  # [i, j]: i - j < lookback
    masks = (
        (np.tri(L, L, -1, bool) & band)[None],
        (np.tri(L, L, 0, bool) & band)[None],
        np.tri(L, L, -1, bool).T[None],
    )
    for m in masks:
        m.flags.writeable = False
    return masks


def batch_features(
    windows: Sequence[Sequence[RecentEvent]], cfg: SeqConfig, width: int | None = None, *, last_only: bool = False
) -> dict[str, np.ndarray]:
    """Model inputs for a batch of windows (each 1..``cfg.max_window`` events, oldest first,
    sorted by time), right-padded to ``width`` (default ``cfg.max_window``; at least the longest
    window): the arrays of :func:`window_features` with a leading batch axis, plus ``length``.
    This is the one definition of the features. Position ``i`` reads only positions ``j`` with
    ``i - lookback < j <= i``, so a long window gives each event the features its own ring of
    ``lookback`` events would.

    ``last_only``: the features of each window's last event only, as windows of length 1 (what
    a recurrence step from a stored state reads), equal to the full call's at that position.

    Everything is computed for all windows at once with numpy: "earlier in the window" is a
    strictly lower-triangular (position, earlier position) mask, so e.g. ``item_seen`` counts the
    earlier positions with the same item, and an item is an *open cart* at ``i`` if it was carted
    at some ``j < i`` and its next cart or purchase after ``j`` is not before ``i``. The stream
    scores every event of a batch on its own window, so building inputs one Python loop per window
    had cost more than the network (docs/BENCHMARKS.md).
    """
    B, L = len(windows), cfg.max_window
    lengths = np.fromiter((len(w) for w in windows), np.int64, B)
    if not B or lengths.min() < 1 or lengths.max() > L:
        raise ValueError(f"need 1 to {L} events per window and at least one window")
    if width is not None:
        if width < lengths.max():
            raise ValueError(f"width {width} is shorter than a window of {lengths.max()} events")
        L = width
    if last_only:
        L = int(lengths.max())
    K = cfg.lookback
    if all(type(w) is RecentWindow for w in windows):  # the stream's windows: straight from their bytes
        flat = RecentWindow.columns(windows)  # type: ignore[arg-type]
    else:
        flat = np.array([tuple(e) for w in windows for e in w], np.float64).reshape(-1, len(RecentEvent._fields))
    rows = np.repeat(np.arange(B), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    def grid(field: str) -> np.ndarray:
        a = np.zeros((B, L), np.float64)
        a[rows, cols] = flat[:, RecentEvent._fields.index(field)]
        return a

    # The query positions (whose features are computed) against all positions (what they read):
    # every position, or each window's last one.
    pos = np.arange(L)
    earlier, upto, later = _position_masks(L, K)
    if last_only:
        qpos = (lengths - 1)[:, None]  # (B, 1)
        earlier, upto = earlier[0][qpos], upto[0][qpos]  # (B, 1, L)

        def at_q(a: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, qpos, 1)

    else:
        qpos = pos[None, :]

        def at_q(a: np.ndarray) -> np.ndarray:
            return a

    valid = np.arange(L)[None, :] < lengths[:, None]
    valid_q = at_q(valid)
    et = grid("type").astype(np.int64)
    ts = grid("ts").astype(np.int64)
    ids = {f: grid(f).astype(np.int64) for f in ("item", "category", "query")}
    item, cat = ids["item"], ids["category"]
    et_q, ts_q = at_q(et), at_q(ts)

    def bucket(h: np.ndarray, n: int) -> np.ndarray:
        return np.where(h != 0, 1 + h % (n - 1), 0)

    out = {
        "type": np.where(valid_q, et_q + 1, 0),
        "item": bucket(at_q(item), cfg.item_buckets),
        "cat": bucket(at_q(cat), cfg.category_buckets),
        "query": bucket(at_q(ids["query"]), cfg.query_buckets),
    }
    prev = np.maximum(qpos - 1, 0)  # the previous position (0 for position 0, masked below)
    has_prev = qpos >= 1
    dt = np.maximum(ts_q - np.take_along_axis(ts, np.broadcast_to(prev, ts_q.shape), 1), 0) / 1000
    gap = np.where(has_prev, np.minimum(cfg.gap_buckets - 1, 1 + np.floor(np.log2(1 + dt)).astype(np.int64)), 0)
    prev_ok = K > 1  # the previous event lies inside the look-back
    out["gap"] = np.where(valid_q & prev_ok, gap, 0)

    is_cart, is_buy = et == CART, et == PURCHASE
    Q = ts_q.shape[1]
    num = np.zeros((B, Q, N_NUM), np.float64)
    col = {name: i for i, name in enumerate(NUM_FEATURES)}
    num[..., col["log_price"]] = np.log1p(np.maximum(at_q(grid("price")), 0.0))

    def last_ts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(any earlier position in ``mask``, the newest such position's time)."""
        return mask.any(-1), np.where(mask, ts[:, None, :], np.iinfo(np.int64).min).max(-1)

    for ids_, seen, carted, bought, since, same_prev in (
        (item, "item_seen", "item_carted", "item_bought", "item_since", "same_item_as_prev"),
        (cat, "cat_seen", "cat_carted", None, None, "same_cat_as_prev"),
    ):
        ids_q = at_q(ids_)
        present_q = ids_q != 0
        same = (ids_q[:, :, None] == ids_[:, None, :]) & earlier & present_q[:, :, None]
        num[..., col[seen]] = np.log1p(same.sum(-1))
        num[..., col[carted]] = (same & is_cart[:, None, :]).any(-1)
        if bought is not None:
            num[..., col[bought]] = (same & is_buy[:, None, :]).any(-1)
            has, t = last_ts(same)
            num[..., col[since]] = np.where(has, np.log1p(np.maximum(ts_q - np.where(has, t, 0), 0) / 1000) / 10, 0.0)
        ids_prev = np.take_along_axis(ids_, np.broadcast_to(prev, ids_q.shape), 1)
        num[..., col[same_prev]] = present_q & (ids_q == ids_prev) & has_prev & prev_ok

    in_session = upto & (ts[:, None, :] >= (ts_q - cfg.session_gap_ms)[:, :, None])
    num[..., col["recent_events"]] = np.log1p(in_session.sum(-1))
    num[..., col["recent_carts"]] = np.log1p((in_session & is_cart[:, None, :]).sum(-1))
    # Open carts: a cart of an item at j stays open until the item's next cart or purchase k > j
    # (then k's line is the one that counts, or the purchase closed it); k itself sees it open.
    has_item = item != 0
    later_same = (
        later  # [j, k]: k > j
        & (item[:, :, None] == item[:, None, :])
        & (is_cart | is_buy)[:, None, :]
    )
    next_k = np.where(later_same.any(-1), later_same.argmax(-1), L)  # (B, L): per cart position j
    open_at = (
        (is_cart & has_item)[:, None, :]
        & earlier
        & (qpos[:, :, None] <= next_k[:, None, :])
    )
    num[..., col["open_carts"]] = np.log1p(open_at.sum(-1))
    num[..., col["purchases"]] = np.log1p((earlier & is_buy[:, None, :]).sum(-1))
    for name, mask in (("purchase_recency", is_buy), ("cart_recency", is_cart)):
        # The newest earlier position of one type is a running maximum along the window: O(L),
        # where last_ts over the (position, earlier position) grid is O(L^2) (same values).
        # If the newest one lies beyond the look-back, so do all older ones.
        j = np.full((B, L), -1, np.int64)
        j[:, 1:] = np.maximum.accumulate(np.where(mask, pos, -1), axis=1)[:, :-1]
        j = at_q(j)
        has = (j >= 0) & (qpos - j < K)
        t = np.take_along_axis(ts, np.maximum(j, 0), axis=1)
        num[..., col[name]] = np.where(has, np.exp(-np.maximum(ts_q - t, 0) / 3_600_000), 0.0)
    angle = 2 * np.pi * (ts_q % DAY_MS) / DAY_MS
    num[..., col["hour_sin"]] = np.sin(angle)
    num[..., col["hour_cos"]] = np.cos(angle)
    out["num"] = np.where(valid_q[:, :, None], num, 0.0).astype(np.float32)
    out["length"] = np.ones(B, np.int64) if last_only else lengths
    return out


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
    """Stacked, right-padded rows of training or validation data.

    Transformer: overlapping windows, every array of shape (n_windows, lookback[, N_NUM]);
    ``target`` marks the positions whose predictions count (each event is a target in exactly
    one window; earlier positions of later windows are context only).

    GRU (``stateful``): consecutive chunks of each user's history, labels and ``target`` of shape
    (n_chunks, max_len), the inputs as rings of shape (n_chunks, max_len, lookback[, N_NUM])
    (right-aligned: the event itself is the last ring position), ``first`` (n_chunks,) marks a
    user's first chunk (the state starts from zeros) and ``user`` (n_chunks,) numbers the users;
    a user's chunks are consecutive rows, in time order.
    """

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays["type"])

    @property
    def stateful(self) -> bool:
        return "first" in self.arrays

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
    """Training or validation rows for ``cfg.arch``: GRU chunks over whole histories
    (:func:`build_chunks`), or transformer windows (:func:`build_ring_windows`).

    Only events with ``ts >= target_from_ms`` are targets (the validation part of a time split);
    earlier events still serve as context (and, for the GRU, to build the state).
    """
    if cfg.arch == "gru":
        return build_chunks(histories, cfg, data_end_ms, target_from_ms)
    return build_ring_windows(histories, cfg, data_end_ms, target_from_ms)


RING_KEYS = ("type", "item", "cat", "query", "gap", "num")


def build_chunks(
    histories: dict[str, list[RecentEvent]],
    cfg: SeqConfig,
    data_end_ms: int,
    target_from_ms: int | None = None,
) -> Windows:
    """Each user's whole history in consecutive chunks of ``max_len`` events, every event with
    its ring (the features of its last ``lookback`` events, computed on that window alone, as
    the stream computes them). Users without any target are left out."""
    L, K = cfg.max_len, cfg.lookback
    users: list[list[RecentEvent]] = []
    targets: list[np.ndarray] = []
    for hist in histories.values():
        if not hist:
            continue
        tgt = np.ones(len(hist), bool)
        if target_from_ms is not None:
            tgt = np.fromiter((e.ts >= target_from_ms for e in hist), bool, len(hist))
        if tgt.any():
            users.append(hist)
            targets.append(tgt)
    if not users:
        raise ValueError("no windows: no events, or none in the target time range")
    n_chunks = np.array([-(-len(h) // L) for h in users])
    offset = np.concatenate([[0], np.cumsum(n_chunks)[:-1]])
    N = int(n_chunks.sum())
    keys = RING_KEYS if cfg.id_embeddings else ("type", "cat", "gap", "num")
    arrays: dict[str, np.ndarray] = {
        k: np.zeros((N, L, K, N_NUM) if k == "num" else (N, L, K), np.float32 if k == "num" else np.int64)
        for k in keys
    }
    labels = [history_labels(h, cfg, data_end_ms) for h in users]
    for k, v in labels[0].items():
        arrays[k] = np.full((N, L), -1 if k in ("next_type", "next_cat") else 0, v.dtype)
    arrays["target"] = np.zeros((N, L), bool)
    arrays["first"] = np.zeros(N, bool)
    arrays["first"][offset] = True
    arrays["user"] = np.repeat(np.arange(len(users)), n_chunks)
    # Flat (chunk row, position) of every event, in user order.
    row = np.concatenate([o + np.arange(len(h)) // L for o, h in zip(offset, users, strict=True)])
    col = np.concatenate([np.arange(len(h)) % L for h in users])
    for k in labels[0]:
        arrays[k][row, col] = np.concatenate([lab[k] for lab in labels])
    arrays["target"][row, col] = np.concatenate(targets)
    rings = [h[max(0, i - K + 1) : i + 1] for h in users for i in range(len(h))]
    step = 4096
    for s in range(0, len(rings), step):
        part = rings[s : s + step]
        f = batch_features(part, cfg, width=min(K, max(map(len, part))))
        n, W = f["length"].shape[0], f["type"].shape[1]
        # Right-align each ring in K slots: its position p goes to K - length + p.
        src = np.arange(K)[None, :] - (K - f["length"])[:, None]
        ok = (src >= 0) & (src < W)
        src = np.clip(src, 0, W - 1)
        r, c = row[s : s + n], col[s : s + n]
        for k in keys:
            g = np.take_along_axis(f[k], src[:, :, None] if k == "num" else src, axis=1)
            arrays[k][r, c] = np.where(ok[:, :, None] if k == "num" else ok, g, 0)
    return Windows(arrays)


def build_ring_windows(
    histories: dict[str, list[RecentEvent]],
    cfg: SeqConfig,
    data_end_ms: int,
    target_from_ms: int | None = None,
) -> Windows:
    """Cut histories into windows of ``lookback`` events with stride ``lookback // 2`` (the
    transformer's rows).

    Every event is the target of one window, and (apart from a user's first events) has at least
    ``lookback // 2`` earlier events of context, like a stream holding the last ``lookback``.
    """
    L = cfg.lookback
    stride = max(1, L // 2)
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    cut: list[Sequence[RecentEvent]] = []  # the windows, featurised together at the end
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
                cut.append(hist[start:end])
                for k, v in labels.items():
                    pad = np.full((L,) + v.shape[1:], -1 if k in ("next_type", "next_cat") else 0, v.dtype)
                    pad[: end - start] = v[start:end]
                    out[k].append(pad)
                out["target"].append(target)
            end = min(end + stride, n)
    if not cut:
        raise ValueError("no windows: no events, or none in the target time range")
    arrays = {k: np.stack(v) for k, v in out.items()}
    chunks = [batch_features(cut[i : i + 4096], cfg, width=L) for i in range(0, len(cut), 4096)]
    arrays.update({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})
    return Windows(arrays)


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
