"""The worker's local table store, trusted only after a clean stop.

Faust writes a table update to RocksDB at once but sends it to the changelog through the producer
buffer, and persists the changelog offset only when the send is acknowledged. A worker that dies
between the two (SIGKILL, OOM, power loss) leaves a store that holds updates the changelog never
got. On restart Faust would read only the changelog's tail after the persisted offset, keep those
updates, and the replayed input (its offsets were not committed) would then be dropped by the
state's de-duplication as already applied: the signals it should have produced never go out, and
the changelog (which any other worker rebuilds from) stays behind for good.

So a store is reopened only if the run that wrote it stopped cleanly, with the producer flushed
(:func:`mark_clean`); otherwise it is discarded before the tables open and Faust rebuilds it from
the changelog, the source of truth. :func:`claim` removes the mark as it starts, so a crash at any
later point leaves none.

A cleanly stopped store can still be ahead of its changelog: the changelog lost records (a broker
that lost unflushed data, a topic deleted and made again). Faust then refuses to start
(``ConsistencyError``), at every restart. :func:`ahead_of_changelog` finds such partitions before
the tables open, and the worker discards the store and rebuilds it instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

CLEAN_MARK = "intentstream-clean-stop"
OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps the last changelog offset it holds


def claim(tabledir: Path) -> str | None:
    """Before the tables open: discard ``tabledir`` unless the last run stopped cleanly.

    Returns why it was discarded (``"unclean_shutdown"``), or None if it was kept or empty.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "user-state-0.db").mkdir()
    >>> claim(d), (d / "user-state-0.db").exists()
    ('unclean_shutdown', False)
    >>> _ = (d / "user-state-0.db").mkdir(); mark_clean(d)
    >>> claim(d), (d / "user-state-0.db").exists(), (d / CLEAN_MARK).exists()
    (None, True, False)
    """
    if not tabledir.is_dir():
        return None
    mark = tabledir / CLEAN_MARK
    if mark.exists():
        mark.unlink()
        return None
    if not any(tabledir.iterdir()):
        return None
    discard(tabledir)
    return "unclean_shutdown"


def mark_clean(tabledir: Path) -> None:
    """After a stop in which every table update reached the changelog."""
    tabledir.mkdir(parents=True, exist_ok=True)
    (tabledir / CLEAN_MARK).touch()


def persisted_offsets(tabledir: Path, table: str) -> dict[int, int]:
    """The last changelog offset that each partition's RocksDB database of ``table`` holds."""
    from rocksdict import AccessType, Options, Rdict

    out: dict[int, int] = {}
    for path in tabledir.glob(f"{table}-*.db"):
        suffix = path.name[len(table) + 1 : -len(".db")]
        if not suffix.isdigit():
            continue
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())  # as Faust opens it
        try:
            value = db.get(OFFSET_KEY)
        finally:
            db.close()
        if value is not None:
            out[int(suffix)] = int(value)
    return out


def ahead_of_changelog(persisted: Mapping[int, int], ends: Mapping[int, int]) -> list[int]:
    """Partitions whose store holds an offset at or past the changelog's end (the next offset to
    be written): updates the changelog no longer has.

    >>> ahead_of_changelog({0: 41, 1: 90, 2: 5}, {0: 42, 1: 30, 2: 0})
    [1, 2]
    """
    return sorted(p for p, offset in persisted.items() if offset >= ends.get(p, 0))


def discard(tabledir: Path) -> None:
    """Remove every table database under ``tabledir`` (Faust rebuilds them from the changelogs)."""
    for entry in tabledir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
