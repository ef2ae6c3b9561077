"""Serving the sequence model: hot swap between batches, rejection of broken artifacts, blending."""

import json
import logging

import numpy as np
import pytest
import torch

from models.blend import blend_binary
from models.events import Event
from models.features.recent import RecentEvent
from models.features.state import RecentWindow, StateConfig, UserState, apply_event
from models.registry import Registry
from models.sequence import checkpoint, explain
from models.sequence.checkpoint import CHECKPOINT_NAME
from models.sequence.config import SeqConfig
from models.sequence.model import SequenceModel
from models.sequence.scorer import SequenceScorer
from stream.logic.pipeline import Pipeline, PipelineConfig, SeqView
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.serving import SequenceServing

T0 = 1_700_000_000_000
CFG = SeqConfig(d_model=16)


def publish(reg: Registry, tmp_path, seed: int, cfg: SeqConfig = CFG, promote: bool = True) -> str:
    torch.manual_seed(seed)
    d = tmp_path / f"art{seed}"
    d.mkdir()
    checkpoint.save(d / CHECKPOINT_NAME, SequenceModel(cfg), cfg, vocab={1 + 7 % (cfg.category_buckets - 1): "c7"})
    v = reg.save(d, {"metrics": {"val_score": 0.5}})
    if promote:
        reg.promote(v)
    return v


def serving(root, **kw) -> SequenceServing:
    return SequenceServing(root, intent_horizon_ms=CFG.intent_ms, churn_horizon_ms=CFG.churn_ms, **kw)


def window(n=5):
    return [RecentEvent(i % 3, 11 + i, 7, 10.0, T0 + i * 60_000, 0) for i in range(n)]


def test_no_model_until_one_is_promoted_then_swapped_in_between_batches(tmp_path):
    reg = Registry(tmp_path / "reg")
    s = serving(reg.root)
    assert s.poll() == [] and s.swap() is None and s.active is None
    v1 = publish(reg, tmp_path, 1)
    assert s.poll() == [(v1, True)]
    assert s.active is None, "loaded in the background, not yet serving"
    assert s.swap().version == v1 and s.active.version == v1 and s.active.tasks == {"intent", "churn"}
    assert s.poll() == [], "the served version is not loaded again"
    v2 = publish(reg, tmp_path, 2)
    s.poll()
    assert s.active.version == v1 and s.swap().version == v2


