"""The harness's settings and constants, in a module of their own so that every part can import them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Repository root: the benchmarks run as child processes from there (``python -m benchmarks...``).
ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.1
SCENARIOS = ("pipeline", "baselines", "state", "all", "scaling", "guarantees")


@dataclass(frozen=True)
class BenchConfig:
    events: int = 50_000
    users: int = 10_000
    partitions: int = 4
    repeats: int = 3
    seed: int = 0
    rate: float | None = None  # offered load for the latency run; None = half the measured events_per_s
    latency_seconds: float = 20.0  # length of the steady-load phase (capped by ``events``)
    restart: bool = False
    restart_users: int = 100_000
    sequence: bool = True  # serve a sequence model in the pipeline workers (see publish_sequence_model)
    scaling: tuple[int, ...] = (1, 2, 4)  # the scaling scenario: k partitions and k workers, for each k
