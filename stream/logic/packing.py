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
MAX_EVENTS = 500  # per record: ~120 KB of JSON, well under Kafka's default 1 MB message limit


def pack(events: list[dict[str, Any]], kafka_ts: list[int | None]) -> bytes:
    return json.dumps({"pack": PACK_VERSION, "events": events, "kts": kafka_ts}, separators=(",", ":")).encode()


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
