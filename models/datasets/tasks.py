"""The product's evaluation tasks, as pure functions over events sorted by time, and their metrics.

The definitions follow ``../shared/data/README.md``:

* **Purchase intent** (:func:`intent_labels`): for every non-purchase event of a user at ``t``,
  label 1 if the same user purchases in ``(t, t + H]``. Only events whose whole horizon lies
  inside the data (``t + H <= end``) are labelled, so a user does not look like a non-buyer just
  because the log ends.
* **Churn** (:func:`churn_labels`): at a cut-off, for every customer seen so far, label 1 if
  they make no purchase in ``(cutoff, cutoff + horizon]``.
* **Latent need** (:func:`next_category_targets`): for each event, the category of the user's
  next event; scored with :func:`hit_rate_at_k` and :func:`mrr_at_k`.

Label functions return indices into the input list, so callers keep their events (and their
features) where they are and join by index. They assume the list is sorted by ``ts`` (as
:func:`models.datasets.importers.load_events` returns it) and raise ``ValueError`` otherwise:
with unsorted input "the next event" and "the horizon" silently mean something else.

:func:`roc_auc` and :func:`pr_auc` are plain numpy so evaluation needs no scikit-learn.

>>> from models.events import Event
>>> evs = [Event("1", "u", "click", 0), Event("2", "u", "purchase", 5), Event("3", "u", "click", 20)]
>>> intent_labels(evs, horizon_ms=10)
[(0, 1)]
>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Hashable, Sequence
from typing import Any

import numpy as np

from models.events import Event

DAY_MS = 86_400_000
MINUTE_MS = 60_000


def _check_sorted(events: Sequence[Event]) -> None:
    for i in range(1, len(events)):
        if events[i].ts < events[i - 1].ts:
            raise ValueError(
                f"events must be sorted by ts: event {i} (ts {events[i].ts}) comes after "
                f"event {i - 1} (ts {events[i - 1].ts})"
            )


def intent_labels(
    events: Sequence[Event], horizon_ms: int, *, end_ts: int | None = None
) -> list[tuple[int, int]]:
    """Purchase-intent labels: ``(index, 1 if the user buys in (t, t+H] else 0)``.

    Every non-purchase event (click, search, add_to_cart) at ``t`` whose horizon ends inside
    the data, ``t + horizon_ms <= end_ts``, gets a label; ``end_ts`` defaults to the largest
    ``ts`` in ``events`` (pass the log's documented end when it is known to be later). The
    interval is open at ``t``: a purchase with the same timestamp as the event does not count,
    because a prediction at ``t`` may use only events at or before ``t`` and so could have seen
    it. Results are in index order.

    >>> from models.events import Event
    >>> evs = [Event("a", "u", "click", 0), Event("b", "v", "click", 1),
    ...        Event("c", "u", "purchase", 10), Event("d", "v", "click", 12), Event("e", "u", "click", 30)]
    >>> intent_labels(evs, horizon_ms=10)
    [(0, 1), (1, 0), (3, 0)]
    >>> intent_labels(evs, horizon_ms=10, end_ts=40)
    [(0, 1), (1, 0), (3, 0), (4, 0)]
    """
    if horizon_ms <= 0:
        raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
    _check_sorted(events)
    if not events:
        return []
    end = events[-1].ts if end_ts is None else end_ts
    buys: dict[str, list[int]] = {}
    for ev in events:
        if ev.type == "purchase":
            buys.setdefault(ev.user, []).append(ev.ts)  # sorted, since events are
    out: list[tuple[int, int]] = []
    for i, ev in enumerate(events):
        if ev.type == "purchase" or ev.ts + horizon_ms > end:
            continue
        times = buys.get(ev.user, ())
        j = bisect.bisect_right(times, ev.ts)  # first purchase strictly after t
        out.append((i, int(j < len(times) and times[j] <= ev.ts + horizon_ms)))
    return out


def churn_labels(events: Sequence[Event], cutoff_ms: int, horizon_ms: int = 90 * DAY_MS) -> dict[str, int]:
    """Churn labels at a cut-off: ``{user: 1 if no purchase in (cutoff, cutoff+horizon] else 0}``.

    Every user with at least one event at or before ``cutoff_ms`` is labelled (first-seen order).
    Users who appear only after the cut-off are not: the model cannot know them yet. The caller
    must make sure the data reaches ``cutoff_ms + horizon_ms``; otherwise late buyers look like
    churners. For day-resolution data (CDNOW) use the end of the cut-off day,
    e.g. ``day_start_ms(1998-01-01) - 1`` for "cut-off 1997-12-31".

    >>> from models.events import Event
    >>> evs = [Event("a", "u", "purchase", 0), Event("b", "v", "purchase", 1),
    ...        Event("c", "u", "purchase", 50), Event("d", "w", "purchase", 60)]
    >>> churn_labels(evs, cutoff_ms=10, horizon_ms=100)
    {'u': 0, 'v': 1}
    """
    if horizon_ms <= 0:
        raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
    _check_sorted(events)
    labels: dict[str, int] = {}
    for ev in events:
        if ev.ts <= cutoff_ms:
            labels.setdefault(ev.user, 1)
        elif ev.ts <= cutoff_ms + horizon_ms:
            if ev.type == "purchase" and ev.user in labels:
                labels[ev.user] = 0
        else:
            break
    return labels


def next_category_targets(events: Sequence[Event]) -> list[tuple[int, str]]:
    """Latent-need targets: ``(index, category of the same user's next event)``.

    "Next" is the user's following event in the list (the list is sorted by ``ts``; events with
    equal ``ts`` keep list order, which is file order for :func:`load_events`). An event gets no
    target when it is the user's last one, or when that next event has no ``category_id``. The
    event itself may lack a category. A repeat of the current category is a valid target (it is
    common, and a "same category again" baseline should get credit for it). Results are in
    index order.

    >>> from models.events import Event
    >>> evs = [Event("a", "u", "click", 0, category_id="c1"), Event("b", "v", "click", 1, category_id="c9"),
    ...        Event("c", "u", "click", 2, category_id="c2"), Event("d", "u", "purchase", 3)]
    >>> next_category_targets(evs)
    [(0, 'c2')]
    """
    _check_sorted(events)
    last_index: dict[str, int] = {}
    out: list[tuple[int, str]] = []
    for j, ev in enumerate(events):
        i = last_index.get(ev.user)
        if i is not None and ev.category_id is not None:
            out.append((i, ev.category_id))
        last_index[ev.user] = j
    out.sort()
    return out


# ---------------------------------------------------------------------------------------------
# Ranking metrics


def _relevant(target: Any) -> Collection[Hashable]:
    # A target is one item or a set of them; a str is one item, not a set of characters.
    if isinstance(target, (set, frozenset, list, tuple)):
        return set(target)
    return {target}


def ranks_at_k(ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Any], k: int) -> list[int | None]:
    """1-based rank of the first relevant item within the top ``k`` of each list, else None.

    >>> ranks_at_k([["a", "b", "c"], ["x", "y"]], ["b", "z"], k=3)
    [2, None]
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    if not ranked_lists:
        raise ValueError("no cases to score")
    out: list[int | None] = []
    for ranked, target in zip(ranked_lists, targets, strict=True):
        rel = _relevant(target)
        out.append(next((r for r, item in enumerate(ranked[:k], 1) if item in rel), None))
    return out


def hit_rate_at_k(ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Any], k: int = 10) -> float:
    """Share of cases whose target (or any of a set of targets) is in the top ``k`` predictions.

    >>> hit_rate_at_k([["a", "b", "c"], ["x", "y"]], ["c", "z"], k=3)
    0.5
    >>> hit_rate_at_k([["a", "b", "c"]], [{"q", "b"}], k=2)
    1.0
    """
    ranks = ranks_at_k(ranked_lists, targets, k)
    return sum(r is not None for r in ranks) / len(ranks)


