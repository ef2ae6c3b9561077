"""Offline evaluation of the product's three tasks through the stream's own code path.

Every event is replayed in event-time order through the worker's own pipeline step (a
:class:`Replay`, handed in by ``intentstream evaluate``: ``stream.logic.replay``), with nothing
added: the per-user state, the online features, the online models scoring, queueing and learning
with delayed labels (the watermark settles expired labels), the signal policy, and the sequence
model reading ``state.recent``, the ring the stream keeps. So the figures are what the served
scores would have been, not what a re-implementation of the stream would give.

Protocol (:func:`evaluate`):

1. The *train* events are replayed first (they warm the state and teach the online models); the
   sequence model is trained on the train events only (its own early stopping uses the last 20%
   of the train time range, never the test events).
2. The *test* events are replayed next. The online models keep learning on them with delayed
   labels (progressive validation: each event is scored before its own label can be known, as in
   production). Only test events are scored.
3. Labels follow ``../shared/data/README.md`` (:mod:`models.datasets.tasks`); a label whose window
   runs past the end of the test data is excluded (intent: ``t + H > end``; churn: the cut-off
   plus the horizon must lie inside the data, otherwise it is an error).

Models compared on exactly the same rows:

==========  ======================================================================================
baseline    intent: ``log1p_purchase_total`` (how much the user has bought so far; ties broken by
            items in the cart); churn: days since the last purchase (recency); latent: the user's
            own 10 most frequent categories so far (exact counts).
online      intent: the online score the worker serves at the event (the River learner's probability
            once warm, the rule before); churn: the River learner's probability at the cut-off
            (``PartitionLearners``); latent: the state's decayed category affinity
            (``state.categories``, at most ``top_k_categories``).
sequence    the GRU's state after every event the user had so far, as a worker keeps it
            (:class:`Histories`): ``p_intent``, ``p_churn`` (trained with ``churn_ms`` = the
            churn horizon) or the top-10 category buckets.
blend       intent/churn: the mean of the online and sequence logits (a fixed rule: nothing is
            fitted, so nothing can leak from the test part); latent: reciprocal-rank fusion of
            the sequence list and the online list, ``sum 1 / (10 + rank)``.
==========  ======================================================================================

Every ROC AUC, PR AUC, HR@10 and MRR@10 comes with a 95% interval from a bootstrap over the test
users (:mod:`models.bootstrap`: users are drawn with replacement and all rows of a drawn user
count), one draw shared by the four models, so the report also gives paired intervals for the
difference of every two models.

Category hits of the sequence model (and the blend) are counted on hash buckets (the model
predicts buckets; two categories share a bucket with probability ~1e-4); the baseline and the
online list are compared by category id.

This module does not import ``stream/``; the ``intentstream evaluate`` command hands it the replay.
Plots need matplotlib (the ``eval`` extra); without it the report is still written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.blend import blend_binary_array, rrf
from models.bootstrap import RESAMPLES, SEED, UserBootstrap, interval, paired_difference
from models.datasets import tasks
from models.datasets.tasks import DAY_MS, MINUTE_MS
from models.events import Event
from models.features.hashing import stable_hash
from models.features.online import online_features
from models.features.recent import RecentEvent
from models.features.state import APPLIED, StateConfig, UserState
from models.online.learner import PartitionLearners
from models.sequence.config import SeqConfig
from models.sequence.data import hash_bucket

TASKS = ("intent", "churn", "latent")
TEST_PART = 1  # the input partition the test part is replayed as (see Replay.event)
MODELS = ("baseline", "online", "sequence", "blend")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. ``horizon_ms`` defaults to 30 min (intent) or 90 days (churn);
    ``cutoff_ms`` (churn) to the end of the data minus the horizon. ``seq`` overrides the sequence
    model's config (its ``churn_ms`` is set to the churn horizon for the churn task)."""

    task: str
    horizon_ms: int | None = None
    cutoff_ms: int | None = None
    seq: SeqConfig = dataclasses.field(default_factory=SeqConfig)
    seq_max_seconds: float | None = None
    state: StateConfig = dataclasses.field(default_factory=StateConfig)
    online_model: str | None = None  # None: the learner's default family for the task
    k: int = 10
    score_batch: int = 256
    bootstrap_resamples: int = RESAMPLES
    bootstrap_seed: int = SEED

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.horizon_ms is None:
            object.__setattr__(self, "horizon_ms", 90 * DAY_MS if self.task == "churn" else 30 * MINUTE_MS)


