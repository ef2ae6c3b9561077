"""Each user's GRU state in their record: rounds in a batch, staleness, float16 storage, the step."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models.events import Event
from models.features.recent import RecentEvent
from models.features.state import StateConfig, UserState
from models.sequence import checkpoint
from models.sequence.config import SeqConfig
from models.sequence.model import SequenceModel
from models.sequence.scorer import SequenceScorer
from stream.logic.pipeline import Pipeline, PipelineConfig, UserRecord
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.logic.sequence_state import SeqMemory, SeqQuery, advance_rounds, at_rest, model_tag
from stream.logic.serving import Served, ServedModel

T0 = 1_700_000_000_000
CFG = SeqConfig(d_model=16, item_buckets=512, category_buckets=256, query_buckets=64, dropout=0.0)
SHAPE = (CFG.n_layers, CFG.d_model)
TAG = model_tag("seq-000001")
TYPES = ("click", "click", "click", "search", "add_to_cart", "purchase")


@pytest.fixture(scope="module")
def scorer() -> SequenceScorer:
    torch.manual_seed(3)
    model = SequenceModel(CFG).eval()
    vocab = {b: f"c{b}" for b in range(CFG.category_buckets)}
    return SequenceScorer(checkpoint.Loaded(model, CFG, vocab, {}, (0, 0), "", 1))


def history(user: str, n: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    t, out = T0, []
    for i in range(n):
        t += rnd.choice((5_000, 40_000, 600_000, 7_200_000))
        typ = rnd.choice(TYPES)
        out.append(Event(f"{user}-{i}", user, typ, t, item_id=f"i{rnd.randrange(8)}",
                         category_id=f"c{rnd.randrange(5)}", price=9.5, query="shoes" if typ == "search" else None))  # fmt: skip
    return out


def rings(events: list[Event], n: int) -> list[list[RecentEvent]]:
    """The ring (last ``n`` events) just after each event."""
    rec = [RecentEvent.from_event(e) for e in events]
    return [rec[max(0, i + 1 - n) : i + 1] for i in range(len(rec))]


def queries(users: dict[str, list[Event]]) -> list[SeqQuery]:
    """Every user's events interleaved, as a batch would hold them."""
    per = {u: rings(evs, CFG.lookback) for u, evs in users.items()}
    out, i = [], 0
    while any(i < len(w) for w in per.values()):
        out += [SeqQuery(u, w[i], i + 1, True) for u, w in per.items() if i < len(w)]
        i += 1
    return out


def test_rounds_advance_each_user_in_order_and_equal_the_run_from_zeros(scorer):
    users = {f"u{k}": history(f"u{k}", n, k) for k, n in enumerate((1, 3, 7, 12))}
    adv = advance_rounds(scorer, TAG, SHAPE, queries(users), {})
    assert (adv.stepped, adv.rebuilt) == (23, 0)  # every state from zeros or from the round before
    for u, evs in users.items():
        full = scorer.from_window([rings(evs, len(evs))[-1]], [True])  # the whole history (< lookback) at once
        mine = [s for q, s in zip(queries(users), adv.scored, strict=True) if q.user == u]
        assert mine[-1].p_intent == pytest.approx(float(full.p_intent[0]), abs=1e-5)
        assert mine[-1].categories == full.top_categories[0]
        h = adv.memory[u].array(SHAPE)
        np.testing.assert_allclose(h, full.state[0], atol=2e-3)  # float16 storage
        assert adv.memory[u].events == len(evs)


def test_a_batch_equals_the_same_events_one_batch_each(scorer):
    users = {f"u{k}": history(f"u{k}", 5, 10 + k) for k in range(3)}
    qs = queries(users)
    together = advance_rounds(scorer, TAG, SHAPE, qs, {})
    memory: dict[str, SeqMemory | None] = {}
    alone = []
    for q in qs:
        adv = advance_rounds(scorer, TAG, SHAPE, [q], memory)
        alone += adv.scored
        memory.update(adv.memory)
    assert adv.stepped == 1 and adv.rebuilt == 0
    # One batch each rounds the state to float16 between events; one batch keeps it float32.
    np.testing.assert_allclose([s.p_intent for s in together.scored], [s.p_intent for s in alone], atol=2e-3)
    np.testing.assert_allclose([s.p_churn for s in together.scored], [s.p_churn for s in alone], atol=2e-3)


def test_float16_states_stay_close_over_a_long_history(scorer):
    """The state is rounded to float16 between batches: over hundreds of events the scores stay
    within a small distance of a state carried in float32."""
    evs = history("long", 400, 99)
    qs = [SeqQuery("long", w, i + 1, True) for i, w in enumerate(rings(evs, CFG.lookback))]
    h32 = np.zeros((1, *SHAPE), np.float32)
    memory: dict[str, SeqMemory | None] = {}
    worst = 0.0
    for q in qs:
        exact = scorer.advance([q.window], h32, [False])
        h32 = exact.state
        adv = advance_rounds(scorer, TAG, SHAPE, [q], memory)
        memory.update(adv.memory)
        worst = max(worst, abs(adv.scored[0].p_intent - float(exact.p_intent[0])))
    assert worst < 0.01


