"""Online learners: River's estimator checks, learning order (predict before learn, exactly once),
restart in the middle, the pending bound, cold start, reasons, checkpoints and metrics."""

from __future__ import annotations

import functools
import math
import random
from collections import Counter

import numpy as np
import pytest
import river
from river import checks, compose, preprocessing

from models.events import Event
from models.features.state import StateConfig, UserState, apply_event
from models.online.estimators import AveragedLogisticRegression, ScaledAveragedLogisticRegression
from models.online.labels import round_bf16
from models.online.learner import (
    IncompatibleCheckpoint,
    LearnerConfig,
    OnlineLearner,
    PartitionLearners,
    UserPending,
)
from models.online.pipelines import build, linear_contributions, linear_terms

CFG = StateConfig()
T0 = 1_700_000_000_000
MIN = 60_000


def shop_events(seed: int, users: int = 12, n: int = 700) -> list[Event]:
    """A small synthetic shop: users browse in bursts; carts make a purchase within minutes likely."""
    rng = random.Random(seed)
    t, out = T0, []
    carts: dict[str, int] = {}
    for i in range(n):
        t += rng.randint(1, 4) * MIN
        u = f"u{rng.randrange(users)}"
        if carts.get(u, 0) and rng.random() < 0.5:
            kind, carts[u] = "purchase", 0
        elif rng.random() < 0.25:
            kind, carts[u] = "add_to_cart", carts.get(u, 0) + 1
        else:
            kind = "click"
        out.append(
            Event(
                f"e{i}",
                u,
                kind,
                t,
                item_id=f"i{rng.randrange(30)}",
                category_id=f"c{rng.randrange(5)}",
                price=9.5,
            )
        )
    return out


class Worker:
    """What a stream worker holds: states, pending labels per user, the partition's learners."""

    def __init__(self, learners: PartitionLearners) -> None:
        self.learners = learners
        self.states: dict[str, bytes] = {}
        self.pending: dict[str, bytes] = {}
        self.scores: list[tuple[float | None, float | None]] = []

    def run(self, events: list[Event]) -> None:
        for ev in events:
            st = UserState.from_bytes(self.states[ev.user]) if ev.user in self.states else UserState.new()
            up = UserPending.from_bytes(self.pending.get(ev.user, b""))
            if apply_event(st, ev, CFG) != "applied":
                continue
            out = self.learners.on_event(up, st, ev)
            self.scores.append((out.intent.p if out.intent else None, out.churn.p if out.churn else None))
            wm = ev.ts - CFG.allowed_lateness_ms
            self.states[ev.user], self.pending[ev.user] = st.to_bytes(), up.to_bytes()
            for user in list(self.pending):  # the due users at this watermark (a scan would find them)
                ust, uup = UserState.from_bytes(self.states[user]), UserPending.from_bytes(self.pending[user])
                due = self.learners.next_due(uup, ust, wm)
                if due is not None and due <= wm:
                    self.learners.on_watermark(uup, ust, wm)
                    self.pending[user] = uup.to_bytes()


def fresh(**kw) -> PartitionLearners:
    return PartitionLearners.new(CFG, intent_warmup=20, churn_warmup=20, churn_horizon_ms=20 * MIN, **kw)


# --- River contract --------------------------------------------------------------------------


@pytest.mark.parametrize("params", list(AveragedLogisticRegression._unit_test_params()))
def test_custom_estimator_passes_rivers_estimator_checks(params) -> None:
    checks.check_estimator(AveragedLogisticRegression(**params))


def _contract_stream(rng: np.random.Generator, n: int) -> list[dict]:
    """Rows with wild scales, a constant (zero-variance) input and outliers past the clip."""
    return [
        {"a": float(rng.normal()), "b": float(rng.normal() * 1e-3 + 5), "const": 2.0,
         "big": float(rng.lognormal(3, 2)), "rare": float(rng.random() < 0.05) * 50.0}  # fmt: skip
        for _ in range(n)
    ]


