"""Online models on real data, through the stream's code path, against batch models of the same family.

Every event is replayed in event-time order through exactly what a worker runs:
``apply_event`` -> :meth:`PartitionLearners.on_event` (learn the labels the event settles, score,
queue the prediction) and, as the partition watermark (largest ts - allowed lateness) passes a
user's :meth:`~PartitionLearners.next_due`, :meth:`~PartitionLearners.on_watermark`. Labels
reach the models only through the delayed-label join, so the progressive metrics are the quality
the served scores had. Nothing reads a wall clock except the timers.

**Intent** (Taobao 9-day histories, 584 users, H = 30 min). Users are split 70/30 by a stable
hash: the held-back 30 % are scored but never learned from. The batch models (sklearn, same
features) are fit on the learning users' events whose label was known at the time split (the
70th percentile of event time: ``t + H <= T``), and every model is scored on the held-back users'
events after ``T`` with the product's labels (``tasks.intent_labels``: non-purchase events with
``t + H`` inside the data). The online model there has learned from labels up to each scoring
moment, which the batch model cannot, and it has learned only what the bounded join kept.

**Churn** (CDNOW, D = 90 days). The product task at a cut-off: 1997-12-31 (the data ends 90 days
later). The online model's score of every customer is ``predict(online_features(state, cutoff))``
with the model as learned by that watermark (per-event and scan labels, D = 90 d). The batch
model is fit at cut-off minus 90 days on the same features and the product's label at that
earlier cut-off (the latest labels known at the cut-off), and scored at the cut-off.

Run: ``python -m benchmarks.online_eval [--task intent|churn|both] [--models linear,amf]``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from models.datasets.importers import day_start_ms, load_events
from models.datasets.tasks import DAY_MS, MINUTE_MS, churn_labels, intent_labels, pr_auc, roc_auc
from models.events import Event
from models.features.hashing import stable_hash
from models.features.online import feature_names, online_features
from models.features.state import StateConfig, UserState, apply_event
from models.online.learner import OnlineLearner, PartitionLearners, UserPending
from models.online.pipelines import build

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TAOBAO = ("userbehavior_users_tailsample_9days.csv.gz", "userbehavior_users_headcont_470users.csv.gz")
CDNOW = "CDNOW_master_through_1998-03-31.txt.gz"
BATCH_FAMILY = {
    "linear": "logistic_regression",
    "linear_sgd": "logistic_regression",
    "amf": "random_forest",
    "arf": "random_forest",
}


def heldback(user: str) -> bool:
    return stable_hash("heldback:" + user) % 10 < 3


class Replay:
    """One partition's worth of stream processing over a sorted event list (see the module)."""

    def __init__(self, learners: PartitionLearners, cfg: StateConfig, learn_from=lambda u: True) -> None:
        self.learners, self.cfg, self.learn_from = learners, cfg, learn_from
        self.states: dict[str, UserState] = {}
        self.pending: dict[str, UserPending] = {}
        self.due: list[tuple[int, str]] = []  # (watermark, user), lazily re-checked
        self.watermark = -(2**62)
        self.seconds = 0.0  # time inside the learners
        self.calls = 0
        self.pending_sizes: list[int] = []

    def event(self, ev: Event) -> tuple[int, float | None, np.ndarray | None]:
        """Apply and score one event; returns (status 1 = applied, intent p, features vector)."""
        st = self.states.setdefault(ev.user, UserState.new(self.cfg))
        if apply_event(st, ev, self.cfg) != "applied":
            return 0, None, None
        if not self.learn_from(ev.user):  # held back: scored, never queued, never learned from
            f = online_features(st, ev.ts, self.cfg)
            pred = self.learners.intent.predict(f, explain=False) if ev.type != "purchase" else None
            return 1, pred.p if pred else None, _vec(f)
        up = self.pending.setdefault(ev.user, UserPending())
        t0 = time.perf_counter()
        out = self.learners.on_event(up, st, ev, explain=False)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.pending_sizes.append(len(up.to_bytes()))
        self._schedule(ev.user)
        self.advance(ev.ts - self.cfg.allowed_lateness_ms)
        f = online_features(st, ev.ts, self.cfg)
        return 1, out.intent.p if out.intent else None, _vec(f)

    def _schedule(self, user: str) -> None:
        d = self.learners.next_due(self.pending[user], self.states[user], self.watermark)
        if d is not None:
            heapq.heappush(self.due, (d, user))

    def advance(self, watermark: int) -> None:
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        while self.due and self.due[0][0] <= watermark:
            d, user = heapq.heappop(self.due)
            up, st = self.pending[user], self.states[user]
            real = self.learners.next_due(up, st, watermark)
            if real is None or real > watermark:  # stale entry: the user acted since
                if real is not None and real != d:
                    heapq.heappush(self.due, (real, user))
                continue
            t0 = time.perf_counter()
            self.learners.on_watermark(up, st, watermark, explain=False)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            nxt = self.learners.next_due(up, st, watermark)
            if nxt is not None and nxt <= watermark:
                raise RuntimeError(f"user {user} still due at {watermark} after on_watermark")
            self._schedule(user)