# ---------------------------------------------------------------------------------------- replay
class Replay(Protocol):
    """The stream's processing of one partition, one event at a time, in event-time order: the
    worker's own pipeline step (``stream.logic.replay.PipelineReplay``; this package does not
    import ``stream/``, so the caller hands it in)."""

    states: Mapping[str, UserState]

    def event(self, ev: Event, part: int = 0) -> tuple[str, UserState, float | None]:
        """Apply ``ev`` as an event of input partition ``part``: its status, the user's state after
        it, the online score served at it. Train and test are replayed as two partitions, each with
        its own watermark: test events may span the same time as the train events (a split by
        user), and the train part's watermark would close every test label at once."""

    def advance(self, watermark: int) -> None:
        """Move the watermark to ``watermark`` and settle what is due by then."""


# (state config, the online models or None, the churn horizon) -> a fresh replay
ReplayFactory = Callable[[StateConfig, "PartitionLearners | None", int], Replay]


# ---------------------------------------------------------------------------------------- splits
def split_by_user(events: Sequence[Event], fraction: float) -> tuple[list[Event], list[Event]]:
    """(train, test) with the users where ``stable_hash(user) % round(1 / fraction) == 0`` in test.

    ``fraction`` must be 1/n (0.5, 0.25, 0.2, 0.1...): with 0.25 this is exactly the held-back
    quarter of users of ``benchmarks/sequence_arch.py`` and docs/SEQUENCE.md, so the figures of
    the two documents are on the same users.

    >>> evs = [Event(str(i), f"u{i}", "click", i, item_id="x") for i in range(400)]
    >>> tr, te = split_by_user(evs, 0.25)
    >>> 60 < len(te) < 140, not ({e.user for e in tr} & {e.user for e in te})
    (True, True)
    """
    n = round(1 / fraction)
    if not 0 < fraction < 1 or abs(n * fraction - 1) > 1e-6:
        raise ValueError(f"--split-users must be 1/n (0.5, 0.25, 0.2, 0.1...), got {fraction}")
    test_users = {u for u in {e.user for e in events} if stable_hash(u) % n == 0}
    return [e for e in events if e.user not in test_users], [e for e in events if e.user in test_users]


# ---------------------------------------------------------------------------------------- metrics
def _binary_scores(base: list[float], online: list[float], p_seq: np.ndarray) -> dict[str, np.ndarray]:
    """The four compared models of a binary task; the blend is the mean of the two models' logits."""
    p_online = np.asarray(online)
    return {
        "baseline": np.asarray(base),
        "online": p_online,
        "sequence": p_seq,
        "blend": blend_binary_array(p_online, p_seq),  # the rule the workers serve (models.blend)
    }

def binary_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """ROC AUC, PR AUC and row counts; AUCs are None when only one class is present."""
    y = np.asarray(y, int)
    out: dict[str, Any] = {"rows": int(len(y)), "positives": int(y.sum())}
    try:
        out["roc_auc"] = round(tasks.roc_auc(y, s), 4)
        out["pr_auc"] = round(tasks.pr_auc(y, s), 4)
    except ValueError:
        out["roc_auc"] = out["pr_auc"] = None
    return out


def ranking_metrics(ranked: list[list[Any]], targets: list[Any], k: int) -> dict[str, Any]:
    if not targets:
        return {"rows": 0, f"hr@{k}": None, f"mrr@{k}": None}
    return {
        "rows": len(targets),
        f"hr@{k}": round(tasks.hit_rate_at_k(ranked, targets, k), 4),
        f"mrr@{k}": round(tasks.mrr_at_k(ranked, targets, k), 4),
    }


def reciprocal_ranks(ranked: list[list[Any]], targets: list[Any], k: int) -> np.ndarray:
    """Per row: 1 / the rank of the target within the top ``k``, 0 when it is not there. Its mean
    is MRR@k and the mean of ``> 0`` is HR@k."""
    if not targets:
        return np.zeros(0)
    return np.array([1.0 / r if r else 0.0 for r in tasks.ranks_at_k(ranked, targets, k)])


