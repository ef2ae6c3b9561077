"""Training history read from Kafka: the validated, pseudonymised events of the internal topic.

``intentstream train --from-topic`` and ``intentstream refresh --from-topic`` read
``Settings.repartition_topic`` (``<app_id>-events-by-user``), where the ingest agent writes every
validated event as ``Event.to_dict()`` JSON keyed by the pseudonymous user
(``stream/agents/runtime.py``). The raw input topic and the dead-letter topic hold raw user ids
and are refused: training must never see them.

:func:`read_topic_history` reads every partition from its beginning up to the end offsets taken
when it starts, so it terminates on a live topic (records produced meanwhile are left for the next
run). Records that are not an event (bad JSON, wrong fields or types, tombstones) are skipped and
counted, never fatal. The topic is at-least-once, so a redelivered batch can hold an event twice:
copies of one ``(user, event_id)`` are dropped and counted. Events are bounded by event time like
the archive (the ``days`` before ``now_ms``) and returned sorted by ``ts``.

This is the only Kafka reader of training; ``models/`` stays free of ``stream/``: the command line
passes the events to :mod:`models.training`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

from models.events import EVENT_TYPES, Event
from stream.logic import packing
from stream.settings import DAY_MS, Settings

# Type of each Event field as it appears in Event.to_dict() JSON (None fields are left out).
_REQUIRED = {"event_id": str, "user": str, "type": str, "ts": int}
_OPTIONAL = {
    "session_id": str,
    "item_id": str,
    "category_id": str,
    "price": (int, float),
    "quantity": int,
    "query": str,
}
_FIELDS = {f.name for f in dataclasses.fields(Event)}
assert _FIELDS == _REQUIRED.keys() | _OPTIONAL.keys(), "keep the field types in step with models.events.Event"


class UndecodableRecord(ValueError):
    """A record of the topic that is not an event; ``reason`` is a short code counted in the report."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class TopicReadError(RuntimeError):
    """The topic cannot be read (missing, or it stopped making progress)."""


def decode_record(value: bytes | None) -> list[Event | UndecodableRecord]:
    """One record value of the internal topic (a pack of events, ``stream.logic.packing``, or a
    single event object) -> its events; an event that fails the checks is returned as the
    :class:`UndecodableRecord` saying why, so the caller can count it and keep the rest."""
    if value is None:
        return [UndecodableRecord("tombstone")]
    try:
        d = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return [UndecodableRecord("malformed_json")]
    if not isinstance(d, dict):
        return [UndecodableRecord("not_an_object")]
    if "pack" not in d:
        items = [d]
    else:
        try:
            items = [e for e, _ in packing.unpack(value)]
        except ValueError:
            return [UndecodableRecord("malformed_pack")]
    out: list[Event | UndecodableRecord] = []
    for item in items:
        try:
            out.append(decode_event_dict(item))
        except UndecodableRecord as exc:
            out.append(exc)
    return out


def decode_event_dict(d: object) -> Event:
    """A decoded event object -> :class:`Event`, or :class:`UndecodableRecord`.

    ``Event.from_dict`` does no checks, so the fields are checked here: a string ``ts`` or an
    unknown type would otherwise break sorting or training far from the bad record.
    """
    if not isinstance(d, dict):
        raise UndecodableRecord("not_an_object")
    if not d.keys() <= _FIELDS:
        raise UndecodableRecord("unknown_field")  # e.g. a raw event (user_id), a dead letter, a signal
    for name, kind in _REQUIRED.items():
        v = d.get(name)
        if v is None:
            raise UndecodableRecord("missing_field")
        if isinstance(v, bool) or not isinstance(v, kind) or v == "":
            raise UndecodableRecord("wrong_type")
    for name, kind in _OPTIONAL.items():
        v = d.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind)):
            raise UndecodableRecord("wrong_type")
    if d["type"] not in EVENT_TYPES:
        raise UndecodableRecord("unknown_type")
    if "price" in d:
        d["price"] = float(d["price"])
    return Event.from_dict(d)


def raw_topics(settings: Settings) -> set[str]:
    """Topics that hold raw user ids: never a source of training history."""
    return {settings.events_topic, settings.dlq_topic}