@pytest.mark.parametrize("estimator", ["AveragedLogisticRegression", "ScaledAveragedLogisticRegression"])
def test_score_many_is_rivers_predict_proba_one_and_its_terms_add_up_to_the_log_odds(estimator) -> None:
    """The vector scoring of each estimator against River's dict interface on random rows, to the
    bit: the probabilities are ``predict_proba_one``'s (for the fused model: River's
    ``StandardScaler | AveragedLogisticRegression`` pipeline's), the terms plus the intercept are
    the log-odds, and a row scores the same alone as in a batch."""
    rng = np.random.default_rng(11)
    names = ["a", "b", "const", "big", "rare"]
    if estimator == "AveragedLogisticRegression":
        model = ref = AveragedLogisticRegression(lr=0.05, window=200)
        score_many = functools.partial(model.score_many, features=names)
        inputs = dict  # the weights read the inputs as they are (unscaled)
    else:
        model = ScaledAveragedLogisticRegression(window=200, features=names)
        ref = river_pipeline()
        ref["lr"].window = 200
        score_many = model.score_many
        inputs = ref["scale"].transform_one
    for rows in (_contract_stream(rng, 400), _contract_stream(rng, 400)):
        X = np.array([[x[n] for n in names] for x in rows])
        p, T = score_many(X)
        assert p.shape == (len(rows),) and T.shape == X.shape
        lr = ref if ref is model else ref["lr"]
        for x, pi, t in zip(rows, p.tolist(), T, strict=True):
            assert pi == ref.predict_proba_one(x)[True]
            z = inputs(x)
            assert t.tolist() == list(lr.contributions(z).values())
            log_odds = model.avg_intercept + sum(t.tolist())
            assert log_odds == lr.decision_function(z)
            assert math.log(pi / (1 - pi)) == pytest.approx(log_odds, rel=1e-9, abs=1e-9)
        one_p, one_t = score_many(X[7:8])  # a single row is a batch of one
        assert one_p.tolist() == [p[7]] and one_t[0].tolist() == T[7].tolist()
        for x, y in zip(rows, (rng.random(len(rows)) < 0.3).tolist(), strict=True):
            ref.learn_one(x, y)
            if model is not ref:
                model.learn_one(x, y)
    assert 0 < model.n and len(set(p.tolist())) > 100  # a model that learned, scoring varied rows
    with pytest.raises(ValueError, match="rows of 5"):
        score_many(X[0])  # a lone vector is not a batch


def test_averaged_logistic_regression_learns_a_separable_signal_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    models = [AveragedLogisticRegression(lr=0.05), AveragedLogisticRegression(lr=0.05)]
    for _ in range(2000):
        a = float(rng.normal())
        for m in models:
            m.learn_one({"a": a, "noise": 0.3}, a > 0)
    p_hi, p_lo = (models[0].predict_proba_one({"a": v, "noise": 0.3})[True] for v in (2.0, -2.0))
    assert p_hi > 0.9 and p_lo < 0.1
    assert models[0].avg_weights == models[1].avg_weights
    assert models[0].predict_proba_one({"b": 1.0}) == models[0].predict_proba_one(
        {}
    )  # unseen feature: no weight


def river_pipeline() -> compose.Pipeline:
    """The linear model as River's two-step pipeline: the reference for the fused model."""
    return compose.Pipeline(("scale", preprocessing.StandardScaler()), ("lr", AveragedLogisticRegression()))


def test_the_fused_linear_model_is_rivers_two_step_pipeline_bit_for_bit() -> None:
    """Scores, terms and every weight equal River's StandardScaler | AveragedLogisticRegression
    exactly, on a stream with wild scales, a constant feature (zero variance), outliers past the
    clip and more updates than the averaging window."""
    rng = np.random.default_rng(7)
    names = ("a", "b", "const", "big", "rare")
    ref = river_pipeline()
    ref["lr"].window = 300
    fused = ScaledAveragedLogisticRegression(window=300, features=names)
    for i in range(3000):
        x = {"a": float(rng.normal()), "b": float(rng.normal() * 1e-3 + 5), "const": 2.0,
             "big": float(rng.lognormal(3, 2)), "rare": float(rng.random() < 0.01) * 50.0}  # fmt: skip
        if i % 7 == 0:  # a prediction before learning, as the stream does
            p = fused.predict_proba_one(x)
            assert p == ref.predict_proba_one(x)
            log_odds, terms = linear_terms(fused, x)
            assert (log_odds, terms) == linear_terms(ref, x)
        y = x["a"] + 0.3 * float(rng.normal()) > 0.5
        ref.learn_one(x, y)
        fused.learn_one(x, y)
    lr = ref["lr"]
    assert fused.avg_weights.tolist() == [lr.avg_weights[n] for n in names]
    assert fused.weights.tolist() == [lr.weights[n] for n in names]
    assert (fused.intercept, fused.avg_intercept, fused.n) == (lr.intercept, lr.avg_intercept, lr.n)
    assert fused.var.tolist() == [ref["scale"].vars[n] for n in names]
    with pytest.raises(ValueError, match="'rare' missing"):
        fused.predict_proba_one({"a": 1.0, "b": 1.0, "const": 1.0, "big": 1.0})


