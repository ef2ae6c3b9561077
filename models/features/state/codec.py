"""A :class:`~models.features.state.UserState` to and from bytes, and the migrations of old records.

A record is ``struct``-packed little-endian fields behind a schema version byte, no pickle: a
fixed header, numeric columns, then the two rings exactly as they are held in memory, then the
category names (NUL-separated, last). Decayed values (counts, category and term scores) and the
session's cart value are float32, which features do not need more than, and so are the recent
ring's prices (a :class:`~models.features.recent.RecentEvent`'s price is a float32 value); money,
the cart lines and the spend, stays float64. The update rounds each float32 value as it changes
it, so a state kept in memory equals the same state stored and read back: what a worker computes
never depends on whether, or after which event, a record was stored.

Every version ever written keeps loading: :func:`decode` reads the current layout and hands older
versions to their migration in :data:`_MIGRATIONS`. Writing old layouts is only needed to test
those migrations, so those encoders live with the tests.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from models.events import TYPE_INDEX
from models.features.state.layout import (
    _HEAD,
    _KEY,
    _OCC,
    _PREV,
    _REC,
    _REC_V3,
    N_TYPES,
    _cols_struct,
)

if TYPE_CHECKING:
    from models.features.state.record import UserState

SCHEMA_VERSION = 4  # 4: the recent ring's prices as float32 (3: float64)


def encode(state: UserState) -> bytes:
    """The current-version record of ``state`` (:meth:`UserState.to_bytes`)."""
    has_prev = state.prev_end != 0
    has_occ = state.prev_occasion_end != 0
    cats = state.categories
    terms = state.terms
    cart = state.cart
    removed = state.removed
    seen = state.seen
    head = _HEAD.pack(
        SCHEMA_VERSION, (2 if has_prev else 0) | (4 if has_occ else 0), len(state.counts) // N_TYPES,
        len(seen) // _KEY.size, len(state.recent_blob) // _REC.size,
        len(cats), len(terms), len(cart), len(removed),
        state.first_seen, state.last_ts, state.sess_start, state.last_purchase_ts, state.cart_cleared_ts,
        state.first_purchase_ts, *state.totals, state.n_sessions, state.purchase_occasions,
        *state.sess_counts, state.sess_value, state.spend,
    )  # fmt: skip
    if has_prev:
        head += _PREV.pack(state.prev_start, state.prev_end, *state.prev_counts, state.prev_value)
    if has_occ:
        head += _OCC.pack(state.occasion_start, state.prev_occasion_end)
    cols = _cols_struct(len(state.counts), len(cats), len(terms), len(cart), len(removed))
    values = [*state.counts, *cats.values(), *terms, *terms.values()]
    if cart:
        for j in range(4):
            values += [c[j] for c in cart]
    if removed:
        values += [*removed, *removed.values()]
    names = "\x00".join(cats).encode("utf-8") if cats else b""
    return b"".join((head, cols.pack(*values), seen, state.recent_blob, names))


def decode(cls: type[UserState], data: bytes) -> UserState:
    """A ``cls`` from a record of this or any earlier schema version (:meth:`UserState.from_bytes`)."""
    if not data:
        raise ValueError("empty state record")
    version = data[0]
    if version == SCHEMA_VERSION:
        return _decode(cls, data, _REC)
    if version in _MIGRATIONS:
        return _MIGRATIONS[version](cls, data)
    raise ValueError(f"unknown state schema version {version}")


def _decode(cls: type[UserState], data: bytes, rec: struct.Struct) -> UserState:
    """A version 4 record (``rec`` = ``_REC``), or version 3, whose layout differs only in the
    recent ring's records (``_REC_V3``)."""
    (
        _v, flags, nh, ns, nr, nk, nt, nl, nm,
        first_seen, last, sess_start, last_purchase, cleared, first_purchase,
        t0, t1, t2, t3, n_sessions, occasions, s0, s1, s2, s3, sess_value, spend,
    ) = _HEAD.unpack_from(data, 0)  # fmt: skip
    st = cls.__new__(cls)
    st.first_seen, st.last_ts, st.sess_start = first_seen, last, sess_start
    st.last_purchase_ts, st.cart_cleared_ts = last_purchase, cleared
    st.first_purchase_ts, st.purchase_occasions = first_purchase, occasions
    st.totals = [t0, t1, t2, t3]
    st.n_sessions, st.sess_counts, st.sess_value, st.spend = n_sessions, [s0, s1, s2, s3], sess_value, spend
    off = _decode_prev(st, data, _HEAD.size, flags)
    if flags & 4:
        st.occasion_start, st.prev_occasion_end = _OCC.unpack_from(data, off)
        off += _OCC.size
    else:
        st.occasion_start = st.prev_occasion_end = 0
    _decode_rest(st, data, off, nh, ns, nr, nk, nt, nl, nm, rec)
    return st


def _decode_prev(st: UserState, data: bytes, off: int, flags: int) -> int:
    """The previous-session block (present when ``flags & 2``); returns the offset after it."""
    if flags & 2:
        p = _PREV.unpack_from(data, off)
        st.prev_start, st.prev_end, st.prev_counts, st.prev_value = p[0], p[1], list(p[2:6]), p[6]
        return off + _PREV.size
    st.prev_start, st.prev_end, st.prev_counts, st.prev_value = 0, 0, [0] * N_TYPES, 0.0
    return off


