"""The one feature definition for the online (River) models: ``online_features(state, now_ms, cfg)``.

Training, evaluation and serving all call this function on a :class:`UserState`, so a feature can
never mean one thing offline and another online. ``now_ms`` is the event time at which the
features are read (the time of the event being scored, or a label's cut-off in training); the
state's decayed values are decayed from ``state.last_ts`` to ``now_ms``. A ``now_ms`` earlier than
``state.last_ts`` (scoring a late event) reads the state as of ``last_ts``: decay is never undone.

Every value is a finite float and the key set is always :data:`FEATURE_NAMES` (for the default
config; :func:`feature_names` for another one), in that order. Heavy-tailed totals are ``log1p``-ed
so that a linear model with a standard scaler sees a sane range.

The purchase-rhythm features (:data:`RHYTHM_FEATURES`, ``log1p_days_since_purchase`` ..
``last_purchase_age_share``) read the state's first purchase, last purchase and purchase
occasions: the frequency, recency and age of a buy-till-you-die model (BG/NBD's ``x``, ``t_x``,
``T``) in a form a linear model can use. All are logs of day counts or shares, bounded for any
realistic history; a user with fewer than two occasions has no rhythm, and those features are 0
(``has_purchased`` and ``log1p_repeat_occasions`` say which case it is). The churn learner reads
them; the intent learner leaves them out (``LearnerConfig.exclude_features``, docs/EVALUATION.md).

======================================  ==========================================================
name                                    meaning
======================================  ==========================================================
``{type}_{horizon}``                    decayed count of that event type, time constant = horizon
                                        (e.g. ``click_5m``, ``purchase_7d``; see ``state``)
``log1p_{type}_total``                  log(1 + lifetime count of that type)
``cart_per_click``                      lifetime add_to_cart / (clicks + 1)
``purchase_per_cart``                   lifetime purchases / (add_to_cart + 1)
``secs_since_last_event``               (now - newest event time) / 1 s
``days_since_first_seen``               (now - first event time) / 1 day
``log1p_sessions``                      log(1 + number of sessions)
``session_open``                        1 if now is within the session gap of the newest event
``session_events``                      events in the current session (0 when not open)
``session_minutes``                     newest event - session start, in minutes (0 when not open)
``session_{clicks,searches,...}``       events of each type in the open session (0 when not open):
                                        ``session_clicks``, ``_searches``, ``_carts``, ``_purchases``
``log1p_session_cart_value``            log(1 + price * quantity added to cart in the open session)
``cart_lines``                          lines in the cart (one per item once older than lateness)
``cart_items``                          total quantity in the cart
``log1p_cart_value``                    log(1 + sum of quantity * unit price in the cart)
``minutes_since_cart_add``              now - newest cart line, in minutes (0 for an empty cart)
``has_purchased``                       1 if any purchase was seen
``days_since_purchase``                 days since the newest purchase, capped at 365 (365 if none)
``log1p_spend``                         log(1 + total spend)
``avg_order_value``                     total spend / purchases (0 if none)
``log1p_days_since_purchase``           log(1 + days_since_purchase): the same recency, concave
``log1p_days_since_first_purchase``     log(1 + days since the first purchase) (0 if none)
``log1p_repeat_occasions``              log(1 + purchase occasions after the first) (0 if none);
                                        an occasion: purchases within the session gap of each other
``log1p_mean_purchase_gap_days``        log(1 + the user's mean days between occasions)
                                        (0 with fewer than two occasions)
``log_recency_over_gap``                log1p(days since purchase) - log1p(mean gap days): silence
                                        relative to the user's own rhythm (0 with < 2 occasions)
``last_purchase_age_share``             (last - first purchase) / (now - first purchase), in [0, 1]:
                                        how late in the buying life the last purchase came
                                        (0 with fewer than two occasions)
``categories_tracked``                  number of categories in the affinity table
``top_category_score``                  highest category affinity, decayed to now
``top_category_share``                  highest affinity / sum of affinities (0 if none)
``search_terms_tracked``                number of hashed search terms kept
``top_term_share``                      highest term score / sum of term scores (0 if none)
``recent_events``                       events in the recent ring
``recent_distinct_item_share``          distinct items / events with an item in the ring (0 if none)
``recent_mean_gap_s``                   mean gap between consecutive ring events, seconds
``recent_mean_price``                   mean price of ring events that carry one (0 if none)
``last_is_{type}``                      1 if the newest event is of that type
======================================  ==========================================================

>>> from models.events import Event
>>> from models.features.state import StateConfig, UserState, apply_event
>>> cfg, st = StateConfig(), UserState.new()
>>> _ = apply_event(st, Event("e1", "u", "add_to_cart", 1_700_000_000_000, item_id="i", price=20.0), cfg)
>>> f = online_features(st, 1_700_000_000_000 + 300_000, cfg)
>>> round(f["add_to_cart_5m"], 4), f["cart_items"], f["minutes_since_cart_add"], f["session_open"]
(0.3679, 1.0, 5.0, 1.0)
>>> tuple(f) == FEATURE_NAMES
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from functools import lru_cache

from models.events import EVENT_TYPES
from models.features.state import DAY_MS, HOUR_MS, MINUTE_MS, N_TYPES, StateConfig, UserState

_MAX_DAYS_SINCE_PURCHASE = 365.0
_exp, _log1p = math.exp, math.log1p


def horizon_label(ms: int) -> str:
    """A short stable label for a horizon: ``5m``, ``1h``, ``24h``, ``7d``.

    >>> [horizon_label(h) for h in StateConfig().horizons_ms]
    ['5m', '1h', '24h', '7d']
    """
    if ms % DAY_MS == 0 and ms > DAY_MS:
        return f"{ms // DAY_MS}d"
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS}h"
    if ms % MINUTE_MS == 0:
        return f"{ms // MINUTE_MS}m"
    return f"{ms}ms"


@lru_cache(maxsize=16)
def feature_names(cfg: StateConfig) -> tuple[str, ...]:
    """The feature names, in order, for ``cfg`` (only the counter names depend on it)."""
    labels = [horizon_label(h) for h in cfg.horizons_ms]
    return (
        *(f"{t}_{lab}" for lab in labels for t in EVENT_TYPES),
        *(f"log1p_{t}_total" for t in EVENT_TYPES),
        "cart_per_click", "purchase_per_cart", "secs_since_last_event", "days_since_first_seen",
        "log1p_sessions", "session_open", "session_events", "session_minutes",
        "session_clicks", "session_searches", "session_carts", "session_purchases",
        "log1p_session_cart_value",
        "cart_lines", "cart_items", "log1p_cart_value", "minutes_since_cart_add",
        "has_purchased", "days_since_purchase", "log1p_spend", "avg_order_value",
        "log1p_days_since_purchase", "log1p_days_since_first_purchase", "log1p_repeat_occasions",
        "log1p_mean_purchase_gap_days", "log_recency_over_gap", "last_purchase_age_share",
        "categories_tracked", "top_category_score", "top_category_share",
        "search_terms_tracked", "top_term_share",
        "recent_events", "recent_distinct_item_share", "recent_mean_gap_s", "recent_mean_price",
        *(f"last_is_{t}" for t in EVENT_TYPES),
    )  # fmt: skip


FEATURE_NAMES: tuple[str, ...] = feature_names(StateConfig())

# The purchase-rhythm features (see the module docstring): built for the churn question (days to
# months); the intent learner leaves them out by default (``LearnerConfig.exclude_features``).
RHYTHM_FEATURES: tuple[str, ...] = (
    "log1p_days_since_purchase", "log1p_days_since_first_purchase", "log1p_repeat_occasions",
    "log1p_mean_purchase_gap_days", "log_recency_over_gap", "last_purchase_age_share",
)  # fmt: skip


@lru_cache(maxsize=16)
def feature_index(cfg: StateConfig) -> dict[str, int]:
    """Each feature name's position in :func:`online_values`' list, for ``cfg``."""
    return {name: i for i, name in enumerate(feature_names(cfg))}


class FeatureView(Mapping[str, float]):
    """:func:`online_features` as a read-only mapping over :func:`online_values`' list.

    The stream reads features as a vector on every event and by name only for a few (the rule's
    terms, the cold-start check, the reasons of the signals that fire), so it wraps the list
    instead of building a 60-key dict per event. Equal to the dict it stands for.

    >>> cfg = StateConfig()
    >>> st = UserState.new()
    >>> v = FeatureView(online_values(st, 0, cfg), cfg)
    >>> v == online_features(st, 0, cfg), v["recent_events"], v.get("nope", -1.0), len(v) == len(FEATURE_NAMES)
    (True, 0.0, -1.0, True)
    """

    __slots__ = ("_index", "_values")

    def __init__(self, values: list[float], cfg: StateConfig) -> None:
        self._index = feature_index(cfg)
        if len(values) != len(self._index):
            raise ValueError(f"{len(values)} values for {len(self._index)} features")
        self._values = values

    def __getitem__(self, name: str) -> float:
        return self._values[self._index[name]]

    def get(self, name: str, default: float | None = None) -> float | None:  # type: ignore[override]
        i = self._index.get(name)
        return default if i is None else self._values[i]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"FeatureView({dict(self)!r})"


def online_features(state: UserState, now_ms: int, cfg: StateConfig) -> dict[str, float]:
    """The River feature dict of ``state`` read at event time ``now_ms`` (see the module table)."""
    return dict(zip(feature_names(cfg), online_values(state, now_ms, cfg), strict=True))


def online_values(state: UserState, now_ms: int, cfg: StateConfig) -> list[float]:
    """:func:`online_features`' values alone, in :func:`feature_names` order (for vector models)."""
    last_ts = state.last_ts
    dt = now_ms - last_ts
    if dt < 0:
        dt = 0
    now = last_ts + dt
    counts = state.counts
    horizons = cfg.horizons_ms
    if len(counts) != N_TYPES * len(horizons):
        if last_ts:
            raise ValueError("state was built with a different number of horizons than this config")
        counts = [0.0] * (N_TYPES * len(horizons))  # an empty state made without the config
    values: list[float] = []
    b = 0
    for horizon in horizons:
        f = _exp(-dt / horizon)
        values += [c * f for c in counts[b : b + N_TYPES]]
        b += N_TYPES
    totals = state.totals
    values += map(_log1p, totals)
    clicks, _searches, carts, purchases = totals
    values += (
        carts / (clicks + 1.0),
        purchases / (carts + 1.0),
        dt / 1000.0,
        (now - state.first_seen) / DAY_MS if last_ts else 0.0,
        _log1p(state.n_sessions),
    )
    if last_ts and dt <= cfg.session_gap_ms:
        sc = state.sess_counts
        values += (1.0, float(sum(sc)), (last_ts - state.sess_start) / MINUTE_MS)
        values += map(float, sc)
        values.append(_log1p(state.sess_value))
    else:
        values += [0.0] * (3 + N_TYPES + 1)
    cart = state.cart
    values += (
        float(len(cart)),
        float(state.cart_items()),
        _log1p(state.cart_value()),
        (now - max(c[0] for c in cart)) / MINUTE_MS if cart else 0.0,
    )
    last_buy = state.last_purchase_ts
    since = min((now - last_buy) / DAY_MS, _MAX_DAYS_SINCE_PURCHASE) if last_buy else _MAX_DAYS_SINCE_PURCHASE
    log_since = _log1p(since)
    spend = state.spend
    values += (1.0 if last_buy else 0.0, since, _log1p(spend), spend / purchases if purchases else 0.0, log_since)
    occasions, first_buy = state.purchase_occasions, state.first_purchase_ts
    if occasions and first_buy and last_buy:
        age = max(0, now - first_buy)
        values += (_log1p(age / DAY_MS), _log1p(occasions - 1))
        if occasions > 1:
            log_gap = _log1p((last_buy - first_buy) / (occasions - 1) / DAY_MS)
            values += (log_gap, log_since - log_gap, (last_buy - first_buy) / age)  # age >= last - first > 0
        else:
            values += (0.0, 0.0, 0.0)
    else:
        values += (0.0, 0.0, 0.0, 0.0, 0.0)
    cats = state.categories.values()
    top = max(cats, default=0.0)
    terms = state.terms.values()
    values += (
        float(len(cats)), top * _exp(-dt / cfg.category_tau_ms), _share(top, sum(cats)),
        float(len(terms)), _share(max(terms, default=0.0), sum(terms)),
    )
    window = state.recent_window()
    rows = window.rows()  # (type, item, category, price, query) per event
    n = len(rows)
    items = [r[1] for r in rows if r[1]]
    prices = [r[3] for r in rows if r[3] > 0]
    values += (
        float(n),
        len(set(items)) / len(items) if items else 0.0,
        (window.ts(-1) - window.ts(0)) / (n - 1) / 1000.0 if n > 1 else 0.0,
        sum(prices) / len(prices) if prices else 0.0,
    )
    last_type = rows[-1][0] if rows else -1
    values += [1.0 if last_type == t else 0.0 for t in range(N_TYPES)]
    return values


def _share(top: float, total: float) -> float:
    return top / total if total > 0 else 0.0
