"""Per-user rolling state: small, exact under bounded disorder, and fast to update and store.

One :class:`UserState` per user lives in the Faust table (as :meth:`UserState.to_bytes`). The stream
calls :func:`apply_event` for every event of that user; training, evaluation and serving all read
the same state through :func:`models.features.online.online_features` and :attr:`UserState.recent`,
so the features a model is trained on are the features it is served.

What the record holds, and the choices behind each part:

* **Counts per event type over horizons** (5 min, 1 h, 24 h, 7 d by default) are *exponentially
  decayed counters*, not exact windows. An exact sliding window must remember every event time in
  the longest horizon (hundreds of timestamps for an active user over 7 days), which breaks the
  1 KiB budget; a decayed counter is one float. With time constant ``tau = horizon`` the counter is
  ``sum(exp(-(t_ref - ts) / tau))``: a user acting at a steady rate ``r`` reads ``r * horizon``, the
  same as a window of that length, and a burst fades smoothly instead of falling off a cliff. The
  sum is commutative, so an out-of-order event adds ``exp(-(t_ref - ts) / tau)`` and gives exactly
  the value that in-order arrival would have given (up to float rounding). All decayed values are
  stored *as of* ``last_ts`` (the user's newest event time) and decayed further when read at a
  later ``now_ms``. Lifetime totals per type are exact integers.
* **Lateness**: an event is applied if its ``ts >= last_ts - allowed_lateness_ms``; older ones are
  reported ``"late"`` and change nothing. ``allowed_lateness_ms`` must be below ``session_gap_ms``,
  which is what makes sessions exact (next point). Every part of the state is defined so that the
  *same set of applied events gives the same state in any arrival order* (floats approximately):
  this is the property the tests check.
* **Sessions** are gap-based in event time: a gap longer than ``session_gap_ms`` starts a new one.
  The current session (start, per-type counts, value added to cart) is kept, plus the previous
  session while a late event could still merge the two: a late event that falls in the gap and is
  within ``session_gap_ms`` of both merges them, exactly as if it had arrived in order. Because the
  lateness is shorter than the gap, a late event always belongs to the current session, and only
  the previous one can ever merge; once the current session started more than the lateness before
  ``last_ts`` no merge is possible and the previous session is dropped (that keeps the record small
  and canonical). ``Event.session_id`` is ignored: producers disagree on what a session is.
* **Recent events**: the last ``recent_n`` applied events as :class:`RecentEvent`, sorted by
  ``(ts, event_id_hash(event_id))`` (the hash breaks ties between equal timestamps: the raw ids are
  too big to keep). A late event is inserted at its place.
* **De-duplication**: the ``(ts, event_id_hash(event_id))`` keys of the newest ``dedupe_n`` applied
  events (``dedupe_n >= recent_n``, so the recent ring is always the newest tail of this ring and
  stores no timestamps of its own). An event whose id hash is in the ring is a ``"duplicate"``. An
  event older than everything in a full ring could be a duplicate we no longer remember, so it is
  reported ``"late"`` instead of risking a double count: the effective lateness is the smaller of
  ``allowed_lateness_ms`` and the age of the ``dedupe_n``-th newest event.
* **Category affinity**: a decayed, type-weighted score per raw ``category_id`` (so signals can name
  the category), at most ``top_k_categories`` of them. A category not yet tracked always enters and
  evicts the lowest score: exact while a user has touched at most K categories, a recency-biased
  approximation beyond that.
* **Search terms**: lower-cased whitespace tokens of each query, hashed, with a decayed count, at
  most ``top_k_terms`` (same eviction rule).
* **Recency, frequency, monetary**: last purchase time, purchase count, total spend
  (``price * quantity`` of purchases, quantity defaulting to 1).
* **Purchase rhythm**: the first purchase time and the number of *purchase occasions*: purchases
  more than ``session_gap_ms`` apart start a new occasion, so a checkout of five items (five
  purchase events seconds apart) is one occasion. With the last purchase time this gives the
  user's own mean gap between occasions, ``(last - first) / (occasions - 1)``, the rhythm a churn
  question ("no purchase in the next 90 days?") needs: 40 days of silence is alarming for a weekly
  buyer and normal for a quarterly one. It is exact under the lateness like sessions are: a late
  purchase can only fall into the gap before the newest occasion (lateness < gap), so the record
  keeps that occasion's start and the previous occasion's last purchase for as long as a late
  purchase could still bridge the two (then both are zero, which keeps the record canonical).
  Nothing is stored per gap, so there is no variance or trend of the rhythm, only its mean.
* **Cart**: ``add_to_cart`` adds a line; a purchase of an item removes every line of that item added
  at or before the purchase time; a purchase without ``item_id`` empties the cart of everything
  added at or before it. To stay exact when a purchase overtakes the add it should remove, the
  record keeps a removal mark per item for as long as a late add could still arrive (the lateness),
  and the time of the last cart-emptying purchase. Lines older than the lateness can no longer be
  split by a late purchase, so lines of the same item are merged (quantities added, newest price).
  At most ``max_cart_lines`` lines are kept (the oldest go first).
* **First seen**: the earliest applied event time.
* **Storage** (:meth:`UserState.to_bytes`): ``struct``-packed little-endian fields behind a schema
  version byte, no pickle. The two rings are held in memory already packed (fixed-size records in
  one ``bytes``), so loading and storing a record does no per-event work; decayed values (counts,
  category and term scores) and the session's cart value are float32 on disk, and so are the
  recent ring's prices (a :class:`RecentEvent`'s price is a float32 value; money, the cart lines
  and the spend, stays float64). :func:`apply_event` rounds each of them to float32 as it updates
  it, so a state kept in memory equals the same state stored and read back: what a worker
  computes never depends on whether, or after which event, a record was stored. On the simulated
  shop mix a user's record averages about 615 bytes (``benchmarks/state_bench.py``). A record of an
  older version is migrated on load (see ``_MIGRATIONS``).

The event-id hash is a 32-bit CRC: two different ids among one user's 32 newest events collide
with a probability of about 1e-8 per event, and the second would be reported as a duplicate.

Everything is event time in epoch milliseconds; nothing here reads a clock.

>>> from models.events import Event
>>> cfg = StateConfig()
>>> st = UserState.new()
>>> apply_event(st, Event("e1", "u", "click", 1_700_000_000_000, item_id="i1", category_id="shoes"), cfg)
'applied'
>>> apply_event(st, Event("e1", "u", "click", 1_700_000_000_000, item_id="i1", category_id="shoes"), cfg)
'duplicate'
>>> apply_event(st, Event("e2", "u", "add_to_cart", 1_700_000_030_000, item_id="i1", price=9.5), cfg)
'applied'
>>> apply_event(st, Event("e0", "u", "click", 1_700_000_030_000 - 61_000, item_id="i2"), cfg)
'late'
>>> st.totals, st.cart_items(), st.first_seen
([1, 0, 1, 0], 1, 1700000000000)
>>> UserState.from_bytes(st.to_bytes()).recent == st.recent
True
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import struct
import zlib
from array import array
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

from models.events import EVENT_TYPES, TYPE_INDEX, Event
from models.features.hashing import stable_hash
from models.features.recent import RecentEvent, as_float32

APPLIED = "applied"
DUPLICATE = "duplicate"
LATE = "late"

N_TYPES = len(EVENT_TYPES)
_PURCHASE = TYPE_INDEX["purchase"]
_CART = TYPE_INDEX["add_to_cart"]
_SEARCH = TYPE_INDEX["search"]
_LN2 = math.log(2.0)
_MAX_TERMS_PER_QUERY = 8
_U32 = 0xFFFF_FFFF

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@dataclasses.dataclass(frozen=True)
class StateConfig:
    """How the per-user state is built. The same config must be used to build and to read a state.

    ``horizons_ms`` are the time constants of the decayed counters (see the module docstring);
    changing their number makes stored states unreadable by :func:`apply_event` (it checks).
    ``category_weights`` weighs each event type (click, search, add_to_cart, purchase) in the
    category affinity: a cart add says more about intent than a click.

    >>> StateConfig().horizons_ms
    (300000, 3600000, 86400000, 604800000)
    >>> StateConfig(allowed_lateness_ms=3_600_000)
    Traceback (most recent call last):
    ...
    ValueError: allowed_lateness_ms must be smaller than session_gap_ms (sessions rely on it)
    """

    horizons_ms: tuple[int, ...] = (5 * MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS)
    session_gap_ms: int = 30 * MINUTE_MS
    recent_n: int = 16
    dedupe_n: int = 32
    top_k_categories: int = 10
    category_half_life_ms: int = HOUR_MS
    category_weights: tuple[float, float, float, float] = (1.0, 1.0, 3.0, 5.0)
    top_k_terms: int = 8
    term_half_life_ms: int = DAY_MS
    max_cart_lines: int = 16
    allowed_lateness_ms: int = 60_000

    def __post_init__(self) -> None:
        if not self.horizons_ms or any(h <= 0 for h in self.horizons_ms) or len(self.horizons_ms) > 255:
            raise ValueError("horizons_ms must be 1 to 255 positive durations")
        if not 0 <= self.allowed_lateness_ms < self.session_gap_ms:
            raise ValueError("allowed_lateness_ms must be smaller than session_gap_ms (sessions rely on it)")
        if not 1 <= self.recent_n <= self.dedupe_n <= 255:
            raise ValueError("need 1 <= recent_n <= dedupe_n <= 255")
        for name in ("top_k_categories", "top_k_terms", "max_cart_lines"):
            if not 1 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} must be in [1, 255]")
        if len(self.category_weights) != N_TYPES or any(w < 0 for w in self.category_weights):
            raise ValueError("category_weights needs one non-negative weight per event type")
        if self.category_half_life_ms <= 0 or self.term_half_life_ms <= 0:
            raise ValueError("half-lives must be positive")
        # Decay rates (1 / time constant), derived once: apply_event reads them on every event, and
        # a cache keyed by the config would hash all its fields each time.
        rates = (tuple(1.0 / h for h in self.horizons_ms), 1.0 / self.category_tau_ms, 1.0 / self.term_tau_ms)
        object.__setattr__(self, "_rates", rates)

    # Exponential time constants (ms) of the half-lives: tau = half_life / ln 2.
    @property
    def category_tau_ms(self) -> float:
        return self.category_half_life_ms / _LN2

    @property
    def term_tau_ms(self) -> float:
        return self.term_half_life_ms / _LN2


class UserState:
    """Everything the models need about one user, updated in place by :func:`apply_event`.

    Timestamps are epoch milliseconds; ``last_ts == 0`` means "no event yet". Decayed values
    (``counts``, ``categories``, ``terms``) are as of ``last_ts``. ``counts[h * 4 + t]`` is the
    decayed count of type ``t`` (index into ``EVENT_TYPES``) at horizon ``h``.

    The two rings are kept in memory in their serialized form (fixed-size records in one
    ``bytes``), because decoding 16 + 32 records into Python objects on every read-modify-write
    cost more than everything else together; :attr:`recent` decodes on access.

    >>> from models.events import Event
    >>> st = UserState.new()
    >>> _ = apply_event(st, Event("a", "u", "search", 1_700_000_000_000, query="Red Shoes"), StateConfig())
    >>> st.totals, st.n_sessions, len(st.terms), st.recent[0].type
    ([0, 1, 0, 0], 1, 2, 1)
    >>> len(st.to_bytes())  # bytes: 109 header + 64 counters + 16 terms + 10 dedupe key + 17 recent
    216
    """

    SCHEMA_VERSION = 4  # 4: the recent ring's prices as float32 (3: float64)

    __slots__ = (
        "first_seen", "last_ts", "totals", "counts",
        "n_sessions", "sess_start", "sess_counts", "sess_value",
        "prev_start", "prev_end", "prev_counts", "prev_value",
        "last_purchase_ts", "spend",
        "first_purchase_ts", "purchase_occasions", "occasion_start", "prev_occasion_end",
        "seen", "recent_blob",
        "categories", "terms",
        "cart", "removed", "cart_cleared_ts",
    )  # fmt: skip

    def __init__(self, n_horizons: int = 4) -> None:
        self.first_seen = 0
        self.last_ts = 0
        self.totals: list[int] = [0] * N_TYPES
        self.counts: list[float] = [0.0] * (N_TYPES * n_horizons)
        self.n_sessions = 0
        self.sess_start = 0
        self.sess_counts: list[int] = [0] * N_TYPES
        self.sess_value = 0.0  # price * quantity added to the cart in this session
        # The previous session, kept only while a late event could merge it (prev_end == 0: none).
        self.prev_start = 0
        self.prev_end = 0
        self.prev_counts: list[int] = [0] * N_TYPES
        self.prev_value = 0.0
        self.last_purchase_ts = 0
        self.spend = 0.0
        # Purchase rhythm: earliest purchase, number of occasions (purchases more than the session
        # gap apart start one), and while a late purchase could still merge the newest occasion
        # with the previous one, the newest occasion's start and the previous one's last purchase
        # (both 0 otherwise).
        self.first_purchase_ts = 0
        self.purchase_occasions = 0
        self.occasion_start = 0
        self.prev_occasion_end = 0
        # De-duplication ring: sorted 10-byte big-endian keys (48-bit ts, 32-bit event-id hash);
        # big-endian so that comparing the bytes compares (ts, id).
        self.seen = b""
        # Recent ring: one 17-byte record per event (RecentEvent without ts, which is the ts of the
        # matching key at the tail of ``seen``).
        self.recent_blob = b""
        self.categories: dict[str, float] = {}
        self.terms: dict[int, float] = {}
        # Cart lines (ts, item hash, quantity, unit price), sorted; removal marks item -> ts.
        self.cart: list[tuple[int, int, int, float]] = []
        self.removed: dict[int, int] = {}
        self.cart_cleared_ts = 0

    @classmethod
    def new(cls, cfg: StateConfig | None = None) -> UserState:
        """An empty state (for a user never seen before)."""
        return cls(len(cfg.horizons_ms) if cfg is not None else 4)

    # -- derived values --------------------------------------------------------------------------

    @property
    def recent(self) -> list[RecentEvent]:
        """The last ``recent_n`` applied events, oldest first (a fresh list: edit the state via
        :func:`apply_event` only)."""
        return list(self.recent_window())

    def recent_window(self) -> RecentWindow:
        """The same events as :attr:`recent`, left in the state's packed bytes (decoded on access).

        A window is a snapshot: later events replace the state's bytes, never edit them. The
        stream keeps one per event for the sequence model, which reads a batch of them straight
        into arrays (:meth:`RecentWindow.columns`)."""
        blob = self.recent_blob
        n = len(blob) // _REC.size
        return RecentWindow(blob, self.seen[len(self.seen) - n * _KEY.size :] if n else b"")

    def seen_keys(self) -> list[tuple[int, int]]:
        """The de-duplication ring as (ts, event_id_hash(event_id)) pairs, oldest first."""
        return [((hi << 32) | lo, h) for hi, lo, h in _KEY.iter_unpack(self.seen)]

    def cart_items(self) -> int:
        """Total quantity in the cart."""
        return sum(line[2] for line in self.cart)

    def cart_value(self) -> float:
        """Sum of quantity * unit price over the cart lines."""
        return sum(line[2] * line[3] for line in self.cart)

    def mean_purchase_gap_ms(self) -> float | None:
        """Mean time between purchase occasions, ``(last - first) / (occasions - 1)``; None with
        fewer than two occasions."""
        n = self.purchase_occasions
        return (self.last_purchase_ts - self.first_purchase_ts) / (n - 1) if n > 1 else None

    def snapshot(self) -> dict[str, object]:
        """A plain, canonical view of the state (for tests, debugging and equality checks)."""
        out = {name: _plain(getattr(self, name)) for name in self.__slots__}
        out["recent"] = self.recent
        return out

    def __repr__(self) -> str:
        return f"UserState(first_seen={self.first_seen}, last_ts={self.last_ts}, totals={self.totals})"

    # -- serialization ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact little-endian binary: a version byte, a fixed header, numeric columns, then the
        two rings as they are held in memory and the category names (NUL-separated, last).

        Decayed values are float32 (features do not need more); money is float64. The recent
        ring's prices are float32, as :class:`RecentEvent` rounds them, so a ``RecentEvent``
        round-trips exactly.
        """
        has_prev = self.prev_end != 0
        has_occ = self.prev_occasion_end != 0
        cats = self.categories
        terms = self.terms
        cart = self.cart
        removed = self.removed
        seen = self.seen
        head = _HEAD.pack(
            self.SCHEMA_VERSION, (2 if has_prev else 0) | (4 if has_occ else 0), len(self.counts) // N_TYPES,
            len(seen) // _KEY.size, len(self.recent_blob) // _REC.size,
            len(cats), len(terms), len(cart), len(removed),
            self.first_seen, self.last_ts, self.sess_start, self.last_purchase_ts, self.cart_cleared_ts,
            self.first_purchase_ts, *self.totals, self.n_sessions, self.purchase_occasions,
            *self.sess_counts, self.sess_value, self.spend,
        )  # fmt: skip
        if has_prev:
            head += _PREV.pack(self.prev_start, self.prev_end, *self.prev_counts, self.prev_value)
        if has_occ:
            head += _OCC.pack(self.occasion_start, self.prev_occasion_end)
        cols = _cols_struct(len(self.counts), len(cats), len(terms), len(cart), len(removed))
        values = [*self.counts, *cats.values(), *terms, *terms.values()]
        if cart:
            for j in range(4):
                values += [c[j] for c in cart]
        if removed:
            values += [*removed, *removed.values()]
        names = "\x00".join(cats).encode("utf-8") if cats else b""
        return b"".join((head, cols.pack(*values), seen, self.recent_blob, names))

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Load a record written by :meth:`to_bytes` of this or any earlier schema version."""
        if not data:
            raise ValueError("empty state record")
        version = data[0]
        if version == cls.SCHEMA_VERSION:
            return _decode(data, _REC)
        if version in _MIGRATIONS:
            return _MIGRATIONS[version](data)
        raise ValueError(f"unknown state schema version {version}")


# version, flags (2: previous session follows, 4: occasion block follows), n_horizons, n_seen,
# n_recent, n_cats, n_terms, n_cart, n_removed,
# first_seen, last_ts, sess_start, last_purchase_ts, cart_cleared_ts, first_purchase_ts,
# totals[4], n_sessions, purchase_occasions, sess_counts[4], sess_value, spend
_HEAD = struct.Struct("<9B6q4III4Ifd")
_PREV = struct.Struct("<qq4If")  # prev_start, prev_end, prev_counts[4], prev_value
_OCC = struct.Struct("<qq")  # occasion_start, prev_occasion_end (only while a late purchase can merge)
_KEY = struct.Struct(">HII")  # de-duplication key: ts high 16 bits, ts low 32 bits, event-id hash
_REC = struct.Struct("<BIIfI")  # recent record: type, item, category, price, query
_REC_V3 = struct.Struct("<BIIdI")  # the same up to version 3: price as float64
# The same layouts for numpy (packed, no padding: "<" and ">" structs have none).
_KEY_DTYPE = np.dtype([("hi", ">u2"), ("lo", ">u4"), ("hash", ">u4")])
_REC_DTYPE = np.dtype([("type", "u1"), ("item", "<u4"), ("category", "<u4"), ("price", "<f4"), ("query", "<u4")])


class RecentWindow(Sequence[RecentEvent]):
    """A window of recent events in the state's packed form: ``recs`` (one 17-byte record per
    event) and ``keys`` (their de-duplication keys, which hold the times). A read-only sequence
    of :class:`RecentEvent`, equal to the list :attr:`UserState.recent` gives.

    >>> st = UserState.new()
    >>> for i, t in enumerate(["click", "add_to_cart"]):
    ...     _ = apply_event(st, Event(f"e{i}", "u", t, 1_700_000_000_000 + i, item_id="i", price=2.5), StateConfig())
    >>> w = st.recent_window()
    >>> len(w), w[-1].type, w == st.recent, w[1:] == st.recent[1:]
    (2, 2, True, True)
    >>> RecentWindow.columns([w, w[1:]])[:, 4].astype(int).tolist()  # the times of both windows' events
    [1700000000000, 1700000000001, 1700000000001]
    """

    __slots__ = ("keys", "recs")

    def __init__(self, recs: bytes, keys: bytes) -> None:
        if len(recs) // _REC.size != len(keys) // _KEY.size:
            raise ValueError("a window needs one key per record")
        self.recs, self.keys = recs, keys

    def __len__(self) -> int:
        return len(self.recs) // _REC.size

    def without(self, i: int) -> RecentWindow:
        """The window with its ``i``-th event left out (still packed)."""
        if not 0 <= i < len(self):
            raise IndexError("window index out of range")
        r, k = i * _REC.size, i * _KEY.size
        return RecentWindow(self.recs[:r] + self.recs[r + _REC.size :], self.keys[:k] + self.keys[k + _KEY.size :])

    def __getitem__(self, i):  # type: ignore[override]
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            stop = max(start, stop)
            return RecentWindow(self.recs[start * _REC.size : stop * _REC.size], self.keys[start * _KEY.size : stop * _KEY.size])
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("window index out of range")
        t, item, cat, price, query = _REC.unpack_from(self.recs, i * _REC.size)
        hi, lo, _h = _KEY.unpack_from(self.keys, i * _KEY.size)
        return RecentEvent(t, item, cat, price, (hi << 32) | lo, query)

    def __iter__(self) -> Iterator[RecentEvent]:
        for (t, item, cat, price, query), (hi, lo, _h) in zip(
            _REC.iter_unpack(self.recs), _KEY.iter_unpack(self.keys), strict=True
        ):
            yield RecentEvent(t, item, cat, price, (hi << 32) | lo, query)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecentWindow):
            return self.recs == other.recs and self.keys == other.keys
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecentWindow({list(self)!r})"

    def rows(self) -> list[tuple[int, int, int, float, int]]:
        """``(type, item, category, price, query)`` per event, without the times (cheaper than events)."""
        return list(_REC.iter_unpack(self.recs))

    def ts(self, i: int) -> int:
        """The time of event ``i`` (negative counts from the end)."""
        hi, lo, _h = _KEY.unpack_from(self.keys, (i % len(self)) * _KEY.size)
        return (hi << 32) | lo

    @staticmethod
    def columns(windows: Sequence[RecentWindow]) -> np.ndarray:
        """The events of all ``windows``, one after another, as a float64 ``(events, 6)`` array in
        :class:`RecentEvent`'s field order: what ``np.array([tuple(e) for w in windows for e in w])``
        gives, read from the bytes at once."""
        recs = np.frombuffer(b"".join(w.recs for w in windows), _REC_DTYPE)
        keys = np.frombuffer(b"".join(w.keys for w in windows), _KEY_DTYPE)
        out = np.empty((len(recs), len(RecentEvent._fields)), np.float64)
        for j, name in enumerate(RecentEvent._fields):
            if name == "ts":
                out[:, j] = (keys["hi"].astype(np.int64) << 32) | keys["lo"].astype(np.int64)
            else:
                out[:, j] = recs[name]
        return out


@lru_cache(maxsize=1024)
def _cols_struct(nc: int, nk: int, nt: int, nl: int, nm: int) -> struct.Struct:
    """Numeric columns for these section sizes (cached: the same sizes repeat a lot)."""
    return struct.Struct(f"<{nc}f{nk}f{nt}I{nt}f{nl}q{nl}I{nl}I{nl}d{nm}I{nm}q")


def _decode(data: bytes, rec: struct.Struct) -> UserState:
    """A version 4 record (``rec`` = ``_REC``), or version 3, whose layout differs only in the
    recent ring's records (``_REC_V3``)."""
    (
        _v, flags, nh, ns, nr, nk, nt, nl, nm,
        first_seen, last, sess_start, last_purchase, cleared, first_purchase,
        t0, t1, t2, t3, n_sessions, occasions, s0, s1, s2, s3, sess_value, spend,
    ) = _HEAD.unpack_from(data, 0)  # fmt: skip
    st = UserState.__new__(UserState)
    st.first_seen, st.last_ts, st.sess_start = first_seen, last, sess_start
    st.last_purchase_ts, st.cart_cleared_ts = last_purchase, cleared
    st.first_purchase_ts, st.purchase_occasions = first_purchase, occasions
    st.totals = [t0, t1, t2, t3]
    st.n_sessions, st.sess_counts, st.sess_value, st.spend = n_sessions, [s0, s1, s2, s3], sess_value, spend
    off = _decode_prev(st, data, _HEAD.size, flags)
    if flags & 4:
        st.occasion_start, st.prev_occasion_end = _OCC.unpack_from(data, off)
        off += _OCC.size
    else:
        st.occasion_start = st.prev_occasion_end = 0
    _decode_rest(st, data, off, nh, ns, nr, nk, nt, nl, nm, rec)
    return st


