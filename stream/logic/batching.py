"""When the ingest processes what it fetched: at once, or after letting the batch grow a little.

Every batch has fixed costs besides its per-event work: one sequence-model call (milliseconds even
for a handful of windows), one explanation call, a produce request per output topic and partition,
the scans. A worker handed each fetch as it comes gets small batches at a moderate load, and those
fixed costs then take most of its CPU, enough to fall behind at loads it handles easily in a
backlog (docs/BENCHMARKS.md).

:class:`Linger` holds fetched records until the oldest of them is ``linger_ms`` old (by its Kafka
timestamp, or by when it was fetched if that is earlier: a producer clock ahead of ours must not
hold records longer), or until ``max_events`` are held. Records that are already older than that
(a worker behind, a backlog) go at once, so lingering never adds to a queue; records that arrive
young wait at most ``linger_ms`` from their production in all. ``linger_ms=0`` processes every
fetch as it comes.

Pure bookkeeping: no Kafka, no clock of its own (callers pass ``now_ms``).

>>> lg = Linger(max_events=100, linger_ms=30)
>>> lg.add([("a", 1_000), ("b", 1_010)], now_ms=1_005)
>>> lg.due(1_020), lg.wait_ms(1_020)  # the oldest record is 20 ms old
(False, 10)
>>> lg.due(1_030), [x for x in lg.take()]
(True, ['a', 'b'])
>>> len(lg), lg.due(1_030)
(0, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Linger(Generic[T]):
    def __init__(self, max_events: int, linger_ms: int) -> None:
        if max_events < 1 or linger_ms < 0:
            raise ValueError("max_events must be >= 1 and linger_ms >= 0")
        self.max_events, self.linger_ms = max_events, linger_ms
        self._held: list[T] = []
        self._since: float | None = None  # the oldest held record's time, ms

    def __len__(self) -> int:
        return len(self._held)

    def room(self) -> int:
        """How many more records may be fetched into the batch (at least 1)."""
        return max(1, self.max_events - len(self._held))

    def add(self, records: Iterable[tuple[T, int | None]], now_ms: float) -> None:
        """Hold ``(record, its Kafka timestamp in ms or None)`` pairs fetched at ``now_ms``."""
        for rec, ts in records:
            t = now_ms if ts is None else min(ts, now_ms)
            if self._since is None or t < self._since:
                self._since = t
            self._held.append(rec)

    def due(self, now_ms: float) -> bool:
        """Whether the held records should be processed now."""
        if not self._held:
            return False
        return len(self._held) >= self.max_events or self.wait_ms(now_ms) == 0

    def wait_ms(self, now_ms: float) -> int:
        """How long the oldest held record may still wait (0: none left); 0 when nothing is held."""
        if self._since is None:
            return 0
        return max(0, int(self._since + self.linger_ms - now_ms + 0.999))

    def take(self) -> list[T]:
        """The held records, oldest fetch first; nothing is held afterwards."""
        out, self._held, self._since = self._held, [], None
        return out


__all__ = ["Linger"]
