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
"""

from __future__ import annotations

import shutil
from pathlib import Path

CLEAN_MARK = "intentstream-clean-stop"


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
    for entry in tabledir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return "unclean_shutdown"


def mark_clean(tabledir: Path) -> None:
    """After a stop in which every table update reached the changelog."""
    tabledir.mkdir(parents=True, exist_ok=True)
    (tabledir / CLEAN_MARK).touch()
