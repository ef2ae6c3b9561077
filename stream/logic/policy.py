"""Signal policy: when a score becomes an event on an output topic.

Per user and task we keep a tiny :class:`TaskPolicy`: whether the signal is currently "on",
and when it was last emitted. A signal fires on a rising edge (score crosses the threshold
while off), is re-armed only after the score falls below ``threshold - hysteresis``, and never
fires twice within ``cooldown_ms`` of event time. That keeps consumers from being spammed by a
score wobbling around its threshold.

>>> p = TaskPolicy()
>>> rule = PolicyRule(threshold=0.5, hysteresis=0.1, cooldown_ms=1000)
>>> [rule.step(p, s, ts) for s, ts in [(0.6, 0), (0.7, 10), (0.45, 20), (0.6, 30), (0.3, 40), (0.6, 2000)]]
[True, False, False, False, False, True]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from hashlib import blake2b

NEVER = -(2**62)


@dataclass(slots=True)
class TaskPolicy:
    active: bool = False
    last_emit_ts: int = NEVER


@dataclass(frozen=True, slots=True)
class PolicyRule:
    threshold: float
    hysteresis: float
    cooldown_ms: int

    def step(self, p: TaskPolicy, score: float, ts: int) -> bool:
        """Update ``p`` with a new score at event time ``ts``; True when a signal should be emitted."""
        if p.active:
            if score < self.threshold - self.hysteresis:
                p.active = False
            return False
        if score >= self.threshold and ts - p.last_emit_ts >= self.cooldown_ms:
            p.active = True
            p.last_emit_ts = ts
            return True
        return False


#: The tasks whose last signal id a :class:`PolicyState` keeps, in the order of its bit mask.
ID_TASKS: tuple[str, ...] = ("purchase_intent", "churn_risk", "latent_needs")


@dataclass(slots=True)
class PolicyState:
    """Policy memory of one user, stored beside the user's state in the same table value.

    ``last_ids`` holds the id of the last signal of each task (task -> 32 hex digits), for the
    query API: a signal id hashes its triggering event's id, which the state does not keep, so it
    cannot be worked out later. 16 bytes per task that ever fired, and one byte.
    """

    intent: TaskPolicy = field(default_factory=TaskPolicy)
    churn: TaskPolicy = field(default_factory=TaskPolicy)
    latent: tuple[str, ...] = ()
    latent_emit_ts: int = NEVER
    last_ids: dict[str, str] = field(default_factory=dict)

    _HEAD = struct.Struct("<B?q?qqB")
    _LEN = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 3: struct.Struct("<H")}  # version 1 cut names at 255 bytes

    def to_bytes(self) -> bytes:
        cats = [c.encode() for c in self.latent[:16]]
        head = self._HEAD.pack(
            3, self.intent.active, self.intent.last_emit_ts, self.churn.active, self.churn.last_emit_ts,
            self.latent_emit_ts, len(cats),
        )  # fmt: skip
        mask, ids = 0, b""
        for i, task in enumerate(ID_TASKS):
            sid = self.last_ids.get(task)
            if sid is not None:
                mask |= 1 << i
                ids += bytes.fromhex(sid)
        return head + b"".join(self._LEN[3].pack(len(c)) + c for c in cats) + bytes((mask,)) + ids

    @classmethod
    def from_bytes(cls, data: bytes) -> PolicyState:
        """Versions 1 to 3 (a version 1 name cut inside a character is decoded with a replacement;
        before version 3, no signal ids)."""
        v, ia, it, ca, ct, lt, n = cls._HEAD.unpack_from(data)
        length = cls._LEN[v]
        pos, cats = cls._HEAD.size, []
        for _ in range(n):
            (ln,) = length.unpack_from(data, pos)
            pos += length.size
            cats.append(data[pos : pos + ln].decode(errors="replace"))
            pos += ln
        ids: dict[str, str] = {}
        if v >= 3:
            mask, pos = data[pos], pos + 1
            for i, task in enumerate(ID_TASKS):
                if mask >> i & 1:
                    ids[task] = data[pos : pos + 16].hex()
                    pos += 16
        return cls(TaskPolicy(ia, it), TaskPolicy(ca, ct), tuple(cats), lt, ids)


def latent_changed(old: tuple[str, ...], new: tuple[str, ...], top: int = 3) -> bool:
    """Latent needs change "materially" when the set of the ``top`` leading categories changes."""
    return set(old[:top]) != set(new[:top])


def signal_id(user: str, task: str, event_id: str) -> str:
    """Deterministic id from (user, task, triggering event): consumers dedupe on it.

    >>> signal_id("u", "purchase_intent", "e1") == signal_id("u", "purchase_intent", "e1")
    True
    """
    return blake2b(f"{user}\x1f{task}\x1f{event_id}".encode(), digest_size=16).hexdigest()
