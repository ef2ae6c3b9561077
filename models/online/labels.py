"""The delayed-label join: each scored prediction keeps its feature snapshot until its label is known.

An online model may learn from a prediction only once the prediction's outcome is known, and it must
learn from it exactly once. Both tasks have labels that arrive *later* in event time than the
prediction, and the evidence is of two kinds: an event of the same user (which can settle the label
at once), or the event-time watermark passing the end of the label's horizon (no event can settle it
any more, so the "nothing happened" outcome is final).

======== ====================================== ======================================================
task     positive (y = 1)                       negative (y = 0)
======== ====================================== ======================================================
intent   a purchase of the user with ts in      the watermark passes ``t + H`` (H: 30 min by default)
         ``(t, t + H]``
churn    the watermark passes ``t + D`` with no a newer event of the user with ts in ``(t, t + D]``
         newer event (D: 30 days by default);   (any type: returning is what churn is about)
         or a newer event after ``t + D``
======== ====================================== ======================================================

``t`` is the time the prediction was made: the time of the scored event, or for a churn prediction
made at a watermark scan of a silent user (``observe_scan`` in the learner) that watermark. The
interval is open at ``t``: an event with the same timestamp may already be in the features.

The watermark (largest event time seen on the partition minus the allowed lateness) is a promise
that no event older than it will be applied, so a label it decides is final. A label decided by an
event is final too, and is never decided again. "Learned exactly once" holds by construction: a
:class:`Snapshot` leaves its :class:`Pending` queue in the same call that hands it out with its
label, and it only enters the queue after the prediction was made (:func:`add` takes the
prediction ``p`` as an argument).

**Labels are held until the horizon has passed** (``LabelRule.hold``, on by default). An event
that settles a label early (a return within D, a purchase within H) only writes the label into the
snapshot; the snapshot is handed out to be learned when the watermark passes ``t + horizon``, like
every other. So every prediction is learned at the same event-time delay, and the mix of labels a
model learns from at any moment is the true mix of some earlier moment. Handing out early labels at
once biases the model towards them: on CDNOW a churn label of 0 (the customer came back) is known
within days, a label of 1 only after 90 days, so for the first three months a model that learns
labels as they come sees almost only zeros, and its scores were off by an order of magnitude
(docs/ONLINE.md). For intent the hold costs at most H (30 min) of learning delay.

**Bound.** A user's queue holds at most ``rule.max_pending`` snapshots. When a new one would
exceed it, the *oldest* snapshot leaves: learned early if it holds a label already, otherwise
dropped (never learned, counted in :attr:`Pending.dropped`). For intent the oldest is the one
furthest from any future purchase and the closest to being resolved negative anyway; dropping keeps the record small for bursty users (a
Taobao user can view 30 items in ten minutes) at the cost of learning from fewer of a burst's
events. For churn the learner queues at most one event prediction per ``min_gap_ms`` (a day by
default) plus a scan prediction per ``scan_every_ms`` of silence; a user active every day for a
month fills the bound, and then the oldest, whose label a newer event has already settled, is
learned early rather than dropped.

**Storage.** :meth:`Pending.to_bytes` writes a version byte, the dropped count, the number of
snapshots, then per snapshot: the time since the previous snapshot in ms (the first: ``ts``
itself) and the held label (-1 while open) as one little-endian integer of 1-8 bytes whose low 3
bits give its length (:func:`_head`; a queue is sorted by time, so a step takes 2-4 bytes where
``ts`` took 8), ``p`` (float32), a bit mask of the non-zero features and those values as bfloat16
(the top half of a float32, rounded: its full range, 8 significant bits, at most 0.4% off). Many
features of a shopper are zero at any moment (no search, one-hot ``last_is_*``, empty cart), so a
54-feature snapshot takes ~60-120 bytes (229 as dense float32). The pending queues are most of a user's record, and a
linear model that scales and clips its inputs learns the same from a value 0.4% off (docs/ONLINE.md
measures it). A model always learns a snapshot's vector as stored, also when its label comes
before the record was ever stored, so what it learns never depends on where a batch ended.
Records of versions 2 (fixed-width ``ts``, ``p``, label: 13 bytes a snapshot) and 1 (also float32
values) are still read, and written as version 3 (values rounded) when stored again.

Nothing here reads a clock, imports River or knows what the features mean: vectors in, labels out.

>>> rule = LabelRule("intent", horizon_ms=30 * 60_000, max_pending=4)
>>> q = Pending()
>>> add(q, rule, 1_000, [1.0, 0.0, 2.5], 0.2)
>>> add(q, rule, 2_000, [0.0, 0.0, 1.0], 0.3)
>>> resolve_event(q, rule, "purchase", 1_500)  # bought 0.5 s after the first: label held
[]
>>> [(s.ts, s.y) for s in q.snapshots]
[(1000, 1), (2000, -1)]
>>> [(s.ts, y) for s, y in resolve_watermark(q, rule, 2_000 + 30 * 60_000 + 1)]  # horizons over
[(1000, 1), (2000, 0)]
>>> len(q), Pending.from_bytes(q.to_bytes()) == q
(0, True)
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence

import numpy as np

INTENT = "intent"
CHURN = "churn"
TASKS = (INTENT, CHURN)


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """How one task's labels are decided (see the module table).

    ``horizon_ms`` is H for intent and D for churn. ``max_pending`` bounds a user's queue.
    ``scan_every_ms`` (churn only) is the least event time between two churn predictions of a
    silent user, and ``scan_until_ms`` the silence after which a silent user is no longer
    snapshotted (they have churned by then; predicting it again teaches nothing new).

    >>> LabelRule("churn", horizon_ms=30 * 86_400_000).scan_every_ms == 10 * 86_400_000
    True
    """

    task: str
    horizon_ms: int
    max_pending: int = 8
    scan_every_ms: int | None = None
    scan_until_ms: int | None = None
    hold: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.horizon_ms <= 0:
            raise ValueError("horizon_ms must be positive")
        if not 1 <= self.max_pending <= 255:
            raise ValueError("max_pending must be in [1, 255] (it is stored in one byte)")
        if self.task == CHURN:
            # Defaults: three scans per horizon, until two horizons of silence.
            if self.scan_every_ms is None:
                object.__setattr__(self, "scan_every_ms", self.horizon_ms // 3)
            if self.scan_until_ms is None:
                object.__setattr__(self, "scan_until_ms", 2 * self.horizon_ms)


def round_bf16(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """A new float32 array of ``x`` rounded to bfloat16 as a snapshot stores it: to the nearest
    (halfway cases away from zero), which leaves the float32's low 16 bits zero. Values beyond
    bfloat16's largest finite one become infinite; a NaN from arithmetic stays NaN.

    >>> round_bf16([1.0, 1.00390625, 1.01171875, 3.14159, 0.0, -2.5e-3, 3.4e38]).tolist()
    [1.0, 1.0078125, 1.015625, 3.140625, 0.0, -0.00250244140625, inf]
    >>> bool(np.isnan(round_bf16([float("nan"), -float("nan")])).all())
    True
    """
    return (_bf16_bits(np.array(x, dtype=np.float32)) << 16).view(np.float32)


def _bf16_bits(f: np.ndarray) -> np.ndarray:
    """The bfloat16 of each float32 in ``f``, as its 16 bits in a uint32 array: the top half of
    the float32 after adding half a unit of the half dropped (the rounding of :func:`round_bf16`)."""
    return (f.view(np.uint32) + np.uint32(0x8000)) >> 16


def _nonzero_mask(data: bytes, offset: int, n: int) -> np.ndarray:
    """The stored bit mask of a snapshot's non-zero features, as ``n`` booleans."""
    return np.unpackbits(np.frombuffer(data, np.uint8, (n + 7) // 8, offset), count=n, bitorder="little").astype(bool)


class Snapshot:
    """One prediction waiting for its label: when it was made, what it said, what it saw.

    ``x`` is the feature vector, in the learner's feature order, as float32 holding the bfloat16
    values a record stores (:func:`round_bf16`). It is always read from the stored form, encoded
    first if the snapshot was never stored, so a model learns the same vector whether or not the
    record was stored in between (see the module docstring). A snapshot read from a record keeps
    its stored bytes and decodes ``x`` only when it is read: a queued prediction is loaded and
    stored again with every event of its user but learned from once, so most never need their
    vector as numbers (decoding and encoding them with numpy had been a quarter of the pure-logic
    profile of a simulated stream, docs/BENCHMARKS.md).
    """

    __slots__ = ("ts", "p", "y", "_f", "_x", "_raw", "_n")

    def __init__(self, ts: int, p: float, x: Sequence[float] | np.ndarray, y: int = -1) -> None:
        self.ts, self.p, self.y = ts, p, y  # y: the held label once an event settled it; -1: open
        self._f: np.ndarray | None = np.array(x, dtype=np.float32)  # as given, until encoded
        self._x: np.ndarray | None = None  # the stored values, decoded on use
        self._raw: bytes | None = None  # stored form: p (float32), non-zero bit mask, those values
        self._n = len(self._f)

    @classmethod
    def _stored(cls, ts: int, p: float, y: int, raw: bytes, n_feat: int) -> Snapshot:
        snap = cls.__new__(cls)
        snap.ts, snap.p, snap.y, snap._f, snap._x, snap._raw, snap._n = ts, p, y, None, None, raw, n_feat
        return snap

    @classmethod
    def waiting(cls, ts: int, n_features: int) -> Snapshot:
        """A snapshot queued before its prediction is scored: :meth:`fill` gives it its ``p`` and
        vector, which must happen before it is read, learned from or stored (a batch's scores
        are computed together, ``OnlineLearner.flush``)."""
        return cls._stored(ts, None, -1, None, n_features)  # type: ignore[arg-type]

    def fill(self, p: float, x: np.ndarray) -> None:
        """The prediction and float32 vector of a :meth:`waiting` snapshot (as ``__init__`` takes
        them from :func:`add`)."""
        if len(x) != self._n:
            raise ValueError(f"{len(x)} features for a snapshot of {self._n}")
        self.p, self._f = float(np.float32(p)), np.asarray(x, np.float32)

    @property
    def n_features(self) -> int:
        return self._n

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            raw = self._encoded()
            x = np.zeros(self._n, dtype=np.uint32)
            values = np.frombuffer(raw, "<u2", offset=4 + (self._n + 7) // 8)
            x[_nonzero_mask(raw, 4, self._n)] = values.astype(np.uint32) << 16
            self._x = x.view(np.float32)
        return self._x

    def _encoded(self) -> bytes:
        # The stored form is also written by encode_all, for a batch at once: a change of format
        # changes both (a property test holds them to the same bytes).
        if self._raw is None:
            f = self._f
            nz = f != 0
            mask = np.packbits(nz, bitorder="little").tobytes()
            self._raw = _P.pack(self.p) + mask + _bf16_bits(f[nz]).astype("<u2").tobytes()
            self._f = None
        return self._raw

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Snapshot)
            and self.ts == other.ts
            and np.float32(self.p) == np.float32(other.p)
            and self.y == other.y
            and np.array_equal(self.x, other.x)
        )

    def __repr__(self) -> str:
        return f"Snapshot(ts={self.ts}, p={self.p}, y={self.y}, n_features={self._n})"


def encode_all(snapshots: Iterable[Snapshot]) -> int:
    """Encode the never-stored snapshots among ``snapshots`` together, one numpy pass per vector
    length, instead of one at a time when each record is stored: the same bytes as
    :meth:`Snapshot._encoded`, which makes about ten numpy calls per snapshot (and most events
    queue one or two; docs/BENCHMARKS.md measures both ways). Returns how many were encoded.

    >>> a, b = Snapshot(1, 0.25, [0.0, 3.0, 1.5]), Snapshot(2, 0.5, [2.0, 0.0, 0.0])
    >>> encode_all([a, b]), a._raw == Snapshot(1, 0.25, [0.0, 3.0, 1.5])._encoded(), b.x.tolist()
    (2, True, [2.0, 0.0, 0.0])
    """
    todo: dict[int, list[Snapshot]] = {}
    for snap in snapshots:
        if snap._raw is None:
            todo.setdefault(snap._n, []).append(snap)
    for n, group in todo.items():
        f = np.stack([snap._f for snap in group])  # type: ignore[misc]
        nz = f != 0
        width = (n + 7) // 8
        masks = np.packbits(nz, axis=1, bitorder="little").tobytes()
        values = _bf16_bits(f[nz]).astype("<u2").tobytes()  # row after row: each row's in order
        at = 0
        for i, (snap, k) in enumerate(zip(group, nz.sum(1).tolist(), strict=True)):
            snap._raw = _P.pack(snap.p) + masks[i * width : (i + 1) * width] + values[2 * at : 2 * (at + k)]
            snap._f = None
            at += k
    return sum(map(len, todo.values()))


_HEAD = struct.Struct("<BHBH")  # version, dropped (saturating), snapshots, features per snapshot
_P = struct.Struct("<f")  # the prediction, first of a snapshot's stored body
_SNAP_V2 = struct.Struct("<qfb")  # versions 1 and 2 (read, never written): ts, p, held label
VERSION = 3  # 2: fixed-width snapshot heads; 1: also values as float32


def _head(step: int, y: int) -> bytes:
    """A snapshot's time step (ms since the previous snapshot, or ``ts`` for the first) and held
    label in 1-8 bytes: ``v = zigzag(step) << 2 | y + 1``, stored little-endian as ``v << 3 | n - 1``
    in the fewest bytes ``n`` that hold it, so the first byte says how many follow.

    >>> [_head(s, y).hex() for s, y in ((0, -1), (1, 0), (-1, 1), (5_000, -1), (1_700_000_000_000, -1))]
    ['00', '48', '30', '02e204', '05005af9f362']
    """
    v = (step << 3 if step >= 0 else (-step << 3) - 4) | (y + 1)
    n = (v.bit_length() + 10) >> 3
    if n > 8:
        raise ValueError(f"time step {step} ms is out of range for a pending-label record")
    return (v << 3 | (n - 1)).to_bytes(n, "little")


@dataclasses.dataclass(slots=True)
class Pending:
    """One user's unresolved predictions for one task, oldest first. Lives in the user's record."""

    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    dropped: int = 0  # snapshots evicted by the bound over the record's life (saturates at 65535)

    def __len__(self) -> int:
        return len(self.snapshots)

    def to_bytes(self) -> bytes:
        """Compact binary form (see the module docstring); an empty queue is 6 bytes."""
        n_feat = self.snapshots[0].n_features if self.snapshots else 0
        parts = [_HEAD.pack(VERSION, min(self.dropped, 0xFFFF), len(self.snapshots), n_feat)]
        prev = 0
        for s in self.snapshots:
            if s.n_features != n_feat:
                raise ValueError("all snapshots of a queue must have the same number of features")
            parts += [_head(s.ts - prev, s.y), s._encoded()]  # a step >= 0 after the first: sorted by ts
            prev = s.ts
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Pending:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on another version or a cut record."""
        if not data:
            return cls()
        version = data[0]
        if version not in (VERSION, 2, 1):
            raise ValueError(f"pending-label record version {version} is not {VERSION} (or 2 or 1)")
        _v, dropped, n, n_feat = _HEAD.unpack_from(data)
        off, mask_len = _HEAD.size, (n_feat + 7) // 8
        width = 4 if version == 1 else 2  # version 1: float32 values
        snaps = []
        ts = 0
        try:
            for _ in range(n):
                if version == VERSION:
                    n_head = (data[off] & 7) + 1
                    v = int.from_bytes(data[off : off + n_head], "little") >> 3
                    if v & 3 == 3:
                        raise ValueError("pending-label record holds a label other than -1, 0 or 1")
                    ts += v >> 3 if not v & 4 else -(v >> 3) - 1
                    y = (v & 3) - 1
                    start = off + n_head  # the body: p, mask, values
                    (p,) = _P.unpack_from(data, start)
                    mask_at = start + 4
                else:
                    ts, p, y = _SNAP_V2.unpack_from(data, off)
                    mask_at = off + _SNAP_V2.size
                # The mask's popcount is the number of stored values: the vector is decoded on use.
                k = int.from_bytes(data[mask_at : mask_at + mask_len], "little").bit_count()
                end = mask_at + mask_len + width * k
                if end > len(data):
                    raise ValueError("pending-label record is cut short")
                if width == 2:
                    body = data[start:end] if version == VERSION else _P.pack(p) + data[mask_at:end]
                    snaps.append(Snapshot._stored(ts, p, y, body, n_feat))
                else:
                    x = np.zeros(n_feat, dtype=np.float32)
                    x[_nonzero_mask(data, mask_at, n_feat)] = np.frombuffer(data, "<f4", k, mask_at + mask_len)
                    snaps.append(Snapshot(ts, p, x, y))  # rounded when stored or read
                off = end
        except (IndexError, struct.error):
            raise ValueError("pending-label record is cut short") from None
        if off != len(data):
            raise ValueError(f"pending-label record has {len(data) - off} trailing bytes")
        return cls(snaps, dropped)


def add(
    pending: Pending, rule: LabelRule, ts: int, x: Sequence[float] | np.ndarray, p: float
) -> Snapshot | None:
    """Queue the prediction ``p`` made at ``ts`` from features ``x``; return the snapshot the bound
    evicted, if any (the caller learns it if it holds a label, ``y >= 0``; otherwise it is lost). Snapshots stay sorted by ``ts`` (a late event's prediction goes in its place)."""
    return insert(pending, rule, Snapshot(int(ts), float(np.float32(p)), x))


def insert(pending: Pending, rule: LabelRule, snap: Snapshot) -> Snapshot | None:
    """:func:`add` for a snapshot already made (its ``p`` may be filled in later, before it is
    learned from or stored)."""
    snaps = pending.snapshots
    i = len(snaps)
    while i and snaps[i - 1].ts > snap.ts:
        i -= 1
    snaps.insert(i, snap)
    if len(snaps) > rule.max_pending:
        evicted = snaps.pop(0)
        if evicted.y < 0:
            pending.dropped += 1
        return evicted
    return None


def resolve_event(
    pending: Pending, rule: LabelRule, event_type: str, event_ts: int
) -> list[tuple[Snapshot, int]]:
    """Labels that an event of the same user settles, oldest first.

    Intent: a purchase at ``T`` makes every open snapshot with ``ts < T <= ts + H`` positive;
    other events settle nothing. Churn: any event at ``T`` settles every open snapshot with
    ``ts < T``: negative if ``T <= ts + D`` (the user came back in time), positive otherwise.

    With ``rule.hold`` (the default) a settled snapshot stays queued with its label and is
    handed out by :func:`resolve_watermark` once its horizon has passed, so this returns ``[]``;
    without it the settled snapshots leave the queue and are returned now.
    """
    snaps = pending.snapshots
    if not snaps or (rule.task == INTENT and event_type != "purchase"):
        return []
    h = rule.horizon_ms
    settled: list[tuple[Snapshot, int]] = []
    for s in snaps:
        if s.y >= 0 or s.ts >= event_ts:
            continue
        if rule.task == INTENT:
            if event_ts <= s.ts + h:
                settled.append((s, 1))
        else:
            settled.append((s, int(event_ts > s.ts + h)))
    if rule.hold:
        for s, y in settled:
            s.y = y
        return []
    if settled:
        gone = {id(s) for s, _ in settled}
        pending.snapshots = [s for s in snaps if id(s) not in gone]
    return settled


def resolve_watermark(pending: Pending, rule: LabelRule, watermark_ms: int) -> list[tuple[Snapshot, int]]:
    """Labels due at the event-time watermark: every snapshot whose horizon ended before it
    (``ts + H < watermark``) leaves the queue with its held label, or if none, the "nothing
    happened" label: 0 for intent, 1 for churn."""
    snaps = pending.snapshots
    h = rule.horizon_ms
    n = 0
    while n < len(snaps) and snaps[n].ts + h < watermark_ms:
        n += 1  # sorted by ts, so the expired ones are a prefix
    if not n:
        return []
    default = 0 if rule.task == INTENT else 1
    out = [(s, s.y if s.y >= 0 else default) for s in snaps[:n]]
    del snaps[:n]
    return out


def next_due(pending: Pending, rule: LabelRule) -> int | None:
    """The smallest watermark at which :func:`resolve_watermark` would settle something (None if
    the queue is empty): what a scheduler of silent users should wait for."""
    if not pending.snapshots:
        return None
    return pending.snapshots[0].ts + rule.horizon_ms + 1


@dataclasses.dataclass(slots=True)
class UserPending:
    """Both tasks' queues of one user, stored side by side with ``UserState`` in the user's record.

    >>> up = UserPending()
    >>> add(up.intent, LabelRule("intent", 1_800_000), 5, [0.0, 3.0], 0.1)
    >>> UserPending.from_bytes(up.to_bytes()) == up, len(up.to_bytes())
    (True, 23)
    """

    intent: Pending = dataclasses.field(default_factory=Pending)
    churn: Pending = dataclasses.field(default_factory=Pending)

    _LEN = struct.Struct("<H")

    def to_bytes(self) -> bytes:
        a = self.intent.to_bytes()
        return self._LEN.pack(len(a)) + a + self.churn.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserPending:
        if not data:
            return cls()
        (n,) = cls._LEN.unpack_from(data)
        return cls(Pending.from_bytes(data[2 : 2 + n]), Pending.from_bytes(data[2 + n :]))


__all__ = [
    "CHURN",
    "INTENT",
    "TASKS",
    "LabelRule",
    "Pending",
    "Snapshot",
    "UserPending",
    "add",
    "insert",
    "next_due",
    "round_bf16",
    "resolve_event",
    "resolve_watermark",
]
