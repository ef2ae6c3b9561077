"""Each user's sequence-model hidden state, kept in their record and advanced one event at a time.

The GRU's state after a user's latest event is what every head reads, so keeping it in the record
makes scoring an event one recurrent step instead of a run over the user's recent window. A
batch advances all its events in *rounds*: round ``r`` takes every user's ``r``-th event of the
batch, so each round is one call of the model however many users it holds, and a user's events
still go through the recurrence in order.

A stored state is used only if it belongs to the model now serving (``SeqMemory.model``) and has
seen every earlier event of the user (``SeqMemory.events``). Otherwise (a new model was swapped in,
the record predates this field, an event arrived out of order and was inserted into the ring
rather than appended) the state is rebuilt from the recent-event ring the record keeps: the
recurrence run from zeros over those events. That forgets what came before the ring, and only
for users seen again after such a change.

The state is stored as float16: it is rounded once per batch, between batches, and
``tests/unit/test_sequence_state.py`` bounds what that does to the scores.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from models.features.recent import RecentEvent


@dataclasses.dataclass(frozen=True, slots=True)
class SeqMemory:
    """A user's hidden state after their ``events``-th applied event, under model ``model``."""

    model: int  # model_tag() of the version that computed it
    events: int  # the user's applied events it has seen
    h: bytes  # float16, (n_layers, d_model), C order

    _HEAD = struct.Struct("<II")

    def to_bytes(self) -> bytes:
        return self._HEAD.pack(self.model, self.events) + self.h

    @classmethod
    def from_bytes(cls, data: bytes) -> SeqMemory:
        model, events = cls._HEAD.unpack_from(data)
        return cls(model, events, bytes(data[cls._HEAD.size :]))

    def array(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The state as float32 of ``shape``; None if it was computed for another shape."""
        a = np.frombuffer(self.h, np.float16)
        if a.size != shape[0] * shape[1]:
            return None
        return a.astype(np.float32).reshape(shape)


def model_tag(name: str) -> int:
    """A 32-bit tag of a served model's name, stored with each state it computes."""
    return zlib.crc32(name.encode())


@dataclasses.dataclass(frozen=True, slots=True)
class SeqQuery:
    """One applied event for the sequence model."""

    user: str
    window: Sequence[RecentEvent]  # the user's recent-event ring just after the event
    events: int  # the user's applied events, this one included
    latent: bool  # next categories wanted (their head is the costliest)
    in_order: bool = True  # the event is the newest of the window (appended, not inserted)


class Rows(Protocol):
    """What a scorer returns for n rows (``models.sequence.scorer.Scores``)."""

    p_intent: np.ndarray
    p_churn: np.ndarray
    top_categories: list[list[str | None]]
    state: np.ndarray | None  # (n, n_layers, d_model)


class StateScorer(Protocol):
    """The scorer calls the rounds need (``models.sequence.scorer.SequenceScorer``)."""

    def advance(self, windows: Sequence[Sequence[RecentEvent]], h_prev: np.ndarray,
                latent: Sequence[bool] | None = None) -> Rows: ...  # fmt: skip

    def from_window(self, windows: Sequence[Sequence[RecentEvent]], latent: Sequence[bool] | None = None) -> Rows: ...

    def at_state(self, windows: Sequence[Sequence[RecentEvent]], h: np.ndarray,
                 latent: Sequence[bool] | None = None) -> Rows: ...  # fmt: skip


@dataclasses.dataclass(slots=True)
class Scored:
    """The scores of one query (or of one user at rest)."""

    p_intent: float
    p_churn: float
    categories: list[str | None]


@dataclasses.dataclass(slots=True)
class Advanced:
    scored: list[Scored]  # one per query, in order
    memory: dict[str, SeqMemory]  # each user's state after their last query
    stepped: int = 0  # queries advanced by one step from a kept state
    rebuilt: int = 0  # queries whose state was rebuilt from the ring


def _unpack(out: Rows, n: int) -> list[Scored]:
    pi, pc = out.p_intent.tolist(), out.p_churn.tolist()
    return [Scored(pi[j], pc[j], out.top_categories[j]) for j in range(n)]


def advance_rounds(
    scorer: StateScorer,
    tag: int,
    shape: tuple[int, int] | None,
    queries: Sequence[SeqQuery],
    memory: Mapping[str, SeqMemory | None],
) -> Advanced:
    """Score every query at its event, advancing each user's state through their queries in order.

    ``memory`` holds each user's stored state from before the batch (None: none); ``shape`` is the
    model's (n_layers, d_model), None for a model without a recurrent state. Round ``r`` scores the ``r``-th query of every user in at most two
    calls: one recurrent step for the users whose state is current, a rebuild from the ring for
    the others."""
    n = len(queries)
    if shape is None:  # a model without a recurrent state (the transformer): each event's ring
        res = scorer.from_window([q.window for q in queries], [q.latent for q in queries])
        return Advanced(_unpack(res, n), {}, 0, n)
    rounds: list[list[int]] = []
    nth: dict[str, int] = {}
    for i, q in enumerate(queries):
        r = nth.get(q.user, 0)
        nth[q.user] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    zeros = np.zeros(shape, np.float32)
    h: dict[str, np.ndarray] = {}
    seen: dict[str, int] = {}
    scored: list[Scored | None] = [None] * n
    out = Advanced([], {})
    for r, idx in enumerate(rounds):
        step: list[int] = []
        prev: list[np.ndarray] = []
        rebuild: list[int] = []
        for i in idx:
            q = queries[i]
            if r:
                before = h[q.user] if q.in_order else None
            elif q.events == 1:
                before = zeros
            else:
                m = memory.get(q.user)
                ok = m is not None and m.model == tag and m.events == q.events - 1 and q.in_order
                before = m.array(shape) if ok else None  # type: ignore[union-attr]
            if before is None:
                rebuild.append(i)
            else:
                step.append(i)
                prev.append(before)
        for rows, res in (
            (step, scorer.advance([queries[i].window for i in step], np.stack(prev), [queries[i].latent for i in step])
             if step else None),
            (rebuild, scorer.from_window([queries[i].window for i in rebuild], [queries[i].latent for i in rebuild])
             if rebuild else None),
        ):  # fmt: skip
            if res is None:
                continue
            assert res.state is not None, "a state scorer returns the new states"
            for j, (i, s) in enumerate(zip(rows, _unpack(res, len(rows)), strict=True)):
                scored[i] = s
                q = queries[i]
                h[q.user] = res.state[j]
                seen[q.user] = q.events
        out.stepped += len(step)
        out.rebuilt += len(rebuild)
    out.scored = scored  # type: ignore[assignment]
    out.memory = {u: SeqMemory(tag, seen[u], h[u].astype(np.float16).tobytes()) for u in h}
    return out


def at_rest(
    scorer: StateScorer,
    tag: int,
    shape: tuple[int, int] | None,
    windows: Sequence[Sequence[RecentEvent]],
    events: Sequence[int],
    memory: Sequence[SeqMemory | None],
) -> list[Scored]:
    """Scores of silent users at their last event (the churn scan): the heads on the stored
    state where it is current, a rebuild from the ring where it is not. Nothing is stored: the
    state does not change without an event."""
    kept: list[int] = []
    hs: list[np.ndarray] = []
    rebuild: list[int] = []
    for i, (m, n) in enumerate(zip(memory, events, strict=True)):
        ok = shape is not None and m is not None and m.model == tag and m.events == n
        a = m.array(shape) if ok else None  # type: ignore[union-attr,arg-type]
        if a is None:
            rebuild.append(i)
        else:
            kept.append(i)
            hs.append(a)
    scored: list[Scored | None] = [None] * len(windows)
    if kept:
        res = scorer.at_state([windows[i] for i in kept], np.stack(hs), [False] * len(kept))
        for i, s in zip(kept, _unpack(res, len(kept)), strict=True):
            scored[i] = s
    if rebuild:
        res = scorer.from_window([windows[i] for i in rebuild], [False] * len(rebuild))
        for i, s in zip(rebuild, _unpack(res, len(rebuild)), strict=True):
            scored[i] = s
    return scored  # type: ignore[return-value]
