"""One shopper's current picture, worked out on demand from their stored record.

The record keeps the state, the signal-policy memory and the sequence model's hidden state, not
scores: :func:`describe` scores them when asked, with the same scorer, online learners and served
sequence model the stream uses, so an answer costs nothing to keep and matches what the stream
would say at the same moments:

* **purchase intent as of the user's last event** (the online side at ``last_ts``, blended with
  the sequence model's head read from the stored state);
* **churn risk as of the partition's watermark** (the silence the watermark shows; the stream
  evaluates it the same way for silent users);
* **latent needs** (the category affinity at the last event, fused with the sequence model's next
  categories by reciprocal rank, as the latent-needs signal is);
* the current session, the last signal id of each task and whether the user is still cold.

Nothing here imports Faust; :mod:`stream.api` reads the record and calls :func:`describe`.

>>> from models.events import Event
>>> from models.features.state import StateConfig, UserState, apply_event
>>> from stream.logic.pipeline import UserRecord
>>> from stream.logic.scoring import RuleScorer
>>> rec, t = UserRecord(UserState.new()), 1_700_000_000_000
>>> for i, typ in enumerate(["click", "add_to_cart", "click"]):
...     _ = apply_event(rec.state, Event(f"e{i}", "u", typ, t + i * 1000, item_id="i", category_id="c1", price=5.0), StateConfig())
>>> d = describe("u", rec, Context(RuleScorer(), StateConfig(), partition=0, watermark=t))
>>> d["purchase_intent"]["as_of"] == t + 2000, d["cold"], d["latent_needs"]["categories"][0]["category_id"]
(True, False, 'c1')
>>> d["session"]["events"], d["last_signals"]["purchase_intent"]
(3, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.blend import blend_binary, rrf
from models.events import EVENT_TYPES
from models.features.state import StateConfig, UserState
from models.online.learner import PartitionLearners
from stream.logic.pipeline import UserRecord
from stream.logic.policy import NEVER
from stream.logic.scoring import Scorer
from stream.logic.signals import Task


@dataclass(frozen=True, slots=True)
class Context:
    """What the worker knows beside the record: its models and the partition's watermark."""

    scorer: Scorer
    state: StateConfig
    partition: int
    watermark: int | None  # the partition's watermark (None: no event seen on it since start)
    learners: PartitionLearners | None = None  # the partition's online models, if any
    served: Any = None  # stream.logic.serving.Served, the sequence model serving (None: online only)
    latent_top_k: int = 5
    session_gap_ms: int = 30 * 60_000


@dataclass(frozen=True, slots=True)
class SeqScores:
    version: str
    tasks: frozenset[str]
    p_intent: float
    p_churn: float
    categories: tuple[str, ...]


def sequence_scores(served: Any, rec: UserRecord, top_k: int) -> SeqScores | None:
    """The served sequence model's heads at the user's last event: read from the stored hidden
    state when it belongs to this model and has seen every event (no recurrence step), else
    rebuilt from the recent-event ring, as the stream does after a model swap."""
    window = rec.state.recent_window()
    if served is None or not len(window):
        return None
    scorer, cfg = served.scorer, served.scorer.config
    m, events = rec.seq, sum(rec.state.totals)
    h = None
    if cfg.arch == "gru" and m is not None and m.model == served.tag and m.events == events:
        h = m.array((cfg.n_layers, cfg.d_model))
    if h is not None:
        out = scorer.at_state([window], np.expand_dims(h, 0), [True])
    else:
        out = scorer.from_window([window], [True])
    cats = tuple(c for c in out.top_categories[0] if c)[:top_k]
    return SeqScores(served.name, served.tasks, float(out.p_intent[0]), float(out.p_churn[0]), cats)


def _online(learner: Any, learners: PartitionLearners, st: UserState, now: int) -> tuple[float, bool, str] | None:
    if learner is None or not learner.warm():
        return None
    f, v = learners.features(st, now)
    p = learner.predict(f, explain=False, values=v)
    return float(p.p), bool(p.cold), f"river-{learner.cfg.model}:n{learner.n_learned}"


