"""``intentstream replay``: stream a dataset file into the events topic in event-time order.

The file is read with the importers of :mod:`models.datasets.importers` (rows that cannot be
mapped are skipped and counted, with line numbers), sorted by event time, and produced as raw
input events keyed by user id, exactly as a shop's producers would send them. ``--speed X`` keeps
the original gaps divided by X; ``--max`` sends as fast as the broker takes them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from models.datasets.importers import ImportStats, read_dataset
from stream.settings import Settings


class Progress:
    """A one-line progress bar on stderr (redrawn at most 10 times a second)."""

    def __init__(self, total: int, label: str, stream=sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        rate = done / max(now - self.t0, 1e-9)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done:,}/{self.total:,} {rate:,.0f}/s")
        if force:
            self.stream.write("\n")
        self.stream.flush()


def load_sorted(path: Path, fmt: str, **options: object) -> tuple[list[dict], ImportStats]:
    stats = ImportStats()
    rows = list(read_dataset(path, fmt, stats=stats, **options))
    rows.sort(key=lambda r: r["ts"])  # stable: equal times keep file order
    return rows, stats


async def replay(
    settings: Settings, bootstrap: str, rows: list[dict], *, speed: float | None, progress: bool = True
) -> int:
    """Produce ``rows`` to the events topic; with ``speed``, keep event-time gaps divided by it."""
    from aiokafka import AIOKafkaProducer

    from stream.broker import client_config

    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    bar = Progress(len(rows), "replay") if progress else None
    loop = asyncio.get_running_loop()
    t0, ts0 = loop.time(), rows[0]["ts"] if rows else 0
    try:
        for i, row in enumerate(rows, 1):
            if speed:
                wait = t0 + (row["ts"] - ts0) / 1000 / speed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            await producer.send(settings.events_topic, key=str(row["user_id"]).encode(),
                                value=json.dumps(row, separators=(",", ":")).encode())  # fmt: skip
            if bar:
                bar.update(i)
        await producer.flush()
    finally:
        await producer.stop()
    if bar:
        bar.update(len(rows), force=True)
    return len(rows)
