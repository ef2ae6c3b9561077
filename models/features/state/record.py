"""The per-user state record (:class:`UserState`), its configuration (:class:`StateConfig`) and reads.

The record holds only what the models need, within a budget of 1 KiB per user, because a worker's
table holds one for every user it has seen recently. How each part is updated is in
:mod:`models.features.state.update`; how it is stored, in :mod:`models.features.state.codec`.
"""

from __future__ import annotations

import dataclasses
import math

from models.features.recent import RecentEvent
from models.features.state import codec
from models.features.state.layout import _KEY, _REC, N_TYPES
from models.features.state.window import RecentWindow

APPLIED = "applied"
DUPLICATE = "duplicate"
LATE = "late"

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

_LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class StateConfig:
    """How the per-user state is built. The same config must be used to build and to read a state.

    ``horizons_ms`` are the time constants of the decayed counters (see the package docstring);
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
    (``counts``, ``categories``, ``terms``) are as of ``last_ts``. ``counts[h * N_TYPES + t]`` is
    the decayed count of type ``t`` (index into ``EVENT_TYPES``) at horizon ``h``.

    The two rings are kept in memory in their serialized form (fixed-size records in one
    ``bytes``), so that loading and storing a record, once per event, never decodes them event by
    event; :attr:`recent` decodes on access.

    >>> from models.events import Event
    >>> from models.features.state import apply_event
    >>> st = UserState.new()
    >>> _ = apply_event(st, Event("a", "u", "search", 1_700_000_000_000, query="Red Shoes"), StateConfig())
    >>> st.totals, st.n_sessions, len(st.terms), st.recent[0].type
    ([0, 1, 0, 0], 1, 2, 1)
    >>> len(st.to_bytes())  # bytes: 109 header + 64 counters + 16 terms + 10 dedupe key + 17 recent
    216
    """

    SCHEMA_VERSION = codec.SCHEMA_VERSION

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

    # -- serialization (models.features.state.codec) ---------------------------------------------

    def to_bytes(self) -> bytes:
        """The record as stored in the table, in the current schema version."""
        return codec.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Load a record written by :meth:`to_bytes` of this or any earlier schema version."""
        return codec.decode(cls, data)


def _plain(v: object) -> object:
    if isinstance(v, dict):
        return sorted(v.items())
    if isinstance(v, list):
        return [tuple(x) if isinstance(x, tuple) else x for x in v]
    return v


# -- reads ----------------------------------------------------------------------------------------


def top_categories(
    state: UserState, k: int, now_ms: int, cfg: StateConfig | None = None
) -> list[tuple[str, float]]:
    """The ``k`` categories with the highest affinity, decayed to ``now_ms``, highest first.

    ``cfg`` gives the half-life to decay with; leave it out only if the state was built with the
    default :class:`StateConfig`.

    >>> from models.events import Event
    >>> from models.features.state import apply_event
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