def test_the_fused_models_divisor_is_rebuilt_on_load_not_stored() -> None:
    """The scaler's divisor (``_div``, ``_keep``: derived from the variances) is left out of the
    pickle and rebuilt on load; a model restored mid-stream scores and learns as the original,
    including a feature whose variance is still 0 and one whose variance just stopped being 0."""
    import pickle

    rng = np.random.default_rng(3)
    names = ("a", "const", "late")
    model = ScaledAveragedLogisticRegression(window=50, features=names)
    xs = [np.array([rng.normal(), 2.0, 0.0 if i < 30 else rng.normal()]) for i in range(60)]
    for x in xs[:30]:
        model.learn(x, x[0] > 0)
    data = pickle.dumps(model)
    assert b"_div" not in data and b"_keep" not in data
    restored = pickle.loads(data)
    for x in xs[30:]:
        assert restored.terms(x)[0] == model.terms(x)[0]
        assert restored.scaled(x).tolist() == model.scaled(x).tolist()
        model.learn(x, x[0] > 0)
        restored.learn(x, x[0] > 0)
    assert restored.avg_weights.tolist() == model.avg_weights.tolist()
    assert model.scaled(xs[-1])[1] == 0.0 and model.scaled(xs[-1])[2] != 0.0


def test_learners_score_as_river_pipelines_would_and_old_checkpoints_load_as_fused() -> None:
    """The stream's learners (fused linear models, fed vectors) against the same learners holding
    River pipelines (fed dicts): every score and queue the same. A checkpoint written with the
    pipeline (before the fused model) loads as the fused model and goes on identically."""
    events = shop_events(4)

    def with_pipelines() -> PartitionLearners:
        learners = fresh()
        for lr in (learners.intent, learners.churn):
            lr.model, lr._fused = river_pipeline(), False
        return learners

    fused, ref = Worker(fresh()), Worker(with_pipelines())
    fused.run(events[:400])
    ref.run(events[:400])
    assert fused.scores == ref.scores and fused.pending == ref.pending
    assert isinstance(ref.learners.intent.model, compose.Pipeline)
    restored = Worker(PartitionLearners.from_bytes(ref.learners.to_bytes()))
    assert isinstance(restored.learners.intent.model, ScaledAveragedLogisticRegression)
    restored.states, restored.pending, restored.scores = dict(ref.states), dict(ref.pending), list(ref.scores)
    fused.run(events[400:])
    restored.run(events[400:])
    assert restored.scores == fused.scores and restored.pending == fused.pending
    assert restored.learners.metrics() == fused.learners.metrics()


def test_a_pipeline_checkpoint_that_cannot_be_fused_is_refused_not_crashed_on() -> None:
    """A scaler that saw some features fewer times has no single count: the checkpoint is refused
    as incompatible (the worker then starts fresh models) rather than raising on restore."""
    lr = OnlineLearner(LearnerConfig("intent"))
    lr.model, lr._fused = river_pipeline(), False
    x = {n: 1.0 for n in lr.names}
    lr.model.learn_one(x, True)
    lr.model.learn_one({n: 2.0 for n in lr.names[1:]}, False)
    with pytest.raises(IncompatibleCheckpoint, match="cannot be converted"):
        OnlineLearner.from_bytes(lr.to_bytes())


# --- order of learning -----------------------------------------------------------------------


def key(x: dict) -> tuple:
    return tuple(np.float32(x[k]).item() for k in sorted(x))


