"""The batch pipeline: state records, intent on the rising edge, churn from the event-time watermark."""

from models.events import Event
from models.features.state import StateConfig
from stream.logic.pipeline import Pipeline, PipelineConfig, UserRecord
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer

H = 3_600_000
T0 = 1_700_000_000_000


def pipeline(**kw):
    cfg = PipelineConfig(
        StateConfig(), PolicyRule(0.5, 0.1, 30 * 60_000), PolicyRule(0.6, 0.1, 30 * 60_000),
        churn_risk_after_ms=kw.get("risk", 6 * H), state_ttl_ms=kw.get("ttl", 30 * 24 * H),
    )  # fmt: skip
    return Pipeline(cfg, RuleScorer(churn_after_ms=24 * H), clock=lambda: 0)


def clicks(user, start, n, gap=60_000, prefix=""):
    return [Event(f"{prefix}{user}{i}", user, "click", start + i * gap, item_id=f"i{i}", category_id="c1") for i in range(n)]


def run(p, records, events, partition=0):
    out = p.process(records, [(partition, e) for e in events])
    records.update(out.records)
    return out


def test_records_round_trip_through_bytes():
    p, records = pipeline(), {}
    run(p, records, clicks("u", T0, 5))
    rec = records["u"]
    again = UserRecord.from_bytes(rec.to_bytes())
    assert again.state.to_bytes() == rec.state.to_bytes() and again.policy == rec.policy


def test_each_user_written_once_per_batch_and_duplicates_rejected():
    p, records = pipeline(), {}
    evs = clicks("a", T0, 4) + clicks("b", T0, 3)
    out = run(p, records, evs + [evs[1]])
    assert set(out.records) == {"a", "b"} and out.applied == 7
    assert [(r.event.event_id, r.reason) for r in out.rejected] == [("a1", "duplicate_event_id")]


def test_cart_session_raises_one_intent_signal():
    p, records = pipeline(), {}
    evs = clicks("u", T0, 3) + [
        Event("c1", "u", "add_to_cart", T0 + 200_000, item_id="i1", price=10.0),
        Event("c2", "u", "add_to_cart", T0 + 260_000, item_id="i2", price=10.0),
        Event("c3", "u", "add_to_cart", T0 + 320_000, item_id="i3", price=10.0),
    ]
    out = run(p, records, evs)
    intents = [s for s in out.signals if s.task == "purchase_intent"]
    assert len(intents) == 1 and intents[0].event_id in {"c1", "c2"}
    assert intents[0].reasons[0]["contribution"] > 0


def test_signals_do_not_depend_on_batch_boundaries():
    """Event by event or in one batch: the same signals, triggered by the same events (so a
    replayed tail, batched differently, repeats the same signal ids)."""
    evs = clicks("u", T0, 3) + [Event(f"c{i}", "u", "add_to_cart", T0 + 200_000 + i * 60_000, item_id=f"i{i}") for i in range(3)]
    evs += clicks("v", T0, 4, prefix="v") + [Event("b", "u", "purchase", T0 + 500_000, item_id="i1", price=5.0)]
    evs += [Event(f"d{i}", "u", "add_to_cart", T0 + 40 * 60_000 + i * 60_000, item_id=f"j{i}") for i in range(3)]
    one = run(pipeline(), {}, evs).signals
    p, records = pipeline(), {}
    each = [s for e in evs for s in run(p, records, [e]).signals]
    assert [s.signal_id for s in one] == [s.signal_id for s in each]
    assert len([s for s in one if s.task == "purchase_intent"]) == 2, "re-armed by the purchase, after the cooldown"


def test_a_purchase_resolves_intent():
    p, records = pipeline(), {}
    carts = [Event(f"c{i}", "u", "add_to_cart", T0 + i * 60_000, item_id=f"i{i}") for i in range(3)]
    assert [s.task for s in run(p, records, carts).signals if s.task == "purchase_intent"] == ["purchase_intent"]
    buy = Event("b", "u", "purchase", T0 + 300_000, item_id="i1", price=5.0)
    out = run(p, records, [buy])
    assert not [s for s in out.signals if s.task == "purchase_intent"]
    assert records["u"].policy.intent.active is False


def test_silent_user_gets_churn_risk_from_the_watermark_not_the_wall_clock():
    p, records = pipeline(risk=6 * H), {}
    run(p, records, clicks("quiet", T0, 3))
    # Nothing else happens: no watermark movement, no churn, however long we wait.
    assert p.due_for_scan(0) == []
    # Another user's events move the partition's watermark 20 hours on.
    run(p, records, clicks("busy", T0 + 20 * H, 3))
    due = p.due_for_scan(0)
    assert due == ["quiet"]
    out = p.scan(0, {u: records[u] for u in due})
    churn = [s for s in out.signals if s.task == "churn_risk"]
    assert len(churn) == 1 and churn[0].user == "quiet" and churn[0].score >= 0.6
    records.update(out.records)
    # Signalled once: the next scan does not repeat it.
    run(p, records, clicks("busy", T0 + 21 * H, 2, prefix="x"))
    again = p.scan(0, {u: records[u] for u in p.due_for_scan(0)})
    assert not [s for s in again.signals if s.task == "churn_risk"]
    # The user comes back: the churn signal re-arms.
    run(p, records, clicks("quiet", T0 + 22 * H, 1, prefix="back"))
    assert not records["quiet"].policy.churn.active