def _decode_prev(st: UserState, data: bytes, off: int, flags: int) -> int:
    """The previous-session block (present when ``flags & 2``); returns the offset after it."""
    if flags & 2:
        p = _PREV.unpack_from(data, off)
        st.prev_start, st.prev_end, st.prev_counts, st.prev_value = p[0], p[1], list(p[2:6]), p[6]
        return off + _PREV.size
    st.prev_start, st.prev_end, st.prev_counts, st.prev_value = 0, 0, [0] * N_TYPES, 0.0
    return off


def _decode_rest(
    st: UserState, data: bytes, off: int, nh: int, ns: int, nr: int, nk: int, nt: int, nl: int, nm: int,
    rec: struct.Struct,
) -> None:
    """Numeric columns, rings and category names: the same layout in versions 2 to 4, but for the
    recent ring's records (``rec``: ``_REC_V3`` up to version 3, converted here)."""
    nc = nh * N_TYPES
    cols = _cols_struct(nc, nk, nt, nl, nm)
    v = cols.unpack_from(data, off)
    off += cols.size
    st.counts = list(v[:nc])
    i = nc + nk
    st.terms = dict(zip(v[i : i + nt], v[i + nt : i + 2 * nt], strict=True)) if nt else {}
    i += 2 * nt
    if nl:
        st.cart = list(
            zip(
                v[i : i + nl],
                v[i + nl : i + 2 * nl],
                v[i + 2 * nl : i + 3 * nl],
                v[i + 3 * nl : i + 4 * nl],
                strict=True,
            )
        )
    else:
        st.cart = []
    i += 4 * nl
    st.removed = dict(zip(v[i : i + nm], v[i + nm : i + 2 * nm], strict=True)) if nm else {}
    end = off + ns * _KEY.size
    st.seen = data[off:end]
    off, end = end, end + nr * rec.size
    st.recent_blob = data[off:end] if rec is _REC else _repack(data[off:end], rec, _REC)
    st.categories = (
        dict(zip(data[end:].decode("utf-8").split("\x00"), v[nc : nc + nk], strict=True)) if nk else {}
    )