def test_corrupted_or_incompatible_artifact_is_rejected_and_the_current_keeps_serving(tmp_path, caplog):
    reg = Registry(tmp_path / "reg")
    s = serving(reg.root)
    v1 = publish(reg, tmp_path, 1)
    s.poll(), s.swap()
    # A version whose checkpoint is damaged after it was written: the checksum catches it.
    v2 = publish(reg, tmp_path, 2)
    path = reg.path(v2) / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.ERROR):
        assert s.poll() == [(v2, False)]
    assert "corrupted" in s.rejected[v2] and v2 in caplog.text
    assert s.swap() is None and s.active.version == v1
    assert s.poll() == [], "a rejected version is not retried every poll"
    # Bytes that are not a checkpoint at all, with valid checksums: the loader refuses them.
    d = tmp_path / "junk"
    d.mkdir()
    (d / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    v3 = reg.save(d)
    state = json.loads((reg.root / "state.json").read_text())
    (reg.root / "state.json").write_text(json.dumps({**state, "current": v3}))  # forced past promote's checks
    assert s.poll() == [(v3, False)] and "not a readable checkpoint" in s.rejected[v3]
    assert s.active.version == v1
    # The served model still scores.
    out = s.active.scorer.from_window([window()])
    assert 0 < out.p_intent[0] < 1


def test_a_model_trained_for_another_horizon_is_not_blended_into_that_task(tmp_path):
    reg = Registry(tmp_path / "reg")
    s = SequenceServing(reg.root, intent_horizon_ms=CFG.intent_ms, churn_horizon_ms=30 * 86_400_000)
    publish(reg, tmp_path, 1)
    s.poll()
    assert s.swap().tasks == {"intent"}


def test_shadow_candidate_is_loaded_and_dropped_once_promoted(tmp_path):
    reg = Registry(tmp_path / "reg")
    s = serving(reg.root, shadow=True)
    v1 = publish(reg, tmp_path, 1)
    v2 = publish(reg, tmp_path, 2, promote=False)
    assert sorted(s.poll()) == [(v1, True), (v2, True)]
    s.swap()
    assert s.active.version == v1 and s.shadow.version == v2
    reg.promote(v2)
    s.poll()
    s.swap()
    assert s.active.version == v2 and s.shadow is None


def serving_in_chunks_of_3(tmp_path) -> tuple[SequenceScorer, list[list[RecentEvent]]]:
    """The scorer of a serving with ``max_batch=3`` (scores in chunks of 3), and 8 windows of 1..8 events."""
    reg = Registry(tmp_path / "reg")
    s = serving(reg.root, max_batch=3)
    publish(reg, tmp_path, 1)
    s.poll(), s.swap()
    assert s.active.scorer.max_batch == 3
    return s.active.scorer, [window(n) for n in range(1, 9)]


def test_scoring_in_chunks_equals_one_call(tmp_path):
    sc, wins = serving_in_chunks_of_3(tmp_path)
    a = sc.from_window(wins)
    h = np.random.default_rng(0).normal(size=(len(wins), CFG.n_layers, CFG.d_model)).astype(np.float32)
    stepped, rested = sc.advance(wins, h), sc.at_state(wins, h)
    sc.max_batch = None
    b = sc.from_window(wins)
    np.testing.assert_allclose(a.p_intent, b.p_intent, rtol=1e-5)
    np.testing.assert_allclose(a.state, b.state, rtol=1e-5, atol=1e-6)
    assert a.top_categories == b.top_categories
    for chunked, whole in ((stepped, sc.advance(wins, h)), (rested, sc.at_state(wins, h))):
        np.testing.assert_allclose(chunked.p_churn, whole.p_churn, rtol=1e-5)
        assert chunked.top_categories == whole.top_categories


def test_next_categories_only_where_asked_and_everything_else_unchanged(tmp_path):
    sc, wins = serving_in_chunks_of_3(tmp_path)
    mask = [n % 3 == 0 for n in range(8)]
    full, part = sc.from_window(wins), sc.from_window(wins, latent=mask)
    np.testing.assert_allclose(part.p_intent, full.p_intent, rtol=1e-6)
    np.testing.assert_allclose(part.p_churn, full.p_churn, rtol=1e-6)
    for i, asked in enumerate(mask):
        if asked:
            assert part.top_categories[i] == full.top_categories[i]
            np.testing.assert_array_equal(part.top_buckets[i], full.top_buckets[i])
        else:
            assert not any(part.top_categories[i]) and not part.top_buckets[i].any()


def test_occlusion_names_the_events_that_moved_the_score(tmp_path):
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "m.pt", SequenceModel(CFG), CFG, vocab={})
    scorer = SequenceScorer.load(tmp_path / "m.pt")
    w = window(6)
    (attrs,) = explain.occlusion(scorer, [w], "intent", max_events=4)
    assert [a.back for a in sorted(attrs, key=lambda a: a.back)] == [0, 1, 2, 3]
    full = scorer.score_batch([w]).p_intent[0]
    without_newest = scorer.score_batch([w[:-1]]).p_intent[0]
    newest = next(a for a in attrs if a.back == 0)
    expect = np.log(full / (1 - full)) - np.log(without_newest / (1 - without_newest))
    assert newest.contribution == pytest.approx(expect, abs=1e-3)
    r = explain.describe(newest, w[-1].ts, {}, CFG.category_buckets)
    assert r["feature"] == "sequence:" + ["click", "search", "add_to_cart"][w[-1].type] + "[-0]"
    assert explain.occlusion(scorer, [w[:1]], "churn") == [[]]


def test_occlusion_of_a_packed_window_equals_that_of_its_list(tmp_path):
    """The stream explains its packed windows (RecentWindow) without unpacking them: same
    attributions as for the same events as a list."""
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "m.pt", SequenceModel(CFG), CFG, vocab={})
    scorer = SequenceScorer.load(tmp_path / "m.pt")
    st = UserState.new()
    for i, typ in enumerate(["click", "search", "click", "add_to_cart", "click", "add_to_cart", "click"] * 3):
        apply_event(st, Event(f"e{i}", "u", typ, T0 + i * 45_000, item_id=f"i{i % 4}", category_id=f"c{i % 3}",
                              price=5.0 + i, query="shoes" if typ == "search" else None), StateConfig())  # fmt: skip
    packed = st.recent_window()
    assert isinstance(packed, RecentWindow) and len(packed) > 8  # more events than occlusion tries
    for head in explain.HEADS:
        assert explain.occlusion(scorer, [packed, packed[:3]], head) == explain.occlusion(scorer, [list(packed), list(packed[:3])], head)
    assert list(packed.without(2)) == list(packed)[:2] + list(packed)[3:]