def test_users_past_the_ttl_are_expired():
    p, records = pipeline(risk=6 * H, ttl=48 * H), {}
    run(p, records, clicks("old", T0, 2))
    run(p, records, clicks("new", T0 + 50 * H, 2))
    out = p.scan(0, {u: records[u] for u in p.due_for_scan(0)})
    assert out.deleted == ["old"] and "old" not in p.activity


def test_watermarks_are_per_partition():
    p, records = pipeline(risk=6 * H), {}
    run(p, records, clicks("a", T0, 2), partition=0)
    run(p, records, clicks("b", T0 + 24 * H, 2), partition=1)
    assert p.due_for_scan(0) == [] and p.due_for_scan(1) == []


def learning_pipeline(risk_ms, churn_ms, learners_cls=None):
    """A pipeline with fresh online models (churn horizon ``churn_ms``) and an intent threshold of 0.3."""
    from models.online.learner import PartitionLearners

    cls = learners_cls or PartitionLearners

    cfg = PipelineConfig(StateConfig(), PolicyRule(0.3, 0.1, 30 * 60_000), PolicyRule(0.6, 0.1, 30 * 60_000),
                         churn_risk_after_ms=risk_ms)  # fmt: skip
    return Pipeline(cfg, RuleScorer(churn_after_ms=churn_ms), clock=lambda: 0,
                    learners=lambda part: cls.new(state=cfg.state, churn_horizon_ms=churn_ms))  # fmt: skip


def simulated(seed, users, n):
    """``n`` simulator events, ingested (validated and pseudonymised) as a worker does."""
    import json

    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.simulator import ShopperSimulator

    pseudo = Pseudonymizer(b"pipeline-test-key-012345")
    return [ingest_one(json.dumps(e).encode(), pseudo) for e in ShopperSimulator(seed=seed, users=users).take(n)]


def test_online_models_learn_from_delayed_labels_and_take_over_from_the_rule():
    p = learning_pipeline(risk_ms=6 * H, churn_ms=24 * H)
    events = simulated(seed=5, users=300, n=30_000)
    records: dict = {}
    versions = []
    for i in range(0, len(events), 1000):
        out = run(p, records, events[i : i + 1000])
        due = p.due_for_scan(0)
        scan = p.scan(0, {u: records[u] for u in due})
        records.update(scan.records)
        for u in scan.deleted:
            records.pop(u)
        versions += [s.model_versions["online"] for s in out.signals + scan.signals if s.task != "latent_needs"]
    learners = p.learners[0]
    assert learners.intent.n_learned > 1000 and learners.intent.warm()
    # Every pending prediction sits in some user's record, and the running count agrees.
    assert p.pending["intent"] == sum(len(r.pending.intent.snapshots) for r in records.values())
    assert p.pending["churn"] == sum(len(r.pending.churn.snapshots) for r in records.values())
    # The rule served while the models warmed up; the River model afterwards.
    assert versions[0] == "rule-v1" and any(v.startswith("river-") for v in versions)
    # Pending queues survive the record's round trip through bytes (they live in the table).
    rec = next(r for r in records.values() if r.pending.intent.snapshots)
    assert UserRecord.from_bytes(rec.to_bytes()).pending == rec.pending


def test_the_due_index_finds_exactly_the_users_a_full_pass_would():
    """due_for_scan reads a per-partition heap instead of every user; after any mix of events,
    scans, expiries and a rebalance it must name exactly the users whose check is due (and keep
    them indexed when a limit leaves some for the next batch)."""
    import random

    rng = random.Random(3)
    p, records = pipeline(risk=6 * H, ttl=48 * H), {}
    t, nonempty = T0, 0

    def brute(part: int) -> set[str]:
        wm = p.watermarks.get(part)
        return {u for u, (q, due) in p.activity.items() if q == part and wm is not None and due <= wm}

    for step in range(300):
        t += rng.randint(1, 90) * 60_000
        user = f"u{rng.randrange(40)}"
        part = int(user[1:]) % 2  # a user lives on one partition
        run(p, records, [Event(f"e{step}", user, rng.choice(["click", "add_to_cart"]), t, item_id="i")], partition=part)
        for q in (0, 1):
            assert set(p.due_for_scan(q)) == brute(q)
            nonempty += bool(brute(q))
            limited = p.due_for_scan(q, limit=2)
            assert len(limited) == min(2, len(brute(q))) and set(limited) <= brute(q)
            if rng.random() < 0.5:  # scan some partitions only: the others' due users must stay found
                scan = p.scan(q, {u: records.get(u) for u in limited})
                records.update(scan.records)
                for u in scan.deleted:
                    records.pop(u, None)
        if step == 150:
            p.forget_partitions({0})
            assert p.due_for_scan(1) == [] and set(p.due_for_scan(0)) == brute(0)
            for u, rec in records.items():
                if int(u[1:]) % 2 == 1:
                    p.remember(u, 1, rec)
    assert nonempty > 50, "the walk must make users due often, or it tests nothing"


