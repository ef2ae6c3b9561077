"""A window of a user's recent events read straight from the state's packed ring.

The stream hands one window per event to the sequence model; keeping it as bytes means a batch
of windows becomes model input in one ``numpy`` read instead of one Python object per event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from models.features.recent import RecentEvent
from models.features.state.layout import _KEY, _KEY_DTYPE, _REC, _REC_DTYPE


class RecentWindow(Sequence[RecentEvent]):
    """A window of recent events in the state's packed form: ``recs`` (one 17-byte record per
    event) and ``keys`` (their de-duplication keys, which hold the times). A read-only sequence
    of :class:`RecentEvent`, equal to the list :attr:`UserState.recent` gives.

    >>> from models.events import Event
    >>> from models.features.state import StateConfig, UserState, apply_event
    >>> st = UserState.new()
    >>> for i, t in enumerate(["click", "add_to_cart"]):
    ...     _ = apply_event(st, Event(f"e{i}", "u", t, 1_700_000_000_000 + i, item_id="i", price=2.5), StateConfig())
    >>> w = st.recent_window()
    >>> len(w), w[-1].type, w == st.recent, w[1:] == st.recent[1:]
    (2, 2, True, True)
    >>> RecentWindow.columns([w, w[1:]])[:, 4].astype(int).tolist()  # the times of both windows' events
    [1700000000000, 1700000000001, 1700000000001]
    """

    __slots__ = ("keys", "recs")

    def __init__(self, recs: bytes, keys: bytes) -> None:
        if len(recs) // _REC.size != len(keys) // _KEY.size:
            raise ValueError("a window needs one key per record")
        self.recs, self.keys = recs, keys

    def __len__(self) -> int:
        return len(self.recs) // _REC.size

    def without(self, i: int) -> RecentWindow:
        """The window with its ``i``-th event left out (still packed)."""
        if not 0 <= i < len(self):
            raise IndexError("window index out of range")
        r, k = i * _REC.size, i * _KEY.size
        return RecentWindow(
            self.recs[:r] + self.recs[r + _REC.size :], self.keys[:k] + self.keys[k + _KEY.size :]
        )

    def __getitem__(self, i):  # type: ignore[override]
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            stop = max(start, stop)
            return RecentWindow(
                self.recs[start * _REC.size : stop * _REC.size],
                self.keys[start * _KEY.size : stop * _KEY.size],
            )
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("window index out of range")
        t, item, cat, price, query = _REC.unpack_from(self.recs, i * _REC.size)
        hi, lo, _h = _KEY.unpack_from(self.keys, i * _KEY.size)
        return RecentEvent(t, item, cat, price, (hi << 32) | lo, query)

    def __iter__(self) -> Iterator[RecentEvent]:
        for (t, item, cat, price, query), (hi, lo, _h) in zip(
            _REC.iter_unpack(self.recs), _KEY.iter_unpack(self.keys), strict=True
        ):
            yield RecentEvent(t, item, cat, price, (hi << 32) | lo, query)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecentWindow):
            return self.recs == other.recs and self.keys == other.keys
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecentWindow({list(self)!r})"

    def rows(self) -> list[tuple[int, int, int, float, int]]:
        """``(type, item, category, price, query)`` per event, without the times (cheaper than events)."""
        return list(_REC.iter_unpack(self.recs))

    def ts(self, i: int) -> int:
        """The time of event ``i`` (negative counts from the end)."""
        hi, lo, _h = _KEY.unpack_from(self.keys, (i % len(self)) * _KEY.size)
        return (hi << 32) | lo

    @staticmethod
    def columns(windows: Sequence[RecentWindow]) -> np.ndarray:
        """The events of all ``windows``, one after another, as a float64 ``(events, 6)`` array in
        :class:`RecentEvent`'s field order: what ``np.array([tuple(e) for w in windows for e in w])``
        gives, read from the bytes at once."""
        recs = np.frombuffer(b"".join(w.recs for w in windows), _REC_DTYPE)
        keys = np.frombuffer(b"".join(w.keys for w in windows), _KEY_DTYPE)
        out = np.empty((len(recs), len(RecentEvent._fields)), np.float64)
        for j, name in enumerate(RecentEvent._fields):
            if name == "ts":
                out[:, j] = (keys["hi"].astype(np.int64) << 32) | keys["lo"].astype(np.int64)
            else:
                out[:, j] = recs[name]
        return out