def test_a_state_of_another_model_or_with_missed_events_is_rebuilt_from_the_ring(scorer):
    evs = history("u", 30, 5)
    ring = rings(evs, CFG.lookback)
    first = advance_rounds(scorer, TAG, SHAPE, [SeqQuery("u", w, i + 1, True) for i, w in enumerate(ring[:20])], {})
    mem = first.memory["u"]
    nxt = SeqQuery("u", ring[20], 21, True)
    assert advance_rounds(scorer, TAG, SHAPE, [nxt], {"u": mem}).stepped == 1
    assert advance_rounds(scorer, model_tag("seq-000002"), SHAPE, [nxt], {"u": mem}).rebuilt == 1
    assert advance_rounds(scorer, TAG, SHAPE, [SeqQuery("u", ring[21], 22, True)], {"u": mem}).rebuilt == 1
    late = advance_rounds(scorer, TAG, SHAPE, [SeqQuery("u", ring[20], 21, True, in_order=False)], {"u": mem})
    assert late.rebuilt == 1
    rebuilt = advance_rounds(scorer, TAG, SHAPE, [nxt], {})
    assert rebuilt.scored[0].p_intent == pytest.approx(float(scorer.from_window([ring[20]]).p_intent[0]), abs=1e-6)


def test_at_rest_reads_the_stored_state_without_stepping(scorer):
    evs = history("u", 9, 7)
    ring = rings(evs, CFG.lookback)
    adv = advance_rounds(scorer, TAG, SHAPE, [SeqQuery("u", w, i + 1, True) for i, w in enumerate(ring)], {})
    (rest,) = at_rest(scorer, TAG, SHAPE, [ring[-1]], [9], [adv.memory["u"]])
    assert rest.p_churn == pytest.approx(adv.scored[-1].p_churn, abs=2e-3)
    (stale,) = at_rest(scorer, TAG, SHAPE, [ring[-1]], [10], [adv.memory["u"]])  # an event it did not see
    assert stale.p_churn == pytest.approx(float(scorer.from_window([ring[-1]]).p_churn[0]), abs=1e-6)


def test_records_keep_the_state_and_read_the_old_layout():
    st = UserState.new()
    mem = SeqMemory(TAG, 7, np.arange(16, dtype=np.float16).tobytes())
    rec = UserRecord(st, seq=mem)
    back = UserRecord.from_bytes(rec.to_bytes())
    assert back.seq == mem and back.state.to_bytes() == st.to_bytes()
    old = UserRecord(st).to_bytes()
    v1 = bytes([1]) + old[1:3] + old[3:5] + old[7:]  # version 1: no sequence-state length
    assert UserRecord.from_bytes(v1).seq is None
    assert UserRecord.from_bytes(v1).state.to_bytes() == st.to_bytes()


def test_the_step_stores_each_user_s_state_and_steps_it_next_batch(scorer):
    rule = PolicyRule(0.5, hysteresis=0.1, cooldown_ms=1_800_000)
    pipe = Pipeline(PipelineConfig(StateConfig(), rule, rule), RuleScorer())
    model = ServedModel(Served("000001", scorer, frozenset({"intent", "churn"})), 5, 0)
    evs = history("u", 6, 1) + history("v", 4, 2)
    table: dict[str, UserRecord] = {}

    def run(batch: list[Event]) -> None:
        recs: dict[str, UserRecord | None] = {e.user: table.get(e.user) for e in batch}
        out = pipe.step(recs, [(0, e) for e in batch], lambda _p, us: {u: table.get(u) for u in us}, model)
        table.update({u: UserRecord.from_bytes(r.to_bytes()) for u, r in out.records.items()})

    run(evs[:3] + evs[6:8])
    assert (model.stepped, model.rebuilt) == (5, 0)
    assert table["u"].seq.events == 3 and table["v"].seq.events == 2  # type: ignore[union-attr]
    run(evs[3:6] + evs[8:])
    assert (model.stepped, model.rebuilt) == (5, 0)
    assert table["u"].seq.events == 6 and table["u"].seq.model == TAG  # type: ignore[union-attr]


def test_the_evaluation_scores_the_states_a_worker_keeps(scorer):
    """``intentstream evaluate`` scores each row with the state after all of the user's events so
    far: the same scores as a worker stepping the stored state through each batch."""
    from models.evaluation import Histories, _score_histories

    users = {f"u{k}": history(f"u{k}", n, 20 + k) for k, n in enumerate((3, 25, 40))}
    hist = Histories()
    evs = sorted((e for es in users.values() for e in es), key=lambda e: e.ts)
    for e in evs:
        hist.add(e)
        hist.row(e.user)
    pi, pc, top = _score_histories(scorer, hist, 2, 10, latent=True)
    per = {u: iter(rings(es, CFG.lookback)) for u, es in users.items()}
    seen: dict[str, int] = {}
    memory: dict[str, SeqMemory | None] = {}
    for r, e in enumerate(evs):
        seen[e.user] = seen.get(e.user, 0) + 1
        adv = advance_rounds(scorer, TAG, SHAPE, [SeqQuery(e.user, next(per[e.user]), seen[e.user], True)], memory)
        memory.update(adv.memory)
        assert adv.scored[0].p_intent == pytest.approx(pi[r], abs=2e-3)
        assert adv.scored[0].p_churn == pytest.approx(pc[r], abs=2e-3)
    assert top.shape == (len(evs), 10) and (top[:, 0] > 0).all()