# -- schema migrations -------------------------------------------------------------------------------
# Version 1 was the first prototype layout: lifetime totals and the first/last event time only.
# ``_V1`` stays here (and ``_encode_v1`` for the tests) so that every old record keeps loading.
_V1 = struct.Struct("<Bqq4I")


def _encode_v1(first_seen: int, last_ts: int, totals: list[int]) -> bytes:
    """Bytes of a version-1 record (only used to test the migration)."""
    return _V1.pack(1, first_seen, last_ts, *totals)


def _migrate_v1(data: bytes) -> UserState:
    """v1 -> v3 (through v2): totals and first/last time carry over. Decayed counters start at zero (v1 had
    none, and v1 predates configurable horizons: the record gets the default four), and a user
    with events counts as one session that started at ``last_ts``. v1 kept no purchase times, so
    there is no purchase rhythm either (as for a user who has not bought yet)."""
    _v, first_seen, last_ts, *totals = _V1.unpack_from(data, 0)
    st = UserState()
    st.first_seen, st.last_ts, st.totals = first_seen, last_ts, list(totals)
    if last_ts:
        st.n_sessions, st.sess_start = 1, last_ts
    return st


# Version 2 is version 3 without the purchase rhythm: its header lacks first_purchase_ts and
# purchase_occasions, and it has no occasion block; everything after the header is the same.
# version, flags, n_horizons, n_seen, n_recent, n_cats, n_terms, n_cart, n_removed,
# first_seen, last_ts, sess_start, last_purchase_ts, cart_cleared_ts,
# totals[4], n_sessions, sess_counts[4], sess_value, spend
_HEAD_V2 = struct.Struct("<9B5q4II4Ifd")


