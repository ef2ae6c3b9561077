"""Fuzz: >= 10,000 good and bad events through ingest and the pipeline; every one is accounted for.

Good events come from the simulator; bad ones are made by seeded mutations of good ones (broken
JSON, wrong types, missing fields, unknown types, oversized, invalid UTF-8, timestamps in the far
past or future, duplicates, late arrivals). Each event must end up exactly once in one place:
applied to state, or dead-lettered with a reason from the closed set.
"""

import json
import random
from collections import Counter

from models.events import InvalidEvent
from models.features.state import StateConfig
from stream.logic.ingest import REASONS, Pseudonymizer, ingest_one
from stream.logic.pipeline import Pipeline, PipelineConfig, UserRecord
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.simulator import ShopperSimulator

NOW = 1_800_000_000_000


def mutate(rng: random.Random, ev: dict, earlier: list[bytes]) -> tuple[bytes, str]:
    """A bad (or replayed) version of ``ev`` and the outcome it must have."""
    kind = rng.randrange(12)
    e = dict(ev)
    if kind == 0:
        return json.dumps(e).encode()[: rng.randrange(1, 40)], "malformed_json"
    if kind == 1:
        return b"\xc3\x28" + json.dumps(e).encode(), "invalid_utf8"
    if kind == 2:
        e["type"] = rng.choice(["refund", "wishlist", "", "CLICK"])
        return json.dumps(e).encode(), "unknown_type"
    if kind == 3:
        del e[rng.choice(["event_id", "user_id", "ts"])]
        return json.dumps(e).encode(), "missing_field"
    if kind == 4:
        e["ts"] = e["ts"] // 1000  # seconds instead of milliseconds
        return json.dumps(e).encode(), "timestamp_too_old"
    if kind == 5:
        e["ts"] = NOW + 10 * 86_400_000
        return json.dumps(e).encode(), "timestamp_in_future"
    if kind == 6:
        e["price"] = rng.choice(["free", [1], {"v": 2}])
        return json.dumps(e).encode(), "wrong_type"
    if kind == 7:
        e["query"] = "x" * 20_000
        return json.dumps(e).encode(), "oversized"
    if kind == 8:
        return json.dumps([e]).encode(), "not_an_object"
    if kind == 9 and earlier:
        return rng.choice(earlier[-20:]), "duplicate_event_id"  # a producer retry
    if kind == 10:
        e["event_id"] = f"late-{e['event_id']}"
        e["ts"] -= 10 * 60_000  # ten minutes behind the user's stream: past the lateness
        return json.dumps(e).encode(), "late_or_applied"
    e["quantity"] = rng.choice([0, -3, 10**6])
    return json.dumps(e).encode(), "out_of_range"


def test_ten_thousand_events_all_accounted_for():
    rng = random.Random(7)
    pseudonymize = Pseudonymizer(b"fuzz-key-0123456789abcdef")
    cfg = PipelineConfig(StateConfig(), PolicyRule(0.5, 0.1, 60_000), PolicyRule(0.6, 0.1, 60_000))
    pipe = Pipeline(cfg, RuleScorer(), clock=lambda: NOW)
    store: dict[str, bytes] = {}

    sim = ShopperSimulator(seed=11, users=200, start_ms=NOW - 5 * 86_400_000).take(8_000)
    messages, earlier = [], []
    for ev in sim:
        good = json.dumps(ev).encode()
        messages.append((good, "good"))
        earlier.append(good)
        if rng.random() < 0.3:
            bad, outcome = mutate(rng, ev, earlier)
            messages.append((bad, outcome))
    assert len(messages) >= 10_000
    expected = Counter(outcome for _, outcome in messages)

    forwarded, dead = [], Counter()
    for raw, _ in messages:
        try:
            forwarded.append(ingest_one(raw, pseudonymize, now_ms=NOW, max_bytes=16_384))
        except InvalidEvent as exc:
            assert exc.reason in REASONS
            dead[exc.reason] += 1

    applied = 0
    for i in range(0, len(forwarded), 500):
        batch = forwarded[i : i + 500]
        records = {e.user: UserRecord.from_bytes(store[e.user]) if e.user in store else None for e in batch}
        out = pipe.process(records, [(0, e) for e in batch])
        applied += out.applied
        for r in out.rejected:
            dead[r.reason] += 1
        store.update({u: r.to_bytes() for u, r in out.records.items()})

    # Every message is in exactly one place.
    assert applied + sum(dead.values()) == len(messages)
    # Each kind of bad input got its own reason (the ingest-stage ones exactly).
    for reason in ("malformed_json", "invalid_utf8", "unknown_type", "missing_field", "timestamp_too_old",
                   "timestamp_in_future", "wrong_type", "oversized", "not_an_object", "out_of_range"):  # fmt: skip
        assert dead[reason] == expected[reason], reason
    # Replays are caught as duplicates; events pushed back past the lateness are late (a few land
    # inside a user's lateness window after a long silence and are rightly applied).
    assert dead["duplicate_event_id"] == expected["duplicate_event_id"]
    assert 0 < dead["late_event"] <= expected["late_or_applied"]
    assert applied == expected["good"] + expected["late_or_applied"] - dead["late_event"]
