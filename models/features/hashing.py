"""Stable hashing of open-vocabulary ids (items, categories, search terms).

Python's ``hash()`` is salted per process, so it cannot be used for anything that is stored or
shared between workers and training. BLAKE2b is stable across processes, machines and versions.

>>> stable_hash("item-42") == stable_hash("item-42")
True
>>> 0 <= stable_hash("item-42") < 2**31
True
>>> bucket("item-42", 1000) == stable_hash("item-42") % 1000
True
"""

from __future__ import annotations

from hashlib import blake2b


def stable_hash(value: str, salt: bytes = b"") -> int:
    """A 31-bit non-negative integer hash of ``value`` (0 is never returned for a non-empty value's use as
    "absent": callers use 0 to mean "no id", so 0 is remapped to 1)."""
    h = int.from_bytes(blake2b(value.encode("utf-8"), digest_size=8, salt=salt[:16]).digest(), "little")
    h &= 0x7FFF_FFFF
    return h or 1


def bucket(value: str, n: int) -> int:
    """Hash bucket in [0, n)."""
    return stable_hash(value) % n