def _encode_v2(state: UserState) -> bytes:
    """Bytes of ``state`` in the version-2 layout, rhythm dropped (only used to test the migration)."""
    data = _widen(state.to_bytes())
    h = _HEAD.unpack_from(data, 0)
    flags = h[1]
    head = _HEAD_V2.pack(2, flags & 2, *h[2:14], *h[15:20], *h[21:])
    off = _HEAD.size + (_PREV.size if flags & 2 else 0)
    prev = data[_HEAD.size : off]
    return head + prev + data[off + (_OCC.size if flags & 4 else 0) :]


def _migrate_v2(data: bytes) -> UserState:
    """v2 -> v3: everything carries over; the purchase rhythm, which v2 did not keep, is estimated
    from what it did keep. No purchase known (or a v1-era record without ``last_purchase_ts``):
    none. One purchase: exact (first = last purchase, one occasion). Two or more: the first
    purchase is taken as ``first_seen`` and every purchase as its own occasion, so the mean gap
    ``(last - first) / (n - 1)`` is exact for a log of purchases only that are more than the
    session gap apart (CDNOW), and shorter than the truth otherwise (multi-item checkouts count as
    several occasions). The occasion-merge block starts empty: a late purchase bridging the gap
    right after the upgrade is counted as its own occasion."""
    (
        _v, flags, nh, ns, nr, nk, nt, nl, nm,
        first_seen, last, sess_start, last_purchase, cleared,
        t0, t1, t2, t3, n_sessions, s0, s1, s2, s3, sess_value, spend,
    ) = _HEAD_V2.unpack_from(data, 0)  # fmt: skip
    st = UserState.__new__(UserState)
    st.first_seen, st.last_ts, st.sess_start = first_seen, last, sess_start
    st.last_purchase_ts, st.cart_cleared_ts = last_purchase, cleared
    st.totals = [t0, t1, t2, t3]
    st.n_sessions, st.sess_counts, st.sess_value, st.spend = n_sessions, [s0, s1, s2, s3], sess_value, spend
    off = _decode_prev(st, data, _HEAD_V2.size, flags)
    _decode_rest(st, data, off, nh, ns, nr, nk, nt, nl, nm, _REC_V3)
    purchases = st.totals[_PURCHASE]
    if not last_purchase or not purchases:
        st.first_purchase_ts, st.purchase_occasions = 0, 0
    elif purchases == 1:
        st.first_purchase_ts, st.purchase_occasions = last_purchase, 1
    else:
        st.first_purchase_ts, st.purchase_occasions = min(first_seen, last_purchase), purchases
    st.occasion_start = st.prev_occasion_end = 0
    return st