class SpyModel(AveragedLogisticRegression):
    """Logs every learning call, keyed by the float32 feature vector, into a shared list."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def learn_one(self, x: dict, y) -> None:
        self.log.append(("learn", key(x)))
        super().learn_one(x, y)


class SpyLearner(OnlineLearner):
    """Logs every prediction served (model score or cold prior alike) into the same list."""

    def __init__(self, cfg: LearnerConfig, log: list) -> None:
        super().__init__(cfg, model=SpyModel(log))
        self.log = log

    def predict(self, features: dict, *, explain: bool = True, values=None, batch: bool = False):
        # What the model reads, rounded as its snapshot keeps it (labels.round_bf16).
        seen = dict(zip(self.names, round_bf16([features[n] for n in self.names]).tolist(), strict=True))
        self.log.append(("predict", key(seen)))
        return super().predict(features, explain=explain, values=values, batch=batch)


def test_every_label_is_learned_once_and_only_after_its_prediction() -> None:
    logs: dict[str, list] = {"intent": [], "churn": []}
    learners = PartitionLearners(
        SpyLearner(LearnerConfig("intent", warmup=5), logs["intent"]),
        SpyLearner(LearnerConfig("churn", warmup=5, horizon_ms=20 * MIN), logs["churn"]),
    )
    Worker(learners).run(shop_events(1))
    for task, log in logs.items():
        # Feature vectors can repeat (two users' first clicks look alike), so each learning call
        # must consume one earlier, not yet consumed prediction with its vector: once, and after.
        unconsumed: Counter[tuple] = Counter()
        learned = 0
        for kind, k in log:
            if kind == "predict":
                unconsumed[k] += 1
            else:
                assert unconsumed[k] > 0, f"{task}: learned without an earlier unconsumed prediction"
                unconsumed[k] -= 1
                learned += 1
        lr = learners.intent if task == "intent" else learners.churn
        assert lr.n_learned == learned > 50


def test_learned_plus_pending_plus_dropped_accounts_for_every_prediction() -> None:
    learners = fresh()
    w = Worker(learners)
    events = shop_events(2)
    w.run(events)
    queued = sum(1 for s in w.scores if s[0] is not None)
    left = sum(len(UserPending.from_bytes(b).intent) for b in w.pending.values())
    m = learners.intent.metrics()
    assert m["learned"] + left + m["dropped"] == queued
    assert m["n"] == m["learned"]


# --- restart ---------------------------------------------------------------------------------


def test_restart_in_the_middle_keeps_pending_predictions_and_gives_the_same_result() -> None:
    events = shop_events(3)
    straight = Worker(fresh())
    straight.run(events)

    first = Worker(fresh())
    first.run(events[:350])
    assert (
        sum(len(UserPending.from_bytes(b).intent) for b in first.pending.values()) > 0
    )  # something in flight
    # The restart: only bytes survive (the table values and the partition's checkpoint).
    restored = Worker(PartitionLearners.from_bytes(first.learners.to_bytes()))
    restored.states, restored.pending = dict(first.states), dict(first.pending)
    restored.scores = list(first.scores)
    restored.run(events[350:])

    assert restored.scores == straight.scores
    assert restored.pending == straight.pending
    assert restored.learners.metrics() == straight.learners.metrics()
    for a, b in (
        (restored.learners.intent, straight.learners.intent),
        (restored.learners.churn, straight.learners.churn),
    ):
        # pickle bytes may differ; the model may not
        assert np.array_equal(a.model.avg_weights, b.model.avg_weights)
        assert np.array_equal(a.model.mean, b.model.mean) and np.array_equal(a.model.var, b.model.var)


# --- bound, cold start, reasons ---------------------------------------------------------------


def test_a_burst_keeps_at_most_max_pending_predictions_per_user() -> None:
    learners = PartitionLearners.new(CFG, intent_max_pending=5)
    st, up = UserState.new(), UserPending()
    for i in range(40):
        ev = Event(f"b{i}", "u", "click", T0 + i * 1000, item_id="x")
        apply_event(st, ev, CFG)
        learners.on_event(up, st, ev)
    assert len(up.intent) == 5 and up.intent.dropped == 35
    assert [s.ts for s in up.intent.snapshots] == [T0 + i * 1000 for i in range(35, 40)]
    assert learners.intent.metrics()["dropped"] == 35
    # 5 intent + 1 churn snapshot, at most every feature non-zero: a hard bound on the record.
    assert len(up.to_bytes()) <= 2 + 2 * 6 + 6 * (8 + 4 + 1 + 7 + 4 * len(learners.intent.names))


def test_a_new_user_gets_the_running_base_rate_flagged_cold() -> None:
    learners = fresh()
    Worker(learners).run(shop_events(4))
    assert learners.intent.warm()
    st, ev = UserState.new(), Event("n1", "newbie", "click", T0 + 10**9, item_id="x")
    apply_event(st, ev, CFG)
    out = learners.on_event(UserPending(), st, ev)
    lr = learners.intent
    assert out.intent.cold and out.intent.p == pytest.approx(lr.base_rate())
    assert out.intent.reasons[0]["feature"] == "cold_start"
    expected = (lr.learned_pos + 0.03 * 20) / (lr.n_learned + 20)
    assert lr.base_rate() == pytest.approx(expected)
    # The second event of that user is scored by the model.
    ev2 = Event("n2", "newbie", "add_to_cart", T0 + 10**9 + 1000, item_id="x")
    apply_event(st, ev2, CFG)
    assert not learners.on_event(UserPending(), st, ev2).intent.cold


def test_an_untrained_model_serves_the_prior_flagged_cold() -> None:
    lr = OnlineLearner(LearnerConfig("churn"))
    p, reasons, cold = lr.predict({n: 1.0 for n in lr.names} | {"recent_events": 9.0})
    assert cold and p == pytest.approx(0.5) and "warming up" in reasons[0]["text"]


def test_linear_reasons_are_the_largest_log_odds_terms_and_they_add_up() -> None:
    learners = fresh()
    w = Worker(learners)
    w.run(shop_events(5))
    lr = learners.intent
    st = UserState.from_bytes(next(iter(w.states.values())))
    from models.features.online import online_features

    x = online_features(st, st.last_ts, CFG)
    x["recent_events"] = max(x["recent_events"], 2.0)
    p, reasons, cold = lr.predict(x)
    assert not cold
    terms = linear_contributions(lr.model, x)
    top = sorted(terms.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert [r["feature"] for r in reasons] == [k for k, _ in top]
    assert [r["contribution"] for r in reasons] == [round(v, 4) for _, v in top]
    logit = math.log(p / (1 - p))
    assert logit == pytest.approx(lr.model.avg_intercept + sum(terms.values()), rel=1e-9, abs=1e-9)


def test_the_one_pass_linear_score_is_rivers_predict_proba_one_exactly() -> None:
    """predict() scales the features once for the score and the reasons (linear_terms); the
    probability must be River's own, bit for bit, or signals would depend on the code path."""
    learners = fresh()
    w = Worker(learners)
    w.run(shop_events(5))
    from models.features.online import online_features

    for lr in (learners.intent, learners.churn):
        assert lr.warm()
        for raw in w.states.values():
            st = UserState.from_bytes(raw)
            x = online_features(st, st.last_ts + 60_000, CFG)
            x["recent_events"] = max(x["recent_events"], 2.0)
            p, _reasons, cold = lr.predict(x)
            xs = {n: x[n] for n in lr.names}
            assert not cold and p == lr.model.predict_proba_one(xs)[True]
            log_odds, terms = linear_terms(lr.model, xs)
            assert terms == linear_contributions(lr.model, xs)
            later = lr.predict(x, explain="later")  # the stream's way: reasons worked out on demand
            assert later.p == p and later.reasons() == _reasons
    cold = learners.intent.predict({n: 0.0 for n in learners.intent.names}, explain="later")
    assert cold.cold and cold.reasons()[0]["feature"] == "cold_start"


