"""The processing core: a batch of events in, new per-user records and outputs out.

``(records, events) -> (records, outputs)`` with no Faust and no Kafka: the agent loads the
records of the users in a batch from its table, calls :meth:`Pipeline.process`, writes the
changed records back (one table write per user per batch, not per event) and sends the outputs.
The same object runs in tests, in the evaluation replay and in the benchmark.

Event time drives everything. Each input partition has a watermark, the largest event time seen
on it minus the allowed lateness; churn risk for silent users and state expiry are decided
against that watermark (:meth:`Pipeline.scan`), so replaying a month of history takes as long as
reading it, and a quiet stream never declares anyone churned by wall clock alone.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from models.events import Event
from models.features.state import StateConfig, UserState, apply_event, is_expired
from models.online.labels import UserPending
from models.online.learner import PartitionLearners, Prediction
from stream.logic.policy import PolicyRule, PolicyState, latent_changed, signal_id
from stream.logic.scoring import Scorer


@dataclass(slots=True)
class UserRecord:
    """The table value of one user: model state, signal-policy memory and the online models'
    pending predictions (feature snapshots waiting for their delayed labels)."""

    state: UserState
    policy: PolicyState = field(default_factory=PolicyState)
    pending: UserPending = field(default_factory=UserPending)

    VERSION = 1
    _HEAD = struct.Struct("<BHH")

    def to_bytes(self) -> bytes:
        s, p = self.state.to_bytes(), self.policy.to_bytes()
        return self._HEAD.pack(self.VERSION, len(s), len(p)) + s + p + self.pending.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRecord:
        version = data[0]
        if version == 1:
            _v, ns, np_ = cls._HEAD.unpack_from(data)
            o = cls._HEAD.size
            return cls(
                UserState.from_bytes(data[o : o + ns]),
                PolicyState.from_bytes(data[o + ns : o + ns + np_]),
                UserPending.from_bytes(data[o + ns + np_ :]),
            )
        raise ValueError(f"unknown user record version {version}")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    state: StateConfig
    intent: PolicyRule
    churn: PolicyRule
    latent_top_k: int = 5
    churn_risk_after_ms: int = 7 * 86_400_000  # silence before a user's churn risk is evaluated
    state_ttl_ms: int = 90 * 86_400_000


@dataclass(frozen=True, slots=True)
class SignalOut:
    task: str
    user: str
    value: dict  # the Signal record as a dict (stream.records.Signal fields)


@dataclass(frozen=True, slots=True)
class Rejected:
    event: Event
    reason: str  # "duplicate_event_id" | "late_event"


@dataclass(slots=True)
class BatchResult:
    records: dict[str, UserRecord] = field(default_factory=dict)  # changed records, to write back
    deleted: list[str] = field(default_factory=list)  # expired users, to delete
    signals: list[SignalOut] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    applied: int = 0
    counts_by_type: dict[str, int] = field(default_factory=dict)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Pipeline:
    """Applies events to user records and turns scores into signals.

    ``clock`` only stamps ``emitted_at`` on signals; it never drives a decision.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        scorer: Scorer,
        clock: Callable[[], int] = wall_ms,
        learners: Callable[[int], PartitionLearners | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.clock = clock
        # The online models, one pair per input partition (they move with it on a rebalance).
        # ``learners(partition)`` creates or restores them; None disables online learning.
        self._make_learners = learners
        self.learners: dict[int, PartitionLearners] = {}
        self.pending = {"intent": 0, "churn": 0}  # predictions waiting for labels, this worker
        self.watermarks: dict[int, int] = {}  # input partition -> watermark (event time, ms)
        # user -> (partition, watermark at which to look at the user next): lets the churn scan
        # find silent users without reading every record; rebuilt from the table after a rebalance.
        self.activity: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ events
    def process(
        self, records: dict[str, UserRecord | None], events: Iterable[tuple[int, Event]]
    ) -> BatchResult:
        """Apply ``(partition, event)`` pairs in order. ``records`` holds the current record (or
        None) of every user in the batch and is updated in place."""
        out = BatchResult()
        cfg = self.cfg
        touched: dict[str, tuple[int, Event]] = {}
        for partition, ev in events:
            rec = records.get(ev.user)
            if rec is None:
                rec = records[ev.user] = UserRecord(UserState.new())
            outcome = apply_event(rec.state, ev, cfg.state)
            if outcome != "applied":
                out.rejected.append(Rejected(ev, "duplicate_event_id" if outcome == "duplicate" else "late_event"))
                continue
            out.applied += 1
            out.counts_by_type[ev.type] = out.counts_by_type.get(ev.type, 0) + 1
            wm = ev.ts - cfg.state.allowed_lateness_ms
            if wm > self.watermarks.get(partition, -(2**62)):
                self.watermarks[partition] = wm
            touched[ev.user] = (partition, ev)
            learners = self.learners_for(partition)
            if learners is None:
                self._score_event(rec, ev, out, None, None)
            else:
                before = self._pending_sizes(rec)
                scores = learners.on_event(rec.pending, rec.state, ev)
                self._count_pending(before, rec)
                self._score_event(rec, ev, out, scores.intent, learners)
        for user, (partition, _ev) in touched.items():
            rec = records[user]
            out.records[user] = rec  # type: ignore[assignment]
            self.activity[user] = (partition, self._next_check(rec, partition))  # type: ignore[arg-type]
        return out

    def learners_for(self, partition: int) -> PartitionLearners | None:
        if self._make_learners is None:
            return None
        pl = self.learners.get(partition)
        if pl is None:
            pl = self.learners[partition] = self._make_learners(partition)
        return pl

    @staticmethod
    def _pending_sizes(rec: UserRecord) -> tuple[int, int]:
        return len(rec.pending.intent.snapshots), len(rec.pending.churn.snapshots)

    def _count_pending(self, before: tuple[int, int], rec: UserRecord) -> None:
        after = self._pending_sizes(rec)
        self.pending["intent"] += after[0] - before[0]
        self.pending["churn"] += after[1] - before[1]

    def _next_check(self, rec: UserRecord, partition: int, wm: int | None = None) -> int:
        last, cfg = rec.state.last_ts, self.cfg
        expiry = last + cfg.state_ttl_ms
        if rec.policy.churn.active:
            due = expiry
        elif wm is None or wm < last + cfg.churn_risk_after_ms:
            due = min(last + cfg.churn_risk_after_ms, expiry)
        else:
            # Silent and below threshold: look again after another quarter of the risk horizon.
            due = min(wm + cfg.churn_risk_after_ms // 4, expiry)
        pl = self.learners.get(partition)
        if pl is not None:
            # Also wake up when a pending prediction's label window closes, so it is learned.
            label_due = pl.next_due(rec.pending, rec.state, wm)
            if label_due is not None:
                due = min(due, label_due)
        return due

    def _score_event(
        self, rec: UserRecord, ev: Event, out: BatchResult, learned: Prediction | None, pl: PartitionLearners | None
    ) -> None:
        cfg, policy = self.cfg, rec.policy
        # A returning user is no longer at risk of churning: re-arm the churn signal.
        if policy.churn.active:
            policy.churn.active = False
        if ev.type != "purchase":
            if learned is not None and pl is not None and pl.intent.warm():
                score, reasons, cold = learned.p, learned.reasons, learned.cold
                version = f"river-{pl.intent.cfg.model}:n{pl.intent.n_learned}"
            else:
                score, reasons, cold = self.scorer.intent(rec.state, ev.ts)
                version = self.scorer.versions["online"]
            if cfg.intent.step(policy.intent, score, ev.ts):
                sig = self._signal("purchase_intent", ev.user, score, cfg.intent.threshold, ev.ts, ev.event_id, reasons, cold)
                sig.value["model_versions"]["online"] = version
                out.signals.append(sig)
        else:
            cfg.intent.step(policy.intent, 0.0, ev.ts)  # the purchase happened: intent resolved
        top = self.scorer.latent(rec.state, ev.ts, cfg.latent_top_k)
        cats = tuple(c for c, _ in top)
        if cats and latent_changed(policy.latent, cats) and ev.ts - policy.latent_emit_ts >= cfg.intent.cooldown_ms:
            policy.latent, policy.latent_emit_ts = cats, ev.ts
            total = sum(s for _, s in top) or 1.0
            sig = self._signal(
                "latent_needs", ev.user, top[0][1] / total, 0.0, ev.ts, ev.event_id,
                [{"feature": f"category:{c}", "value": s, "contribution": s / total, "text": f"affinity to category {c}"} for c, s in top[:3]],
                False,
            )  # fmt: skip
            sig.value["categories"] = [{"category_id": c, "score": s / total} for c, s in top]
            out.signals.append(sig)

    # ------------------------------------------------------------------ silence
    def due_for_scan(self, partition: int) -> list[str]:
        """Users on ``partition`` whose next check (churn risk, expiry) is at or before its watermark."""
        wm = self.watermarks.get(partition)
        if wm is None:
            return []
        return [u for u, (p, due) in self.activity.items() if p == partition and due <= wm]

    def scan(self, partition: int, records: dict[str, UserRecord | None]) -> BatchResult:
        """Churn risk and expiry for silent users of one partition, at that partition's watermark."""
        out = BatchResult()
        wm = self.watermarks.get(partition)
        if wm is None:
            return out
        for user, rec in records.items():
            if rec is None:
                self.activity.pop(user, None)
                continue
            pl = self.learners_for(partition)
            learned = None
            if pl is not None:
                # Settle the labels whose windows the watermark closed (learn_one, exactly once).
                before = self._pending_sizes(rec)
                learned, _n = pl.on_watermark(rec.pending, rec.state, wm)
                self._count_pending(before, rec)
            if is_expired(rec.state, wm, self.cfg.state_ttl_ms):
                # The TTL exceeds the churn horizon (settings check), so the churn outcome is known.
                out.deleted.append(user)
                self.activity.pop(user, None)
                self._count_pending(self._pending_sizes(rec), UserRecord(rec.state))
                continue
            if wm - rec.state.last_ts >= self.cfg.churn_risk_after_ms:
                if learned is not None and pl is not None and pl.churn.warm():
                    score, reasons = learned.p, learned.reasons
                    version = f"river-{pl.churn.cfg.model}:n{pl.churn.n_learned}"
                else:
                    score, reasons = self.scorer.churn(rec.state, wm)
                    version = self.scorer.versions["online"]
                if self.cfg.churn.step(rec.policy.churn, score, wm):
                    last_id = f"silence:{rec.state.last_ts}"
                    sig = self._signal("churn_risk", user, score, self.cfg.churn.threshold, wm, last_id, reasons, False)
                    sig.value["model_versions"]["online"] = version
                    out.signals.append(sig)
            out.records[user] = rec
            self.activity[user] = (partition, self._next_check(rec, partition, wm))
        return out

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop watermarks, activity and models of partitions this worker no longer owns; the
        pending counts are rebuilt by :meth:`remember` as the records are indexed again."""
        self.watermarks = {p: w for p, w in self.watermarks.items() if p in keep}
        self.activity = {u: a for u, a in self.activity.items() if a[0] in keep}
        self.learners = {p: m for p, m in self.learners.items() if p in keep}
        self.pending = {"intent": 0, "churn": 0}

    def remember(self, user: str, partition: int, rec: UserRecord) -> None:
        """Index a recovered record (after a rebalance) for the churn scan."""
        self._count_pending((0, 0), rec)
        self.learners_for(partition)
        self.activity[user] = (partition, self._next_check(rec, partition))
        wm = rec.state.last_ts - self.cfg.state.allowed_lateness_ms
        if wm > self.watermarks.get(partition, -(2**62)):
            self.watermarks[partition] = wm

    # ------------------------------------------------------------------ output
    def _signal(
        self, task: str, user: str, score: float, threshold: float, ts: int, event_id: str, reasons: list[dict], cold: bool
    ) -> SignalOut:
        return SignalOut(
            task,
            user,
            {
                "signal_id": signal_id(user, task, event_id),
                "user": user,
                "task": task,
                "score": round(float(score), 6),
                "threshold": threshold,
                "ts": ts,
                "emitted_at": self.clock(),
                "event_id": event_id,
                "model_versions": dict(self.scorer.versions),
                "reasons": reasons,
                "cold": cold,
                "categories": None,
            },
        )