def pipeline() -> Pipeline:
    cfg = PipelineConfig(StateConfig(), PolicyRule(0.5, 0.1, 30 * 60_000), PolicyRule(0.6, 0.1, 30 * 60_000))
    return Pipeline(cfg, RuleScorer(), clock=lambda: 0)


def test_decide_blends_the_sequence_view_and_names_both_models():
    p, records = pipeline(), {}
    evs = [Event(f"e{i}", "u", "click", T0 + i * 60_000, item_id="i1", category_id="c1") for i in range(3)]
    out = p.apply(records, [(0, e) for e in evs], windows=True)
    assert [len(c.window) for c in out.candidates] == [1, 2, 3], "each event's own window"
    view = SeqView("seq-000001", frozenset({"intent", "churn"}), 0.99, 0.2, ("c9", "c1"))
    categories_only = SeqView("seq-000001", frozenset(), 0.5, 0.5, ("c9", "c1"))
    p.decide(out, records, [categories_only, None, view])
    intent = next(s.to_dict() for s in out.signals if s.task == "purchase_intent")
    assert intent["event_id"] == "e2"
    online = out.candidates[2].intent[0]
    assert intent["score"] == pytest.approx(blend_binary(online, 0.99), abs=1e-6) and intent["score"] >= 0.5
    assert intent["model_versions"] == {"online": "rule-v1", "sequence": "seq-000001"}
    assert any(r["feature"] == "sequence_model" for r in intent["reasons"])
    (idx, head, win), = out.explain
    assert out.signals[idx].to_dict() == intent and head == "intent" and len(win) == 3
    latent = next(s.to_dict() for s in out.signals if s.task == "latent_needs")
    assert latent["event_id"] == "e0"
    assert [c["category_id"] for c in latent["categories"]][:2] == ["c1", "c9"], "fused: c1 is in both lists"
    assert latent["model_versions"]["sequence"] == "seq-000001"


def test_latent_is_due_only_outside_the_cooldown_and_views_without_categories_change_nothing():
    evs = [Event(f"e{i}", "u", "click", T0 + i * 60_000, item_id="i1", category_id=f"c{i % 2}") for i in range(6)]
    evs.append(Event("late", "u", "click", T0 + 40 * 60_000, item_id="i1", category_id="c5"))
    runs = []
    for drop in (False, True):
        p, records = pipeline(), {}
        first = p.apply(records, [(0, e) for e in evs[:1]], windows=True)
        p.decide(first, records, [SeqView("seq-1", frozenset(), 0.5, 0.5, ("c9",))])
        out = p.apply(records, [(0, e) for e in evs[1:]], windows=True)
        # The first event emitted latent needs: the next ones are inside the 30-min cooldown.
        assert [c.latent_due for c in out.candidates] == [False] * 5 + [True]
        views = [SeqView("seq-1", frozenset(), 0.5, 0.5, () if drop and not c.latent_due else ("c9", "c3"))
                 for c in out.candidates]  # fmt: skip
        p.decide(out, records, views)
        runs.append([(s.task, s.event_id, s.categories) for s in first.signals + out.signals])
    assert runs[0] == runs[1] and [e for t, e, _ in runs[0] if t == "latent_needs"] == ["e0", "late"]


def test_without_a_sequence_view_the_online_model_serves_alone():
    p, records = pipeline(), {}
    evs = [Event(f"e{i}", "u", "add_to_cart", T0 + i * 60_000, item_id=f"i{i}") for i in range(4)]
    out = p.apply(records, [(0, e) for e in evs])
    p.decide(out, records, None)
    (intent,) = [s.to_dict() for s in out.signals if s.task == "purchase_intent"]
    assert "sequence" not in intent["model_versions"] and out.explain == []


def test_a_registry_that_does_not_exist_yet_is_not_created_by_a_reader(tmp_path):
    root = tmp_path / "absent" / "sequence"
    s = serving(root, shadow=True)
    assert s.poll() == [] and s.active is None and not root.exists()
    reg = Registry(root)  # the trainer creates it later
    v1 = publish(reg, tmp_path, 1)
    assert s.poll() == [(v1, True)]
