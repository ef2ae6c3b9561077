"""Score users with a trained sequence checkpoint (inference only).

The stream keeps, per user, the ring of its last ``lookback`` events (``recent``, oldest first)
and, for the GRU, the hidden state after the user's latest event. The GRU's state summarises the
user's whole history (training runs it over whole histories, carried from chunk to chunk), so
each new event costs one recurrence step:

* :meth:`SequenceScorer.advance` - the ring at a new event and the state before it: one GRU step,
  scores at the new event and the new state;
* :meth:`SequenceScorer.from_window` - no usable state (a new model version, a lost record): the
  state rebuilt from zeros over the window the stream has, and scores at its last event;
* :meth:`SequenceScorer.at_state` - the state after the window's last event: the heads only, no
  step (re-scoring silent users).

The copy attention and the features read the ring only, in training and here alike. Example::

    scorer = SequenceScorer.load("seq.pt")
    out = scorer.advance([state.recent for state in states], h_prev)
    out.p_intent[0], out.p_churn[0], out.top_categories[0][:3], out.state

:meth:`SequenceScorer.score_batch` is :meth:`from_window` with a ``now_ms`` (events stamped after
it are dropped: clock skew, replays); it also serves the transformer, which has no state.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import torch

from models.features.recent import RecentEvent
from models.sequence import checkpoint
from models.sequence.data import batch_features


@dataclasses.dataclass
class Scores:
    p_intent: np.ndarray  # (n,) probability of a purchase within intent_ms
    p_churn: np.ndarray  # (n,) probability of no return within churn_ms
    top_buckets: np.ndarray  # (n, k) category hash buckets, most likely first
    top_probs: np.ndarray  # (n, k)
    top_categories: list[list[str | None]]  # category ids (None: a bucket never seen in training)
    state: np.ndarray | None = None  # GRU only: (n, n_layers, d_model) float32 state after the event


def _concat(parts: Sequence[Scores]) -> Scores:
    return Scores(
        p_intent=np.concatenate([p.p_intent for p in parts]),
        p_churn=np.concatenate([p.p_churn for p in parts]),
        top_buckets=np.concatenate([p.top_buckets for p in parts]),
        top_probs=np.concatenate([p.top_probs for p in parts]),
        top_categories=[c for p in parts for c in p.top_categories],
        state=None if parts[0].state is None else np.concatenate([p.state for p in parts]),
    )


def _by_latent(n: int, latent: Sequence[bool] | None, call) -> Scores:
    """Score ``n`` rows with ``call(rows, last_only)``: the rows without next categories
    (``latent`` False) from their newest event's inputs alone (a step from a given state reads
    no more; only the next-category head's copy attention reads the ring), the others from
    their whole window; in the rows' order."""
    flags = np.ones(n, bool) if latent is None else np.asarray(latent, bool)
    if flags.all():
        return call(np.arange(n), False)
    if not flags.any():
        return call(np.arange(n), True)
    ring, last = np.flatnonzero(flags), np.flatnonzero(~flags)
    a, b = call(ring, False), call(last, True)
    order = np.argsort(np.concatenate([ring, last]), kind="stable")
    merged = _concat([a, b])
    return Scores(
        p_intent=merged.p_intent[order],
        p_churn=merged.p_churn[order],
        top_buckets=merged.top_buckets[order],
        top_probs=merged.top_probs[order],
        top_categories=[merged.top_categories[i] for i in order],
        state=None if merged.state is None else merged.state[order],
    )