def test_churn_at_an_event_is_scored_without_reasons() -> None:
    """Churn signals come from the watermark scan; the per-event churn score is only queued."""
    learners = fresh()
    w = Worker(learners)
    w.run(shop_events(5))
    st, up = UserState.new(), UserPending()
    ev = Event("x1", "someone", "click", 1_700_000_000_000, item_id="i1")
    apply_event(st, ev, CFG)
    out = learners.on_event(up, st, ev)
    assert learners.churn.warm() and out.churn.reasons == [] and out.intent.reasons
    # The next event within min_gap_ms queues no churn prediction, so none is computed.
    ev2 = Event("x2", "someone", "click", ev.ts + 1_000, item_id="i2")
    apply_event(st, ev2, CFG)
    again = learners.on_event(up, st, ev2)
    assert again.churn is None and len(up.churn.snapshots) == 1 and again.intent is not None


def test_tree_reasons_rank_features_by_how_much_making_them_ordinary_moves_the_score() -> None:
    lr = OnlineLearner(LearnerConfig("intent", model="amf", warmup=10))
    rng = random.Random(0)
    for _ in range(300):
        x = {n: 0.0 for n in lr.names} | {"recent_events": 3.0, "session_carts": float(rng.randint(0, 3))}
        lr.model.learn_one(x, x["session_carts"] >= 2)
        lr.n_learned += 1
        lr.learned_pos += x["session_carts"] >= 2
        v = np.fromiter((x[n] for n in lr.names), float)
        d = v - lr._mean
        lr._mean += d / lr.n_learned
        lr._m2 += d * (v - lr._mean)
    x = {n: 0.0 for n in lr.names} | {"recent_events": 3.0, "session_carts": 3.0}
    p, reasons, cold = lr.predict(x)
    assert not cold and reasons[0]["feature"] == "session_carts" and reasons[0]["contribution"] > 0
    contributions = [abs(r["contribution"]) for r in reasons]
    assert contributions == sorted(contributions, reverse=True)