# Version 3 is version 4 with the recent ring's prices as float64 (21-byte records): they are
# rounded to float32 on load, which is what a RecentEvent holds since version 4.
def _migrate_v3(data: bytes) -> UserState:
    """v3 -> v4: the recent ring's prices rounded to float32; everything else as it was."""
    return _decode(data, _REC_V3)


def _repack(blob: bytes, src: struct.Struct, dst: struct.Struct) -> bytes:
    """Recent-ring records from one layout to the other (``_REC_V3`` to ``_REC`` on loading an
    old record; the reverse only to write old records in the tests)."""
    return b"".join(dst.pack(*r) for r in src.iter_unpack(blob))


def _ring_span(data: bytes) -> tuple[int, int]:
    """Where the recent ring lies in a current-version record (for the migration tests' encoders)."""
    h = _HEAD.unpack_from(data, 0)
    flags, nh, ns, nr, nk, nt, nl, nm = h[1:9]
    off = _HEAD.size + (_PREV.size if flags & 2 else 0) + (_OCC.size if flags & 4 else 0)
    off += _cols_struct(nh * N_TYPES, nk, nt, nl, nm).size + ns * _KEY.size
    return off, off + nr * _REC.size


def _widen(data: bytes) -> bytes:
    """A current-version record with its recent ring in the version-3 layout (tests only)."""
    start, end = _ring_span(data)
    return data[:start] + _repack(data[start:end], _REC, _REC_V3) + data[end:]


