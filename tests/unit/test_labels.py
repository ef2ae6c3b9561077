"""The delayed-label join: label definitions at their edges, once-only resolution checked against a
brute-force labeller, the bound on pending predictions, and the compact record format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.online.labels import (
    CHURN,
    INTENT,
    LabelRule,
    Pending,
    Snapshot,
    UserPending,
    add,
    encode_all,
    next_due,
    resolve_event,
    resolve_watermark,
    round_bf16,
)

H = 1_800_000
INTENT_RULE = LabelRule(INTENT, horizon_ms=H, max_pending=8, hold=False)  # labels out as soon as known
D = 30 * 86_400_000
CHURN_RULE = LabelRule(CHURN, horizon_ms=D, max_pending=8, hold=False)
X = [1.0, 0.0, 2.0]


def queued(rule: LabelRule, *times: int) -> Pending:
    q = Pending()
    for t in times:
        add(q, rule, t, X, 0.5)
    return q


# --- intent ----------------------------------------------------------------------------------


def test_intent_purchase_inside_horizon_is_positive_and_the_interval_is_open_at_t() -> None:
    q = queued(INTENT_RULE, 1_000)
    assert resolve_event(q, INTENT_RULE, "purchase", 1_000) == []  # same instant: could be in the features
    assert resolve_event(q, INTENT_RULE, "click", 2_000) == []  # only purchases settle intent
    assert [(s.ts, y) for s, y in resolve_event(q, INTENT_RULE, "purchase", 1_000 + H)] == [(1_000, 1)]
    assert len(q) == 0


def test_intent_purchase_after_horizon_settles_nothing_and_the_watermark_makes_it_negative() -> None:
    q = queued(INTENT_RULE, 1_000)
    assert resolve_event(q, INTENT_RULE, "purchase", 1_000 + H + 1) == []
    assert resolve_watermark(q, INTENT_RULE, 1_000 + H) == []  # an event at t + H could still come
    assert next_due(q, INTENT_RULE) == 1_000 + H + 1
    assert [(s.ts, y) for s, y in resolve_watermark(q, INTENT_RULE, 1_000 + H + 1)] == [(1_000, 0)]
    assert next_due(q, INTENT_RULE) is None


def test_one_purchase_settles_every_view_whose_horizon_contains_it() -> None:
    q = queued(INTENT_RULE, 0, 10, H + 5, H + 50)
    got = [(s.ts, y) for s, y in resolve_event(q, INTENT_RULE, "purchase", H + 8)]
    assert got == [(10, 1), (H + 5, 1)]  # 0 + H < H + 8: outside its horizon; H + 50 is after the buy
    assert [s.ts for s in q.snapshots] == [0, H + 50]


# --- churn -----------------------------------------------------------------------------------


def test_churn_return_within_horizon_is_negative_after_it_positive() -> None:
    q = queued(CHURN_RULE, 1_000)
    assert resolve_event(q, CHURN_RULE, "click", 1_000) == []  # not newer
    assert [y for _, y in resolve_event(q, CHURN_RULE, "click", 1_000 + D)] == [0]
    q = queued(CHURN_RULE, 1_000)
    assert [y for _, y in resolve_event(q, CHURN_RULE, "purchase", 1_000 + D + 1)] == [1]


def test_churn_watermark_past_horizon_is_positive() -> None:
    q = queued(CHURN_RULE, 1_000, 5_000)
    assert resolve_watermark(q, CHURN_RULE, 1_000 + D) == []
    assert [(s.ts, y) for s, y in resolve_watermark(q, CHURN_RULE, 1_000 + D + 1)] == [(1_000, 1)]
    assert [s.ts for s in q.snapshots] == [5_000]


def test_held_labels_wait_for_the_horizon_and_an_event_never_changes_them() -> None:
    rule = LabelRule(CHURN, horizon_ms=D, max_pending=8)  # hold is the default
    q = queued(rule, 1_000, 2_000)
    assert resolve_event(q, rule, "purchase", 3_000) == []  # both settled (came back), nothing out yet
    assert [s.y for s in q.snapshots] == [0, 0]
    add(q, rule, 3_000, X, 0.4)
    resolve_event(q, rule, "purchase", 3_000 + D + 5)  # settles only the open one, as churned
    assert [s.y for s in q.snapshots] == [0, 0, 1]
    assert [(s.ts, y) for s, y in resolve_watermark(q, rule, 2_000 + D + 1)] == [(1_000, 0), (2_000, 0)]
    assert Pending.from_bytes(q.to_bytes()) == q  # the held label is part of the record


def test_the_bound_releases_a_held_label_instead_of_dropping_it() -> None:
    rule = LabelRule(INTENT, horizon_ms=H, max_pending=2)
    q = queued(rule, 1, 2)
    resolve_event(q, rule, "purchase", 3)
    evicted = add(q, rule, 4, X, 0.1)
    assert evicted is not None and (evicted.ts, evicted.y) == (1, 1) and q.dropped == 0
    evicted = add(q, rule, 5, X, 0.1)
    assert evicted.y == 1 and q.dropped == 0
    evicted = add(q, rule, 6, X, 0.1)
    assert evicted.y == -1 and q.dropped == 1


# --- exactly once, never before the prediction, same labels as brute force --------------------

events_strategy = st.lists(
    st.tuples(st.integers(0, 3 * H), st.sampled_from(["click", "add_to_cart", "purchase"])), max_size=40
)


def brute_force(rule: LabelRule, t: int, events: list[tuple[int, str]]) -> int:
    if rule.task == INTENT:
        return int(any(t < ts <= t + rule.horizon_ms and k == "purchase" for ts, k in events))
    return int(not any(t < ts <= t + rule.horizon_ms for ts, _ in events))


@settings(max_examples=120, deadline=None)
@given(events_strategy, st.sampled_from(["intent", "churn"]), st.integers(1, 6), st.booleans())
def test_each_prediction_is_resolved_exactly_once_after_it_was_made_with_the_true_label(
    raw: list[tuple[int, str]], task: str, bound: int, hold: bool
) -> None:
    rule = LabelRule(task, horizon_ms=H if task == INTENT else H // 2, max_pending=bound, hold=hold)
    events = sorted(raw)
    q = Pending()
    made: list[int] = []  # stream positions where a prediction was queued
    dropped: list[int] = []
    resolved: list[tuple[int, int, int]] = []  # (position made, position resolved, label)

    def take(done: list, at: int) -> None:
        resolved.extend((int(s.x[0]), at, y) for s, y in done)  # x[0] carries the position made

    for pos, (ts, kind) in enumerate(events):
        take(resolve_event(q, rule, kind, ts), pos)
        if task == CHURN or kind != "purchase":
            made.append(pos)
            evicted = add(q, rule, ts, [float(pos)], 0.5)
            if evicted is not None and evicted.y >= 0:
                take([(evicted, evicted.y)], pos)  # a held label released early by the bound
            elif evicted is not None:
                dropped.append(int(evicted.x[0]))
        take(resolve_watermark(q, rule, ts - 10), pos)
    take(resolve_watermark(q, rule, 10 * H), len(events))

    assert len(q) == 0 and q.dropped == len(dropped)
    learned = [m for m, _, _ in resolved]
    assert sorted(learned + dropped) == made  # every prediction: learned once, or dropped
    for m, at, y in resolved:
        assert m < at  # the label came after the prediction was made (later in the stream)
        assert y == brute_force(rule, events[m][0], events)


# --- bound -----------------------------------------------------------------------------------


def test_pending_is_bounded_and_the_oldest_prediction_is_the_one_dropped() -> None:
    rule = LabelRule(INTENT, horizon_ms=H, max_pending=4)
    q = Pending()
    evicted = [add(q, rule, t, X, 0.1) for t in range(10)]
    assert len(q) == 4 and q.dropped == 6
    assert [s.ts for s in q.snapshots] == [6, 7, 8, 9]
    assert [e.ts for e in evicted if e is not None] == [0, 1, 2, 3, 4, 5]


def test_a_late_prediction_is_kept_in_time_order() -> None:
    q = queued(INTENT_RULE, 100, 300, 200)
    assert [s.ts for s in q.snapshots] == [100, 200, 300]


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        LabelRule("intent", horizon_ms=0)
    with pytest.raises(ValueError):
        LabelRule("nope", horizon_ms=1)
    with pytest.raises(ValueError):
        LabelRule("intent", horizon_ms=1, max_pending=256)


# --- storage ---------------------------------------------------------------------------------

vectors = st.lists(st.floats(-1e6, 1e6, width=32), min_size=54, max_size=54)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**50), st.floats(0, 1), vectors), max_size=8), st.integers(0, 70_000)
)
def test_pending_round_trips_exactly_and_costs_only_its_non_zero_features(snaps, dropped) -> None:
    q = Pending(dropped=dropped)
    for ts, p, x in snaps:
        add(q, LabelRule(INTENT, H, max_pending=8), ts, x, p)
    data = q.to_bytes()
    back = Pending.from_bytes(data)
    assert back == Pending(q.snapshots, min(dropped, 0xFFFF))
    nonzero = sum(int(np.count_nonzero(np.asarray(x, np.float32))) for _ts, _p, x in snaps)
    steps = np.diff([0] + [s.ts for s in q.snapshots])  # >= 0: the queue is sorted
    # per snapshot the head (time step << 3 | open label 0, and 3 bits of length), p, the mask, the values
    heads = sum((int(d << 3).bit_length() + 10) >> 3 for d in steps)
    assert len(data) == 6 + heads + len(q) * (4 + 7) + 2 * nonzero  # bfloat16 values


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-(2**56), 2**56), st.sampled_from([-1, 0, 1])), max_size=8))
def test_any_times_and_labels_round_trip_also_out_of_order(heads) -> None:
    # The queue is sorted when built with add(); the format does not depend on it.
    q = Pending([Snapshot(ts, 0.5, [1.0, 0.0], y) for ts, y in heads])
    back = Pending.from_bytes(q.to_bytes())
    assert [(s.ts, s.y) for s in back.snapshots] == heads


def test_a_time_step_beyond_the_format_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Pending([Snapshot(2**58, 0.5, [1.0])]).to_bytes()


def test_time_steps_cost_a_few_bytes() -> None:
    q = queued(INTENT_RULE, 1_700_000_000_000, 1_700_000_005_000, 1_700_000_065_000)
    alone = len(Pending(q.snapshots[:1]).to_bytes())  # head 6, varint, p 4, mask and values
    body = alone - 6 - 6 - 4  # 1.7e12 ms << 3 takes 44 bits, with 3 length bits 6 bytes (version 2: 8 and 1)
    # the 5 s and 60 s steps take 3 bytes each (40,000 and 480,000 after the shift)
    assert len(q.to_bytes()) == 6 + (6 + 3 + 3) + 3 * (4 + body)


def test_a_typical_snapshot_is_small() -> None:
    x = np.zeros(54, dtype=np.float32)
    x[:20] = np.arange(1, 21)  # about what a shopper's features look like: most are zero
    q = Pending()
    add(q, INTENT_RULE, 1_700_000_000_000, x, 0.2)
    add(q, INTENT_RULE, 1_700_000_030_000, x, 0.3)  # 30 s later
    # head; per snapshot the time (6 bytes from 0, then 3 for the step), p, 7-byte mask, values
    assert len(q.to_bytes()) == 6 + (6 + 4 + 7 + 40) + (3 + 4 + 7 + 40)


def test_records_of_another_version_or_cut_short_are_refused() -> None:
    data = queued(INTENT_RULE, 5).to_bytes()
    with pytest.raises(ValueError, match="version"):
        Pending.from_bytes(bytes([9]) + data[1:])
    with pytest.raises(ValueError, match="trailing"):
        Pending.from_bytes(data + b"\x00")
    for cut in (len(data) - 1, len(data) - 4, 12):  # inside the values, and inside a header
        with pytest.raises(ValueError, match="cut short"):
            Pending.from_bytes(data[:cut])
    assert Pending.from_bytes(b"") == Pending()


def test_user_pending_holds_both_queues() -> None:
    up = UserPending(queued(INTENT_RULE, 1, 2), queued(CHURN_RULE, 3))
    back = UserPending.from_bytes(up.to_bytes())
    assert back == up and [s.ts for s in back.churn.snapshots] == [3]
    assert isinstance(back.intent.snapshots[0], Snapshot)


def test_a_stored_snapshot_decodes_its_vector_on_use_and_stores_the_same_bytes() -> None:
    q = Pending()
    x = np.array([0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0], dtype=np.float32)  # 9: a 2-byte mask
    add(q, INTENT_RULE, 7, x, 0.25)
    data = q.to_bytes()
    back = Pending.from_bytes(data)
    snap = back.snapshots[0]
    assert snap.n_features == 9 and back.to_bytes() == data  # stored again without decoding
    assert snap.x.dtype == np.float32 and np.array_equal(snap.x, x) and back == q


@settings(max_examples=60, deadline=None)
@given(vectors)
def test_a_queued_vector_is_learned_as_stored_whether_or_not_it_was_stored(x) -> None:
    q = Pending()
    add(q, INTENT_RULE, 1, x, 0.5)
    kept = q.snapshots[0].x  # what a model learns if the label comes before the record is stored
    stored = Pending.from_bytes(q.to_bytes()).snapshots[0].x  # ... and if it comes after
    assert kept.dtype == np.float32 and np.array_equal(kept, stored) and np.array_equal(kept, round_bf16(x))
    exact = np.asarray(x, dtype=np.float32)
    # at most half a unit in bfloat16's 8 significant bits (subnormal floats: below 1e-38 anyway)
    assert np.all(np.abs(kept - exact) <= np.maximum(np.abs(exact) * 2.0**-8, 1e-38))


any_vector = st.integers(1, 70).flatmap(
    lambda n: st.lists(st.one_of(st.just(0.0), st.floats(width=32, allow_nan=True, allow_infinity=True)), min_size=n, max_size=n)
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1, width=32), any_vector, st.booleans()), max_size=12))
def test_encoding_a_batch_of_snapshots_together_gives_each_ones_own_bytes(snaps) -> None:
    """encode_all (what a worker runs on a batch's records) against one snapshot at a time, over
    mixed vector lengths, zeros, NaN and infinities, with some snapshots encoded already."""
    together = [Snapshot(i, p, x) for i, (p, x, _pre) in enumerate(snaps)]
    alone = [Snapshot(i, p, x) for i, (p, x, _pre) in enumerate(snaps)]
    for snap, (_p, _x, pre) in zip(together, snaps, strict=True):
        if pre:
            snap._encoded()
    assert encode_all(together) == sum(not pre for _p, _x, pre in snaps)
    assert [s._encoded() for s in together] == [s._encoded() for s in alone]
    assert encode_all(together) == 0  # nothing left to encode


def test_version_1_records_with_float32_values_are_still_read() -> None:
    x = np.zeros(9, dtype=np.float32)
    x[[1, 3, 8]] = [1.5, -2.0, 3.14159]
    nz = x != 0
    v1 = (
        struct.pack("<BHBH", 1, 3, 1, 9)
        + struct.pack("<qfb", 7, 0.25, 1)
        + np.packbits(nz, bitorder="little").tobytes()
        + x[nz].tobytes()
    )
    back = Pending.from_bytes(v1)
    assert back.dropped == 3 and [(s.ts, s.p, s.y) for s in back.snapshots] == [(7, 0.25, 1)]
    assert np.array_equal(back.snapshots[0].x, round_bf16(x))  # learned as if queued now
    again = back.to_bytes()
    # version 3: 2-byte values, and 2 bytes for ts 7 and label 1 (7 << 5 | 2 << 3 | 1) and 4 for p
    assert again[0] == 3 and len(again) == len(v1) - 2 * 3 - (13 - 6) and Pending.from_bytes(again) == back


def test_version_2_records_are_still_read() -> None:
    x = np.zeros(9, dtype=np.float32)
    x[[1, 3, 8]] = [1.5, -2.0, 3.0]  # bfloat16 exactly
    nz = x != 0
    body = np.packbits(nz, bitorder="little").tobytes() + (x[nz].view(np.uint32) >> 16).astype("<u2").tobytes()
    v2 = (
        struct.pack("<BHBH", 2, 0, 2, 9)
        + struct.pack("<qfb", 1_700_000_000_000, 0.25, -1) + body
        + struct.pack("<qfb", 1_700_000_060_000, 0.5, 1) + body
    )
    back = Pending.from_bytes(v2)
    assert [(s.ts, s.p, s.y) for s in back.snapshots] == [(1_700_000_000_000, 0.25, -1), (1_700_000_060_000, 0.5, 1)]
    assert all(np.array_equal(s.x, x) for s in back.snapshots)
    again = back.to_bytes()
    assert again[0] == 3 and len(again) == len(v2) - (13 - 10) - (13 - 7) and Pending.from_bytes(again) == back