def _decode_rest(
    st: UserState, data: bytes, off: int, nh: int, ns: int, nr: int, nk: int, nt: int, nl: int, nm: int,
    rec: struct.Struct,
) -> None:  # fmt: skip
    """Numeric columns, rings and category names: the same layout in versions 2 to 4, but for the
    recent ring's records (``rec``: ``_REC_V3`` up to version 3, converted here)."""
    nc = nh * N_TYPES
    cols = _cols_struct(nc, nk, nt, nl, nm)
    v = cols.unpack_from(data, off)
    off += cols.size
    st.counts = list(v[:nc])
    i = nc + nk
    st.terms = dict(zip(v[i : i + nt], v[i + nt : i + 2 * nt], strict=True)) if nt else {}
    i += 2 * nt
    if nl:
        st.cart = list(
            zip(
                v[i : i + nl],
                v[i + nl : i + 2 * nl],
                v[i + 2 * nl : i + 3 * nl],
                v[i + 3 * nl : i + 4 * nl],
                strict=True,
            )
        )
    else:
        st.cart = []
    i += 4 * nl
    st.removed = dict(zip(v[i : i + nm], v[i + nm : i + 2 * nm], strict=True)) if nm else {}
    end = off + ns * _KEY.size
    st.seen = data[off:end]
    off, end = end, end + nr * rec.size
    st.recent_blob = data[off:end] if rec is _REC else _repack(data[off:end], rec, _REC)
    st.categories = (
        dict(zip(data[end:].decode("utf-8").split("\x00"), v[nc : nc + nk], strict=True)) if nk else {}
    )


def _repack(blob: bytes, src: struct.Struct, dst: struct.Struct) -> bytes:
    """Recent-ring records from one layout to the other (``_REC_V3`` to ``_REC`` on loading an
    old record; the reverse only to write old records in the tests)."""
    return b"".join(dst.pack(*r) for r in src.iter_unpack(blob))


# -- schema migrations -------------------------------------------------------------------------------
# Version 1 was the first prototype layout: lifetime totals and the first/last event time only.
_V1 = struct.Struct("<Bqq4I")


def _migrate_v1(cls: type[UserState], data: bytes) -> UserState:
    """v1 -> v3 (through v2): totals and first/last time carry over. Decayed counters start at zero (v1 had
    none, and v1 predates configurable horizons: the record gets the default four), and a user
    with events counts as one session that started at ``last_ts``. v1 kept no purchase times, so
    there is no purchase rhythm either (as for a user who has not bought yet)."""
    _v, first_seen, last_ts, *totals = _V1.unpack_from(data, 0)
    st = cls()
    st.first_seen, st.last_ts, st.totals = first_seen, last_ts, list(totals)
    if last_ts:
        st.n_sessions, st.sess_start = 1, last_ts
    return st


# Version 2 is version 3 without the purchase rhythm: its header lacks first_purchase_ts and
# purchase_occasions, and it has no occasion block; everything after the header is the same.
# version, flags, n_horizons, n_seen, n_recent, n_cats, n_terms, n_cart, n_removed,
# first_seen, last_ts, sess_start, last_purchase_ts, cart_cleared_ts,
# totals[4], n_sessions, sess_counts[4], sess_value, spend
_HEAD_V2 = struct.Struct("<9B5q4II4Ifd")


def _migrate_v2(cls: type[UserState], data: bytes) -> UserState:
    """v2 -> v3: everything carries over; the purchase rhythm, which v2 did not keep, is estimated
    from what it did keep. No purchase known (or a v1-era record without ``last_purchase_ts``):
    none. One purchase: exact (first = last purchase, one occasion). Two or more: the first
    purchase is taken as ``first_seen`` and every purchase as its own occasion, so the mean gap
    ``(last - first) / (n - 1)`` is exact for a log of purchases only that are more than the
    session gap apart (CDNOW), and shorter than the truth otherwise (multi-item checkouts count as
    several occasions). The occasion-merge block starts empty: a late purchase bridging the gap
    right after the upgrade is counted as its own occasion."""
    (
        _v, flags, nh, ns, nr, nk, nt, nl, nm,
        first_seen, last, sess_start, last_purchase, cleared,
        t0, t1, t2, t3, n_sessions, s0, s1, s2, s3, sess_value, spend,
    ) = _HEAD_V2.unpack_from(data, 0)  # fmt: skip
    st = cls.__new__(cls)
    st.first_seen, st.last_ts, st.sess_start = first_seen, last, sess_start
    st.last_purchase_ts, st.cart_cleared_ts = last_purchase, cleared
    st.totals = [t0, t1, t2, t3]
    st.n_sessions, st.sess_counts, st.sess_value, st.spend = n_sessions, [s0, s1, s2, s3], sess_value, spend
    off = _decode_prev(st, data, _HEAD_V2.size, flags)
    _decode_rest(st, data, off, nh, ns, nr, nk, nt, nl, nm, _REC_V3)
    purchases = st.totals[TYPE_INDEX["purchase"]]
    if not last_purchase or not purchases:
        st.first_purchase_ts, st.purchase_occasions = 0, 0
    elif purchases == 1:
        st.first_purchase_ts, st.purchase_occasions = last_purchase, 1
    else:
        st.first_purchase_ts, st.purchase_occasions = min(first_seen, last_purchase), purchases
    st.occasion_start = st.prev_occasion_end = 0
    return st


# Version 3 is version 4 with the recent ring's prices as float64 (21-byte records): they are
# rounded to float32 on load, which is what a RecentEvent holds since version 4.
def _migrate_v3(cls: type[UserState], data: bytes) -> UserState:
    """v3 -> v4: the recent ring's prices rounded to float32; everything else as it was."""
    return _decode(cls, data, _REC_V3)


_MIGRATIONS = {1: _migrate_v1, 2: _migrate_v2, 3: _migrate_v3}