def _encode_v3(state: UserState) -> bytes:
    """Bytes of ``state`` in the version-3 layout (only used to test the migration)."""
    data = _widen(state.to_bytes())
    return bytes([3]) + data[1:]


_MIGRATIONS = {1: _migrate_v1, 2: _migrate_v2, 3: _migrate_v3}


# -- the update ---------------------------------------------------------------------------------------


def apply_event(state: UserState, ev: Event, cfg: StateConfig) -> str:
    """Apply one event to ``state`` in place; return ``"applied"``, ``"duplicate"`` or ``"late"``.

    Duplicates and late events leave the state unchanged. See the module docstring for the
    semantics of each part; the result does not depend on arrival order within the lateness.
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
        base = 0
        for r in rates:
            f = math.exp(-d * r)
            counts[base] *= f
            counts[base + 1] *= f
            counts[base + 2] *= f
            counts[base + 3] *= f
            counts[base + t] += 1.0
            base += N_TYPES
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
        _cart_add(state, ts, rec.item, ev.quantity or 1, float(ev.price or 0.0), cfg)  # money: float64
    elif t == _PURCHASE:
        _purchase(state, ts, rec.item, ev, cfg)

    state.counts = array("f", counts).tolist()  # held as stored (module docstring, Storage)
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
        _compact_cart(state, horizon)
    return APPLIED


def event_id_hash(event_id: str) -> int:
    """The 32-bit hash of an event id kept in the de-duplication ring (CRC-32: stable across
    processes like ``stable_hash``, and ten times cheaper, which matters once per event).

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
        scores[key] = as_float32(scores[key] + w)  # as stored (module docstring)
        return
    if len(scores) >= k:
        victim = min(scores.items(), key=lambda kv: (kv[1], kv[0]))[0]
        del scores[victim]
    scores[key] = as_float32(w)


