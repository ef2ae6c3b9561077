"""Score users' recent-event windows with a trained sequence checkpoint (inference only).

The stream passes, for each user to score, the ``recent: list[RecentEvent]`` it keeps in the
per-user state (oldest first; only the last ``max_len`` are used). Scores are as of the last
event of each window: ``now_ms`` only drops events stamped after it (clock skew, replays).

Example::

    scorer = SequenceScorer.load("seq.pt")
    out = scorer.score_batch([state.recent for state in states], now_ms=now)
    out.p_intent[0], out.p_churn[0], out.top_categories[0][:3]

For the GRU model, :meth:`SequenceScorer.step` advances a per-user hidden state by the newest
event only (O(1) recurrence per event; the state is ``d_model`` floats to keep per user). It
equals :meth:`score_batch` while a user has at most ``max_len`` events; beyond that the state
remembers more than the window, which training did not see, so re-seed it from ``score_batch``
when it is lost or stale.
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
    state: np.ndarray | None = None  # GRU only: (n, n_layers, d_model) per-user hidden state


class SequenceScorer:
    def __init__(self, loaded: checkpoint.Loaded, device: str | torch.device = "cpu") -> None:
        self.model = loaded.model.to(device).eval()
        self.config = loaded.config
        self.vocab = loaded.vocab
        self.metrics = loaded.metrics
        self.code_version = loaded.code_version
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SequenceScorer:
        """Raises :class:`~models.sequence.checkpoint.CheckpointError` for an unusable file."""
        return cls(checkpoint.load(path, map_location=device), device)

    def _batch(self, windows: Sequence[Sequence[RecentEvent]], now_ms: int | None):
        L = self.config.max_len
        cut = []
        for w in windows:
            if now_ms is not None and w and w[-1].ts > now_ms:
                w = [e for e in w if e.ts <= now_ms]
            if not w:
                raise ValueError("cannot score an empty window")
            cut.append(w[-L:] if len(w) > L else w)
        b = batch_features(cut, self.config)
        return {k: torch.from_numpy(v).to(self.device) for k, v in b.items()}

    def _scores(self, out) -> Scores:
        pi, pc, tb, tp, state = out
        tb, tp = tb.cpu().numpy(), tp.cpu().numpy()
        # Rows scored without next categories (the ``latent`` mask) are all bucket 0: name those
        # once instead of one lookup per bucket (a batch is mostly such rows).
        get, absent = self.vocab.get, self.vocab.get(0)
        names = [[get(b) for b in row] if any(row) else [absent] * len(row) for row in tb.tolist()]
        st = state.transpose(0, 1).cpu().numpy() if state is not None else None
        return Scores(pi.cpu().numpy(), pc.cpu().numpy(), tb, tp, names, st)

    def score_batch(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        now_ms: int | None = None,
        k: int | None = None,
        latent: Sequence[bool] | None = None,
    ) -> Scores:
        """Score each window at its last event; for the GRU also returns the per-user state.
        ``latent`` (one flag per window) limits the next categories to the flagged windows; the
        others get no categories (``top_categories`` all None)."""
        b = self._batch(windows, now_ms)
        mask = None if latent is None else torch.as_tensor(np.asarray(latent, bool), device=self.device)
        return self._scores(self.model.score_last(b, k or self.config.top_k, latent=mask))

    def step(
        self,
        windows: Sequence[Sequence[RecentEvent]],
        state: np.ndarray,
        now_ms: int | None = None,
        k: int | None = None,
    ) -> Scores:
        """GRU only: score after the newest event (the last of each window), advancing ``state``
        (n, n_layers, d_model) from the previous call by that one event."""
        b = self._batch(windows, now_ms)
        h0 = torch.from_numpy(np.ascontiguousarray(np.asarray(state, np.float32).transpose(1, 0, 2))).to(
            self.device
        )
        return self._scores(self.model.score_last(b, k or self.config.top_k, h0=h0))