async def read_topic_events(
    settings: Settings,
    bootstrap: str,
    topic: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    progress: TextIO | None = sys.stderr,
    stall_timeout_s: float = 60.0,
) -> tuple[list[Event], dict[str, Any]]:
    """Events of ``topic`` with ``since_ms <= ts <= until_ms`` (either bound optional), sorted by
    ``ts``, and a report: records read, events kept, skipped records by reason, duplicates and
    events outside the time bounds. Raises :class:`TopicReadError` if the topic does not exist or
    a partition stops advancing for ``stall_timeout_s``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.broker import client_config, topic_partitions

    consumer = AIOKafkaConsumer(
        **client_config(settings, bootstrap),
        group_id=None,  # no group: nothing committed, no rebalance; partitions are assigned by hand
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # records of aborted transactions are not history
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    t0 = time.monotonic()
    skipped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    events: list[Event] = []
    records = duplicates = outside = 0
    try:
        partitions = await topic_partitions(consumer, topic)  # an all-topics metadata request: creates nothing
        if not partitions:
            raise TopicReadError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            raise TopicReadError(f"no partitions found for topic {topic!r} on {bootstrap}")
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)  # the stopping point: later records are the next run's
        todo = {tp: end[tp] for tp in tps if end[tp] > begin[tp]}
        total = sum(end[tp] - begin[tp] for tp in todo)
        for tp in tps:
            if tp in todo:
                consumer.seek(tp, begin[tp])
        consumer.pause(*(tp for tp in tps if tp not in todo))
        _say(progress, f"reading {topic}: {len(tps)} partitions, up to {total} records")
        last_progress, last_positions, next_report = time.monotonic(), {}, time.monotonic() + 2.0
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=500, max_records=20_000)
            for tp, msgs in batches.items():
                stop = todo.get(tp)
                for msg in msgs:
                    if stop is None or msg.offset >= stop:
                        continue  # produced after the start: not part of this read
                    records += 1
                    for ev in decode_record(msg.value):
                        if isinstance(ev, UndecodableRecord):
                            skipped[ev.reason] += 1
                            continue
                        if (since_ms is not None and ev.ts < since_ms) or (
                            until_ms is not None and ev.ts > until_ms
                        ):
                            outside += 1
                            continue
                        key = (ev.user, ev.event_id)
                        if key in seen:
                            duplicates += 1
                            continue
                        seen.add(key)
                        events.append(ev)
            positions = {tp: await consumer.position(tp) for tp in todo}
            for tp, pos in positions.items():
                if pos >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
            now = time.monotonic()
            if positions != last_positions:
                last_progress, last_positions = now, positions
            elif now - last_progress > stall_timeout_s:
                left = {f"{tp.topic}[{tp.partition}]": f"{positions[tp]}/{todo[tp]}" for tp in todo}
                raise TopicReadError(
                    f"reading {topic} made no progress for {stall_timeout_s:.0f} s (position/end: {left})"
                )
            if now >= next_report and todo:
                _say(progress, f"  {records}/{total} records read, {len(events)} events")
                next_report = now + 2.0
    finally:
        await consumer.stop()
    events.sort(key=lambda e: e.ts)
    info = {
        "events": len(events),
        "records": records,
        "partitions": len(tps),
        "skipped": dict(sorted(skipped.items())),
        "undecodable": sum(skipped.values()),
        "duplicates": duplicates,
        "outside_time_range": outside,
        "seconds": round(time.monotonic() - t0, 2),
    }
    _say(progress, f"read {topic}: {records} records, {len(events)} events, {info['undecodable']} undecodable skipped, "
                   f"{duplicates} duplicates, {outside} outside the time range")  # fmt: skip
    return events, info


def read_topic_history(
    settings: Settings,
    bootstrap: str,
    topic: str | None = None,
    *,
    days: float | None = 30.0,
    now_ms: int | None = None,
    progress: TextIO | None = sys.stderr,
) -> tuple[list[Event], dict[str, Any]]:
    """What ``--from-topic`` reads: the events of the last ``days`` (``None``: all) before
    ``now_ms`` (default: the wall clock) on ``topic`` (default: the internal pseudonymised topic).
    Returns ``(events sorted by ts, {"topic:<name>": report})``, the shape of ``load_history``."""
    topic = topic or settings.repartition_topic
    if topic in raw_topics(settings):
        raise ValueError(
            f"topic {topic!r} holds raw user ids; train from {settings.repartition_topic!r} (pseudonymised)"
        )
    end = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    since = None if days is None else int(end - days * DAY_MS)
    events, report = asyncio.run(
        read_topic_events(settings, bootstrap, topic, since_ms=since, until_ms=end, progress=progress)
    )
    return events, {f"topic:{topic}": {**report, "days": days}}


def _say(out: TextIO | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


__all__ = [
    "TopicReadError",
    "UndecodableRecord",
    "decode_record",
    "raw_topics",
    "read_topic_events",
    "read_topic_history",
]
