"""The query API's answer (stream.logic.lookup): worked out from the record the stream keeps,
it agrees with the signals the stream emitted and with schemas/user_lookup.schema.json."""

import json
from pathlib import Path

import numpy as np
import torch
from jsonschema import Draft202012Validator

from models.features.state import StateConfig
from models.registry import Registry
from models.sequence import checkpoint
from models.sequence.checkpoint import CHECKPOINT_NAME
from models.sequence.config import SeqConfig
from models.sequence.model import SequenceModel
from stream.logic.ingest import Pseudonymizer, ingest_one
from stream.logic.lookup import Context, describe, sequence_scores
from stream.logic.pipeline import Pipeline, PipelineConfig
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.serving import SequenceServing, ServedModel
from stream.logic.signals import Task
from stream.logic.simulator import ShopperSimulator

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "user_lookup.schema.json").read_text())
CFG = PipelineConfig(StateConfig(), PolicyRule(0.5, 0.1, 60_000), PolicyRule(0.6, 0.1, 60_000))


def replay(model=None, n=3000):
    pipe = Pipeline(CFG, RuleScorer(), clock=lambda: 1)
    pseudonymize = Pseudonymizer(b"lookup-test-key-0123456789")
    events = [ingest_one(json.dumps(e).encode(), pseudonymize) for e in ShopperSimulator(seed=5, users=40).take(n)]
    records, signals, replay.last_scores = {}, [], {}
    for i in range(0, len(events), 250):  # batches, as a worker runs them
        batch = events[i : i + 250]
        recs = {e.user: records.get(e.user) for e in batch}
        out = pipe.step(recs, [(0, e) for e in batch], lambda p, us: {u: records.get(u) for u in us}, model)
        records.update(out.records)
        for u in out.deleted:
            records.pop(u, None)
        signals.extend(out.signals)
        for c in out.candidates:  # the online score the stream gave each user's latest event
            replay.last_scores[c.event.user] = None if c.intent is None else c.intent[0]
    return pipe, records, signals


def test_the_record_keeps_each_task_s_last_signal_id_and_the_answer_matches_the_schema():
    pipe, records, signals = replay()
    last = {(s.user, s.task): s for s in signals}
    assert {t for _u, t in last} >= {Task.PURCHASE_INTENT, Task.LATENT_NEEDS}
    v = Draft202012Validator(SCHEMA)
    for user, rec in records.items():
        d = describe(user, rec, Context(RuleScorer(), StateConfig(), 0, pipe.watermarks[0]))
        v.validate({**d, "served_by": "http://127.0.0.1:6066"})
        for task in Task:
            sig = last.get((user, task))
            got = d["last_signals"][task]
            assert (got and got["signal_id"]) == (sig and sig.signal_id), (user, task)
            if sig is not None and task != Task.CHURN_RISK:
                assert got["ts"] == sig.ts
        assert d["churn_risk"]["as_of"] >= d["last_event_ts"] == rec.state.last_ts
        assert abs(sum(c["score"] for c in d["latent_needs"]["categories"]) - 1) < 1e-3


def test_intent_as_of_the_last_event_is_the_score_the_stream_gave_that_event():
    pipe, records, _signals = replay(n=1500)
    checked = 0
    for user, rec in records.items():
        expected = replay.last_scores[user]
        if expected is None:  # the last event was a purchase: the stream did not score it
            continue
        d = describe(user, rec, Context(RuleScorer(), StateConfig(), 0, pipe.watermarks[0]))
        assert d["purchase_intent"]["score"] == round(expected, 6)
        assert d["purchase_intent"]["model_versions"] == {"online": "rule-v1"}
        checked += 1
    assert checked >= 10


def test_with_a_sequence_model_the_stored_state_is_read_not_rebuilt(tmp_path):
    torch.manual_seed(0)
    cfg = SeqConfig(d_model=16)
    d = tmp_path / "art"
    d.mkdir()
    checkpoint.save(d / CHECKPOINT_NAME, SequenceModel(cfg), cfg, vocab={8: "c7"})
    reg = Registry(tmp_path / "reg")
    reg.promote(reg.save(d, {"metrics": {"val_score": 0.5}}))
    serving = SequenceServing(reg.root, intent_horizon_ms=cfg.intent_ms, churn_horizon_ms=cfg.churn_ms)
    serving.poll()
    served = serving.swap()
    pipe, records, signals = replay(ServedModel(served, 5, 0), n=1200)
    assert any("sequence" in s.model_versions for s in signals)
    user, rec = next((u, r) for u, r in records.items() if r.seq is not None and r.seq.events == sum(r.state.totals))
    kept = sequence_scores(served, rec, 5)
    rebuilt = served.scorer.from_window([rec.state.recent_window()], [True])
    # the kept state has seen the whole history, the rebuild only the ring: both are scores
    assert 0 < kept.p_intent < 1 and np.isfinite(rebuilt.p_intent[0])
    ans = describe(user, rec, Context(RuleScorer(), StateConfig(), 0, pipe.watermarks[0], served=served))
    assert ans["purchase_intent"]["model_versions"]["sequence"] == served.name
    Draft202012Validator(SCHEMA).validate({**ans, "served_by": "x"})


def test_a_warm_online_model_scores_the_answer_without_learning_from_it():
    from models.online.learner import PartitionLearners

    pipe = Pipeline(CFG, RuleScorer(), clock=lambda: 1,
                    learners=lambda p: PartitionLearners.new(StateConfig(), intent_warmup=20, churn_warmup=5))  # fmt: skip
    pseudonymize = Pseudonymizer(b"lookup-test-key-0123456789")
    events = [ingest_one(json.dumps(e).encode(), pseudonymize) for e in ShopperSimulator(seed=5, users=40).take(6000)]
    records: dict = {}
    for i in range(0, len(events), 500):
        batch = events[i : i + 500]
        out = pipe.step({e.user: records.get(e.user) for e in batch}, [(0, e) for e in batch],
                        lambda p, us: {u: records.get(u) for u in us})  # fmt: skip
        records.update(out.records)
    pl = pipe.learners[0]
    assert pl.intent.warm()
    learned, user = pl.intent.n_learned, next(iter(records))
    before = records[user].to_bytes()
    d = describe(user, records[user], Context(RuleScorer(), StateConfig(), 0, pipe.watermarks[0], learners=pl))
    assert d["purchase_intent"]["model_versions"]["online"].startswith("river-")
    assert pl.intent.n_learned == learned and records[user].to_bytes() == before, "a lookup changes nothing"
    Draft202012Validator(SCHEMA).validate({**d, "served_by": "x"})