class OneAtATime:
    """Online learners that score every event's predictions at once, as before 2026-12-03 (the
    pipeline asks for them batched: PartitionLearners.on_event(batch=True), then flush()); counts
    the batched predictions the others flushed."""

    flushed = 0

    @staticmethod
    def make(batched: bool):
        from models.online.learner import PartitionLearners

        class Learners(PartitionLearners):
            def on_event(self, *args, batch=False, **kw):
                return super().on_event(*args, batch=batch and batched, **kw)

            def flush(self):
                n = super().flush()
                OneAtATime.flushed += n
                return n

        return Learners


def _through_table(how, batched=True):
    """Simulated shoppers through a learning pipeline in batches of 500 with churn scans. ``how``:
    "kept", records stay objects between batches (as the evaluation replays keep them); "stored",
    stored as bytes after each batch and decoded before the next (as a worker does). ``batched``:
    the online scores of a batch's events computed together (as the pipeline does) or one by one."""

    p = learning_pipeline(risk_ms=H, churn_ms=2 * H, learners_cls=OneAtATime.make(batched))
    events = simulated(seed=11, users=200, n=8_000)
    table: dict = {}

    def load(users):
        if how == "kept":
            return {u: table.get(u) for u in users}
        if how == "step":
            return {u: UserRecord.from_bytes(table[u]) if u in table else None for u in users}
        return {u: UserRecord.from_bytes(table[u]) if u in table else None for u in users}

    def store(out):
        for u, rec in out.records.items():
            table[u] = rec if how == "kept" else rec.to_bytes()
        for u in out.deleted:
            table.pop(u, None)

    signals, scores = [], []
    for i in range(0, len(events), 500):
        batch = events[i : i + 500]
        if how == "step":
            step = p.step(load({e.user for e in batch}), [(0, e) for e in batch], lambda _p, users: load(users))
            store(step)
            signals += [(s.task, s.user, s.to_json()) for s in step.signals]
            continue
        out = p.process(load({e.user for e in batch}), [(0, e) for e in batch])
        store(out)
        scan = p.scan(0, load(p.due_for_scan(0)))
        store(scan)
        signals += [(s.task, s.user, s.to_json()) for s in out.signals + scan.signals]
        scores += [c.intent[0] for c in out.candidates if c.intent is not None]  # unrounded
    final = {u: r if how != "kept" else r.to_bytes() for u, r in table.items()}
    return signals, scores, final, p.learners[0].to_bytes()


def test_what_a_worker_computes_does_not_depend_on_whether_records_were_stored_between_batches():
    # Values a record stores as float32 are rounded as they are updated, not when stored: until
    # 2026-11-24 a state kept in memory drifted from the stored one in the low bits of its decayed
    # counts and scores, so the replays' figures and a worker's differed slightly.
    stored = _through_table("stored")
    assert stored[0] and _through_table("kept") == stored  # the same signals, records and models


def test_the_step_is_the_events_then_each_partition_s_churn_scan():
    # Pipeline.step is what workers, the reliability tests' expected outcomes and the benchmarks
    # run: the same signals, records and models as its halves called one after the other.
    halves, _scores, records, models = _through_table("stored")
    step = _through_table("step")
    assert any(task == "churn_risk" for task, _u, _v in halves)  # the scans had work to do
    assert step[0] == halves and step[2] == records and step[3] == models


def test_online_scores_computed_per_batch_equal_those_computed_one_event_at_a_time():
    # The same signals (scores, reasons, model versions), records (queued predictions' scores)
    # and models, to the bit; and the batched path must have been taken.
    OneAtATime.flushed = 0
    batched = _through_table("stored")
    assert OneAtATime.flushed > 1000
    OneAtATime.flushed = 0
    assert _through_table("stored", batched=False) == batched
    assert OneAtATime.flushed == 0


def test_a_batch_that_fails_midway_leaves_no_online_score_waiting():
    import pytest

    p = learning_pipeline(risk_ms=H, churn_ms=2 * H)
    events = simulated(seed=11, users=200, n=8_000)
    records: dict = {}
    for i in range(0, 7_000, 500):  # with the churn scans, whose watermarks settle the labels
        run(p, records, events[i : i + 500])
        records.update(p.scan(0, {u: records.get(u) for u in p.due_for_scan(0)}).records)
    assert p.learners[0].intent.warm()  # so its scores are batched from here on
    good = events[7_000:7_400]
    bad = Event("bad", good[0].user, "teleport", good[-1].ts)  # an unknown type: apply_event raises
    with pytest.raises(KeyError):
        p.apply(records, [(0, e) for e in [*good, bad]])
    assert sum(pl.flush() for pl in p.learners.values()) == 0  # flushed on the way out
    for rec in records.values():  # every queued prediction has its score: each record stores
        assert UserRecord.from_bytes(rec.to_bytes()).pending == rec.pending
