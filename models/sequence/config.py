"""Hyperparameters of the sequence model, saved inside every checkpoint.

One frozen dataclass holds everything needed to rebuild the network (sizes, hashing buckets,
architecture) and to reproduce its training (label horizons, optimiser settings). A checkpoint
stores ``dataclasses.asdict(cfg)``, so loading needs the checkpoint only.

>>> cfg = SeqConfig(arch="transformer", d_model=32)
>>> SeqConfig.from_dict(cfg.to_dict()) == cfg
True
>>> SeqConfig(arch="lstm")
Traceback (most recent call last):
...
ValueError: arch must be 'gru' or 'transformer', got 'lstm'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from models.features.state import StateConfig

MINUTE_MS = 60_000
DAY_MS = 86_400_000
_RECENT_N = StateConfig().recent_n


@dataclasses.dataclass(frozen=True)
class SeqConfig:
    # -- network --
    arch: str = "gru"  # "gru" (cheap incremental scoring) | "transformer" (SASRec-like, causal)
    # Events each event's input features and the copy attention may read (itself included): the
    # ring the stream keeps per user (``UserState.recent``), so training reads exactly what
    # serving has. Tied to the state's default, so a change of ``recent_n`` carries over.
    lookback: int = _RECENT_N
    # GRU: the training chunk for truncated backpropagation through time. Each user's whole
    # history is trained in consecutive chunks of this many events with the hidden state carried
    # between them, as the stream carries it from event to event; longer chunks let gradients
    # reach further back (measured in docs/SEQUENCE.md). The transformer trains on windows of
    # ``lookback`` events and does not use it.
    max_len: int = 64
    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 2  # transformer only
    dropout: float = 0.1
    # Hashing buckets (open vocabulary). Bucket 0 is reserved for "absent" and padding.
    item_buckets: int = 1 << 15
    category_buckets: int = 1 << 13
    query_buckets: int = 1 << 12
    gap_buckets: int = 24  # log2(seconds) buckets of the gap to the previous event
    # Identity embeddings of items, categories and queries as inputs. With little data they let
    # the model memorise the training users' own items instead of learning behaviour that
    # carries over to new users (measured in docs/SEQUENCE.md). The next-category output and
    # the copy mechanism work on category buckets either way.
    id_embeddings: bool = False
    # -- labels --
    intent_ms: int = 30 * MINUTE_MS  # purchase intent: a purchase in (t, t + intent_ms]
    churn_ms: int = 3 * DAY_MS  # churn risk: no event at all in (t, t + churn_ms]
    session_gap_ms: int = 30 * MINUTE_MS  # "recent activity" features look this far back
    # -- loss weights (next type / next category are the self-supervised part) --
    w_intent: float = 1.0
    w_churn: float = 0.2
    w_next_type: float = 0.3
    w_next_category: float = 0.2
    # -- training --
    # Rows per step (GRU: lanes of chunks; transformer: windows); 0 picks a default: 32 for the
    # GRU, whose steps are already large, and for the transformer 32 on the CPU, 256 on a GPU,
    # where larger steps make it fast (measured in docs/SEQUENCE.md). The checkpoint stores the
    # size that was used.
    batch_size: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 30
    patience: int = 3  # epochs without a better validation score before stopping
    val_fraction: float = 0.2  # the last 20% of the time range is the validation split
    seed: int = 0
    top_k: int = 10

    def __post_init__(self) -> None:
        if self.arch not in ("gru", "transformer"):
            raise ValueError(f"arch must be 'gru' or 'transformer', got {self.arch!r}")
        if self.max_len < 2 or self.d_model < 4:
            raise ValueError("max_len must be >= 2 and d_model >= 4")
        if self.lookback < 1:
            raise ValueError("lookback must be >= 1")
        if self.arch == "transformer" and self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if self.batch_size < 0:
            raise ValueError("batch_size must be >= 1, or 0 for the device's default")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")

    @property
    def max_window(self) -> int:
        """The most events :func:`~models.sequence.data.batch_features` takes in one window."""
        return max(self.max_len, self.lookback)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeqConfig:
        """Rebuild from a checkpoint; keys unknown to this code version are an error, not ignored.

        A checkpoint from before ``lookback`` existed read windows of ``max_len`` events, so its
        ``lookback`` is its ``max_len``: it scores as it did.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SeqConfig fields: {', '.join(sorted(unknown))}")
        if "lookback" not in d and "max_len" in d:
            d = {**d, "lookback": d["max_len"]}
        return cls(**d)