# --- checkpoints and metrics -----------------------------------------------------------------


def test_checkpoint_round_trips_and_rejects_incompatible_bytes(monkeypatch) -> None:
    learners = fresh()
    Worker(learners).run(shop_events(6, n=200))
    data = learners.intent.to_bytes()
    back = OnlineLearner.from_bytes(data)
    assert back.cfg == learners.intent.cfg and back.metrics() == learners.intent.metrics()
    with pytest.raises(IncompatibleCheckpoint, match="magic"):
        OnlineLearner.from_bytes(b"XXXX" + data[4:])
    with pytest.raises(IncompatibleCheckpoint, match="format v7"):
        OnlineLearner.from_bytes(data[:4] + (7).to_bytes(2, "little") + data[6:])
    monkeypatch.setattr(river, "__version__", "0.1.0")
    with pytest.raises(IncompatibleCheckpoint, match="river"):
        OnlineLearner.from_bytes(data)


def _rewrite_checkpoint(data: bytes, edit) -> bytes:
    """The checkpoint with its pickled body changed by ``edit`` (to fake one from older code)."""
    import pickle

    from models.online.learner import _HEADER

    body = pickle.loads(data[_HEADER.size :])
    edit(body)
    return data[: _HEADER.size] + pickle.dumps(body)


def test_a_checkpoint_learned_on_another_feature_vector_is_incompatible() -> None:
    learners = fresh()
    Worker(learners).run(shop_events(8, n=200))
    data = learners.churn.to_bytes()
    names = list(learners.churn.names)

    def renamed(body: dict) -> None:
        body["features"] = [*names[:-1], "something_else"]

    def before_names_were_stored(body: dict) -> None:  # the 54-feature code wrote no names
        del body["features"]
        body["mean"], body["m2"] = np.zeros(54), np.zeros(54)

    for edit in (renamed, before_names_were_stored):
        with pytest.raises(IncompatibleCheckpoint, match="features"):
            OnlineLearner.from_bytes(_rewrite_checkpoint(data, edit))
    # The partition checkpoint raises the same error, which the stream answers with fresh learners.
    a = learners.intent.to_bytes()
    b = _rewrite_checkpoint(data, before_names_were_stored)
    with pytest.raises(IncompatibleCheckpoint):
        PartitionLearners.from_bytes(len(a).to_bytes(4, "little") + a + b)

    # Without the names but with the right length (same code, older writer) it still loads.
    def no_names(body: dict) -> None:
        del body["features"]

    assert OnlineLearner.from_bytes(_rewrite_checkpoint(data, no_names)).names == learners.churn.names
    # An intent checkpoint of the 54-feature code still loads: intent reads those same 54 today.
    old_intent = OnlineLearner.from_bytes(_rewrite_checkpoint(learners.intent.to_bytes(), no_names))
    assert old_intent.names == learners.intent.names and len(old_intent.names) == 54