def mrr_at_k(ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Any], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant prediction, counting 0 beyond rank ``k``.

    >>> mrr_at_k([["a", "b", "c"], ["x", "y"], ["y", "x"]], ["c", "x", "x"], k=2)
    0.5
    """
    ranks = ranks_at_k(ranked_lists, targets, k)
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


# ---------------------------------------------------------------------------------------------
# Binary classification metrics


def _binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels and scores must be 1-d and of equal length, got {y.shape} and {s.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or inf)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("labels must contain both classes; the metric is undefined otherwise")
    return y, s


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, tied values sharing their average rank.

    >>> average_ranks([0.5, 0.1, 0.5, 0.9]).tolist()
    [2.5, 1.0, 2.5, 4.0]
    """
    v = np.asarray(values, dtype=float)
    uniq, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (Mann-Whitney U with average ranks).

    >>> roc_auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9])
    0.875
    """
    y, s = _binary_inputs(labels, scores)
    ranks = average_ranks(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(labels: Any, scores: Any) -> float:
    """Area under the precision-recall curve as average precision (no interpolation).

    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds from high to low, where
    ``P_k``/``R_k`` are precision and recall when everything scoring at least the k-th threshold
    is predicted positive. Tied scores form one threshold, so their order cannot change the
    result. Its baseline is the positive rate, not 0.5.

    >>> pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    0.8333333333333333
    """
    y, s = _binary_inputs(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    # last position of each run of equal scores = the cut for that threshold
    cut = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tp_at = tp[cut].astype(float)
    precision = tp_at / (cut + 1)
    recall = tp_at / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


__all__ = [
    "DAY_MS",
    "MINUTE_MS",
    "average_ranks",
    "churn_labels",
    "hit_rate_at_k",
    "intent_labels",
    "mrr_at_k",
    "next_category_targets",
    "pr_auc",
    "ranks_at_k",
    "roc_auc",
]
