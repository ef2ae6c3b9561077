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
from stream.logic.policy import PolicyRule, PolicyState, latent_changed, signal_id
from stream.logic.scoring import Scorer


@dataclass(slots=True)
class UserRecord:
    """The table value of one user: model state plus signal-policy memory."""

    state: UserState
    policy: PolicyState = field(default_factory=PolicyState)

    _LEN = struct.Struct("<H")

    def to_bytes(self) -> bytes:
        s = self.state.to_bytes()
        return self._LEN.pack(len(s)) + s + self.policy.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRecord:
        (n,) = cls._LEN.unpack_from(data)
        body = memoryview(data)
        return cls(UserState.from_bytes(bytes(body[2 : 2 + n])), PolicyState.from_bytes(bytes(body[2 + n :])))


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

    def __init__(self, cfg: PipelineConfig, scorer: Scorer, clock: Callable[[], int] = wall_ms) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.clock = clock
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
            self._score_event(rec, ev, out)
        for user, (partition, _ev) in touched.items():
            rec = records[user]
            out.records[user] = rec  # type: ignore[assignment]
            self.activity[user] = (partition, self._next_check(rec))  # type: ignore[arg-type]
        return out

    def _next_check(self, rec: UserRecord, wm: int | None = None) -> int:
        last, cfg = rec.state.last_ts, self.cfg
        expiry = last + cfg.state_ttl_ms
        if rec.policy.churn.active:
            return expiry
        if wm is None or wm < last + cfg.churn_risk_after_ms:
            return min(last + cfg.churn_risk_after_ms, expiry)
        # Silent and below threshold: look again after another quarter of the risk horizon.
        return min(wm + cfg.churn_risk_after_ms // 4, expiry)

    def _score_event(self, rec: UserRecord, ev: Event, out: BatchResult) -> None:
        cfg, policy = self.cfg, rec.policy
        # A returning user is no longer at risk of churning: re-arm the churn signal.
        if policy.churn.active:
            policy.churn.active = False
        if ev.type != "purchase":
            score, reasons, cold = self.scorer.intent(rec.state, ev.ts)
            if cfg.intent.step(policy.intent, score, ev.ts):
                out.signals.append(self._signal("purchase_intent", ev.user, score, cfg.intent.threshold, ev.ts, ev.event_id, reasons, cold))
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
            if is_expired(rec.state, wm, self.cfg.state_ttl_ms):
                out.deleted.append(user)
                self.activity.pop(user, None)
                continue
            score, reasons = self.scorer.churn(rec.state, wm)
            if self.cfg.churn.step(rec.policy.churn, score, wm):
                last_id = f"silence:{rec.state.last_ts}"
                out.signals.append(self._signal("churn_risk", user, score, self.cfg.churn.threshold, wm, last_id, reasons, False))
            out.records[user] = rec
            self.activity[user] = (partition, self._next_check(rec, wm))
        return out

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop watermarks and activity of partitions this worker no longer owns."""
        self.watermarks = {p: w for p, w in self.watermarks.items() if p in keep}
        self.activity = {u: a for u, a in self.activity.items() if a[0] in keep}

    def remember(self, user: str, partition: int, rec: UserRecord) -> None:
        """Index a recovered record (after a rebalance) for the churn scan."""
        self.activity[user] = (partition, self._next_check(rec))
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