def with_intervals(
    models: dict[str, dict[str, Any]],
    samples: dict[str, dict[str, np.ndarray]],
    points: dict[str, dict[str, float]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(each model's metrics with ``<metric>_ci95`` beside each bootstrapped metric, the paired
    differences of every two models, later in :data:`MODELS` minus earlier, with their intervals).

    ``samples`` holds each model's per-resample values of one :class:`UserBootstrap`, ``points``
    the unrounded figures the differences are taken of."""
    with_ci95: dict[str, dict[str, Any]] = {}
    for m, per_metric in samples.items():
        out: dict[str, Any] = {}
        for key, value in models[m].items():
            out[key] = value
            if key in per_metric:
                out[f"{key}_ci95"] = interval(per_metric[key]) if value is not None else None
        with_ci95[m] = out
    names = [m for m in MODELS if m in samples]
    paired: dict[str, dict[str, Any]] = {}
    for j, b in enumerate(names):
        for a in names[:j]:
            diff: dict[str, Any] = {}
            for key in samples[b]:
                pa, pb = points[a].get(key), points[b].get(key)
                if pa is None or pb is None:
                    diff[key] = diff[f"{key}_ci95"] = None
                    continue
                diff[key] = round(pb - pa, 4)
                diff[f"{key}_ci95"] = paired_difference(samples[b][key], samples[a][key])
            paired[f"{b} - {a}"] = diff
    return with_ci95, paired


def _binary_with_intervals(y: np.ndarray, scores: dict[str, np.ndarray], boot: UserBootstrap):
    """(models' metrics with intervals, paired differences) of a binary task."""
    models = {m: binary_metrics(y, s) for m, s in scores.items()}
    samples, points = {}, {}
    for m, s in scores.items():
        roc, pr = boot.binary(y, s)
        samples[m] = {"roc_auc": roc, "pr_auc": pr}
        try:
            points[m] = {"roc_auc": tasks.roc_auc(y, s), "pr_auc": tasks.pr_auc(y, s)}
        except ValueError:  # one class: no metric, no difference
            points[m] = {}
    return with_intervals(models, samples, points)


def _bootstrap_summary(boot: UserBootstrap) -> dict[str, Any]:
    return {
        "over": "users",
        "users": boot.n_users,
        "resamples": boot.resamples,
        "seed": boot.seed,
        "interval": "95%, percentile (2.5th to 97.5th) of the resamples where the metric is defined",
    }


# ---------------------------------------------------------------------------------------- sequence
def _train_sequence(train: Sequence[Event], cfg: EvalConfig, out: Path):
    """Train the sequence model on the train part only; returns (scorer, training summary)."""
    from models.sequence.scorer import SequenceScorer
    from models.sequence.train import train as train_seq

    seq_cfg = cfg.seq
    if cfg.task == "churn":
        seq_cfg = dataclasses.replace(seq_cfg, churn_ms=cfg.horizon_ms)
    t0 = time.perf_counter()
    res = train_seq(list(train), seq_cfg, log=None, max_seconds=cfg.seq_max_seconds)
    path = out / "sequence.pt"
    res.save(str(path))
    scorer = SequenceScorer.load(path)  # through the checkpoint, as a worker loads it
    summary = {
        "config": {k: v for k, v in seq_cfg.to_dict().items() if v != getattr(SeqConfig, k)},
        "max_len": seq_cfg.max_len,
        "device": res.device,
        "epochs": res.metrics["epochs"],
        "best_epoch": res.metrics["best_epoch"],
        "val_on_train_part": {k: res.metrics["val"][k] for k in ("intent_auc", "hr@10", "churn_auc")},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return scorer, summary


class Histories:
    """Each user's applied events as the sequence model reads them, and the rows to score.

    A worker keeps each user's GRU state in the record and advances it by every event, so the
    state at a row is the recurrence run from zeros over every event the user had by then
    (``stream/logic/sequence_state.py``); :func:`_score_histories` computes exactly that. A model
    without a recurrent state (the transformer) reads the recent-event ring instead, as served."""

    def __init__(self) -> None:
        self.events: dict[str, list[RecentEvent]] = defaultdict(list)
        self.rows: list[tuple[str, int]] = []  # (user, events so far): the state after the last

    def add(self, ev: Event) -> None:
        self.events[ev.user].append(RecentEvent.from_event(ev))

    def row(self, user: str) -> None:
        self.rows.append((user, len(self.events[user])))


def _score_histories(scorer, hist: Histories, batch: int, k: int, latent: bool):
    """(p_intent, p_churn, top buckets) at each row of ``hist``. For the GRU: one recurrence step
    per event, all users' ``t``-th events in one call; a row's scores are those of its user's
    last event so far. ``latent``: whether the next categories are needed (the costliest head)."""
    cfg = scorer.config
    n = len(hist.rows)
    pi, pc, tb = np.zeros(n), np.zeros(n), np.zeros((n, k), np.int64)
    if not n:
        return pi, pc, tb
    if cfg.arch != "gru":
        windows = [hist.events[u][max(0, m - cfg.lookback) : m] for u, m in hist.rows]
        return _score_windows(scorer, windows, batch, k)
    want: dict[tuple[str, int], list[int]] = defaultdict(list)  # (user, position) -> rows
    for r, (u, m) in enumerate(hist.rows):
        want[(u, m - 1)].append(r)
    upto: dict[str, int] = {}
    for u, m in hist.rows:
        upto[u] = max(upto.get(u, 0), m)
    users = list(upto)
    h = np.zeros((len(users), cfg.n_layers, cfg.d_model), np.float32)
    L = cfg.lookback
    for t in range(max(upto.values())):
        live = [i for i, u in enumerate(users) if upto[u] > t]
        for s in range(0, len(live), batch):
            idx = live[s : s + batch]
            evs = [hist.events[users[i]] for i in idx]
            mask = [latent and (users[i], t) in want for i in idx]
            out = scorer.advance([e[max(0, t + 1 - L) : t + 1] for e in evs], h[idx], mask, k)
            h[idx] = out.state
            for j, i in enumerate(idx):
                for r in want.get((users[i], t), ()):
                    pi[r], pc[r], tb[r] = out.p_intent[j], out.p_churn[j], out.top_buckets[j]
    return pi, pc, tb


def _score_windows(scorer, windows: list, batch: int, k: int):
    """(p_intent, p_churn, top buckets) for each window, in batches."""
    pi, pc, tb = [], [], []
    for s in range(0, len(windows), batch):
        out = scorer.score_batch(windows[s : s + batch], k=k)
        pi.append(out.p_intent)
        pc.append(out.p_churn)
        tb.append(out.top_buckets)
    if not windows:
        return np.zeros(0), np.zeros(0), np.zeros((0, k), np.int64)
    return np.concatenate(pi), np.concatenate(pc), np.concatenate(tb)


# ---------------------------------------------------------------------------------------- tasks
def _sorted(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.ts)


def _eval_intent(train: list[Event], test: list[Event], cfg: EvalConfig, out: Path,
                 make: ReplayFactory) -> tuple[dict, dict]:  # fmt: skip
    learners = PartitionLearners.new(cfg.state, intent_horizon_ms=cfg.horizon_ms,
                                     **({"intent_model": cfg.online_model} if cfg.online_model else {}))  # fmt: skip
    replay = make(cfg.state, learners, cfg.horizon_ms)
    hist = Histories()
    for ev in train:
        if replay.event(ev)[0] == APPLIED:
            hist.add(ev)
    labels = dict(tasks.intent_labels(test, cfg.horizon_ms, end_ts=test[-1].ts))
    y, online, base, users = [], [], [], []
    skipped = 0
    for i, ev in enumerate(test):
        status, st, score = replay.event(ev, TEST_PART)
        if status == APPLIED:
            hist.add(ev)
        if i not in labels:
            continue
        if status != APPLIED or score is None:
            skipped += 1  # a duplicate or too-late event: the stream would not score it either
            continue
        f = online_features(st, ev.ts, cfg.state)
        y.append(labels[i])
        users.append(ev.user)
        online.append(score)
        base.append(f["log1p_purchase_total"] + 1e-3 * f["cart_items"])
        hist.row(ev.user)
    scorer, seq_summary = _train_sequence(train, cfg, out)
    p_seq, _, _ = _score_histories(scorer, hist, cfg.score_batch, cfg.k, latent=False)
    scores_by_model = _binary_scores(base, online, p_seq)
    yv = np.asarray(y)
    boot = UserBootstrap(users, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    models, paired = _binary_with_intervals(yv, scores_by_model, boot)
    report = {
        "labelled_test_events": len(labels),
        "not_scored_late_or_duplicate": skipped,
        "excluded_label_past_end": sum(1 for e in test if e.type != "purchase") - len(labels),
        "online_progressive_metrics": learners.intent.metrics(),
        "sequence_training": seq_summary,
        "models": models,
        "paired_differences": paired,
        "bootstrap": _bootstrap_summary(boot),
    }
    return report, {"y": yv, "scores": scores_by_model, "probabilistic": ("online", "sequence", "blend")}


def _eval_churn(train: list[Event], test: list[Event], cfg: EvalConfig, out: Path, make: ReplayFactory,
                data_end_ms: int) -> tuple[dict, dict]:  # fmt: skip
    # Churn is one cut-off over one history: train and test are the same users split by time.
    events = _sorted({e.event_id: e for e in [*train, *test]}.values())
    H = cfg.horizon_ms
    cutoff = cfg.cutoff_ms if cfg.cutoff_ms is not None else data_end_ms - H
    if cutoff + H > data_end_ms:
        raise ValueError("the churn horizon after the cut-off runs past the end of the data")
    before = [e for e in events if e.ts <= cutoff]
    if not before:
        raise ValueError("no events at or before the cut-off")
    learners = PartitionLearners.new(cfg.state, churn_horizon_ms=H,
                                     **({"churn_model": cfg.online_model} if cfg.online_model else {}))  # fmt: skip
    replay = make(cfg.state, learners, H)
    hist = Histories()
    for ev in before:
        if replay.event(ev)[0] == APPLIED:
            hist.add(ev)
    replay.advance(cutoff)  # the partition's watermark has reached the cut-off
    labels = tasks.churn_labels(events, cutoff, H)
    users = list(labels)
    y = np.array([labels[u] for u in users])
    online, base = [], []
    for u in users:
        st = replay.states[u]
        f = online_features(st, cutoff, cfg.state)
        online.append(learners.churn.predict(f, explain=False).p)
        base.append(f["days_since_purchase"] if f["has_purchased"] else (cutoff - st.first_seen) / DAY_MS)
        hist.row(u)
    scorer, seq_summary = _train_sequence(before, cfg, out)
    _, p_seq, _ = _score_histories(scorer, hist, cfg.score_batch, cfg.k, latent=False)
    scores_by_model = _binary_scores(base, online, p_seq)
    boot = UserBootstrap(users, cfg.bootstrap_resamples, cfg.bootstrap_seed)  # one row per customer
    models, paired = _binary_with_intervals(y, scores_by_model, boot)
    report = {
        "cutoff_ms": cutoff,
        "horizon_days": H / DAY_MS,
        "customers_at_cutoff": len(users),
        "events_before_cutoff": len(before),
        "online_progressive_metrics": learners.churn.metrics(),
        "sequence_training": seq_summary,
        "models": models,
        "paired_differences": paired,
        "bootstrap": _bootstrap_summary(boot),
    }
    return report, {"y": y, "scores": scores_by_model, "probabilistic": ("online", "sequence", "blend")}


def _rrf(lists: Sequence[Sequence[Any]], k: int) -> list[Any]:
    return [item for item, _ in rrf(lists, k)]


def _eval_latent(train: list[Event], test: list[Event], cfg: EvalConfig, out: Path,
                 make: ReplayFactory) -> tuple[dict, dict]:  # fmt: skip
    replay = make(cfg.state, None, 30 * DAY_MS)  # no online learner: the state's affinity is the online list
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    hist = Histories()
    for ev in train:
        if replay.event(ev)[0] == APPLIED:
            hist.add(ev)
            if ev.category_id:
                counts[ev.user][ev.category_id] += 1
    targets = dict(tasks.next_category_targets(test))
    nb = cfg.seq.category_buckets

    def bucket(cat: str) -> int:
        return hash_bucket(stable_hash(cat), nb)

    tgt, base, online, users = [], [], [], []
    skipped = 0
    for i, ev in enumerate(test):
        status, st, _ = replay.event(ev, TEST_PART)
        if status == APPLIED:
            hist.add(ev)
            if ev.category_id:
                counts[ev.user][ev.category_id] += 1
        if i not in targets:
            continue
        if status != APPLIED:
            skipped += 1
            continue
        tgt.append(targets[i])
        users.append(ev.user)
        base.append([c for c, _ in counts[ev.user].most_common(cfg.k)])
        online.append([c for c, _ in sorted(st.categories.items(), key=lambda kv: -kv[1])][: cfg.k])
        hist.row(ev.user)
    scorer, seq_summary = _train_sequence(train, cfg, out)
    _, _, top = _score_histories(scorer, hist, cfg.score_batch, cfg.k, latent=True)
    seq_lists = [list(map(int, row)) for row in top]
    tgt_b = [bucket(c) for c in tgt]
    blend = [_rrf([s, [bucket(c) for c in o]], cfg.k) for s, o in zip(seq_lists, online, strict=True)]
    lists = {"baseline": (base, tgt), "online": (online, tgt), "sequence": (seq_lists, tgt_b),
             "blend": (blend, tgt_b)}  # fmt: skip
    models = {m: ranking_metrics(ranked, t, cfg.k) for m, (ranked, t) in lists.items()}
    boot = UserBootstrap(users, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    hr, mrr = f"hr@{cfg.k}", f"mrr@{cfg.k}"
    samples, points = {}, {}
    for m, (ranked, t) in lists.items():
        rr = reciprocal_ranks(ranked, t, cfg.k)
        samples[m] = {hr: boot.mean(rr > 0), mrr: boot.mean(rr)}
        points[m] = {hr: float(np.mean(rr > 0)), mrr: float(np.mean(rr))} if len(rr) else {}
    models, paired = with_intervals(models, samples, points)
    hr_curves = {
        "baseline": [tasks.hit_rate_at_k(base, tgt, k) for k in range(1, cfg.k + 1)] if tgt else [],
        "online": [tasks.hit_rate_at_k(online, tgt, k) for k in range(1, cfg.k + 1)] if tgt else [],
        "sequence": [tasks.hit_rate_at_k(seq_lists, tgt_b, k) for k in range(1, cfg.k + 1)] if tgt else [],
        "blend": [tasks.hit_rate_at_k(blend, tgt_b, k) for k in range(1, cfg.k + 1)] if tgt else [],
    }
    report = {
        "targets": len(targets),
        "not_scored_late_or_duplicate": skipped,
        "sequence_training": seq_summary,
        "models": models,
        "paired_differences": paired,
        "bootstrap": _bootstrap_summary(boot),
    }
    return report, {"hr_curves": hr_curves}


# ---------------------------------------------------------------------------------------- entry
def evaluate(
    train: Sequence[Event],
    test: Sequence[Event],
    cfg: EvalConfig,
    out_dir: str | Path,
    *,
    replay: ReplayFactory,
    data_end_ms: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one task (see the module docstring) through ``replay`` (the stream's step, see
    :class:`Replay`), write ``report.json`` and the plots to ``out_dir``, and return the report. ``data_end_ms`` is the end of the data (churn; defaults to
    the last event time); ``meta`` is copied into the report (command line, split description)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_s, test_s = _sorted(train), _sorted(test)
    if cfg.task != "churn" and (not train_s or not test_s):
        raise ValueError("both the train and the test part need events")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        if cfg.task == "intent":
            body, curves = _eval_intent(train_s, test_s, cfg, Path(tmp), replay)
        elif cfg.task == "latent":
            body, curves = _eval_latent(train_s, test_s, cfg, Path(tmp), replay)
        else:
            end = data_end_ms if data_end_ms is not None else max(e.ts for e in [*train_s, *test_s])
            body, curves = _eval_churn(train_s, test_s, cfg, Path(tmp), replay, end)
    report: dict[str, Any] = {
        "task": cfg.task,
        **(meta or {}),
        "horizon_ms": cfg.horizon_ms,
        "data": {
            "train_events": len(train_s),
            "test_events": len(test_s),
            "train_users": len({e.user for e in train_s}),
            "test_users": len({e.user for e in test_s}),
            "shared_users": len({e.user for e in train_s} & {e.user for e in test_s}),
        },
        **body,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["plots"] = _plots(cfg.task, curves, out, report["models"], cfg.k)
    report = _plain(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def _plain(o: Any) -> Any:
    """Strict-JSON values: numpy scalars as Python numbers, NaN (a metric with one class) as None."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


# ---------------------------------------------------------------------------------------- plots
def _roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    cut = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # one point per distinct threshold
    tp, fp = np.cumsum(ys)[cut], np.cumsum(1 - ys)[cut]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    cut = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp = np.cumsum(ys)[cut]
    return tp / max(tp[-1], 1), tp / (cut + 1)


def with_ci(
    value: float | None, ci: list[float] | None, digits: int = 3, value_digits: int | None = None
) -> str:
    """``0.663 (0.641-0.687)``: a figure and its interval as the plots and the summary show them.

    Rounding a figure already rounded to four decimals again to three can differ from rounding it
    once, so a figure read back from report.json is shown with its four (``value_digits``).

    >>> with_ci(0.66312, [0.6412, 0.6871]), with_ci(0.6325, [0.58, 0.681], value_digits=4)
    ('0.663 (0.641-0.687)', '0.6325 (0.580-0.681)')
    >>> with_ci(0.5, None), with_ci(None, None)
    ('0.500', 'n/a')
    """
    if value is None:
        return "n/a"
    text = f"{value:.{value_digits if value_digits is not None else digits}f}"
    return f"{text} ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if ci else text


def _plots(task: str, curves: dict, out: Path, models: dict[str, dict[str, Any]], k: int) -> list[str]:
    """PNG plots; an empty list (and no error) when matplotlib is not installed. Legends give each
    model's figure (unrounded, then shown to three decimals) with its 95% interval from the report."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and in CI
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)

    if task == "latent":
        fig, ax = plt.subplots(figsize=(5, 4))
        key = f"hr@{k}"
        for m, hr in curves["hr_curves"].items():
            label = f"{m}, {key.upper()} {with_ci(hr[k - 1] if hr else None, models[m].get(f'{key}_ci95'))}"
            ax.plot(range(1, len(hr) + 1), hr, marker="o", label=label)
        ax.set(xlabel="k", ylabel="HR@k", title="latent need: next category hit rate")
        ax.legend(fontsize="small")
        save(fig, "hit_rate_at_k.png")
        return written
    y = curves["y"].astype(int)
    if y.min() == y.max():
        return written
    scores = curves["scores"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for m, s in scores.items():
        fpr, tpr = _roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{m} {with_ci(tasks.roc_auc(y, s), models[m].get('roc_auc_ci95'))}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{task}: ROC (AUC, 95% CI)")
    ax.legend(fontsize="small")
    save(fig, "roc.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for m, s in scores.items():
        r, p = _pr_curve(y, s)
        ax.plot(r, p, label=f"{m} {with_ci(tasks.pr_auc(y, s), models[m].get('pr_auc_ci95'))}")
    ax.axhline(y.mean(), color="k", ls=":", lw=0.8)
    ax.set(xlabel="recall", ylabel="precision", title=f"{task}: precision-recall (AP, 95% CI)")
    ax.legend(fontsize="small")
    save(fig, "pr.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in curves["probabilistic"]:  # the baseline is a score, not a probability
        s = scores[m]
        edges = np.quantile(s, np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
        pts = [(s[idx == b].mean(), y[idx == b].mean()) for b in range(10) if (idx == b).any()]
        ax.plot(*zip(*pts, strict=True), marker="o", label=m)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="mean predicted probability (deciles)", ylabel="observed rate", title=f"{task}: calibration"
    )
    ax.legend()
    save(fig, "calibration.png")
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3))
    for ax, (m, s) in zip(np.atleast_1d(axes), scores.items(), strict=True):
        bins = np.linspace(s.min(), s.max() + 1e-9, 30)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="y=0")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="y=1")
        ax.set_title(m)
    np.atleast_1d(axes)[0].legend()
    save(fig, "score_distribution.png")
    return written


__all__ = [
    "EvalConfig",
    "MODELS",
    "Replay",
    "ReplayFactory",
    "TASKS",
    "binary_metrics",
    "evaluate",
    "reciprocal_ranks",
    "split_by_user",
    "with_ci",
    "with_intervals",
]
