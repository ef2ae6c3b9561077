"""Per-user state benchmark: bytes per user and read-modify-write updates per second.

What one stream update costs in the worker: load the user's record (``UserState.from_bytes``),
apply the event, store it again (``to_bytes``). The events come from the shop simulator
(``stream.logic.simulator.ShopperSimulator``), so the mix of types, session lengths, carts and
categories is the realistic one the budget is about; event generation and parsing are not timed.

Reported next to the round trip, measured in the same run on the same events, is a baseline that
keeps the states in memory (``apply_only_per_s``): their ratio is what the storage format costs.
Throughputs are medians over chunks of events, so a noisy neighbour on a shared machine moves them
less than a single total would.

Run: ``python -m benchmarks.state_bench --users 20000`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter

from models.events import parse_event
from models.features.state import StateConfig, UserState, apply_event
from stream.logic.simulator import ShopperSimulator

EVENTS_PER_USER = 20
CHUNK = 10_000


def run(
    users: int = 100_000, seed: int = 0, events_per_user: int = EVENTS_PER_USER, disorder_ms: int = 0
) -> dict:
    """Replay ``users * events_per_user`` simulated events; return sizes and throughputs.

    ``users`` is the simulator's active population; churned users are replaced, so the number
    of distinct users with a state (``users`` in the result) is a little higher. ``disorder_ms``
    (at most the allowed lateness) delays each event by a random amount up to it, so that part of
    the stream arrives out of order and takes the late-insert paths; none is late.
    """
    cfg = StateConfig()
    if not 0 <= disorder_ms <= cfg.allowed_lateness_ms:
        raise ValueError("disorder_ms must be between 0 and the allowed lateness")
    events = [
        parse_event(raw) for raw in ShopperSimulator(seed=seed, users=users).take(users * events_per_user)
    ]
    if disorder_ms:
        rng = random.Random(seed)
        events.sort(key=lambda ev: ev.ts + rng.randint(0, disorder_ms))

    store: dict[str, bytes] = {}
    statuses: Counter[str] = Counter()
    round_trip_rates = []
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        t0 = time.perf_counter()
        for ev in chunk:
            data = store.get(ev.user)
            state = UserState.from_bytes(data) if data is not None else UserState.new(cfg)
            statuses[apply_event(state, ev, cfg)] += 1
            store[ev.user] = state.to_bytes()
        round_trip_rates.append(len(chunk) / (time.perf_counter() - t0))

    in_memory: dict[str, UserState] = {}
    apply_rates = []
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        t0 = time.perf_counter()
        for ev in chunk:
            state = in_memory.get(ev.user)
            if state is None:
                state = in_memory[ev.user] = UserState.new(cfg)
            apply_event(state, ev, cfg)
        apply_rates.append(len(chunk) / (time.perf_counter() - t0))

    sizes = sorted(len(b) for b in store.values())
    updates_per_s = statistics.median(round_trip_rates)
    apply_only_per_s = statistics.median(apply_rates)
    return {
        "users": len(store),
        "disorder_ms": disorder_ms,
        "events": len(events),
        "event_mix": dict(Counter(ev.type for ev in events)),
        "statuses": dict(statuses),
        "bytes_per_user": sum(sizes) / len(sizes),
        "bytes_p50": sizes[len(sizes) // 2],
        "bytes_p99": sizes[int(len(sizes) * 0.99)],
        "bytes_max": sizes[-1],
        "updates_per_s": updates_per_s,
        "apply_only_per_s": apply_only_per_s,
        "round_trip_vs_apply_only": updates_per_s / apply_only_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--events-per-user", type=int, default=EVENTS_PER_USER)
    parser.add_argument("--disorder-ms", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.users, args.seed, args.events_per_user, args.disorder_ms), indent=2))


if __name__ == "__main__":
    main()
