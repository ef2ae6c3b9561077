"""The canonical shop event: what every model and every piece of state consumes.

Raw events arrive as JSON on ``shop.events`` (schema: ``schemas/shop_event.schema.json``).
:func:`parse_event` validates one decoded JSON object and returns an :class:`Event`, or raises
:class:`InvalidEvent` with a short, stable reason that ends up on the dead-letter topic and in
the ``intentstream_invalid_events_total{reason=...}`` metric.

This module is pure (no Kafka, no Faust) so that the stream, the importers, training and
evaluation all validate events with the same code.

>>> ev = parse_event({"event_id": "e1", "user_id": "u1", "type": "view", "ts": 1700000000000,
...                   "item_id": 42, "category_id": "c7", "price": 9.5})
>>> ev.type, ev.item_id, ev.price, ev.ts
('click', '42', 9.5, 1700000000000)
>>> parse_event({"event_id": "e2", "user_id": "u1", "type": "refund", "ts": 1700000000000})
Traceback (most recent call last):
...
models.events.InvalidEvent: unknown_type: 'refund' is not one of click, search, add_to_cart, purchase (or view)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

EVENT_TYPES: tuple[str, ...] = ("click", "search", "add_to_cart", "purchase")
TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}
TYPE_ALIASES: dict[str, str] = {"view": "click"}

# Fields each type must carry beyond the common ones (event_id, user_id, type, ts).
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "click": ("item_id",),
    "search": ("query",),
    "add_to_cart": ("item_id",),
    "purchase": (),  # item_id, price and quantity are optional: order-level feeds (CDNOW) have no item
}

MAX_ID_LEN = 128
MAX_QUERY_LEN = 256
MAX_QUANTITY = 10_000
MAX_PRICE = 1e7
# Anything before 1990-01-01 is taken as a unit mistake (epoch seconds sent as milliseconds: those
# land in January 1970) or garbage. Historical data sets (CDNOW, 1997) are still accepted.
MIN_TS_MS = 631_152_000_000


class InvalidEvent(ValueError):
    """An event that cannot be accepted. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A validated event. ``user`` is the pseudonymous id once ingest has run (raw before)."""

    event_id: str
    user: str
    type: str
    ts: int  # epoch milliseconds, UTC
    session_id: str | None = None
    item_id: str | None = None
    category_id: str | None = None
    price: float | None = None
    quantity: int | None = None
    query: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Compact dict for the internal topic: ``None`` fields are left out."""
        # Not dataclasses.asdict: it deep-copies and is ~5x slower on this hot path.
        return {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Inverse of :meth:`to_dict` for already-validated events (no checks)."""
        return cls(**d)

    def replace(self, **changes: Any) -> Event:
        return dataclasses.replace(self, **changes)


_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Event))


def _text(s: str, name: str) -> str:
    """``s`` if it is Unicode text: JSON's escapes can spell a lone UTF-16 surrogate
    (``"\\ud800"``), which no UTF-8 byte string can hold, so nothing downstream could write it."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent("invalid_utf8", f"{name} holds a lone surrogate at character {exc.start}") from None
    return s


def _id(obj: dict[str, Any], name: str, required: bool) -> str | None:
    v = obj.get(name)
    if v is None or v == "":
        if required:
            raise InvalidEvent("missing_field", name)
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise InvalidEvent("wrong_type", f"{name} must be a string or an integer")
    s = str(v)
    if len(s) > MAX_ID_LEN:
        raise InvalidEvent("field_too_long", f"{name} longer than {MAX_ID_LEN} characters")
    return _text(s, name)


def parse_ts(v: Any) -> int:
    """Epoch milliseconds from an integer/float in ms or an RFC 3339 string with a zone.

    >>> parse_ts("2017-11-26T01:00:00Z")
    1511658000000
    >>> parse_ts(1511658000000)
    1511658000000
    """
    if isinstance(v, bool):
        raise InvalidEvent("wrong_type", "ts must be epoch milliseconds or an RFC 3339 string")
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise InvalidEvent("bad_timestamp", "ts is not finite")
        if isinstance(v, float) and not v.is_integer():
            raise InvalidEvent("wrong_type", "ts must be whole epoch milliseconds")
        ms = int(v)
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"ts {v[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise InvalidEvent("bad_timestamp", "ts has no time zone")
        ms = int(dt.timestamp() * 1000)
    elif v is None:
        raise InvalidEvent("missing_field", "ts")
    else:
        raise InvalidEvent("wrong_type", "ts must be epoch milliseconds or an RFC 3339 string")
    return ms


def parse_event(
    obj: Any,
    *,
    now_ms: int | None = None,
    max_future_ms: int = 3_600_000,
    user_map: Callable[[str], str] | None = None,
) -> Event:
    """Validate one decoded JSON object into an :class:`Event` (``user`` is the raw id, or what
    ``user_map`` makes of it once the object is valid: the stream's pseudonym, set as the event is
    built rather than by a second copy of the frozen event).

    ``now_ms`` (wall clock) enables the "too far in the future" check; timestamps before
    1990-01-01 are always rejected (usually epoch seconds sent where milliseconds are expected).
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", f"got {type(obj).__name__}")
    raw_type = obj.get("type")
    if raw_type is None:
        raise InvalidEvent("missing_field", "type")
    if not isinstance(raw_type, str):
        raise InvalidEvent("wrong_type", "type must be a string")
    etype = TYPE_ALIASES.get(raw_type, raw_type)
    if etype not in TYPE_INDEX:
        raise InvalidEvent(
            "unknown_type", f"{raw_type[:40]!r} is not one of {', '.join(EVENT_TYPES)} (or view)"
        )
    required = REQUIRED_BY_TYPE[etype]
    event_id = _id(obj, "event_id", True)
    user = _id(obj, "user_id", True)
    ts = parse_ts(obj.get("ts"))
    if ts < MIN_TS_MS:
        hint = " (looks like epoch seconds; send milliseconds)" if ts > 0 else ""
        raise InvalidEvent("timestamp_too_old", f"ts {ts} is before 1990-01-01{hint}")
    if now_ms is not None and ts > now_ms + max_future_ms:
        raise InvalidEvent("timestamp_in_future", f"ts {ts} is more than {max_future_ms} ms ahead")

    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise InvalidEvent("wrong_type", "price must be a number")
        price = float(price)
        if not math.isfinite(price) or price < 0 or price > MAX_PRICE:
            raise InvalidEvent("out_of_range", f"price must be in [0, {MAX_PRICE:g}]")
    quantity = obj.get("quantity")
    if quantity is not None:
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            if isinstance(quantity, float) and quantity.is_integer():
                quantity = int(quantity)
            else:
                raise InvalidEvent("wrong_type", "quantity must be an integer")
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidEvent("out_of_range", f"quantity must be in [1, {MAX_QUANTITY}]")
    query = obj.get("query")
    if query is not None:
        if not isinstance(query, str):
            raise InvalidEvent("wrong_type", "query must be a string")
        if len(query) > MAX_QUERY_LEN:
            raise InvalidEvent("field_too_long", f"query longer than {MAX_QUERY_LEN} characters")
        query = _text(query, "query").strip()
        if not query:
            raise InvalidEvent("missing_field", "query is blank")
    if "query" in required and query is None:
        raise InvalidEvent("missing_field", "query")

    return Event(
        event_id=event_id,  # type: ignore[arg-type]
        user=user if user_map is None else user_map(user),  # type: ignore[arg-type]
        type=etype,
        ts=ts,
        session_id=_id(obj, "session_id", False),
        item_id=_id(obj, "item_id", "item_id" in required),
        category_id=_id(obj, "category_id", False),
        price=price,
        quantity=quantity,
        query=query,
    )
