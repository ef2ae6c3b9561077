"""Sequence-model scoring cost per user, as the stream pays it: full window vs kept GRU state.

``python -m benchmarks.scoring_cost [--users 500] [--rounds 5]`` builds per-user state from the
simulator, takes users with a full ``recent`` ring, and times (one torch thread, medians of
``--rounds``) ``SequenceScorer.score_batch`` on their windows against ``SequenceScorer.step``
(newest event only, hidden state kept). The weights are untrained: cost depends on the
architecture (the default ``SeqConfig``) and the shapes only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.events import Event
from models.features.state import StateConfig, UserState, apply_event
from models.sequence import checkpoint
from models.sequence.config import SeqConfig
from models.sequence.model import SequenceModel
from models.sequence.scorer import SequenceScorer
from stream.logic.simulator import ShopperSimulator


def windows(n_users: int, seed: int = 1) -> list:
    cfg, states = StateConfig(), {}
    for raw in ShopperSimulator(seed=seed).take(60 * n_users):
        ev = Event(raw["event_id"], raw["user_id"], raw["type"], raw["ts"], item_id=raw.get("item_id"),
                   category_id=raw.get("category_id"), price=raw.get("price"), query=raw.get("query"))  # fmt: skip
        apply_event(states.setdefault(ev.user, UserState.new()), ev, cfg)
    full = [list(s.recent) for s in states.values() if len(s.recent) >= cfg.recent_n]
    return full[:n_users]


def untrained_scorer() -> SequenceScorer:
    """The default ``SeqConfig``'s model with seeded random weights, on one torch thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = SeqConfig()
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(Path(d) / "seq.pt", SequenceModel(cfg), cfg, vocab={})
        return SequenceScorer.load(Path(d) / "seq.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    scorer = untrained_scorer()
    wins = windows(a.users)
    state = scorer.score_batch(wins).state
    print(f"{len(wins)} users, windows of {len(wins[0])} events, one torch thread")
    for name, fn in (("score_batch (recompute the window)", lambda: scorer.score_batch(wins)),
                     ("step (newest event, kept GRU state)", lambda: scorer.step(wins, state))):  # fmt: skip
        fn()
        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{name:<38} {med * 1e3:7.1f} ms per call  {med / len(wins) * 1e6:5.0f} us/user")


if __name__ == "__main__":
    main()
