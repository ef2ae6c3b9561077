"""Writers of old state-record layouts, so the tests can check that every old version still loads.

The product only reads old versions (``models.features.state.codec``); writing them is needed
nowhere but here.
"""

from __future__ import annotations

from models.features.state import UserState
from models.features.state.codec import _HEAD_V2, _V1, _repack
from models.features.state.layout import _HEAD, _KEY, _OCC, _PREV, _REC, _REC_V3, N_TYPES, _cols_struct


def encode_v1(first_seen: int, last_ts: int, totals: list[int]) -> bytes:
    """Bytes of a version-1 record."""
    return _V1.pack(1, first_seen, last_ts, *totals)


def encode_v2(state: UserState) -> bytes:
    """Bytes of ``state`` in the version-2 layout, purchase rhythm dropped."""
    data = _widen(state.to_bytes())
    h = _HEAD.unpack_from(data, 0)
    flags = h[1]
    head = _HEAD_V2.pack(2, flags & 2, *h[2:14], *h[15:20], *h[21:])
    off = _HEAD.size + (_PREV.size if flags & 2 else 0)
    prev = data[_HEAD.size : off]
    return head + prev + data[off + (_OCC.size if flags & 4 else 0) :]


def encode_v3(state: UserState) -> bytes:
    """Bytes of ``state`` in the version-3 layout."""
    data = _widen(state.to_bytes())
    return bytes([3]) + data[1:]


def ring_span(data: bytes) -> tuple[int, int]:
    """Where the recent ring lies in a current-version record."""
    h = _HEAD.unpack_from(data, 0)
    flags, nh, ns, nr, nk, nt, nl, nm = h[1:9]
    off = _HEAD.size + (_PREV.size if flags & 2 else 0) + (_OCC.size if flags & 4 else 0)
    off += _cols_struct(nh * N_TYPES, nk, nt, nl, nm).size + ns * _KEY.size
    return off, off + nr * _REC.size


def _widen(data: bytes) -> bytes:
    """A current-version record with its recent ring in the version-3 layout (float64 prices)."""
    start, end = ring_span(data)
    return data[:start] + _repack(data[start:end], _REC, _REC_V3) + data[end:]
