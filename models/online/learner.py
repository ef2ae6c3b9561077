"""Online learners for purchase intent and churn: score, remember, learn when the label comes.

:class:`OnlineLearner` wraps one River model for one task with everything the stream needs around
it: a cold-start prior, readable reasons, the delayed-label join (:mod:`models.online.labels`),
progressive-validation metrics (:mod:`models.online.metrics`) and a versioned checkpoint.
:class:`PartitionLearners` holds the two tasks' learners of one input partition and is the one
object the stream calls: :meth:`~PartitionLearners.on_event` per applied event,
:meth:`~PartitionLearners.on_watermark` for a user whose :meth:`~PartitionLearners.next_due` the
partition's watermark has reached.

The order of calls is River's progressive validation with real delays: an event first settles the
labels it can (``resolve``: ``learn_one`` on the stored snapshots), then it is scored on the
features as of the event (``score_many``, or River's ``predict_proba_one`` for dict models) and the
prediction is queued with its features (``observe``). A prediction is learned from exactly once, and never before it was made.

**Cold start.** A user with no history before the current event (``recent_events <= 1`` for
intent: the same rule as the first ``RuleScorer``), or a model that has not yet learned
``warmup`` labels of both classes, gets the population prior instead of a model score: the running
base rate of the labels seen so far, shrunk towards ``prior`` by ``prior_weight`` pseudo-labels.
Such predictions are flagged ``cold`` and still queued, so the label still teaches the model.
For churn every scored user has at least one event, so only the warm-up makes a score cold.

**Reasons.** For the linear model: the three largest ``|w_i * z_i|`` (log-odds terms of the scaled
features), which with the intercept sum to the score's log-odds. For tree ensembles, which have no
additive decomposition: the features where the user is most unusual (largest ``|z|`` under a
running standardisation), each replaced by its population mean one at a time; the reason's
``contribution`` is how much the probability drops (or rises) when the feature is made ordinary.
That is an occlusion attribution: it explains this score, not the model globally.

>>> from models.events import Event
>>> from models.features.state import StateConfig, UserState, apply_event
>>> learners = PartitionLearners.new(intent_model="linear", churn_model="linear")
>>> state, pending = UserState.new(), UserPending()
>>> t0 = 1_700_000_000_000
>>> for i, kind in enumerate(["click", "add_to_cart", "purchase"]):
...     ev = Event(f"e{i}", "u1", kind, t0 + i * 60_000, item_id="i1")
...     _ = apply_event(state, ev, StateConfig())
...     out = learners.on_event(pending, state, ev)
>>> out.intent is None, [s.y for s in pending.intent.snapshots]  # no intent score for a purchase;
(True, [1, 1])
>>> # the buy settled the views' labels, held until their horizon has passed
>>> len(pending.churn)  # one churn prediction a day per user (min_gap_ms = D / 30)
1
>>> _ = learners.on_watermark(pending, state, t0 + 2 * 60_000 + 30 * 60_000 + 1)  # both horizons over
>>> learners.intent.metrics()["n"], learners.intent.metrics()["positives"]  # both views led to the buy
(2, 2)
>>> PartitionLearners.from_bytes(learners.to_bytes()).intent.metrics()["n"]
2
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import river

from models.events import Event
from models.features.online import RHYTHM_FEATURES, FeatureView, feature_names, online_values
from models.features.state import DAY_MS, MINUTE_MS, StateConfig, UserState
from models.online import labels
from models.online.estimators import ScaledAveragedLogisticRegression
from models.online.labels import CHURN, INTENT, LabelRule, Pending, UserPending
from models.online.metrics import ProgressiveMetrics
from models.online.pipelines import DEFAULT_MODEL, build, linear_contributions

Reasons = list[dict]

MAGIC = b"ISOL"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sH")


class IncompatibleCheckpoint(ValueError):
    """The bytes are not a checkpoint this code can load (other format, version or River)."""


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Hyper-parameters of one task's learner; saved inside its checkpoint.

    ``None`` fields take the task's default: H = 30 min for intent, D = 30 days for churn; the
    model family from :data:`models.online.pipelines.DEFAULT_MODEL`; the prior 0.03 for intent
    (share of views followed by a purchase within 30 min on Taobao and the simulator) and 0.5 for
    churn (no knowledge). ``exclude_features`` names features of ``online_features`` this task's
    model does not read: by default the purchase-rhythm features for intent
    (:data:`~models.features.online.RHYTHM_FEATURES`; on the Taobao train users they changed the
    intent ROC AUC by -0.0001, and on the held-out users the model with them lost 0.033: see
    docs/EVALUATION.md), none for churn.

    >>> LearnerConfig("churn").rule().horizon_ms // DAY_MS
    30
    """

    task: str
    model: str | None = None
    horizon_ms: int | None = None
    max_pending: int = 8
    scan_every_ms: int | None = None
    scan_until_ms: int | None = None
    warmup: int = 50
    prior: float | None = None
    prior_weight: float = 20.0
    min_history: int | None = None  # events (the current one included) below which a user is cold
    min_gap_ms: int | None = None  # least event time between two queued event predictions of a user
    metrics_window: int = 10_000
    top_reasons: int = 3
    explain_candidates: int = 8  # tree models: features tried by the occlusion attribution
    seed: int = 42
    exclude_features: tuple[str, ...] | None = None
    state: StateConfig = dataclasses.field(default_factory=StateConfig)

    def __post_init__(self) -> None:
        if self.task not in labels.TASKS:
            raise ValueError(f"task must be one of {labels.TASKS}, got {self.task!r}")
        intent = self.task == INTENT
        for name, value in (
            ("model", DEFAULT_MODEL[self.task]),
            ("horizon_ms", 30 * MINUTE_MS if intent else 30 * DAY_MS),
            ("prior", 0.03 if intent else 0.5),
            ("min_history", 2 if intent else 1),
            # Churn: one prediction a day per user at D = 30 d is plenty (the labels of an active
            # user's clicks in one session are the same); intent: every event counts.
            ("min_gap_ms", 0 if intent else self.horizon_ms // 30 if self.horizon_ms else DAY_MS),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        skip = self.exclude_features
        object.__setattr__(
            self,
            "exclude_features",
            tuple(RHYTHM_FEATURES if intent else ()) if skip is None else tuple(skip),
        )
        self.rule()  # validates the label fields

    def feature_names(self) -> tuple[str, ...]:
        """The features this task's model reads: ``online_features``' names less the excluded ones.

        >>> len(LearnerConfig("churn").feature_names()) - len(LearnerConfig("intent").feature_names())
        6
        """
        names = feature_names(self.state)
        unknown = set(self.exclude_features) - set(names)  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"exclude_features names unknown features {sorted(unknown)}")
        return tuple(n for n in names if n not in self.exclude_features)  # type: ignore[operator]

    def rule(self) -> LabelRule:
        return LabelRule(self.task, self.horizon_ms, self.max_pending, self.scan_every_ms, self.scan_until_ms)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = dataclasses.asdict(self.state)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnerConfig:
        st = d["state"]
        st = {k: tuple(v) if isinstance(v, list) else v for k, v in st.items()}
        return cls(**{**d, "state": StateConfig(**st)})


class Prediction:
    """One scored prediction: ``p`` (None until :meth:`OnlineLearner.flush` for a batched one),
    ``reasons`` and ``cold``; it unpacks as ``p, reasons, cold``.

    The reasons are worked out only when read, from what was kept when the score was computed
    (the linear model's terms), because the stream scores every event but explains only the few
    that fire a signal. What ``reasons`` gives follows ``explain`` of :meth:`OnlineLearner.predict`:
    the list (True), ``[]`` (False), or the zero-argument :meth:`explain` ("later").
    A prediction queued for its label before it is scored (:meth:`OnlineLearner.observe`) gets its
    ``p`` and vector at the same time.
    """

    __slots__ = ("p", "cold", "_mode", "_reasons", "_top", "_terms", "_snap")

    def __init__(
        self,
        p: float | None,
        cold: bool,
        explain: bool | Literal["later"],
        reasons: Reasons | None = None,
        top: Callable[[np.ndarray], Reasons] | None = None,
    ) -> None:
        self.p, self.cold, self._mode = p, cold, explain
        # Either the reasons themselves or ``top``, which makes them from the terms once scored.
        self._reasons, self._top = reasons, top
        self._terms: np.ndarray | None = None
        self._snap: labels.Snapshot | None = None

    @property
    def reasons(self) -> Reasons | Callable[[], Reasons]:
        if self._mode == "later":
            return self.explain
        return self.explain() if self._mode else []

    def explain(self) -> Reasons:
        """The reasons for this score, computed on the first call (none if it was made without)."""
        if self._reasons is None:
            if self._terms is None:
                raise RuntimeError("a batched prediction was read before its learner's flush()")
            self._reasons = self._top(self._terms)  # type: ignore[misc]
        return self._reasons

    def __iter__(self):
        return iter((self.p, self.reasons, self.cold))

    def __repr__(self) -> str:
        return f"Prediction(p={self.p!r}, cold={self.cold!r})"

    def _scored(self, p: float, terms: np.ndarray, x32: np.ndarray) -> None:
        self.p, self._terms = p, terms
        if self._snap is not None:
            self._snap.fill(p, x32)


class OnlineLearner:
    """One task's online model with its label join, prior, reasons, metrics and checkpoint.

    >>> lr = OnlineLearner(LearnerConfig("intent", warmup=2))
    >>> names = lr.names
    >>> x = {n: 0.0 for n in names} | {"recent_events": 5.0, "session_carts": 2.0}
    >>> q = Pending()
    >>> lr.predict(x).cold  # nothing learned yet: the prior
    True
    >>> lr.observe(q, Event("e", "u", "click", 1_000, item_id="i"), x, 0.03)
    True
    >>> lr.resolve(q, Event("b", "u", "purchase", 2_000))  # the buy settles the view; learning waits
    0
    >>> lr.resolve(q, 1_000 + 30 * 60_000 + 1)  # the horizon has passed: learned, once
    1
    >>> lr.resolve(q, 10**12)
    0
    """

    def __init__(self, cfg: LearnerConfig, model: Any = None) -> None:
        self.cfg = cfg
        self.rule = cfg.rule()
        self.names = cfg.feature_names()
        every = feature_names(cfg.state)
        self._subset = len(self.names) != len(every)
        # Where this task's features sit in online_values' full vector.
        self._take = np.array([every.index(n) for n in self.names]) if self._subset else None
        self.model = model if model is not None else build(cfg.model, cfg.seed, self.names)  # type: ignore[arg-type]
        # The default model works on vectors (ScaledAveragedLogisticRegression); others on dicts.
        self._fused = isinstance(self.model, ScaledAveragedLogisticRegression)
        self.metrics_ = ProgressiveMetrics(cfg.metrics_window)
        self.n_learned = 0
        self.learned_pos = 0
        # Running mean/variance of the features (Welford), for the tree models' attribution.
        self._mean = np.zeros(len(self.names))
        self._m2 = np.zeros(len(self.names))
        self._is_linear = cfg.model in ("linear", "linear_sgd")
        # predict(batch=True)'s predictions waiting for flush(), in order: (float64 vector, prediction)
        self._waiting: list[tuple[np.ndarray, Prediction]] = []

    # ------------------------------------------------------------------ scoring
    def base_rate(self) -> float:
        """The population prior: positive share of learned labels, shrunk towards ``cfg.prior``."""
        c = self.cfg
        return (self.learned_pos + c.prior * c.prior_weight) / (self.n_learned + c.prior_weight)  # type: ignore[operator]

    def warm(self) -> bool:
        """Whether the model has learned enough (``warmup`` labels, both classes) to be served."""
        return self.n_learned >= self.cfg.warmup and 0 < self.learned_pos < self.n_learned

    def predict(
        self,
        features: Mapping[str, float],
        *,
        explain: bool | Literal["later"] = True,
        values: np.ndarray | None = None,
        batch: bool = False,
    ) -> Prediction:
        """The :class:`Prediction` for one user's features (see the module docstring).

        ``explain`` sets what its ``reasons`` gives: the list (True), ``[]`` (False), or a
        zero-argument callable ("later", what the stream asks for); each gives what the model said
        when it made the score. ``values``: the same features as ``online_values``' float64 vector,
        if the caller has it.

        ``batch=True``: a warm vector model leaves the score to :meth:`flush`, which scores the
        batch's predictions together with the same bits; the learner flushes by itself before it
        learns anything, so every prediction is scored by the model as it was when it was made.
        Cold predictions and River's dict models are scored at once, as without it."""
        if features.get("recent_events", 0.0) < self.cfg.min_history or not self.warm():  # type: ignore[operator]
            why = "no history before this event" if self.warm() else "model still warming up"
            reasons = [{"feature": "cold_start", "value": 1.0, "contribution": 0.0,
                        "text": f"population prior ({why})"}] if explain else []  # fmt: skip
            return Prediction(self.base_rate(), True, explain, reasons)
        if self._fused:  # the default model: score and terms from score_many, now or at flush()
            top = functools.partial(self._top_terms, features) if explain else None
            pred = Prediction(None, False, explain, None if explain else [], top)
            waiting = (self._vector(features, values, np.float64), pred)
            if batch:
                self._waiting.append(waiting)
            else:
                self._score([waiting])
            return pred
        # River's dict models: reasons now, as the model (and, for trees, the running means the
        # attribution reads) will have moved on by the time they are read.
        x = {n: features[n] for n in self.names}
        p = float(self.model.predict_proba_one(x).get(True, 0.0))
        return Prediction(p, False, explain, self._reasons(x, p) if explain else [])

    def _reasons(self, x: dict[str, float], p: float) -> Reasons:
        contrib = linear_contributions(self.model, x) if self._is_linear else None
        unit = "log-odds"
        if contrib is None:
            unit = "probability"
            std = np.sqrt(self._m2 / max(self.n_learned - 1, 1))
            vec = np.fromiter((x[n] for n in self.names), float, len(self.names))
            z = np.where(std > 0, (vec - self._mean) / np.where(std > 0, std, 1.0), 0.0)
            contrib = {}
            for i in np.argsort(-np.abs(z))[: self.cfg.explain_candidates]:
                if z[i] == 0:
                    break
                name = self.names[i]
                q = self.model.predict_proba_one({**x, name: float(self._mean[i])}).get(True, 0.0)
                contrib[name] = p - q
        return self._top(x, contrib, unit)

    def flush(self) -> int:
        """Score the predictions ``predict(..., batch=True)`` left waiting, all in one
        :meth:`~models.online.estimators.ScaledAveragedLogisticRegression.score_many` call;
        returns how many. The batch's owner calls it before it reads their scores."""
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._score(waiting)
        return len(waiting)

    def _score(self, waiting: list[tuple[np.ndarray, Prediction]]) -> None:
        """Score ``(float64 vector, prediction)`` pairs with the vector model, in one pass."""
        X = np.stack([v for v, _ in waiting])
        p, terms = self.model.score_many(X)
        X32 = X.astype(np.float32)  # the queued snapshots' vectors, as _vector() gives them
        for (_v, pred), pi, t, x32 in zip(waiting, p.tolist(), terms, X32, strict=True):
            pred._scored(pi, t, x32)

    def _top_terms(self, x: Mapping[str, float], terms: np.ndarray) -> Reasons:
        return self._top(x, dict(zip(self.names, terms.tolist(), strict=True)), "log-odds")

    def _top(self, x: Mapping[str, float], contrib: dict[str, float], unit: str) -> Reasons:
        top = sorted(contrib.items(), key=lambda kv: -abs(kv[1]))[: self.cfg.top_reasons]
        return [
            {"feature": n, "value": round(x[n], 4), "contribution": round(c, 4),
             "text": f"{n} = {x[n]:.3g} {'raises' if c > 0 else 'lowers'} the score ({c:+.2f} {unit})"}
            for n, c in top if c != 0
        ]  # fmt: skip

    # ------------------------------------------------------------------ label join
    def _vector(self, features: Mapping[str, float], values: np.ndarray | None = None, dtype: type = np.float32) -> np.ndarray:
        """This task's features in ``names`` order; from ``values`` (all of ``online_values``) if given."""
        if values is not None:
            return (values if self._take is None else values[self._take]).astype(dtype, copy=False)
        return np.fromiter((features[n] for n in self.names), dtype, len(self.names))

    def observe(
        self,
        pending: Pending,
        event: Event,
        features: Mapping[str, float],
        p: float | Prediction,
        values: np.ndarray | None = None,
    ) -> bool:
        """Queue the prediction ``p`` made for ``event`` from ``features`` until its label is known
        (a :class:`Prediction` not scored yet: the queued snapshot gets its score when it is).

        Intent predictions are queued for non-purchase events only (the product's definition);
        churn predictions for events at least ``min_gap_ms`` after the user's newest queued one
        (default D/30). Returns whether a prediction was queued.
        """
        if not self.wants(pending, event):
            return False
        if isinstance(p, Prediction):
            if p.p is None:
                # Its score and vector are filled in by flush(), before anything reads or stores it.
                p._snap = snap = labels.Snapshot.waiting(int(event.ts), len(self.names))
                self._evicted(labels.insert(pending, self.rule, snap))
                return True
            p = p.p
        self._evicted(labels.add(pending, self.rule, event.ts, self._vector(features, values), p))
        return True

    def wants(self, pending: Pending, event: Event) -> bool:
        """Whether :meth:`observe` would queue a prediction for ``event``: the stream scores churn
        at an event only then (one event a day per user at the default D = 30 days)."""
        if self.cfg.task == INTENT and event.type == "purchase":
            return False
        self._forget_stale(pending)
        snaps = pending.snapshots
        # not when a prediction of this user this recent is already queued
        return not (snaps and self.cfg.min_gap_ms and event.ts - snaps[-1].ts < self.cfg.min_gap_ms)

    def _forget_stale(self, pending: Pending) -> None:
        """Drop queued snapshots whose feature vector is not this learner's (queued by code with
        another ``online_features``, stored in the user's record across an upgrade): they cannot
        be learned from, and mixing lengths would make the queue unstorable. Counted as dropped."""
        snaps = pending.snapshots
        n = len(self.names)
        # A stored queue has one vector length, and this learner only adds its own after this
        # check: looking at the oldest snapshot is enough.
        if snaps and snaps[0].n_features != n:
            keep = [s for s in snaps if s.n_features == n]
            gone = len(snaps) - len(keep)
            pending.snapshots = keep
            pending.dropped += gone
            self.metrics_.dropped += gone

    def _evicted(self, snap: labels.Snapshot | None) -> None:
        if snap is None:
            return
        if snap.y >= 0:  # settled and held: the bound releases it early rather than lose it
            self._learn([(snap, snap.y)], None)
        else:
            self.metrics_.dropped += 1

    def observe_scan(
        self, pending: Pending, watermark_ms: int, features: Mapping[str, float], p: float, values: np.ndarray | None = None
    ) -> bool:
        """Queue a churn prediction made for a *silent* user at ``watermark_ms`` (features read at
        the watermark), at most one per ``scan_every_ms`` and only while the silence is below
        ``scan_until_ms``: these teach the model what growing silence means, which predictions
        made at purchase time cannot. Returns whether it was queued."""
        if self.cfg.task != CHURN:
            raise ValueError("scan predictions exist for churn only")
        silence_ms = features["secs_since_last_event"] * 1000.0
        self._forget_stale(pending)
        newest = pending.snapshots[-1].ts if pending.snapshots else None
        if silence_ms <= 0 or silence_ms > self.rule.scan_until_ms:  # type: ignore[operator]
            return False
        if newest is not None and watermark_ms - newest < self.rule.scan_every_ms:  # type: ignore[operator]
            return False
        self._evicted(labels.add(pending, self.rule, watermark_ms, self._vector(features, values), p))
        return True

    def resolve(
        self, pending: Pending, event_or_watermark: Event | int, *, collect: list | None = None
    ) -> int:
        """Settle what the event (of this user) or the watermark settles, and learn every label that
        is due; return how many were learned (with held labels, an event learns nothing: its labels
        are learned when the watermark passes their horizon). Each resolved prediction is scored into the metrics with the probability it was
        served with, then learned (``learn_one``) once. ``collect``, if given, receives
        ``(ts, x, y, p)`` per label (evaluation only)."""
        self._forget_stale(pending)
        if isinstance(event_or_watermark, Event):
            done = labels.resolve_event(pending, self.rule, event_or_watermark.type, event_or_watermark.ts)
        else:
            done = labels.resolve_watermark(pending, self.rule, int(event_or_watermark))
        self._learn(done, collect)
        return len(done)

    def _learn(self, done: list[tuple[labels.Snapshot, int]], collect: list | None) -> None:
        if done:
            self.flush()  # what is waiting was predicted by the model as it is before this
        for snap, y in done:
            self.metrics_.update(y, snap.p)
            if self._fused:
                self.model.learn(snap.x.astype(np.float64), bool(y))
            else:
                self.model.learn_one(dict(zip(self.names, snap.x.tolist(), strict=True)), bool(y))
            self.n_learned += 1
            self.learned_pos += y
            if not self._is_linear:
                d = snap.x - self._mean
                self._mean += d / self.n_learned
                self._m2 += d * (snap.x - self._mean)
            if collect is not None:
                collect.append((snap.ts, snap.x, y, snap.p))

    def next_due(self, pending: Pending) -> int | None:
        """The watermark at which this user's queue next needs :meth:`resolve` (None: nothing queued)."""
        return labels.next_due(pending, self.rule)

    # ------------------------------------------------------------------ metrics, checkpoint
    def metrics(self) -> dict[str, Any]:
        """Progressive-validation metrics plus model facts, as plain values."""
        return {**self.metrics_.as_dict(), "learned": self.n_learned, "warm": self.warm(),
                "model": self.cfg.model, "task": self.cfg.task}  # fmt: skip

    def to_bytes(self) -> bytes:
        """A versioned checkpoint: header, then a pickle of the config (as plain values), the River
        model and the learner's counters. Loading needs nothing else."""
        body = {
            "river": river.__version__,
            "config": self.cfg.to_dict(),
            "model": self.model,
            "metrics": self.metrics_,
            "n_learned": self.n_learned,
            "learned_pos": self.learned_pos,
            "mean": self._mean,
            "m2": self._m2,
            "features": list(self.names),
        }
        return _HEADER.pack(MAGIC, FORMAT_VERSION) + pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> OnlineLearner:
        """Load :meth:`to_bytes` output; :class:`IncompatibleCheckpoint` if it is not one this code
        (and this River version, whose pickles are not stable across releases) can load, or if it
        was learned on another feature vector than its config reads now (``cfg.feature_names()``)."""
        body = _load(data)
        cfg = LearnerConfig.from_dict(body["config"])
        # A model learned on another feature vector cannot be served with this one (its weights and
        # scaler statistics belong to other columns). Checkpoints written before the names were
        # stored carry them implicitly in the length of the running-mean vector.
        names = cfg.feature_names()
        saved = body.get("features")
        if saved is not None and tuple(saved) != names or saved is None and len(body["mean"]) != len(names):
            n = len(saved) if saved is not None else len(body["mean"])
            raise IncompatibleCheckpoint(
                f"checkpoint was learned on {n} features that are not this code's {len(names)} "
                "(online_features changed)"
            )
        model = body["model"]
        if cfg.model == "linear" and not isinstance(model, ScaledAveragedLogisticRegression):
            # written when the linear model ran as River's two-step pipeline: the same numbers
            try:
                model = ScaledAveragedLogisticRegression.from_pipeline(model, names)
            except (ValueError, KeyError, TypeError) as exc:
                raise IncompatibleCheckpoint(f"linear-model checkpoint cannot be converted: {exc}") from None
        lr = cls(cfg, model=model)
        lr.metrics_ = body["metrics"]
        lr.n_learned, lr.learned_pos = body["n_learned"], body["learned_pos"]
        lr._mean, lr._m2 = body["mean"], body["m2"]
        return lr


def _load(data: bytes) -> dict:
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise IncompatibleCheckpoint("not an online-learner checkpoint (bad magic bytes)")
    _, version = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise IncompatibleCheckpoint(f"checkpoint format v{version}; this code reads v{FORMAT_VERSION} only")
    body = pickle.loads(data[_HEADER.size :])  # our own checkpoints only: pickle runs code on load
    saved, here = body.get("river", "?"), river.__version__
    if saved.split(".")[:2] != here.split(".")[:2]:
        raise IncompatibleCheckpoint(f"checkpoint written with river {saved}, this is river {here}")
    return body


class Scores(NamedTuple):
    """What :meth:`PartitionLearners.on_event` returns: the two tasks' predictions (intent is None
    for purchases; churn is None unless it was queued for a label, and has no reasons), how many
    labels the event settled, and the features both were read from."""

    intent: Prediction | None
    churn: Prediction | None
    learned: int
    features: Mapping[str, float]


class PartitionLearners:
    """The intent and churn learners of one input partition (one model per partition: it moves
    with the partition on a rebalance; see docs/ONLINE.md)."""

    def __init__(self, intent: OnlineLearner, churn: OnlineLearner) -> None:
        if intent.cfg.task != INTENT or churn.cfg.task != CHURN:
            raise ValueError("PartitionLearners(intent=..., churn=...) got the tasks the wrong way round")
        if intent.cfg.state != churn.cfg.state:
            raise ValueError("both learners must read features with the same StateConfig")
        self.intent, self.churn = intent, churn
        self.state_cfg = intent.cfg.state

    @classmethod
    def new(cls, state: StateConfig | None = None, **kw: Any) -> PartitionLearners:
        """Fresh learners; ``intent_<field>=`` / ``churn_<field>=`` set :class:`LearnerConfig` fields."""
        st = state or StateConfig()
        per = {
            t: {k[len(t) + 1 :]: v for k, v in kw.items() if k.startswith(t + "_")} for t in (INTENT, CHURN)
        }
        unknown = set(kw) - {f"{t}_{k}" for t in per for k in per[t]}
        if unknown:
            raise TypeError(f"unknown arguments {sorted(unknown)}")
        return cls(
            OnlineLearner(LearnerConfig(INTENT, state=st, **per[INTENT])),
            OnlineLearner(LearnerConfig(CHURN, state=st, **per[CHURN])),
        )

    def on_event(
        self,
        pending: UserPending,
        state: UserState,
        event: Event,
        *,
        explain: bool | Literal["later"] = True,
        batch: bool = False,
    ) -> Scores:
        """Per *applied* event (after ``apply_event``): learn what the event settles, score it, queue
        the predictions. ``pending`` is updated in place; store it back with the user's record.
        ``explain`` adds reasons to the intent prediction (``"later"``: as a callable, see
        :meth:`OnlineLearner.predict`). ``batch=True``: the scores of warm models may be None until
        :meth:`flush`, which the caller runs once its batch's events are all applied, before it
        reads a score or stores a record."""
        learned = self.intent.resolve(pending.intent, event) + self.churn.resolve(pending.churn, event)
        f, v = self.features(state, event.ts)
        intent = None
        if event.type != "purchase":
            intent = self.intent.predict(f, explain=explain, values=v, batch=batch)
            self.intent.observe(pending.intent, event, f, intent, v)
        # Churn signals come from the watermark scan (on_watermark, explained there); the score at
        # an event is only queued for its label, so it is computed only when it will be queued,
        # and never explained here.
        churn = None
        if self.churn.wants(pending.churn, event):
            churn = self.churn.predict(f, explain=False, values=v, batch=batch)
            self.churn.observe(pending.churn, event, f, churn, v)
        return Scores(intent, churn, learned, f)

    def flush(self) -> int:
        """Score both learners' waiting batched predictions (:meth:`OnlineLearner.flush`)."""
        return self.intent.flush() + self.churn.flush()

    def features(self, state: UserState, now_ms: int) -> tuple[FeatureView, np.ndarray]:
        """``online_features`` as a mapping (reasons, the rule) and as one float64 vector (the models);
        what :meth:`on_event` scores, for a caller that scores without learning (the query API)."""
        values = online_values(state, now_ms, self.state_cfg)
        return FeatureView(values, self.state_cfg), np.array(values)

    def on_watermark(
        self, pending: UserPending, state: UserState, watermark_ms: int, *, explain: bool = True
    ) -> tuple[Prediction | None, int]:
        """For a user whose :meth:`next_due` the partition's watermark reached (or whom the churn
        scan visits): learn what the watermark settles, then score churn at the watermark for a
        silent user (queued as a scan prediction when due). Returns ``(churn prediction or None if
        the user is not silent, labels learned)``."""
        learned = self.intent.resolve(pending.intent, watermark_ms) + self.churn.resolve(
            pending.churn, watermark_ms
        )
        if not state.last_ts or watermark_ms <= state.last_ts:
            return None, learned
        f, v = self.features(state, watermark_ms)
        pred = self.churn.predict(f, explain=explain, values=v)
        self.churn.observe_scan(pending.churn, watermark_ms, f, pred.p, v)
        return pred, learned

    def next_due(self, pending: UserPending, state: UserState, watermark_ms: int | None = None) -> int | None:
        """The watermark at which this user next needs :meth:`on_watermark`: a label expiring, or
        the next churn scan while the user is silent but not yet past ``scan_until_ms`` (at the
        current ``watermark_ms``, if given: past it, no scan is due any more)."""
        dues = [
            d
            for d in (self.intent.next_due(pending.intent), self.churn.next_due(pending.churn))
            if d is not None
        ]
        rule = self.churn.rule
        silent_too_long = watermark_ms is not None and watermark_ms - state.last_ts > rule.scan_until_ms  # type: ignore[operator]
        if state.last_ts and not silent_too_long:
            newest = max([state.last_ts, *(s.ts for s in pending.churn.snapshots)])
            scan = newest + rule.scan_every_ms  # type: ignore[operator]
            if scan - state.last_ts <= rule.scan_until_ms:  # type: ignore[operator]
                dues.append(scan)
        return min(dues) if dues else None

    def metrics(self) -> dict[str, dict[str, Any]]:
        return {INTENT: self.intent.metrics(), CHURN: self.churn.metrics()}

    _LEN = struct.Struct("<I")

    def to_bytes(self) -> bytes:
        """Both checkpoints, length-prefixed: the value of the partition's model-table entry."""
        a = self.intent.to_bytes()
        return self._LEN.pack(len(a)) + a + self.churn.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionLearners:
        if len(data) < 4:
            raise IncompatibleCheckpoint("partition checkpoint too short")
        (n,) = cls._LEN.unpack_from(data)
        return cls(OnlineLearner.from_bytes(data[4 : 4 + n]), OnlineLearner.from_bytes(data[4 + n :]))


__all__ = [
    "IncompatibleCheckpoint",
    "LearnerConfig",
    "OnlineLearner",
    "PartitionLearners",
    "Prediction",
    "Scores",
    "UserPending",
]
