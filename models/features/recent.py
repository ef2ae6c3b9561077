"""The per-event record kept in each user's recent-event ring, read by the sequence model.

It is deliberately small (six numbers) so that the last N events fit in the per-user state
budget, and it holds hashes rather than raw ids so the vocabulary is open (ids never seen in
training still map somewhere).

>>> from models.events import Event
>>> r = RecentEvent.from_event(Event("e1", "u", "add_to_cart", 1_700_000_000_000, item_id="i9",
...                                  category_id="c3", price=12.5))
>>> r.type, r.ts, r.price
(2, 1700000000000, 12.5)
>>> r.item == stable_hash("i9") and r.category == stable_hash("c3") and r.query == 0
True
"""

from __future__ import annotations

from typing import NamedTuple

from models.events import TYPE_INDEX, Event
from models.features.hashing import stable_hash


class RecentEvent(NamedTuple):
    type: int  # index into models.events.EVENT_TYPES
    item: int  # stable_hash(item_id), 0 when absent
    category: int  # stable_hash(category_id), 0 when absent
    price: float  # 0.0 when absent
    ts: int  # epoch milliseconds
    query: int  # stable_hash(normalised query), 0 when absent

    @classmethod
    def from_event(cls, ev: Event) -> RecentEvent:
        return cls(
            TYPE_INDEX[ev.type],
            stable_hash(ev.item_id) if ev.item_id else 0,
            stable_hash(ev.category_id) if ev.category_id else 0,
            float(ev.price or 0.0),
            ev.ts,
            stable_hash(ev.query.lower()) if ev.query else 0,
        )
