"""Synthetic shoppers: a seeded, infinite stream of raw shop events for the demo and the load tests.

The simulator is pure logic: no Kafka, no Faust and no wall clock. Time is a simulated event-time
clock in epoch milliseconds that starts at ``start_ms`` and only moves forward. Everything random
comes from one ``random.Random`` per stream, so the same seed and knobs give the same events, event
ids included.

What it models, and why each piece is there (every downstream model feeds on one of them):

* **A catalog** of categories with a word vocabulary, items whose popularity inside a category is
  Zipf-like (a few hits, a long tail) and whose price is fixed per item and log-normal around a
  per-category median. Item popularity skew is what makes "popular in category" features and the
  sequence model's item embeddings meaningful.
* **A population** of ``users`` active shoppers. Each has a few category interests that drift
  (a new interest now and then, old ones fading), a personal buying propensity, and an engagement
  level. Sessions are separated by log-normal gaps (minutes to hours, rarely days); inside a session events are
  seconds to minutes apart.
* **Funnels**: a session is a walk of clicks and searches; some clicks put the item in the cart;
  a session with a cart ends in a purchase of the whole cart or is abandoned. Sessions are of two
  kinds, *browsing* and *buying* (the shopper came to buy), which is what produces realistic
  conversion: about 3% of sessions purchase and about 70% of carts are abandoned.
* **Fading and churn**: a session without a purchase lowers the user's engagement, which both
  stretches the gap to their next session (they fade away) and raises the probability that the
  session was their last (they churn and never come back). A purchase restores engagement. Every
  churned user is replaced by a new one a little later, so the active population, and hence the
  event rate, stays roughly constant while new user ids keep appearing.

Figures of the default knobs (1000 users, 1.5M events, about 6 simulated days; the unit tests
hold them within bands):

* density: about **10 events per active user per simulated hour**, so 1000 users give about
  3 events per simulated second (3.3 in the first half day, settling near 2.8 as the population
  reaches its steady mix of fresh and fading users); the rate scales linearly with ``users``.
  To feed a pipeline live at a given rate, use ``users ≈ rate / 0.003``.
* type mix: click 87%, search 10.5%, add_to_cart 2.2%, purchase 0.7%; 7.5 events per session.
* funnel: 10% of sessions put something in the cart, 3% purchase, 70% of carts are abandoned.
* time: within a session, events are seconds to minutes apart (median about 20 s, p90 75 s); the gap
  between two sessions of a user has median 15 minutes, p90 1.5 hours, p99 6.5 hours, and
  occasionally more than a day (a user fading away), which a churn detector must tolerate.
* churn: about 10% of active users leave for good per simulated day (and are replaced).

Real shops have longer gaps between visits; they are compressed here so that a population of a
size a laptop can hold produces a useful event rate. Replaying the past faster than real time is
the job of :func:`paced`.

The output is a raw event dict in the input schema of :func:`models.events.parse_event`
(``event_id``, ``user_id``, ``type``, ``ts``, ``session_id`` and the fields of that type).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# 2026-01-01T00:00:00Z: a fixed default so that a bare ShopperSimulator() is reproducible.
DEFAULT_START_MS = 1_767_225_600_000

_SECOND = 1_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE

# (name, median price, words shoppers type). Median prices span three orders of magnitude on
# purpose: price features and basket values must see both cheap and expensive categories.
_CATEGORIES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("shoes", 70.0, ("running", "shoes", "sneakers", "boots", "leather", "trail", "sandals", "kids")),
    ("phones", 450.0, ("phone", "smartphone", "android", "case", "charger", "5g", "unlocked", "screen")),
    ("laptops", 900.0, ("laptop", "notebook", "ultrabook", "gaming", "ssd", "14 inch", "keyboard", "ram")),
    ("books", 15.0, ("novel", "paperback", "cookbook", "thriller", "fantasy", "biography", "history")),
    ("kitchen", 35.0, ("pan", "knife", "blender", "kettle", "coffee", "mug", "nonstick", "set")),
    ("beauty", 20.0, ("serum", "lipstick", "shampoo", "cream", "vegan", "spf", "perfume", "mascara")),
    ("toys", 25.0, ("lego", "puzzle", "doll", "board game", "plush", "kids", "rc car", "blocks")),
    ("garden", 40.0, ("hose", "seeds", "planter", "shovel", "grill", "lawn", "solar lights", "pots")),
    ("sports", 45.0, ("yoga mat", "dumbbells", "bike", "helmet", "tennis", "running", "bottle", "gloves")),
    ("audio", 120.0, ("headphones", "earbuds", "wireless", "speaker", "bluetooth", "noise cancelling")),
    ("home", 60.0, ("lamp", "rug", "curtains", "pillow", "blanket", "shelf", "mirror", "candle")),
    ("grocery", 8.0, ("coffee beans", "tea", "pasta", "olive oil", "snacks", "organic", "chocolate")),
    ("pets", 22.0, ("dog food", "cat litter", "leash", "toy", "bed", "treats", "aquarium", "collar")),
    ("fashion", 38.0, ("dress", "jeans", "jacket", "shirt", "cotton", "summer", "wool", "hoodie")),
    ("watches", 180.0, ("watch", "smartwatch", "strap", "automatic", "steel", "fitness tracker")),
    ("baby", 28.0, ("diapers", "stroller", "bottle", "onesie", "car seat", "wipes", "crib")),
    ("tools", 55.0, ("drill", "screwdriver", "cordless", "saw", "toolbox", "wrench", "level")),
    ("gaming", 60.0, ("console", "controller", "game", "headset", "ps5", "switch", "gift card")),
    ("office", 18.0, ("notebook", "pens", "desk", "chair", "stapler", "printer paper", "planner")),
    ("cameras", 650.0, ("camera", "lens", "mirrorless", "tripod", "sd card", "action cam", "4k")),
)
_QUERY_MODIFIERS: tuple[str, ...] = ("cheap", "best", "sale", "new", "gift", "black", "premium", "2026")


@dataclasses.dataclass(frozen=True, slots=True)
class SimKnobs:
    """Every tunable of the simulator, passed as keyword arguments to :class:`ShopperSimulator`.

    The defaults are calibrated together (conversion, abandonment, event density); the comments
    say what each one moves.
    """

    categories: int = 20  # at most len(_CATEGORIES); fewer gives denser per-category statistics
    items_per_category: int = 250
    item_zipf_s: float = 1.1  # popularity of the item of rank r in its category ~ 1 / r**s
    category_zipf_s: float = 0.8  # how skewed the interests of new users are across categories
    price_sigma: float = 0.6  # log-normal spread of item prices around the category median

    # Session shape.
    clicks_mean: float = 7.0  # clicks per session: 1 + floor(exponential of mean clicks_mean - 1), ~6.5
    click_dwell_median_ms: float = 25 * _SECOND
    dwell_sigma: float = 0.9
    first_search_p: float = 0.35  # a session opens with a search rather than a landing click
    search_p: float = 0.08  # a later step is a fresh search
    switch_category_p: float = 0.3  # a fresh search moves to another of the user's interests

    # Funnel: a minority of sessions are "buying" sessions; the user's propensity scales the share.
    buying_session_p: float = 0.12
    cart_p_buying: float = 0.15  # per click
    cart_p_browsing: float = 0.004  # per click
    checkout_p_buying: float = 0.35  # a cart in a buying session is bought
    checkout_p_browsing: float = 0.15
    propensity_sigma: float = 0.7  # spread of per-user buying propensity (log-normal, mean 1)

    # Between sessions: fading, churn and arrivals.
    session_gap_median_ms: float = 7 * _MINUTE
    session_gap_sigma: float = 1.3
    engagement_fade: float = 0.985  # engagement multiplier after a session without purchase
    engagement_boost: float = 0.25  # engagement gained by a purchase (capped at 1)
    engagement_floor: float = 0.1
    churn_base_p: float = 0.0005  # probability a session is the user's last, at full engagement
    churn_fade_p: float = 0.006  # extra churn probability at zero engagement
    arrival_delay_mean_ms: float = 20 * _MINUTE  # a churned user's replacement arrives after this
    interest_drift_p: float = 0.02  # per session: about one new interest every one to two simulated days
    max_interests: int = 4


class Catalog:
    """The shop: categories, items (Zipf popularity inside a category) and stable prices.

    Built from its own random stream (seeded from the simulator seed) so that the catalog does not
    change when population knobs do: item ``i00042`` has the same category and price whatever
    ``users`` is.
    """

    def __init__(self, seed: int, knobs: SimKnobs) -> None:
        if not 1 <= knobs.categories <= len(_CATEGORIES):
            raise ValueError(f"categories must be in [1, {len(_CATEGORIES)}]")
        if knobs.items_per_category < 1:
            raise ValueError("items_per_category must be >= 1")
        rng = random.Random(f"intentstream-catalog-{seed}")
        n_cat, n_items = knobs.categories, knobs.items_per_category
        self.category_ids: list[str] = [f"c{c:02d}" for c in range(n_cat)]
        self.category_names: list[str] = [_CATEGORIES[c][0] for c in range(n_cat)]
        self.words: list[tuple[str, ...]] = [_CATEGORIES[c][2] for c in range(n_cat)]
        # items[c][rank]: rank 0 is the category's best seller. Ids are shuffled so that an item id
        # says nothing about its popularity (a model must learn it).
        ids = list(range(n_cat * n_items))
        rng.shuffle(ids)
        self.items: list[list[str]] = [
            [f"i{ids[c * n_items + r]:05d}" for r in range(n_items)] for c in range(n_cat)
        ]
        self.price: dict[str, float] = {}
        self.category_of: dict[str, int] = {}
        for c in range(n_cat):
            median = _CATEGORIES[c][1]
            for item in self.items[c]:
                self.price[item] = round(max(0.5, median * math.exp(rng.gauss(0.0, knobs.price_sigma))), 2)
                self.category_of[item] = c
        weights = [1.0 / (r + 1) ** knobs.item_zipf_s for r in range(n_items)]
        self._item_cum = list(itertools.accumulate(weights))
        cat_weights = [1.0 / (c + 1) ** knobs.category_zipf_s for c in range(n_cat)]
        self._cat_cum = list(itertools.accumulate(cat_weights))

    def pick_item(self, rng: random.Random, category: int) -> str:
        """An item of ``category``, drawn by Zipf popularity (one uniform draw and a bisect)."""
        cum = self._item_cum
        return self.items[category][bisect.bisect_right(cum, rng.random() * cum[-1])]

    def pick_category(self, rng: random.Random) -> int:
        """A category drawn by overall popularity (used for new users' interests and drift)."""
        cum = self._cat_cum
        return bisect.bisect_right(cum, rng.random() * cum[-1])

    def query(self, rng: random.Random, category: int) -> str:
        """A search query of one to three words of the category, sometimes with a modifier."""
        words = self.words[category]
        q = " ".join(rng.sample(words, min(len(words), 1 + int(rng.random() * 2.2))))
        if rng.random() < 0.25:
            q = f"{rng.choice(_QUERY_MODIFIERS)} {q}"
        return q


class _User:
    """Mutable per-user simulation state (never leaves this module)."""

    __slots__ = ("uid", "interests", "propensity", "engagement", "sessions", "pending", "pos")

    def __init__(self, uid: str, interests: list[list[Any]], propensity: float, engagement: float) -> None:
        self.uid = uid
        self.interests = interests  # [[category, weight], ...]
        self.propensity = propensity
        self.engagement = engagement
        self.sessions = 0
        # The current session's not yet emitted events: (ts, type, item, quantity, query).
        self.pending: list[tuple[int, str, str | None, int | None, str | None]] = []
        self.pos = 0


class ShopperSimulator:
    """A seeded population of synthetic shoppers producing raw shop events in event-time order.

    ``users`` is the size of the active population at any time (each churned user is replaced by a
    newcomer), so the event density is stable: about 10 events per user per simulated hour with the
    default knobs (1000 users: about 3 events per simulated second). ``knobs`` are the fields of
    :class:`SimKnobs`; an unknown name is a ``TypeError``.

    Each call to :meth:`events` starts the same deterministic stream afresh; :meth:`take` is a
    convenience for the first ``n`` events.

    >>> from models.events import parse_event
    >>> sim = ShopperSimulator(seed=7, users=50)
    >>> evs = sim.take(500)
    >>> evs == ShopperSimulator(seed=7, users=50).take(500)
    True
    >>> all(a["ts"] <= b["ts"] for a, b in zip(evs, evs[1:]))
    True
    >>> sorted({parse_event(e).type for e in evs})
    ['add_to_cart', 'click', 'search']
    >>> evs[0]  # doctest: +NORMALIZE_WHITESPACE
    {'event_id': 'e7-0', 'user_id': 'u000016', 'type': 'search', 'ts': 1767225600195,
     'session_id': 'u000016-1', 'query': 'leather'}
    >>> next(e for e in evs if e["type"] == "add_to_cart")  # doctest: +NORMALIZE_WHITESPACE
    {'event_id': 'e7-25', 'user_id': 'u000041', 'type': 'add_to_cart', 'ts': 1767225819014,
     'session_id': 'u000041-1', 'item_id': 'i00259', 'category_id': 'c00', 'price': 65.25, 'quantity': 1}
    """

    def __init__(
        self, seed: int = 0, users: int = 1000, start_ms: int = DEFAULT_START_MS, **knobs: Any
    ) -> None:
        if users < 1:
            raise ValueError("users must be >= 1")
        self.seed = seed
        self.users = users
        self.start_ms = int(start_ms)
        self.knobs = SimKnobs(**knobs)
        self.catalog = Catalog(seed, self.knobs)
        # Prefix event ids with the seed so that streams of different seeds never collide.
        self._id_prefix = f"e{seed}-"

    def take(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` events of the stream."""
        return list(itertools.islice(self.events(), n))

    def events(self) -> Iterator[dict[str, Any]]:
        """The infinite event stream, ``ts`` non-decreasing across all users.

        Users are merged on a heap keyed by the time of their next event (or next session start);
        a whole session is drawn when it starts and its events are released one by one as the
        global clock reaches them.
        """
        rng = random.Random(self.seed)
        heap: list[tuple[int, int, _User]] = []
        counter = itertools.count()
        next_uid = itertools.count()
        k = self.knobs
        for _ in range(self.users):
            # Seed the population as if it had been running: mixed engagement, and first sessions
            # spread over a typical gap instead of everyone arriving at start_ms.
            user = self._new_user(rng, next(next_uid), engagement=0.15 + 0.6 * rng.random())
            first = self.start_ms + int(rng.random() * 2 * k.session_gap_median_ms)
            heap.append((first, next(counter), user))
        heapq.heapify(heap)

        prefix = self._id_prefix
        price = self.catalog.price
        category_of = self.catalog.category_of
        cat_ids = self.catalog.category_ids
        n = 0
        while True:
            ts, _, user = heap[0]
            if user.pos == len(user.pending):
                user.pending = self._session(rng, user, ts)
                user.pos = 0
            ev_ts, etype, item, qty, query = user.pending[user.pos]
            user.pos += 1
            sid = f"{user.uid}-{user.sessions}"
            ev: dict[str, Any] = {
                "event_id": f"{prefix}{n}",
                "user_id": user.uid,
                "type": etype,
                "ts": ev_ts,
                "session_id": sid,
            }
            n += 1
            if item is not None:
                ev["item_id"] = item
                ev["category_id"] = cat_ids[category_of[item]]
                ev["price"] = price[item]
                if qty is not None:
                    ev["quantity"] = qty
            else:
                ev["query"] = query
            if user.pos < len(user.pending):
                heapq.heapreplace(heap, (user.pending[user.pos][0], next(counter), user))
            else:
                nxt = self._after_session(rng, user, ev_ts, etype == "purchase")
                if nxt is None:  # churned for good: a newcomer takes the place
                    newcomer = self._new_user(rng, next(next_uid), engagement=1.0)
                    arrive = ev_ts + 1 + int(rng.expovariate(1.0 / k.arrival_delay_mean_ms))
                    heapq.heapreplace(heap, (arrive, next(counter), newcomer))
                else:
                    heapq.heapreplace(heap, (nxt, next(counter), user))
            yield ev

    # -- population ---------------------------------------------------------------------------

    def _new_user(self, rng: random.Random, number: int, engagement: float) -> _User:
        k = self.knobs
        interests: list[list[Any]] = []
        for _ in range(1 + int(rng.random() * 3)):
            c = self.catalog.pick_category(rng)
            if all(c != i[0] for i in interests):
                interests.append([c, rng.expovariate(1.0)])
        # Log-normal with mean 1, so the knob buying_session_p stays the population average.
        s = k.propensity_sigma
        propensity = math.exp(rng.gauss(-s * s / 2, s))
        return _User(f"u{number:06d}", interests, propensity, engagement)

    def _after_session(self, rng: random.Random, user: _User, end_ts: int, bought: bool) -> int | None:
        """Update engagement; return the next session start, or None if the user churned."""
        k = self.knobs
        if bought:
            user.engagement = min(1.0, user.engagement + k.engagement_boost)
        else:
            user.engagement = max(k.engagement_floor, user.engagement * k.engagement_fade)
        if rng.random() < k.churn_base_p + k.churn_fade_p * (1.0 - user.engagement):
            return None
        # A fading user comes back less often: the gap is divided by engagement.
        gap = k.session_gap_median_ms * math.exp(rng.gauss(0.0, k.session_gap_sigma)) / user.engagement
        return end_ts + _MINUTE + int(gap)

    def _drift(self, rng: random.Random, user: _User) -> None:
        """A new interest appears, nearly as strong as the strongest one; the old ones fade.

        Fading by a constant factor rather than dropping the old interests keeps a user's history
        visible in their clicks for a while, which is what a drift-aware model has to cope with.
        """
        k = self.knobs
        c = self.catalog.pick_category(rng)
        strongest = max(i[1] for i in user.interests)
        for i in user.interests:
            i[1] *= 0.6
        same = [i for i in user.interests if i[0] == c]
        if same:
            same[0][1] += 0.9 * strongest
        else:
            user.interests.append([c, 0.9 * strongest])
        if len(user.interests) > k.max_interests:
            user.interests.sort(key=lambda i: -i[1])
            del user.interests[k.max_interests :]

    @staticmethod
    def _pick_interest(rng: random.Random, interests: list[list[Any]]) -> int:
        x = rng.random() * sum(i[1] for i in interests)
        for c, w in interests:
            x -= w
            if x < 0:
                return c
        return interests[-1][0]

    # -- one session --------------------------------------------------------------------------

    def _session(
        self, rng: random.Random, user: _User, t: int
    ) -> list[tuple[int, str, str | None, int | None, str | None]]:
        """Draw every event of a session starting at ``t``: a walk of searches and clicks, carts,
        and at the end a checkout of the whole cart or its abandonment."""
        k = self.knobs
        cat = self.catalog
        user.sessions += 1
        if rng.random() < k.interest_drift_p:
            self._drift(rng, user)
        category = self._pick_interest(rng, user.interests)
        buying = rng.random() < k.buying_session_p * user.propensity
        cart_p = k.cart_p_buying if buying else k.cart_p_browsing
        dwell_mu = math.log(k.click_dwell_median_ms)
        sigma = k.dwell_sigma

        def dwell(scale: float = 1.0) -> int:
            return 1 + int(scale * math.exp(dwell_mu + sigma * rng.gauss(0.0, 1.0)))

        out: list[tuple[int, str, str | None, int | None, str | None]] = []
        cart: list[tuple[str, int]] = []
        clicks = 1 + int(rng.expovariate(1.0 / (k.clicks_mean - 1))) if k.clicks_mean > 1 else 1
        for step in range(clicks):
            if rng.random() < (k.first_search_p if step == 0 else k.search_p):
                if step and len(user.interests) > 1 and rng.random() < k.switch_category_p:
                    category = self._pick_interest(rng, user.interests)
                out.append((t, "search", None, None, cat.query(rng, category)))
                t += dwell(0.4)  # reading a result list is quicker than reading a product page
            item = cat.pick_item(rng, category)
            out.append((t, "click", item, None, None))
            t += dwell()
            if rng.random() < cart_p:
                qty = 1 if rng.random() < 0.85 else 2 + int(rng.random() * 3)
                out.append((t, "add_to_cart", item, qty, None))
                cart.append((item, qty))
                t += dwell(0.5)
        if cart and rng.random() < (k.checkout_p_buying if buying else k.checkout_p_browsing):
            t += dwell(4.0)  # checkout: address, payment
            for item, qty in cart:
                out.append((t, "purchase", item, qty, None))
        return out


def paced(
    events: Iterable[dict[str, Any]],
    now_ms: Callable[[], float],
    rate: float | None = None,
    time_scale: float | None = None,
    max_burst_ms: float = 1_000.0,
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Pace an event stream for a live sink: yield ``(seconds_to_wait, event)``.

    The caller sleeps ``seconds_to_wait`` and then sends ``event``; done that way, no event is
    ever sent with a ``ts`` ahead of the wall clock ``now_ms()`` (the pipeline rejects future
    timestamps and, worse, would see time run ahead). The helper is pure: time is injected, it
    never sleeps, so it is tested with a fake clock.

    Each event's send time is the latest of three deadlines:

    * ``rate`` (events per wall second): at most this many events per second. ``None``: no limit.
    * ``time_scale`` (simulated ms per wall ms): while replaying the past, simulated time advances
      at most this much faster than the wall clock. ``None``: as fast as ``rate`` allows.
    * the event's own ``ts``: once the simulated clock has caught up with the wall clock, events
      are released in real time, never early.

    So a simulator started in the past (``start_ms = now - 2 days``) is replayed compressed until
    it reaches now and then runs live. This is how the demo shows churn (a day of silence) within a
    minute: 100 users at ``rate=1000`` cover two simulated days in about a minute of wall time.
    After catching up, the live rate is the simulator's own density (about ``0.003 * users``
    events per second), which may be lower than ``rate``.

    If the caller falls behind (a slow sink), at most ``max_burst_ms`` of backlog is sent without
    waiting; the schedule then restarts from the present instead of bursting to catch up.

    >>> clock = [1_000_000.0]
    >>> evs = [{"ts": 0}, {"ts": 10}, {"ts": 20}, {"ts": 1_000_500}]
    >>> out = []
    >>> for wait, ev in paced(evs, lambda: clock[0], rate=100):
    ...     clock[0] += wait * 1000
    ...     out.append((round(wait, 3), ev["ts"], ev["ts"] <= clock[0]))
    >>> out
    [(0.0, 0, True), (0.01, 10, True), (0.01, 20, True), (0.48, 1000500, True)]
    """
    interval = 1000.0 / rate if rate else 0.0
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 (or None for no limit)")
    if time_scale is not None and time_scale <= 0:
        raise ValueError("time_scale must be > 0 (or None)")
    wall0: float | None = None
    ts0 = 0
    earliest = 0.0  # wall ms before which the next event must not go out (from rate)
    for ev in events:
        now = now_ms()
        ts = ev["ts"]
        if wall0 is None:
            wall0, ts0, earliest = now, ts, now
        # A caller that fell behind resumes from (almost) now rather than bursting the backlog.
        due = max(earliest, now - max_burst_ms, float(ts))
        if time_scale is not None:
            due = max(due, wall0 + (ts - ts0) / time_scale)
        yield max(0.0, due - now) / 1000.0, ev
        earliest = due + interval
