"""The load a benchmark offers: simulated events, produced all at once or at a steady rate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from stream.broker import client_config
from stream.settings import Settings


@dataclass
class Events:
    """Encoded simulated events, ready to produce: (key, value, event_id) in event-time order."""

    records: list[tuple[bytes, bytes, str]]
    users: int

    def __len__(self) -> int:
        return len(self.records)


def make_events(n: int, users: int, seed: int, *, distinct_users: bool = False) -> Events:
    """``n`` simulator events, shifted in time so that the last one is a second before now.

    The worker rejects events from the future; shifting keeps the simulator's spacing while putting
    the whole stream in the recent past. ``distinct_users`` gives every event a user of its own
    (to build a state of ``n`` users with ``n`` events).
    """
    from stream.logic.simulator import ShopperSimulator

    raw = ShopperSimulator(seed=seed, users=users).take(n)
    shift = time.time_ns() // 1_000_000 - 1_000 - (raw[-1]["ts"] if raw else 0)
    records = []
    seen: set[str] = set()
    for i, ev in enumerate(raw):
        ev["ts"] += shift
        if distinct_users:
            ev["user_id"] = f"r{seed}-{i:07d}"
            ev["session_id"] = f"{ev['user_id']}-1"
        seen.add(ev["user_id"])
        records.append((ev["user_id"].encode(), json.dumps(ev, separators=(",", ":")).encode(), ev["event_id"]))
    return Events(records, len(seen))


async def produce(settings: Settings, bootstrap: str, topic: str, events: Events) -> float:
    """Produce all events as fast as the client allows; returns the rate in events/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for key, value, _ in events.records:
            await producer.send(topic, key=key, value=value)  # enqueues; delivery is awaited by flush()
        await producer.flush()
        return len(events) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def send_paced(
    producer, topic: str, records: list[tuple[bytes, bytes, str]], rate: float,
    on_send: Callable[[str], None] | None = None,
) -> float:
    """Send ``records`` at ``rate`` events/s: record i is due at ``t0 + i / rate`` and everything
    due is sent in one go. ``on_send(event_id)`` runs just before each send. Returns the seconds
    the sending took (the last ``send`` enqueued; delivery is the caller's ``flush``)."""
    loop = asyncio.get_running_loop()
    t0, i = loop.time(), 0
    while i < len(records):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        while i < len(records) and t0 + i / rate <= now:
            key, value, eid = records[i]
            if on_send is not None:
                on_send(eid)
            await producer.send(topic, key=key, value=value)
            i += 1
    return loop.time() - t0
