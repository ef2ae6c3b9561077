"""Evaluation tasks and metrics: hand-built event lists and hand-computed metric values, a
brute-force cross-check of the label functions, and the real excerpts when ../shared/data exists."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.datasets.importers import day_start_ms, load_events
from models.datasets.tasks import (
    DAY_MS,
    MINUTE_MS,
    average_ranks,
    churn_labels,
    hit_rate_at_k,
    intent_labels,
    mrr_at_k,
    next_category_targets,
    pr_auc,
    roc_auc,
)
from models.events import Event

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def ev(user: str, etype: str, ts: int, cat: str | None = None) -> Event:
    return Event(f"{user}-{etype}-{ts}", user, etype, ts, category_id=cat)


# --- purchase intent -------------------------------------------------------------------------


def test_intent_horizon_is_open_at_t_and_closed_at_t_plus_h():
    events = [
        ev("u", "click", 0),  # buy at 10 = t + H: inside
        ev("u", "add_to_cart", 5),  # buy at 10: inside
        ev("u", "purchase", 10),
        ev("u", "click", 10),  # buy at the same ts does not count; next buy at 25 > 20
        ev("u", "search", 14),  # buy at 25 > 24: outside
        ev("u", "purchase", 25),
        ev("u", "click", 30),  # 30 + 10 > 35 = end: not labelled
        ev("v", "click", 35),
    ]
    assert intent_labels(events, horizon_ms=10) == [(0, 1), (1, 1), (3, 0), (4, 0)]


def test_intent_only_counts_the_same_users_purchases():
    events = [ev("u", "click", 0), ev("v", "purchase", 5), ev("w", "click", 100)]
    assert intent_labels(events, horizon_ms=10) == [(0, 0)]


def test_intent_end_ts_extends_the_labelled_range():
    events = [ev("u", "click", 0), ev("u", "click", 95), ev("u", "click", 100)]
    assert intent_labels(events, 10) == [(0, 0)]
    assert intent_labels(events, 10, end_ts=110) == [(0, 0), (1, 0), (2, 0)]


def test_intent_rejects_unsorted_input_and_bad_horizon():
    with pytest.raises(ValueError, match="sorted by ts"):
        intent_labels([ev("u", "click", 5), ev("u", "click", 1)], 10)
    with pytest.raises(ValueError, match="positive"):
        intent_labels([ev("u", "click", 5)], 0)
    assert intent_labels([], 10) == []


TYPES = st.sampled_from(["click", "add_to_cart", "purchase", "search"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), TYPES, st.integers(0, 60)), max_size=30),
    st.integers(1, 30),
)
def test_intent_matches_brute_force(rows, horizon):
    events = [ev(u, t, ts) for u, t, ts in sorted(rows, key=lambda r: r[2])]
    end = max((e.ts for e in events), default=0)
    expected = [
        (
            i,
            int(
                any(
                    b.user == e.user and b.type == "purchase" and e.ts < b.ts <= e.ts + horizon
                    for b in events
                )
            ),
        )
        for i, e in enumerate(events)
        if e.type != "purchase" and e.ts + horizon <= end
    ]
    assert intent_labels(events, horizon) == expected


# --- churn -----------------------------------------------------------------------------------


def test_churn_labels_every_customer_seen_by_the_cutoff():
    events = [
        ev("a", "purchase", 0),  # buys again inside the horizon: 0
        ev("b", "purchase", 5),  # never again: 1
        ev("c", "click", 10),  # seen (a click) at the cut-off, then buys: 0
        ev("a", "purchase", 50),
        ev("c", "purchase", 110),  # 110 = cutoff + horizon: inside
        ev("b", "purchase", 111),  # after the horizon: does not save b
        ev("d", "purchase", 60),  # first seen after the cut-off: not labelled
    ]
    events.sort(key=lambda e: e.ts)
    assert churn_labels(events, cutoff_ms=10, horizon_ms=100) == {"a": 0, "b": 1, "c": 0}


def test_churn_ignores_non_purchases_after_the_cutoff():
    events = [ev("a", "purchase", 0), ev("a", "click", 20)]
    assert churn_labels(events, cutoff_ms=10, horizon_ms=100) == {"a": 1}


def test_churn_default_horizon_is_90_days():
    events = [
        ev("a", "purchase", 0),
        ev("b", "purchase", 0),
        ev("a", "purchase", 90 * DAY_MS),
        ev("b", "purchase", 90 * DAY_MS + 1),
    ]
    assert churn_labels(events, cutoff_ms=0) == {"a": 0, "b": 1}


# --- latent need -----------------------------------------------------------------------------


def test_next_category_is_the_users_next_event():
    events = [
        ev("u", "click", 0, "c1"),
        ev("v", "click", 1, "c9"),
        ev("u", "click", 2),  # no category: u's event 0 gets no target
        ev("u", "add_to_cart", 3, "c1"),  # target of event 2, though event 2 has no category
        ev("v", "click", 3, "c9"),  # repeat of the same category is a target
        ev("u", "purchase", 4, "c2"),
    ]
    assert next_category_targets(events) == [(1, "c9"), (2, "c1"), (3, "c2")]


def test_next_category_ties_in_ts_keep_list_order():
    events = [ev("u", "click", 5, "a"), ev("u", "click", 5, "b"), ev("u", "click", 5, "c")]
    assert next_category_targets(events) == [(0, "b"), (1, "c")]


# --- ranking metrics -------------------------------------------------------------------------


def test_hit_rate_and_mrr_hand_computed():
    ranked = [["a", "b", "c"], ["b", "a"], ["x", "y", "z"], ["c", "d", "a"]]
    targets = ["a", "a", "a", {"d", "q"}]
    # ranks of the first hit: 1, 2, none, 2
    assert hit_rate_at_k(ranked, targets, k=1) == 0.25
    assert hit_rate_at_k(ranked, targets, k=2) == 0.75
    assert mrr_at_k(ranked, targets, k=2) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert mrr_at_k(ranked, targets, k=1) == 0.25


def test_string_targets_are_single_items_not_character_sets():
    assert hit_rate_at_k([["c", "1"]], ["c1"], k=10) == 0.0


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        hit_rate_at_k([["a"]], ["a"], k=0)
    with pytest.raises(ValueError, match="targets"):
        mrr_at_k([["a"], ["b"]], ["a"], k=1)
    with pytest.raises(ValueError, match="no cases"):
        mrr_at_k([], [], k=1)


# --- ROC AUC and PR AUC ----------------------------------------------------------------------


def test_average_ranks_ties():
    assert average_ranks([3, 1, 3, 3, 2]).tolist() == [4.0, 1.0, 4.0, 4.0, 2.0]


def test_roc_auc_hand_computed():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # pairs (pos, neg): (0.35>0.1), (0.35<0.4), (0.8>0.1), (0.8>0.4) -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1 + 1 + 1) / 6
    assert roc_auc([1, 0, 1, 0, 1], [0.5, 0.5, 0.9, 0.1, 0.7]) == pytest.approx(5.5 / 6)
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_roc_auc_equals_pairwise_count_on_random_data():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200) / 10  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(y, s) == pytest.approx(pairwise)


def test_pr_auc_hand_computed():
    # ranking 1,0,1,0: P@1 = 1 at R = 1/2, P@3 = 2/3 at R = 1 -> 0.5 + 0.5 * 2/3
    assert pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    assert pr_auc([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.1]) == 1.0
    # one tied group of all four: one threshold, P = 2/4 at R = 1
    assert pr_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # tie of a positive and a negative at the top: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert pr_auc([1, 0, 1], [0.9, 0.9, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_pr_auc_does_not_depend_on_the_order_of_tied_scores():
    y = [1, 0, 0, 1, 0, 1]
    s = [0.4, 0.4, 0.4, 0.9, 0.1, 0.1]
    values = {
        round(pr_auc([y[i] for i in p], [s[i] for i in p]), 12) for p in itertools.permutations(range(6))
    }
    assert len(values) == 1


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="both classes"):
        pr_auc([0, 0], [0.2, 0.3])
    with pytest.raises(ValueError, match="equal length"):
        roc_auc([0, 1], [0.2])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        pr_auc([0, 1], [0.2, float("nan")])


# --- the real excerpts (skipped without ../shared/data) ---------------------------------------


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def test_real_taobao_intent_labels_are_consistent():
    events, _ = load_events(real("taobao-userbehavior/userbehavior_users_tailsample_9days.csv.gz"), "taobao")
    labels = intent_labels(events, 30 * MINUTE_MS)
    end = events[-1].ts
    assert labels and all(
        events[i].type != "purchase" and events[i].ts + 30 * MINUTE_MS <= end for i, _ in labels
    )
    positives = sum(y for _, y in labels)
    # a positive needs a buyer; 74 of the 114 users buy (SOURCE.md)
    assert 0 < positives < len(labels)
    assert len({events[i].user for i, y in labels if y}) <= 74


def test_real_cdnow_churn_at_end_of_1997():
    events, _ = load_events(real("cdnow/CDNOW_master_through_1998-03-31.txt.gz"), "cdnow")
    cutoff = day_start_ms(date(1998, 1, 1)) - 1  # end of 1997-12-31
    labels = churn_labels(events, cutoff)  # horizon ends 1998-03-31 23:59:59.999 = end of the file
    assert len(labels) == 23_570  # the whole cohort made its first purchase in Q1 1997
    rate = sum(labels.values()) / len(labels)
    assert 0.5 < rate < 0.95  # most of a one-off-buyer cohort does not come back within 90 days
    # days since the last purchase must be an informative churn score on this data
    last: dict[str, int] = {}
    for e in events:
        if e.ts <= cutoff:
            last[e.user] = e.ts
    users = list(labels)
    assert roc_auc([labels[u] for u in users], [cutoff - last[u] for u in users]) > 0.7
