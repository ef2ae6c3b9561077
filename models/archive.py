"""The event archive: validated events as Parquet files partitioned by UTC hour.

Layout: ``root/dt=YYYY-MM-DD/hour=HH/part-<uuid>.parquet`` (Hive-style, so Spark, DuckDB and
pyarrow datasets read it as is). Each :meth:`EventArchive.write` call adds new part files and
never rewrites old ones, so concurrent writers do not conflict.

Atomicity: on a local directory a part is written to a hidden ``.part-<uuid>.parquet.tmp``
file, flushed to disk and renamed; a crash leaves at most a hidden temporary file, which readers
skip, never half a part. ``root`` may also be a URI that ``pyarrow.fs`` understands (``s3://``,
``gs://``...); object stores make a single PUT visible whole, so parts are written directly.

>>> import tempfile
>>> from models.events import Event
>>> arch = EventArchive(tempfile.mkdtemp())
>>> paths = arch.write([Event("e1", "u1", "click", 1_511_658_000_000, item_id="i1"),
...                     Event("e2", "u1", "purchase", 1_511_661_600_000, price=9.5)])
>>> [p.split("/")[-3:-1] for p in paths]
[['dt=2017-11-26', 'hour=01'], ['dt=2017-11-26', 'hour=02']]
>>> [e.event_id for e in arch.read(1_511_658_000_000, 1_511_661_600_001)]
['e1', 'e2']
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from models.events import Event

HOUR_MS = 3_600_000

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),  # epoch milliseconds, UTC
        pa.field("session_id", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("category_id", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32()),
        pa.field("query", pa.string()),
    ]
)
_FIELDS = SCHEMA.names


def partition_of(ts_ms: int) -> str:
    """``dt=YYYY-MM-DD/hour=HH`` of an epoch-millisecond timestamp (UTC)."""
    d = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"dt={d:%Y-%m-%d}/hour={d:%H}"


class EventArchive:
    def __init__(self, root: str | os.PathLike) -> None:
        root = os.fspath(root)
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)

    def write(self, events: Iterable[Event]) -> list[str]:
        """Append events (already validated by ``models.events.parse_event``); one new part file
        per hour touched. Returns the paths written."""
        by_hour: dict[int, list[Event]] = defaultdict(list)
        for e in events:
            if not isinstance(e, Event):
                raise TypeError(f"expected models.events.Event, got {type(e).__name__}")
            by_hour[e.ts // HOUR_MS].append(e)
        written = []
        for hour in sorted(by_hour):
            evs = sorted(by_hour[hour], key=lambda e: e.ts)
            table = pa.Table.from_pydict({f: [getattr(e, f) for e in evs] for f in _FIELDS}, schema=SCHEMA)
            part_dir = f"{self.root}/{partition_of(hour * HOUR_MS)}"
            self.fs.create_dir(part_dir, recursive=True)
            name = f"part-{uuid.uuid4().hex}.parquet"
            final = f"{part_dir}/{name}"
            if self.local:
                tmp = f"{part_dir}/.{name}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        pq.write_table(table, f, compression="zstd")
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, final)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
            else:
                pq.write_table(table, final, filesystem=self.fs, compression="zstd")
            written.append(final)
        return written

    def _hour_dirs(self, start_ms: int, end_ms: int) -> list[str]:
        out = []
        for hour in range(start_ms // HOUR_MS, (end_ms - 1) // HOUR_MS + 1):
            d = f"{self.root}/{partition_of(hour * HOUR_MS)}"
            if self.fs.get_file_info(d).type == pafs.FileType.Directory:
                out.append(d)
        return out

    def read(self, start_ms: int, end_ms: int) -> list[Event]:
        """Events with ``start_ms <= ts < end_ms``, sorted by time (then event_id)."""
        if end_ms <= start_ms:
            return []
        events: list[Event] = []
        for d in self._hour_dirs(start_ms, end_ms):
            infos = self.fs.get_file_info(pafs.FileSelector(d))
            for info in sorted(infos, key=lambda i: i.path):
                base = info.base_name
                if info.type != pafs.FileType.File or base.startswith(".") or not base.endswith(".parquet"):
                    continue  # temporary files of writes in progress (or crashed) are not data
                table = pq.read_table(info.path, filesystem=self.fs, schema=SCHEMA)
                for row in table.to_pylist():
                    if start_ms <= row["ts"] < end_ms:
                        events.append(Event(**row))
        events.sort(key=lambda e: (e.ts, e.event_id))
        return events
