"""The internal topic's record format: validated events packed per partition and batch.

The ingest agent used to forward each event as its own Kafka record, so the process agent paid
Faust's per-record stream machinery (hundreds of microseconds, docs/BENCHMARKS.md) for every event
a second time. Now each ingest batch becomes at most a few records per internal partition::

    {"pack": 1, "events": [<Event.to_dict()>, ...], "kts": [<producer timestamp, ms | null>, ...]}

Every event of a pack belongs to the record's partition (``partition_for(user)``), in input order,
so per-user order and the table's partitioning are exactly what they were. ``kts`` keeps each
event's original Kafka timestamp for the event-to-signal latency. A record holding one bare
event object (the previous format) is still read.

>>> raw = pack([{"event_id": "e1", "user": "u", "type": "click", "ts": 5}], [1700000000000])
>>> unpack(raw)
[({'event_id': 'e1', 'user': 'u', 'type': 'click', 'ts': 5}, 1700000000000)]
>>> unpack(b'{"event_id": "e2", "user": "u", "type": "click", "ts": 6}')
[({'event_id': 'e2', 'user': 'u', 'type': 'click', 'ts': 6}, None)]
"""

from __future__ import annotations

import json
from typing import Any

PACK_VERSION = 1
MAX_EVENTS = 500  # per record, so that the process stage's batches stay small enough to interleave
_HEAD, _MID, _TAIL = b'{"pack":%d,"events":[' % PACK_VERSION, b'],"kts":[', b"]}"


def pack(events: list[dict[str, Any]], kafka_ts: list[int | None]) -> bytes:
    return json.dumps({"pack": PACK_VERSION, "events": events, "kts": kafka_ts}, separators=(",", ":")).encode()


def pack_all(events: list[dict[str, Any]], kafka_ts: list[int | None], max_bytes: int,
             max_events: int = MAX_EVENTS) -> list[bytes]:  # fmt: skip
    """``events`` in as few packs as fit: each at most ``max_events`` events and ``max_bytes``
    bytes (the producer refuses a larger record, and a worker that cannot write its output
    cannot go on), in input order. The bytes are those of :func:`pack`.

    >>> evs = [{"event_id": str(i), "user": "u" * 40} for i in range(10)]
    >>> out = pack_all(evs, [None] * 10, max_bytes=250)
    >>> [len(unpack(p)) for p in out], max(map(len, out)) <= 250
    ([3, 3, 3, 1], True)
    >>> out == [pack(evs[i:i + 3], [None] * len(evs[i:i + 3])) for i in range(0, 10, 3)]
    True
    """
    fixed = len(_HEAD) + len(_MID) + len(_TAIL)
    out: list[bytes] = []
    evs: list[bytes] = []
    kts: list[bytes] = []
    size = fixed
    for ev, ts in zip(events, kafka_ts, strict=True):
        e = json.dumps(ev, separators=(",", ":")).encode()
        t = b"null" if ts is None else str(ts).encode()
        grow = len(e) + len(t) + (2 if evs else 0)  # the two commas
        if evs and (size + grow > max_bytes or len(evs) >= max_events):
            out.append(_HEAD + b",".join(evs) + _MID + b",".join(kts) + _TAIL)
            evs, kts, size = [], [], fixed
            grow = len(e) + len(t)
        if size + grow > max_bytes:
            raise ValueError(f"one event takes {size + grow} bytes in a pack, more than {max_bytes}")
        evs.append(e)
        kts.append(t)
        size += grow
    if evs:
        out.append(_HEAD + b",".join(evs) + _MID + b",".join(kts) + _TAIL)
    return out


def unpack(value: bytes) -> list[tuple[dict[str, Any], int | None]]:
    """``[(event dict, producer timestamp ms or None)]``; ``ValueError`` if it is neither a pack
    nor an event object."""
    d = json.loads(value)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    if "pack" not in d:
        return [(d, None)]
    if d["pack"] != PACK_VERSION:
        raise ValueError(f"unknown pack version {d['pack']!r}")
    events, kts = d.get("events"), d.get("kts")
    if not isinstance(events, list) or not isinstance(kts, list) or len(events) != len(kts):
        raise ValueError("malformed pack")
    return list(zip(events, kts, strict=True))
