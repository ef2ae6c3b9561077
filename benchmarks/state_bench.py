"""Per-user state benchmark: bytes per user and read-modify-write updates per second.

What one stream update costs in the worker: load the user's record (``UserState.from_bytes``),
apply the event, store it again (``to_bytes``). The events come from the shop simulator
(``stream.logic.simulator.ShopperSimulator``), so the mix of types, session lengths, carts and
categories is the realistic one the budget is about; event generation and parsing are not timed.

``updates_per_s`` is the median over chunks of events, timed around the three calls only, in
process CPU time rather than wall time: the work is single-threaded, so on an idle machine the
two agree, and on a shared one (CI, the 2-core dev machines) other processes' load does not
count. ``decode_us``, ``apply_us`` and ``encode_us`` split the mean cost per event. The baseline, measured in the same run on the final
states, is pickle: ``codec_vs_pickle_time`` and ``codec_vs_pickle_bytes`` are our round-trip time
and record size divided by pickle's (pickle is not an option for stored state, it is the yardstick).

The table's value per user is more than the state: :class:`stream.logic.pipeline.UserRecord` adds
the signal policy's memory and the online models' pending predictions (feature snapshots waiting
for their delayed labels, ``models.online.labels``). ``record_*`` measures that whole value: the
events of the first ``RECORD_USERS`` users' population go through the worker's own ``Pipeline``
(state, fresh online models learning from their labels, the benchmark's sequence model keeping
each user's hidden state, signal policy, the churn scan at each batch's watermark) in batches of
1,000, and the records left at the end are measured, with ``record_parts_bytes_per_user``
splitting the mean into state, policy, pending labels and sequence state.

Run: ``python -m benchmarks.state_bench --users 20000`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from models.events import parse_event
from models.features.state import StateConfig, UserState, apply_event
from stream.logic.simulator import ShopperSimulator

EVENTS_PER_USER = 20
CHUNK = 10_000
BASELINE_SAMPLE = 10_000
RECORD_USERS = 10_000  # the whole-record replay costs ~100 us per event: a sample of the population


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
    rates, decode_s, apply_s, encode_s = [], 0.0, 0.0, 0.0
    clock = time.process_time
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        d = a = e = 0.0
        for ev in chunk:
            data = store.get(ev.user)
            t0 = clock()
            state = UserState.from_bytes(data) if data is not None else UserState.new(cfg)
            t1 = clock()
            statuses[apply_event(state, ev, cfg)] += 1
            t2 = clock()
            store[ev.user] = state.to_bytes()
            t3 = clock()
            d, a, e = d + t1 - t0, a + t2 - t1, e + t3 - t2
        rates.append(len(chunk) / (d + a + e))
        decode_s, apply_s, encode_s = decode_s + d, apply_s + a, encode_s + e

    sizes = sorted(len(b) for b in store.values())
    n = len(events)
    return {
        "users": len(store),
        "events": n,
        "disorder_ms": disorder_ms,
        "event_mix": dict(Counter(ev.type for ev in events)),
        "statuses": dict(statuses),
        "bytes_per_user": sum(sizes) / len(sizes),
        "bytes_p50": sizes[len(sizes) // 2],
        "bytes_p99": sizes[int(len(sizes) * 0.99)],
        "bytes_max": sizes[-1],
        "updates_per_s": statistics.median(rates),
        "decode_us": decode_s / n * 1e6,
        "apply_us": apply_s / n * 1e6,
        "encode_us": encode_s / n * 1e6,
        **_pickle_baseline(list(store.values())[:BASELINE_SAMPLE]),
        **records(min(users, RECORD_USERS), seed, events_per_user),
    }


def records(users: int, seed: int, events_per_user: int = EVENTS_PER_USER) -> dict:
    """Sizes of the whole table value per user (see the module docstring)."""
    import tempfile

    from benchmarks.harness.warm import benchmark_model, learning_pipeline, replay
    from stream.settings import load_settings

    s = load_settings()
    raw = ShopperSimulator(seed=seed, users=users).take(users * events_per_user)
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmp:
        model = benchmark_model(s, Path(tmp))
        # One partition: one watermark, as one worker's partition.
        recs = list(replay(learning_pipeline(s, s.churn_after_ms), raw, 1, model).values())
    sizes = sorted(len(r.to_bytes()) for r in recs)
    n = len(recs)
    return {
        "record_users": n,
        "record_events": len(raw),
        "record_span_hours": (raw[-1]["ts"] - raw[0]["ts"]) / 3_600_000,
        "record_bytes_per_user": sum(sizes) / n,
        "record_bytes_p50": sizes[n // 2],
        "record_bytes_p99": sizes[int(n * 0.99)],
        "record_bytes_max": sizes[-1],
        "record_parts_bytes_per_user": {
            "state": sum(len(r.state.to_bytes()) for r in recs) / n,
            "policy": sum(len(r.policy.to_bytes()) for r in recs) / n,
            "pending_labels": sum(len(r.pending.to_bytes()) for r in recs) / n,
            "sequence_state": sum(len(r.seq.to_bytes()) for r in recs if r.seq is not None) / n,
        },
        "record_pending_snapshots_per_user": sum(len(r.pending.intent) + len(r.pending.churn) for r in recs) / n,
    }


def _pickle_baseline(records: list[bytes]) -> dict:
    """Our codec against pickle on the same states: time per round trip and size (the baseline)."""
    states = [UserState.from_bytes(r) for r in records]
    clock = time.process_time
    t0 = clock()
    ours = [UserState.from_bytes(s.to_bytes()) for s in states]
    t1 = clock()
    pickled = [pickle.loads(pickle.dumps(s, protocol=5)) for s in states]
    t2 = clock()
    assert len(ours) == len(pickled) == len(states)
    return {
        "codec_vs_pickle_time": (t1 - t0) / (t2 - t1),
        "codec_vs_pickle_bytes": sum(map(len, records))
        / sum(len(pickle.dumps(s, protocol=5)) for s in states),
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
