"""The packed byte layouts of a state record, shared by the codec, the in-memory rings and the update.

Fields are little-endian ``struct`` layouts except the de-duplication key, which is big-endian so
that comparing two keys' bytes compares their ``(ts, id)``; the rings are held in memory in these
layouts, so storing and loading a record never decodes them event by event.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

from models.events import EVENT_TYPES

N_TYPES = len(EVENT_TYPES)

# version, flags (2: previous session follows, 4: occasion block follows), n_horizons, n_seen,
# n_recent, n_cats, n_terms, n_cart, n_removed,
# first_seen, last_ts, sess_start, last_purchase_ts, cart_cleared_ts, first_purchase_ts,
# totals[4], n_sessions, purchase_occasions, sess_counts[4], sess_value, spend
_HEAD = struct.Struct("<9B6q4III4Ifd")
_PREV = struct.Struct("<qq4If")  # prev_start, prev_end, prev_counts[4], prev_value
_OCC = struct.Struct("<qq")  # occasion_start, prev_occasion_end (only while a late purchase can merge)
_KEY = struct.Struct(">HII")  # de-duplication key: ts high 16 bits, ts low 32 bits, event-id hash
_REC = struct.Struct("<BIIfI")  # recent record: type, item, category, price, query
_REC_V3 = struct.Struct("<BIIdI")  # the same up to version 3: price as float64
# The same layouts for numpy (packed, no padding: "<" and ">" structs have none).
_KEY_DTYPE = np.dtype([("hi", ">u2"), ("lo", ">u4"), ("hash", ">u4")])
_REC_DTYPE = np.dtype(
    [("type", "u1"), ("item", "<u4"), ("category", "<u4"), ("price", "<f4"), ("query", "<u4")]
)


@lru_cache(maxsize=1024)
def _cols_struct(nc: int, nk: int, nt: int, nl: int, nm: int) -> struct.Struct:
    """Numeric columns for these section sizes (cached: the same sizes repeat a lot)."""
    return struct.Struct(f"<{nc}f{nk}f{nt}I{nt}f{nl}q{nl}I{nl}I{nl}d{nm}I{nm}q")
