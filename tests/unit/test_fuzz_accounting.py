"""Fuzz: >= 10,000 good and bad events through ingest and the pipeline; every one is accounted for.

The corpus is tests/fuzz_corpus.py (simulated events, seeded bad and replayed records among them,
each with its expected outcome). Each record must end up exactly once in one place: applied to
state, or dead-lettered with the expected reason.
"""

from collections import Counter

from models.events import InvalidEvent
from models.features.state import StateConfig
from stream.logic.ingest import REASONS, Pseudonymizer, ingest_one
from stream.logic.pipeline import Pipeline, PipelineConfig, UserRecord
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from tests.fuzz_corpus import corpus

NOW = 1_800_000_000_000


def test_ten_thousand_events_all_accounted_for():
    pseudonymize = Pseudonymizer(b"fuzz-key-0123456789abcdef")
    cfg = PipelineConfig(StateConfig(), PolicyRule(0.5, 0.1, 60_000), PolicyRule(0.6, 0.1, 60_000))
    pipe = Pipeline(cfg, RuleScorer(), clock=lambda: NOW)
    store: dict[str, bytes] = {}

    messages = [(c.value, c.outcome) for c in corpus(seed=7, events=8_000, now_ms=NOW)]
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
    for reason in set(REASONS) - {"duplicate_event_id", "late_event", "processing_error"}:
        assert dead[reason] == expected[reason], reason
    assert dead["processing_error"] == 0
    # Replays are caught as duplicates; events pushed back past the lateness are late (a few land
    # inside a user's lateness window after a long silence and are rightly applied).
    assert dead["duplicate_event_id"] == expected["duplicate_event_id"]
    assert 0 < dead["late_event"] <= expected["late_or_applied"]
    assert applied == expected["good"] + expected["late_or_applied"] - dead["late_event"]