def _cart_add(state: UserState, ts: int, item: int, qty: int, price: float, cfg: StateConfig) -> None:
    state.sess_value += qty * price  # value added counts even if the item was bought since
    if ts <= state.cart_cleared_ts or state.removed.get(item, -1) >= ts:
        return  # a purchase at or after this add already took it out of the cart
    bisect.insort(state.cart, (ts, item, qty, price))
    if len(state.cart) > cfg.max_cart_lines:
        del state.cart[0]


def _purchase(state: UserState, ts: int, item: int, ev: Event, cfg: StateConfig) -> None:
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


def _compact_cart(state: UserState, horizon: int) -> None:
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


def top_categories(
    state: UserState, k: int, now_ms: int, cfg: StateConfig | None = None
) -> list[tuple[str, float]]:
    """The ``k`` categories with the highest affinity, decayed to ``now_ms``, highest first.

    ``cfg`` gives the half-life to decay with; leave it out only if the state was built with the
    default :class:`StateConfig`.

    >>> from models.events import Event
    >>> st = UserState.new()
    >>> for i, c in enumerate(["shoes", "books", "shoes"]):
    ...     _ = apply_event(st, Event(f"e{i}", "u", "click", 1_700_000_000_000, item_id="x", category_id=c),
    ...                     StateConfig())
    >>> top_categories(st, 1, 1_700_000_000_000)
    [('shoes', 2.0)]
    """
    tau = (cfg or StateConfig()).category_tau_ms
    f = math.exp(-max(0, now_ms - state.last_ts) / tau)
    ranked = sorted(state.categories.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(c, s * f) for c, s in ranked]


def is_expired(state: UserState, watermark_ms: int, ttl_ms: int) -> bool:
    """True when the user's newest event is more than ``ttl_ms`` behind the event-time watermark.

    >>> st = UserState.new(); st.last_ts = 1_000_000
    >>> is_expired(st, 1_000_000 + 10, 10), is_expired(st, 1_000_000 + 11, 10)
    (False, True)
    """
    return watermark_ms - state.last_ts > ttl_ms


def _plain(v: object) -> object:
    if isinstance(v, dict):
        return sorted(v.items())
    if isinstance(v, list):
        return [tuple(x) if isinstance(x, tuple) else x for x in v]
    return v