def describe(user: str, rec: UserRecord, ctx: Context) -> dict[str, Any]:
    """The answer of ``GET /v1/users/{id}`` for one record (``schemas/user_lookup.schema.json``)."""
    st, pl = rec.state, ctx.learners
    last = st.last_ts
    seq = sequence_scores(ctx.served, rec, ctx.latent_top_k)

    # Purchase intent at the last event: the online model once warm, else the rule.
    online = _online(pl.intent if pl else None, pl, st, last) if pl else None  # type: ignore[arg-type]
    if online is not None:
        p_online, cold, version = online
    else:
        p_online, _reasons, cold = ctx.scorer.intent(st, last)
        version = ctx.scorer.versions["online"]
    intent_versions = {"online": version}
    p_intent = p_online
    if seq is not None and "intent" in seq.tasks:
        p_intent = blend_binary(p_online, seq.p_intent)
        intent_versions["sequence"] = seq.version

    # Churn risk at the partition's watermark (never before the user's last event).
    at = max(ctx.watermark if ctx.watermark is not None else last, last)
    online_c = _online(pl.churn if pl else None, pl, st, at) if pl else None  # type: ignore[arg-type]
    if online_c is not None:
        p_churn_online, _c, churn_version = online_c
    else:
        p_churn_online, _reasons = ctx.scorer.churn(st, at)
        churn_version = ctx.scorer.versions["online"]
    churn_versions = {"online": churn_version}
    p_churn = p_churn_online
    if seq is not None and "churn" in seq.tasks:
        p_churn = blend_binary(p_churn_online, seq.p_churn)
        churn_versions["sequence"] = seq.version

    # Latent needs: the affinity, fused with the sequence model's next categories.
    top = ctx.scorer.latent(st, last, ctx.latent_top_k)
    latent_versions = {"online": ctx.scorer.versions["online"]}
    if seq is not None and seq.categories:
        top = [(str(c), s) for c, s in rrf([list(seq.categories), [c for c, _ in top]], ctx.latent_top_k)]
        latent_versions["sequence"] = seq.version
    total = sum(s for _, s in top) or 1.0

    open_session = st.sess_start > 0 and (ctx.watermark is None or ctx.watermark - last < ctx.session_gap_ms)
    pol = rec.policy
    return {
        "user": user,
        "partition": ctx.partition,
        "cold": bool(cold or sum(st.totals) <= 1),
        "first_seen": st.first_seen,
        "last_event_ts": last,
        "events": dict(zip(EVENT_TYPES, st.totals, strict=True)),
        "purchase_intent": {"score": _round(p_intent), "as_of": last, "model_versions": intent_versions},
        "churn_risk": {"score": _round(p_churn), "as_of": at, "silent_ms": at - last, "model_versions": churn_versions},
        "latent_needs": {
            "categories": [{"category_id": c, "score": _round(s / total)} for c, s in top],
            "as_of": last,
            "model_versions": latent_versions,
        },
        "session": {
            "started_at": st.sess_start,
            "open": open_session,
            "events": sum(st.sess_counts),
            "counts": dict(zip(EVENT_TYPES, st.sess_counts, strict=True)),
            "cart_value": _round(st.sess_value),
            "cart_items": sum(q for _ts, _item, q, _price in st.cart),
        },
        "last_signals": {
            Task.PURCHASE_INTENT.value: _last(pol.last_ids.get(Task.PURCHASE_INTENT), pol.intent.last_emit_ts),
            Task.CHURN_RISK.value: _last(pol.last_ids.get(Task.CHURN_RISK), pol.churn.last_emit_ts),
            Task.LATENT_NEEDS.value: _last(pol.last_ids.get(Task.LATENT_NEEDS), pol.latent_emit_ts),
        },
        "watermark": ctx.watermark,
    }


def _last(signal_id: str | None, ts: int) -> dict[str, Any] | None:
    if ts == NEVER and signal_id is None:
        return None
    return {"signal_id": signal_id, "ts": None if ts == NEVER else ts}


def _round(x: float) -> float:
    return round(float(x), 6)