def test_pending_snapshots_of_an_older_feature_vector_are_dropped_not_learned() -> None:
    from models.online import labels

    learners = fresh()
    worker = Worker(learners)
    worker.run(shop_events(9, n=300))  # warm models
    n_intent, n_churn = len(learners.intent.names), len(learners.churn.names)
    # A user record written by the 54-feature code (before the purchase rhythm): the intent model
    # reads the same 54 features today, the churn model reads 60, so only churn's queue is stale.
    # An intent queue of some other length (40) shows that any stale vector is dropped.
    assert (n_intent, n_churn) == (54, 60)
    up, other = UserPending(), UserPending()
    for ts in (T0, T0 + MIN):
        labels.add(up.intent, learners.intent.rule, ts, np.ones(54), 0.1)
        labels.add(up.churn, learners.churn.rule, ts, np.ones(54), 0.5)
        labels.add(other.intent, learners.intent.rule, ts, np.ones(40), 0.1)
    up, other = UserPending.from_bytes(up.to_bytes()), UserPending.from_bytes(other.to_bytes())
    st = UserState.new()
    ev = Event("new1", "old-user", "click", T0 + 2 * MIN, item_id="i1")
    apply_event(st, ev, CFG)
    dropped = {t: learners.metrics()[t]["dropped"] for t in ("intent", "churn")}
    learned = (learners.intent.n_learned, learners.churn.n_learned)
    learners.on_event(up, st, ev)
    learners.on_event(other, st, ev)
    assert (learners.intent.n_learned, learners.churn.n_learned) == learned  # nothing stale was learned
    assert [len(s.x) for s in up.intent.snapshots] == [54, 54, 54]  # still valid: kept, plus the new one
    assert [len(s.x) for s in up.churn.snapshots] == [n_churn]
    assert [len(s.x) for s in other.intent.snapshots] == [n_intent]
    assert (up.intent.dropped, up.churn.dropped, other.intent.dropped) == (0, 2, 2)
    assert {t: learners.metrics()[t]["dropped"] - dropped[t] for t in dropped} == {"intent": 2, "churn": 2}
    for q in (up, other):
        assert UserPending.from_bytes(q.to_bytes()) == q  # the queues are storable again
    # A watermark pass over a stale queue is just as safe.
    up2 = UserPending()
    labels.add(up2.churn, learners.churn.rule, T0, np.ones(54), 0.5)
    learners.on_watermark(up2, st, T0 + 400 * MIN)
    assert all(len(s.x) == n_churn for s in up2.churn.snapshots)


def test_the_intent_model_reads_the_features_it_was_configured_with() -> None:
    from models.features.online import FEATURE_NAMES, RHYTHM_FEATURES

    intent, churn = LearnerConfig("intent"), LearnerConfig("churn")
    assert set(churn.feature_names()) == set(FEATURE_NAMES)
    assert set(FEATURE_NAMES) - set(intent.feature_names()) == set(RHYTHM_FEATURES)
    assert LearnerConfig("intent", exclude_features=()).feature_names() == FEATURE_NAMES
    with pytest.raises(ValueError, match="unknown features"):
        LearnerConfig("churn", exclude_features=("nope",)).feature_names()
    # The exclusion is part of the config, saved in the checkpoint, so a restored learner reads
    # the same columns; a checkpoint without the field (older code) gets the task's default.
    lr = OnlineLearner(LearnerConfig("intent", exclude_features=("cart_lines",)))
    back = OnlineLearner.from_bytes(lr.to_bytes())
    assert (
        back.names == lr.names
        and "cart_lines" not in back.names
        and "log1p_days_since_purchase" in back.names
    )
    cfg = LearnerConfig("intent").to_dict()
    del cfg["exclude_features"]
    assert LearnerConfig.from_dict(cfg) == LearnerConfig("intent")


def test_metrics_are_plain_values_for_the_endpoint() -> None:
    learners = fresh()
    Worker(learners).run(shop_events(7))
    m = learners.metrics()
    assert set(m) == {"intent", "churn"}
    for d in m.values():
        assert {"n", "positives", "base_rate", "log_loss", "roc_auc", "calibration_error", "dropped"} <= set(
            d
        )
        assert all(v is None or isinstance(v, (int, float, str, bool)) for v in d.values())
        assert d["n"] > 0 and 0 <= d["calibration_error"] <= 1


def test_every_family_builds_and_learns() -> None:
    for fam in ("linear", "linear_sgd", "amf", "arf"):
        m = build(fam)
        m.learn_one({"a": 1.0}, True)
        m.learn_one({"a": -1.0}, False)
        assert 0.0 <= m.predict_proba_one({"a": 1.0}).get(True, 0.0) <= 1.0
    with pytest.raises(ValueError):
        build("svm")