class SequenceScorer:
    """``max_batch`` bounds the rows of one forward pass (memory and the time of one call): more
    rows are scored in chunks."""

    def __init__(self, loaded: checkpoint.Loaded, device: str | torch.device = "cpu", max_batch: int | None = None) -> None:
        self.max_batch = max_batch
        self.model = loaded.model.to(device).eval()
        self.config = loaded.config
        self.vocab = loaded.vocab
        self.metrics = loaded.metrics
        self.code_version = loaded.code_version
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", max_batch: int | None = None) -> SequenceScorer:
        """Raises :class:`~models.sequence.checkpoint.CheckpointError` for an unusable file."""
        return cls(checkpoint.load(path, map_location=device), device, max_batch)

    def _chunked(self, call, windows: Sequence, *rows) -> Scores:
        """``call(windows, *rows)`` on at most ``max_batch`` rows at a time; ``rows``: per-row
        arguments (arrays or lists aligned with ``windows``, or None)."""
        n = self.max_batch
        if n is None or len(windows) <= n:
            return call(windows, *rows)
        return _concat([call(windows[i : i + n], *(r if r is None else r[i : i + n] for r in rows))
                        for i in range(0, len(windows), n)])  # fmt: skip

    def _cut(self, windows: Sequence[Sequence[RecentEvent]], now_ms: int | None, keep: int) -> list:
        cut = []
        for w in windows:
            if now_ms is not None and w and w[-1].ts > now_ms:
                w = [e for e in w if e.ts <= now_ms]
            if not w:
                raise ValueError("cannot score an empty window")
            cut.append(w[-keep:] if len(w) > keep else w)
        return cut

    def _batch(self, cut: Sequence[Sequence[RecentEvent]], last_only: bool = False) -> dict[str, torch.Tensor]:
        # Padded to the ring's length at least, so a batch of rings always has the same shapes.
        width = max(self.config.lookback, max(len(w) for w in cut))
        b = batch_features(cut, self.config, width=width, last_only=last_only)
        return {k: torch.from_numpy(v).to(self.device) for k, v in b.items()}

    def _checked(self, h: np.ndarray, n: int) -> np.ndarray:
        cfg = self.config
        h = np.asarray(h, np.float32)
        if h.shape != (n, cfg.n_layers, cfg.d_model):
            raise ValueError(f"state must have shape {(n, cfg.n_layers, cfg.d_model)}, got {h.shape}")
        return h

    def _state(self, h: np.ndarray) -> torch.Tensor:
        """A checked (n, n_layers, d_model) state as the GRU takes it: (n_layers, n, d_model)."""
        return torch.from_numpy(np.ascontiguousarray(h.transpose(1, 0, 2))).to(self.device)

    def _latent(self, latent: Sequence[bool] | None) -> torch.Tensor | None:
        return None if latent is None else torch.as_tensor(np.asarray(latent, bool), device=self.device)

    def _gru_only(self) -> None:
        if self.config.arch != "gru":
            raise ValueError("per-user state is only available for the GRU model")

    def _scores(self, out) -> Scores:
        pi, pc, tb, tp, state = out
        tb, tp = tb.cpu().numpy(), tp.cpu().numpy()
        # Rows scored without next categories (the ``latent`` mask) are all bucket 0: name those
        # once instead of one lookup per bucket (a batch is mostly such rows).
        get, absent = self.vocab.get, self.vocab.get(0)
        names = [[get(b) for b in row] if any(row) else [absent] * len(row) for row in tb.tolist()]
        st = np.ascontiguousarray(state.float().transpose(0, 1).cpu().numpy()) if state is not None else None
        return Scores(pi.cpu().numpy(), pc.cpu().numpy(), tb, tp, names, st)

    def advance(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        h_prev: np.ndarray,
        latent: Sequence[bool] | None = None,
        k: int | None = None,
    ) -> Scores:
        """GRU only: one recurrence step per row. Each window is the user's ring at a new event
        (1..``lookback`` events, oldest first, the new event last; longer ones are cut to the
        ring), ``h_prev`` (n, n_layers, d_model) the state before that event (zeros before a
        user's first event). Returns the scores at the new event and, in ``state``, the state
        after it. ``latent`` (one flag per window) limits the next categories to the flagged
        windows; the others get none (``top_categories`` all None)."""
        self._gru_only()
        return self._chunked(lambda w, h, lat: self._from_state(w, h, lat, k, True), windows, np.asarray(h_prev), latent)

    def _from_state(self, windows, h, latent, k, step: bool) -> Scores:
        """:meth:`advance` (``step``: ``h`` is the state before each window's last event) or
        :meth:`at_state` (``h`` is the state after it)."""
        cut = self._cut(windows, None, self.config.lookback)
        h = self._checked(h, len(cut))

        def call(rows: np.ndarray, last_only: bool) -> Scores:
            b = self._batch([cut[i] for i in rows], last_only=last_only)
            st = self._state(h[rows])
            lat = None if latent is None else self._latent(np.asarray(latent, bool)[rows])
            given = {"h0": st} if step else {"state": st}
            return self._scores(self.model.score_last(b, k or self.config.top_k, latent=lat, **given))

        return _by_latent(len(cut), latent, call)

    def at_state(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        h: np.ndarray,
        latent: Sequence[bool] | None = None,
        k: int | None = None,
    ) -> Scores:
        """GRU only: the heads at each window's last event given ``h``, the state after that
        event (no recurrence step): what :meth:`advance` returned for that event, again."""
        self._gru_only()
        return self._chunked(lambda w, st, lat: self._from_state(w, st, lat, k, False), windows, np.asarray(h), latent)

    def from_window(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        latent: Sequence[bool] | None = None,
        k: int | None = None,
    ) -> Scores:
        """Scores at each window's last event with the state rebuilt from zeros over the window
        (GRU: also returned in ``state``); the stream's way back after a model swap or a lost
        state. See :meth:`score_batch`."""
        return self.score_batch(windows, k=k, latent=latent)

    def score_batch(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        now_ms: int | None = None,
        k: int | None = None,
        latent: Sequence[bool] | None = None,
    ) -> Scores:
        """Score each window at its last event, from no state: the GRU runs from zeros over the
        window (up to ``cfg.max_window`` events, older ones are dropped) and returns its state;
        the transformer reads the last ``lookback`` events. The heads read the last ``lookback``
        events, as in training. ``latent`` (one flag per window) limits the next categories to
        the flagged windows; the others get none (``top_categories`` all None). Events after
        ``now_ms`` are dropped."""
        return self._chunked(lambda w, lat: self._score_batch(w, now_ms, k, lat), windows, latent)

    def _score_batch(self, windows, now_ms, k, latent) -> Scores:
        cfg = self.config
        gru = cfg.arch == "gru"
        cut = self._cut(windows, now_ms, cfg.max_window if gru else cfg.lookback)
        k = k or cfg.top_k
        mask = self._latent(latent)
        if not gru or max(len(w) for w in cut) <= cfg.lookback:
            return self._scores(self.model.score_last(self._batch(cut), k, latent=mask))
        # Longer than the ring: the state from the whole window, then the heads on the ring, whose
        # features are computed on the ring alone as in training.
        b = self._batch(cut)
        with torch.inference_mode():
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                self.model.embed(b), b["length"].cpu(), batch_first=True, enforce_sorted=False
            )
            _, state = self.model.rnn(packed)
        ring = self._batch([w[-cfg.lookback :] for w in cut])
        return self._scores(self.model.score_last(ring, k, latent=mask, state=state))
