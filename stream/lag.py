"""Consumer lag per partition: pure arithmetic plus a thin reader for a Faust app's consumer.

Lag is how many messages of a partition this worker has not fetched yet: the partition's end
offset (the offset the next produced message will get) minus the consumer's position (the
offset of the next message it will fetch). Before the first fetch after an assignment there is
no position yet, and the committed offset (also "next offset to read", Kafka's convention) is
the best estimate. Both are "next offset" numbers, so no ``+ 1`` appears anywhere.

Only input topics are measured. A Faust worker is also assigned the changelog partitions of
its tables; it writes them but, once recovery is over, never reads them, so their "lag" would
grow forever and mean nothing. :func:`select_partitions` leaves them out.

>>> from faust.types import TP
>>> tp0, tp1, tp2 = TP("shop.events", 0), TP("shop.events", 1), TP("shop.events", 2)
>>> compute_lag({tp0: 100, tp1: 50, tp2: 7}, {tp0: 90, tp1: None}, {tp1: 20, tp2: None})
{TP(topic='shop.events', partition=0): 10, TP(topic='shop.events', partition=1): 30}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from stream.metrics import Metrics

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

CHANGELOG_SUFFIX = "-changelog"


def _offset(value: int | None) -> int | None:
    """Kafka reports "no offset" as ``None`` or as a negative sentinel (-1); treat both as unknown."""
    return value if value is not None and value >= 0 else None


def compute_lag(
    end_offsets: Mapping[K, int | None],
    positions: Mapping[K, int | None],
    committed: Mapping[K, int | None],
) -> dict[K, int]:
    """Lag of every partition in ``end_offsets``: end offset minus position, or minus the
    committed offset when there is no position.

    A partition with neither (nothing fetched and nothing ever committed) or without an end
    offset is left out: its lag is unknown, and reporting 0 would hide a stuck consumer. The
    result is never negative: the end offset is read a moment before or after the position, so
    a consumer that is fully caught up can briefly appear to be ahead.
    """
    lag: dict[K, int] = {}
    for tp, end in end_offsets.items():
        end = _offset(end)
        pos = _offset(positions.get(tp))
        if pos is None:
            pos = _offset(committed.get(tp))
        if end is None or pos is None:
            continue
        lag[tp] = max(0, end - pos)
    return lag


def select_partitions(assigned: Iterable[K], topics: Collection[str] | None = None) -> set[K]:
    """The assigned partitions whose lag is worth reporting: those of ``topics`` if given, else
    every assigned partition except table changelogs. ``K`` is a ``(topic, partition)`` tuple."""
    if topics is not None:
        return {tp for tp in assigned if tp[0] in topics}  # type: ignore[index]
    return {tp for tp in assigned if not tp[0].endswith(CHANGELOG_SUFFIX)}  # type: ignore[index]


async def read_offsets(
    consumer: Any, partitions: Iterable[Any], *, timeout_s: float = 5.0
) -> tuple[dict[Any, int | None], dict[Any, int | None], dict[Any, int | None]]:
    """Read ``(end_offsets, positions, committed)`` for ``partitions`` from a Faust consumer.

    ``highwater(tp)`` is the end offset the client learned from its last fetch response (no
    network round trip; under transactions Faust returns the last stable offset instead).
    ``position(tp)`` is awaited with a timeout because the client may be resolving it mid-rebalance.
    The committed offsets come from ``_committed_offset``, the consumer's own record of what it
    committed: Faust offers no public accessor, so a missing attribute simply means "unknown".
    Any per-partition error (typically the partition was revoked meanwhile) also means "unknown".
    """
    ends: dict[Any, int | None] = {}
    positions: dict[Any, int | None] = {}
    for tp in partitions:
        try:
            ends[tp] = consumer.highwater(tp)
        except Exception:  # revoked between assignment() and now, or client not started
            ends[tp] = None
        try:
            positions[tp] = await asyncio.wait_for(consumer.position(tp), timeout_s)
        except Exception:
            positions[tp] = None
    committed_map = getattr(consumer, "_committed_offset", None) or {}
    committed = {tp: committed_map.get(tp) for tp in ends}
    return ends, positions, committed


async def update_lag(app: Any, metrics: Metrics, *, topics: Collection[str] | None = None) -> dict[Any, int]:
    """Read the lag of this worker's input partitions, publish it, and drop revoked ones.

    Call it from a Faust timer (see :func:`install`). Returns the lag that was published.
    """
    owned = select_partitions(app.consumer.assignment(), topics)
    lag = compute_lag(*await read_offsets(app.consumer, owned))
    metrics.retain_partitions(((tp[0], tp[1]) for tp in owned), topics)
    metrics.set_lag({(tp[0], tp[1]): v for tp, v in lag.items()})
    return lag


def install(
    app: Any, metrics: Metrics, *, interval_s: float = 15.0, topics: Collection[str] | None = None
) -> None:
    """Wire lag reporting into a Faust app: a timer refreshing the lag every ``interval_s``, and
    rebalance handlers that count rebalances and delete the series of revoked partitions at once
    (instead of at the next timer tick). Call once, before the worker starts."""

    async def on_revoked(sender: Any, revoked: Iterable[Any], **kwargs: Any) -> None:
        for tp in select_partitions(revoked, topics):
            metrics.remove_partition(tp[0], tp[1])

    async def on_assigned(sender: Any, assigned: Iterable[Any], **kwargs: Any) -> None:
        metrics.rebalances.inc()
        metrics.retain_partitions(((tp[0], tp[1]) for tp in select_partitions(assigned, topics)), topics)

    async def refresh_lag() -> None:
        try:
            await update_lag(app, metrics, topics=topics)
        except Exception:  # a metrics refresh must never take the worker down
            log.warning("consumer lag refresh failed", exc_info=True)

    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)
    app.timer(interval_s, name="intentstream.consumer_lag", on_leader=False)(refresh_lag)
