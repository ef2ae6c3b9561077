"""The per-event record kept in each user's recent-event ring, read by the sequence model.

It is deliberately small (six numbers) so that the last N events fit in the per-user state
budget, and it holds hashes rather than raw ids so the vocabulary is open (ids never seen in
training still map somewhere). Its price is rounded to float32, which is how the state's ring
stores it (the sequence model reads log1p(price); money kept elsewhere stays float64), so a window
built from events for training equals the one the stream reads from a user's state.

>>> from models.events import Event
>>> r = RecentEvent.from_event(Event("e1", "u", "add_to_cart", 1_700_000_000_000, item_id="i9",
...                                  category_id="c3", price=12.5))
>>> r.type, r.ts, r.price
(2, 1700000000000, 12.5)
>>> RecentEvent.from_event(Event("e2", "u", "click", 1, price=19.99)).price  # float32
19.989999771118164
>>> r.item == stable_hash("i9") and r.category == stable_hash("c3") and r.query == 0
True
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from models.events import TYPE_INDEX, Event
from models.features.hashing import stable_hash

_F32 = struct.Struct("<f")


def as_float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (the value a float32 field stores)."""
    return _F32.unpack(_F32.pack(x))[0]


class RecentEvent(NamedTuple):
    type: int  # index into models.events.EVENT_TYPES
    item: int  # stable_hash(item_id), 0 when absent
    category: int  # stable_hash(category_id), 0 when absent
    price: float  # 0.0 when absent; a float32 value (as_float32)
    ts: int  # epoch milliseconds
    query: int  # stable_hash(normalised query), 0 when absent

    @classmethod
    def from_event(cls, ev: Event) -> RecentEvent:
        return cls(
            TYPE_INDEX[ev.type],
            stable_hash(ev.item_id) if ev.item_id else 0,
            stable_hash(ev.category_id) if ev.category_id else 0,
            as_float32(ev.price or 0.0),
            ev.ts,
            stable_hash(ev.query.lower()) if ev.query else 0,
        )
