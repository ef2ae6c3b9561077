"""Per-user rolling state: small, exact under bounded disorder, and fast to update and store.

One :class:`UserState` per user lives in the Faust table (as :meth:`UserState.to_bytes`). The stream
calls :func:`apply_event` for every event of that user; training, evaluation and serving all read
the same state through :func:`models.features.online.online_features` and :attr:`UserState.recent`,
so the features a model is trained on are the features it is served.

Where things are:

* :mod:`~models.features.state.record`: :class:`UserState`, :class:`StateConfig`, the constants,
  and reads that need no update (:func:`top_categories`, :func:`is_expired`).
* :mod:`~models.features.state.update`: :func:`apply_event`, the only code that changes a state;
  :mod:`~models.features.state.cart` holds its cart and purchase-occasion parts.
* :mod:`~models.features.state.codec`: the record to and from bytes, and the migrations that keep
  records of every earlier schema version loading; :mod:`~models.features.state.layout` holds the
  byte layouts, which the in-memory rings share.
* :mod:`~models.features.state.window`: :class:`RecentWindow`, the recent events read straight
  from the packed ring.

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
* **Storage**: packed binary behind a schema version byte, decayed values as float32 (see
  :mod:`~models.features.state.codec`).

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

from models.features.recent import RecentEvent
from models.features.state.layout import N_TYPES
from models.features.state.record import (
    APPLIED,
    DAY_MS,
    DUPLICATE,
    HOUR_MS,
    LATE,
    MINUTE_MS,
    StateConfig,
    UserState,
    is_expired,
    top_categories,
)
from models.features.state.update import apply_event, event_id_hash
from models.features.state.window import RecentWindow

__all__ = [
    "APPLIED",
    "DAY_MS",
    "DUPLICATE",
    "HOUR_MS",
    "LATE",
    "MINUTE_MS",
    "N_TYPES",
    "RecentEvent",
    "RecentWindow",
    "StateConfig",
    "UserState",
    "apply_event",
    "event_id_hash",
    "is_expired",
    "top_categories",
]