def _vec(f: dict[str, float]) -> np.ndarray:
    return np.fromiter(f.values(), np.float64, len(f))


def _auc(y, p) -> dict:
    y, p = np.asarray(y), np.asarray(p, float)
    return {"n": int(len(y)), "positives": int(y.sum()), "roc_auc": round(roc_auc(y, p), 4),
            "pr_auc": round(pr_auc(y, p), 4), "log_loss": round(_logloss(y, p), 4)}  # fmt: skip


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def batch_models(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """The batch baselines, fit on (X, y): same features, one per family."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y),
        "random_forest": RandomForestClassifier(
            n_estimators=200, min_samples_leaf=20, n_jobs=1, random_state=seed
        ).fit(X, y),
    }


def model_costs(family: str, xs: list[dict], ys: list[int], n: int = 2000) -> dict:
    """Median µs of predict_proba_one + learn_one and of predict with reasons, on real features."""
    model = build(family)
    per = []
    for x, y in zip(xs[:n], ys[:n], strict=False):
        t0 = time.perf_counter()
        model.predict_proba_one(x)
        model.learn_one(x, bool(y))
        per.append(time.perf_counter() - t0)
    return {"predict_learn_us_median": round(statistics.median(per) * 1e6, 1)}


def checkpoint_costs(learner: OnlineLearner) -> dict:
    blobs, save, load = None, [], []
    for _ in range(5):
        t0 = time.perf_counter()
        blobs = learner.to_bytes()
        save.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        OnlineLearner.from_bytes(blobs)
        load.append(time.perf_counter() - t0)
    return {"bytes": len(blobs), "save_ms": round(statistics.median(save) * 1e3, 2),
            "load_ms": round(statistics.median(load) * 1e3, 2)}  # fmt: skip


def _pending_stats(r: Replay) -> dict:
    s = np.asarray(r.pending_sizes)
    final = [len(up.to_bytes()) for up in r.pending.values()]
    return {"bytes_mean": round(float(s.mean()), 1), "bytes_p99": int(np.percentile(s, 99)), "bytes_max": int(s.max()),
            "final_total_bytes": int(sum(final)), "users": len(final)}  # fmt: skip


# --------------------------------------------------------------------------------------- intent
def eval_intent(families: list[str], horizon_ms: int = 30 * MINUTE_MS, max_pending: int = 8) -> dict:
    events: list[Event] = []
    for name in TAOBAO:
        evs, _ = load_events(DATA / "taobao-userbehavior" / name, "taobao")
        events += evs
    events.sort(key=lambda e: e.ts)
    cfg = StateConfig()
    labels = dict(intent_labels(events, horizon_ms))
    split_ts = int(np.percentile([e.ts for e in events], 70))
    out: dict = {"events": len(events), "users": len({e.user for e in events}),
                 "heldback_users": len({e.user for e in events if heldback(e.user)}),
                 "labelled_events": len(labels), "positive_rate": round(float(np.mean(list(labels.values()))), 4),
                 "split_ts": datetime.fromtimestamp(split_ts / 1000, UTC).isoformat(), "models": {}}  # fmt: skip
    X = y = None
    for fam in families:
        learners = PartitionLearners.new(cfg, intent_model=fam, intent_horizon_ms=horizon_ms,
                                         intent_max_pending=max_pending)  # fmt: skip
        replay = Replay(learners, cfg, learn_from=lambda u: not heldback(u))
        p_online: dict[int, float] = {}
        feats: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        for i, ev in enumerate(events):
            ok, p, v = replay.event(ev)
            if ok and p is not None:
                p_online[i] = p
                feats[i] = v
        wall = time.perf_counter() - t0
        replay.advance(2**62)  # end of data: the watermark passes every horizon
        test = [i for i in labels if heldback(events[i].user) and events[i].ts > split_ts and i in p_online]
        learn_all = [i for i in labels if not heldback(events[i].user) and i in p_online]
        res = {
            "progressive_learning_users": learners.intent.metrics(),
            "online_learning_users_all_time": _auc(
                [labels[i] for i in learn_all], [p_online[i] for i in learn_all]
            ),
            "online_heldback_users_after_split": _auc([labels[i] for i in test], [p_online[i] for i in test]),
            "replay_seconds": round(wall, 1),
            "learner_us_per_call": round(replay.seconds / replay.calls * 1e6, 1),
            "pending": _pending_stats(replay),
            "checkpoint": checkpoint_costs(learners.intent),
        }
        names = feature_names(cfg)  # every value of the vector (the intent learner reads a subset)
        sample = learn_all[:2000]
        res["costs"] = model_costs(fam, [dict(zip(names, feats[i].tolist(), strict=True)) for i in sample],
                                   [labels[i] for i in sample])  # fmt: skip
        if X is None:
            train = [
                i
                for i in labels
                if not heldback(events[i].user) and events[i].ts + horizon_ms <= split_ts and i in feats
            ]
            X, y = np.stack([feats[i] for i in train]), np.array([labels[i] for i in train])
            Xt, yt = np.stack([feats[i] for i in test]), np.array([labels[i] for i in test])
            batch = {k: _auc(yt, m.predict_proba(Xt)[:, 1]) for k, m in batch_models(X, y).items()}
            out["batch_heldback_users_after_split"] = {"train_rows": len(train), **batch}
        b = out["batch_heldback_users_after_split"][BATCH_FAMILY[fam]]["roc_auc"]
        res["ratio_to_batch_same_family"] = round(res["online_heldback_users_after_split"]["roc_auc"] / b, 3)
        out["models"][fam] = res
    return out


# ---------------------------------------------------------------------------------------- churn
def eval_churn(families: list[str], horizon_ms: int = 90 * DAY_MS, cutoff: date = date(1997, 12, 31)) -> dict:
    events, _ = load_events(DATA / "cdnow" / CDNOW, "cdnow")
    cfg = StateConfig()
    cut = day_start_ms(cutoff) + DAY_MS - 1  # end of the cut-off day
    cut0 = cut - horizon_ms  # the batch model's training cut-off: its labels are known at `cut`
    y_cut = churn_labels(events, cut, horizon_ms)
    y_cut0 = churn_labels(events, cut0, horizon_ms)
    out: dict = {"events": len(events), "users": len({e.user for e in events}),
                 "cutoff": cutoff.isoformat(), "train_cutoff": datetime.fromtimestamp(cut0 / 1000, UTC).date().isoformat(),
                 "customers_at_cutoff": len(y_cut), "churn_rate_at_cutoff": round(float(np.mean(list(y_cut.values()))), 4),
                 "models": {}}  # fmt: skip
    batch_done = False
    for fam in families:
        learners = PartitionLearners.new(cfg, churn_model=fam, churn_horizon_ms=horizon_ms)
        replay = Replay(learners, cfg)
        feats0: dict[str, np.ndarray] = {}
        p_cut: dict[str, float] = {}
        feats_cut: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        for ev in events:
            if ev.ts > cut0 and not feats0:
                feats0 = {u: _vec(online_features(s, cut0, cfg)) for u, s in replay.states.items()}
            if ev.ts > cut and not p_cut:
                replay.advance(cut)
                for u, s in replay.states.items():
                    f = online_features(s, cut, cfg)
                    p_cut[u] = learners.churn.predict(f, explain=False).p
                    feats_cut[u] = _vec(f)
            replay.event(ev)
        wall = time.perf_counter() - t0
        users = list(y_cut)
        yc = [y_cut[u] for u in users]
        res = {
            "progressive_stream_labels": learners.churn.metrics(),
            "online_at_cutoff": _auc(yc, [p_cut[u] for u in users]),
            "replay_seconds": round(wall, 1),
            "learner_us_per_call": round(replay.seconds / replay.calls * 1e6, 1),
            "pending": _pending_stats(replay),
            "checkpoint": checkpoint_costs(learners.churn),
        }
        names = learners.churn.names
        sample = users[:2000]
        res["costs"] = model_costs(fam, [dict(zip(names, feats_cut[u].tolist(), strict=True)) for u in sample],
                                   [y_cut[u] for u in sample])  # fmt: skip
        if not batch_done:
            u0 = list(y_cut0)
            X, y = np.stack([feats0[u] for u in u0]), np.array([y_cut0[u] for u in u0])
            Xt = np.stack([feats_cut[u] for u in users])
            batch = {k: _auc(yc, m.predict_proba(Xt)[:, 1]) for k, m in batch_models(X, y).items()}
            out["batch_at_cutoff"] = {"train_rows": len(u0), **batch}
            batch_done = True
        b = out["batch_at_cutoff"][BATCH_FAMILY[fam]]["roc_auc"]
        res["ratio_to_batch_same_family"] = round(res["online_at_cutoff"]["roc_auc"] / b, 3)
        out["models"][fam] = res
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("intent", "churn", "both"), default="both")
    ap.add_argument("--models", default="linear,amf", help="comma-separated families (linear, amf, arf)")
    ap.add_argument("--max-pending", type=int, default=8, help="intent pending bound per user")
    args = ap.parse_args(argv)
    fams = args.models.split(",")
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    if args.task in ("intent", "both"):
        result["intent"] = eval_intent(fams, max_pending=args.max_pending)
    if args.task in ("churn", "both"):
        result["churn"] = eval_churn(fams)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
