"""The processing core: a batch of events in, new per-user records and outputs out.

:meth:`Pipeline.step` is the whole algorithm for one batch, with no Faust and no Kafka: apply each
event to its user's record and the online models, score with the sequence model, run the signal
policy, then the churn scan of every partition the batch advanced. The worker loads the batch's
records, calls it, sends the signals and writes the changed records back (one table write per user
per batch, not per event). The same step runs in the tests' expected outcomes and the benchmarks.

Event time drives everything. Each input partition has a watermark, the largest event time seen
on it minus the allowed lateness; churn risk for silent users and state expiry are decided
against that watermark, so replaying a month of history takes as long as reading it, and a quiet
stream never declares anyone churned by wall clock alone.

Inside the step, :meth:`Pipeline.apply` updates state and the online models event by event and
leaves one :class:`Candidate` per event, so that the sequence model scores the whole batch in one
call; :meth:`Pipeline.decide` then blends its scores in (``models.blend``) and runs the policy
event by event, in order. Every decision depends on the user's events up to the triggering one
only, never on where a batch happens to end, so a replayed tail gives the same signals with the
same ids. The churn scan has the same two halves (:meth:`scan_apply`, :meth:`decide_silent`).
"""

from __future__ import annotations

import heapq
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.blend import blend_binary, logit, rrf
from models.events import Event
from models.features.recent import RecentEvent
from models.features.state import StateConfig, UserState, apply_event, is_expired
from models.online.labels import UserPending, encode_all
from models.online.learner import PartitionLearners, Prediction
from stream.logic.policy import PolicyRule, PolicyState, latent_changed, signal_id
from stream.logic.scoring import Scorer
from stream.logic.sequence_state import SeqMemory, SeqQuery
from stream.logic.signals import Signal, Task


@dataclass(slots=True)
class UserRecord:
    """The table value of one user: model state, signal-policy memory, the online models'
    pending predictions (feature snapshots waiting for their delayed labels) and the sequence
    model's hidden state (``stream.logic.sequence_state``)."""

    state: UserState
    policy: PolicyState = field(default_factory=PolicyState)
    pending: UserPending = field(default_factory=UserPending)
    seq: SeqMemory | None = None

    VERSION = 2
    _HEAD_V1 = struct.Struct("<BHH")
    _HEAD = struct.Struct("<BHHH")

    def to_bytes(self) -> bytes:
        s, p = self.state.to_bytes(), self.policy.to_bytes()
        q = self.seq.to_bytes() if self.seq is not None else b""
        return self._HEAD.pack(self.VERSION, len(s), len(p), len(q)) + s + p + q + self.pending.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRecord:
        version = data[0]
        if version == 2:
            _v, ns, np_, nq = cls._HEAD.unpack_from(data)
            o = cls._HEAD.size
        elif version == 1:  # before the sequence state: it is rebuilt from the ring on the next event
            _v, ns, np_ = cls._HEAD_V1.unpack_from(data)
            nq, o = 0, cls._HEAD_V1.size
        else:
            raise ValueError(f"unknown user record version {version}")
        o2, o3 = o + ns, o + ns + np_
        return cls(
            UserState.from_bytes(data[o:o2]),
            PolicyState.from_bytes(data[o2:o3]),
            UserPending.from_bytes(data[o3 + nq :]),
            SeqMemory.from_bytes(data[o3 : o3 + nq]) if nq else None,
        )


def records_to_bytes(records: dict[str, UserRecord]) -> dict[str, bytes]:
    """Each record's :meth:`UserRecord.to_bytes`, with the pending-label snapshots the batch
    queued encoded together first (:func:`models.online.labels.encode_all`: the same bytes,
    a fraction of the cost of encoding them one record at a time)."""
    encode_all(
        s for rec in records.values() for q in (rec.pending.intent, rec.pending.churn) for s in q.snapshots
    )
    return {user: rec.to_bytes() for user, rec in records.items()}


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    state: StateConfig
    intent: PolicyRule
    churn: PolicyRule
    latent_top_k: int = 5
    churn_risk_after_ms: int = 7 * 86_400_000  # silence before a user's churn risk is evaluated
    state_ttl_ms: int = 90 * 86_400_000


@dataclass(frozen=True, slots=True)
class Rejected:
    event: Event
    reason: str  # "duplicate_event_id" | "late_event"


@dataclass(frozen=True, slots=True)
class SeqView:
    """The sequence model's scores of one user's window (at its newest event)."""

    version: str  # the model's name in signals, e.g. "seq-000003"
    tasks: frozenset[str]  # binary tasks its scores are blended into ("intent", "churn")
    p_intent: float
    p_churn: float
    categories: tuple[str, ...] = ()  # named next categories, most likely first


@dataclass(slots=True)
class Candidate:
    """One applied event waiting for the policy, with what the online side said at that event."""

    partition: int
    event: Event
    # (score, reasons, cold, version); None: a purchase. Reasons may be a callable that works them
    # out (a learned model's, see OnlineLearner.predict): the policy calls it only when it fires.
    intent: tuple[float, list[dict] | Callable[[], list[dict]], bool, str] | None
    latent: list[tuple[str, float]]  # the state's category affinity at the event (empty unless latent_due)
    window: Sequence[RecentEvent] | None = (
        None  # the user's recent events at the event (for the sequence model)
    )
    # Whether a latent-needs signal may still be emitted at this event: false while the user's last
    # one is within the cooldown. Decisions in this batch can only make it false, never true, so
    # the sequence model's next categories are needed only where it is true (they are its
    # costliest head).
    latent_due: bool = True
    events: int = 0  # the user's applied events, this one included
    in_order: bool = True  # the event is the newest the user has (not inserted into the ring late)

    def query(self) -> SeqQuery:
        return SeqQuery(self.event.user, self.window or (), self.events, self.latent_due, self.in_order)


@dataclass(slots=True)
class Silent:
    """A silent user whose churn risk is due at the partition's watermark."""

    partition: int
    watermark: int
    online: Prediction | None
    learners: PartitionLearners | None


@dataclass(slots=True)
class BatchResult:
    records: dict[str, UserRecord] = field(default_factory=dict)  # changed records, to write back
    deleted: list[str] = field(default_factory=list)  # expired users, to delete
    signals: list[Signal] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    applied: int = 0
    counts_by_type: dict[str, int] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # apply -> decide, in event order
    silent: dict[str, Silent] = field(default_factory=dict)  # scan_apply -> decide_silent
    # Signals whose score includes the sequence model, for explanations: (index in signals, head,
    # the window the model scored).
    explain: list[tuple[int, str, Sequence[RecentEvent]]] = field(default_factory=list)


@dataclass(slots=True)
class StepResult:
    """What one batch changes: records to write (or delete), signals to send, events rejected."""

    records: dict[str, UserRecord] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    partitions: dict[str, int] = field(default_factory=dict)  # user -> partition, of every record above
    signals: list[Signal] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    applied: int = 0
    counts_by_type: dict[str, int] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # each applied event's scores, in order


class SequenceModel(Protocol):
    """The sequence model as the step sees it (``stream.agents.serving`` serves one)."""

    def views(
        self, queries: Sequence[SeqQuery], memory: Mapping[str, SeqMemory | None]
    ) -> tuple[list[SeqView], dict[str, SeqMemory]] | None:
        """One view per applied event, advancing each user's state from ``memory`` (the states
        stored before the batch); returns the views and each user's new state. None: no view at
        all (scoring failed)."""

    def at_rest(
        self, windows: Sequence[Sequence[RecentEvent]], events: Sequence[int], memory: Sequence[SeqMemory | None]
    ) -> list[SeqView] | None:
        """Views of silent users at their last event (churn risk only, no next categories)."""

    def explain(self, result: BatchResult) -> None:
        """Add attributions to the signals of ``result.explain``."""


# Records of the users a churn scan looks at: (partition, users) -> user -> record (None: none).
Lookup = Callable[[int, list[str]], dict[str, "UserRecord | None"]]


def _no_mark(_stage: str) -> None:
    pass


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
        # Change it through _track/_untrack only: they keep the due-time index below in step.
        self.activity: dict[str, tuple[int, int]] = {}
        # Per partition, a min-heap of (due, user) over the activity entries, so that finding the
        # due users costs O(due * log n) per batch instead of a pass over every user (which, with
        # 100k users and 4 partitions, was 400k tuple reads per batch). Entries are not removed
        # when a user's due time changes; a popped entry that no longer matches ``activity`` is
        # stale and dropped, and the heap is rebuilt when stale entries outnumber live ones.
        self._due: dict[int, list[tuple[int, str]]] = {}
        self._live: dict[int, int] = {}  # partition -> users in activity

    # ------------------------------------------------------------------ the step
    def step(
        self,
        records: dict[str, UserRecord | None],
        events: Sequence[tuple[int, Event]],
        lookup: Lookup,
        model: SequenceModel | None = None,
        scan_limit: int | None = None,
        mark: Callable[[str], None] | None = None,
    ) -> StepResult:
        """One batch of ``(partition, event)`` pairs: the events in order (``records`` holds the
        record, or None, of every user in them and is updated in place), then the churn scan of
        each partition the batch came from at its new watermark (at most ``scan_limit`` users per
        partition; ``lookup`` reads the records of the due users this batch did not touch).
        ``mark(stage)``, if given, is called as each stage ends (``benchmarks/stage_costs.py``)."""
        mark = mark or _no_mark
        out = StepResult()
        result = self.apply(records, events, windows=model is not None)
        mark("apply: state, online models")
        views = None
        if model is not None and result.candidates:
            memory = {c.event.user: records[c.event.user].seq for c in result.candidates}  # type: ignore[union-attr]
            seen = model.views([c.query() for c in result.candidates], memory)
            if seen is not None:
                views, states = seen
                for user, m in states.items():
                    result.records[user].seq = m
            mark("sequence model")
        self.decide(result, records, views)  # type: ignore[arg-type]
        mark("decide: signal policy")
        if model is not None:
            model.explain(result)
            mark("explain (occlusion)")
        partitions = {p: None for p, _ev in events}
        _merge(out, result, {c.event.user: c.partition for c in result.candidates})
        out.rejected, out.applied, out.counts_by_type = result.rejected, result.applied, result.counts_by_type
        out.candidates = result.candidates
        for partition in partitions:
            due = self.due_for_scan(partition, scan_limit)
            if not due:
                continue
            stale = [u for u in due if u not in out.records and u not in out.deleted]
            read = lookup(partition, stale) if stale else {}
            # In due order (the order labels are learned in); this batch's own records are not written yet.
            recs = {u: out.records[u] if u in out.records else None if u in out.deleted else read.get(u) for u in due}
            scan = self.scan_apply(partition, recs)
            silent = list(scan.silent)
            if model is not None and silent:  # churn risk only: no next categories
                rs = [recs[u] for u in silent]
                views = model.at_rest([r.state.recent_window() for r in rs], [sum(r.state.totals) for r in rs],  # type: ignore[union-attr]
                                      [r.seq for r in rs])  # type: ignore[union-attr]  # fmt: skip
                self.decide_silent(scan, recs, dict(zip(silent, views, strict=True)) if views else None)  # type: ignore[arg-type]
                model.explain(scan)
            else:
                self.decide_silent(scan, recs)  # type: ignore[arg-type]
            _merge(out, scan, dict.fromkeys([*scan.records, *scan.deleted], partition))
        mark("churn scan")
        return out

    def process(
        self, records: dict[str, UserRecord | None], events: Iterable[tuple[int, Event]]
    ) -> BatchResult:
        """:meth:`apply` then :meth:`decide` with no sequence model and no churn scan."""
        out = self.apply(records, events)
        self.decide(out, records)  # type: ignore[arg-type]
        return out

    # ------------------------------------------------------------------ events

    def apply(
        self,
        records: dict[str, UserRecord | None],
        events: Iterable[tuple[int, Event]],
        *,
        windows: bool = False,
    ) -> BatchResult:
        """Apply ``(partition, event)`` pairs in order: state, online models (a prediction and
        its pending label per event), watermarks, and each event's online scores. ``records``
        holds the current record (or None) of every user in the batch and is updated in place.
        ``windows=True`` also keeps each event's window for the sequence model. Signals are left
        to :meth:`decide`."""
        out = BatchResult()
        cfg = self.cfg
        cands = out.candidates
        touched: dict[str, int] = {}
        later: list[int] = []  # candidates whose online score waits for the flush below
        try:
            for partition, ev in events:
                rec = records.get(ev.user)
                if rec is None:
                    rec = records[ev.user] = UserRecord(UserState.new())
                outcome = apply_event(rec.state, ev, cfg.state)
                if outcome != "applied":
                    out.rejected.append(
                        Rejected(ev, "duplicate_event_id" if outcome == "duplicate" else "late_event")
                    )
                    continue
                out.applied += 1
                out.counts_by_type[ev.type] = out.counts_by_type.get(ev.type, 0) + 1
                wm = ev.ts - cfg.state.allowed_lateness_ms
                if wm > self.watermarks.get(partition, -(2**62)):
                    self.watermarks[partition] = wm
                touched[ev.user] = partition
                # A returning user is no longer at risk of churning: re-arm the churn signal.
                rec.policy.churn.active = False
                pl = self.learners_for(partition)
                scores = None
                if pl is not None:
                    before = self._pending_sizes(rec)
                    scores = pl.on_event(rec.pending, rec.state, ev, explain="later", batch=True)
                    self._count_pending(before, rec)
                intent = None
                if ev.type != "purchase":
                    learned = scores.intent if scores is not None else None
                    if learned is not None and pl is not None and pl.intent.warm():
                        if learned.p is None:  # batched: scored with the batch's others below
                            later.append(len(cands))
                        p = learned if learned.p is None else learned.p
                        intent = (
                            p,
                            learned.reasons,
                            learned.cold,
                            f"river-{pl.intent.cfg.model}:n{pl.intent.n_learned}",
                        )  # type: ignore[assignment]
                    else:
                        # The rule reads the same features the learners just read (when they did).
                        f = scores.features if scores is not None else None
                        intent = (*self.scorer.intent(rec.state, ev.ts, f), self.scorer.versions["online"])
                # The affinity's top categories only matter where a latent signal may follow.
                due = ev.ts - rec.policy.latent_emit_ts >= cfg.intent.cooldown_ms
                latent = self.scorer.latent(rec.state, ev.ts, cfg.latent_top_k) if due else []
                st = rec.state
                cands.append(
                    Candidate(
                        partition, ev, intent, latent, st.recent_window() if windows else None, due,
                        sum(st.totals) if windows else 0, st.last_ts <= ev.ts,
                    )
                )
        finally:
            # The learners score their waiting predictions in one pass each (the same bits as one at
            # a time), which also sets the scores of the predictions queued for their labels; also
            # when an event failed, so that none is left waiting into the next batch.
            for pl in self.learners.values():
                pl.flush()
        for i in later:
            c = cands[i]
            c.intent = (c.intent[0].p, *c.intent[1:])  # type: ignore[index,union-attr]
        for user, partition in touched.items():
            rec = records[user]
            out.records[user] = rec  # type: ignore[assignment]
            self._track(user, partition, self._next_check(rec, partition))  # type: ignore[arg-type]
        return out

    def decide(
        self, out: BatchResult, records: dict[str, UserRecord], seq: Sequence[SeqView | None] | None = None
    ) -> None:
        """The signal policy, event by event in order; ``seq[i]`` is the sequence model's view of
        ``out.candidates[i]`` (None where it has none)."""
        for i, c in enumerate(out.candidates):
            self._decide_event(records[c.event.user], c, out, seq[i] if seq else None)

    def _decide_event(self, rec: UserRecord, c: Candidate, out: BatchResult, sv: SeqView | None) -> None:
        cfg, policy, ev = self.cfg, rec.policy, c.event
        if c.intent is None:
            cfg.intent.step(policy.intent, 0.0, ev.ts)  # the purchase happened: intent resolved
        else:
            score, reasons, cold, version = c.intent
            blended = sv is not None and "intent" in sv.tasks
            if blended:
                score = blend_binary(score, sv.p_intent)  # type: ignore[union-attr]
            if cfg.intent.step(policy.intent, score, ev.ts):
                # Reasons are worked out for the signals that fire only (a few events in a hundred).
                reasons = reasons() if callable(reasons) else reasons
                if blended:
                    reasons = _blend_reasons(reasons, sv.p_intent, sv.version, "purchase intent")  # type: ignore[union-attr]
                if blended:
                    out.explain.append((len(out.signals), "intent", c.window or []))
                out.signals.append(self._signal(
                    Task.PURCHASE_INTENT, ev.user, score, cfg.intent.threshold, ev.ts, ev.event_id, reasons, cold,
                    online=version, sequence=sv.version if blended else None,  # type: ignore[union-attr]
                ))  # fmt: skip
                _remember(policy, out.signals[-1])
        top = c.latent
        if sv is not None and sv.categories:
            fused = rrf([list(sv.categories), [cat for cat, _ in top]], cfg.latent_top_k)
            top = [(str(cat), s) for cat, s in fused]
        cats = tuple(cat for cat, _ in top)
        if (
            cats
            and latent_changed(policy.latent, cats)
            and ev.ts - policy.latent_emit_ts >= cfg.intent.cooldown_ms
        ):
            policy.latent, policy.latent_emit_ts = cats, ev.ts
            total = sum(s for _, s in top) or 1.0
            why = (
                "fused rank of the sequence model and the category affinity"
                if sv is not None and sv.categories
                else "affinity to category"
            )
            out.signals.append(self._signal(
                Task.LATENT_NEEDS, ev.user, top[0][1] / total, 0.0, ev.ts, ev.event_id,
                [{"feature": f"category:{cat}", "value": s, "contribution": s / total, "text": f"{why} {cat}"} for cat, s in top[:3]],
                False, sequence=sv.version if sv is not None and sv.categories else None,
                categories=[{"category_id": cat, "score": s / total} for cat, s in top],
            ))  # fmt: skip
            _remember(policy, out.signals[-1])

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

    # ------------------------------------------------------------------ silence
    def _track(self, user: str, partition: int, due: int) -> None:
        old = self.activity.get(user)
        if old == (partition, due):
            return
        if old is None or old[0] != partition:
            if old is not None:
                self._live[old[0]] -= 1
            self._live[partition] = self._live.get(partition, 0) + 1
        self.activity[user] = (partition, due)
        heap = self._due.setdefault(partition, [])
        heapq.heappush(heap, (due, user))
        if len(heap) > 2 * self._live[partition] + 1_000:
            self._reindex(partition)

    def _untrack(self, user: str) -> None:
        old = self.activity.pop(user, None)
        if old is not None:
            self._live[old[0]] -= 1

    def _reindex(self, partition: int | None = None) -> None:
        """Rebuild the due-time heaps from ``activity`` (one partition's, or all)."""
        entries: dict[int, list[tuple[int, str]]] = {partition: []} if partition is not None else {}
        for user, (p, due) in self.activity.items():
            if partition is None:
                entries.setdefault(p, []).append((due, user))
            elif p == partition:
                entries[p].append((due, user))
        if partition is None:
            self._due, self._live = {}, {}
        for p, heap in entries.items():
            heapq.heapify(heap)
            self._due[p], self._live[p] = heap, len(heap)

    def due_for_scan(self, partition: int, limit: int | None = None) -> list[str]:
        """Users on ``partition`` whose next check (churn risk, expiry) is at or before its
        watermark, earliest first (at most ``limit``). They stay indexed until :meth:`scan_apply`
        gives them their next check."""
        wm = self.watermarks.get(partition)
        heap = self._due.get(partition)
        if wm is None or not heap:
            return []
        found: list[str] = []
        popped: list[tuple[int, str]] = []
        while heap and heap[0][0] <= wm and (limit is None or len(found) < limit):
            entry = heapq.heappop(heap)
            due, user = entry
            # current entries only, each once (equal entries pop one after the other)
            if self.activity.get(user) == (partition, due) and (not found or found[-1] != user):
                found.append(user)
                popped.append(entry)
        for entry in popped:  # still due until scanned: scan_apply indexes their next check
            heapq.heappush(heap, entry)
        return found

    def scan(self, partition: int, records: dict[str, UserRecord | None]) -> BatchResult:
        """:meth:`scan_apply` then :meth:`decide_silent` with no sequence model."""
        out = self.scan_apply(partition, records)
        self.decide_silent(out, records)  # type: ignore[arg-type]
        return out

    def scan_apply(self, partition: int, records: dict[str, UserRecord | None]) -> BatchResult:
        """Labels and expiry for silent users of one partition, at that partition's watermark;
        the users whose churn risk is due are left in ``out.silent`` for :meth:`decide_silent`."""
        out = BatchResult()
        wm = self.watermarks.get(partition)
        if wm is None:
            return out
        for user, rec in records.items():
            if rec is None:
                self._untrack(user)
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
                self._untrack(user)
                self._count_pending(self._pending_sizes(rec), UserRecord(rec.state))
                continue
            if wm - rec.state.last_ts >= self.cfg.churn_risk_after_ms:
                out.silent[user] = Silent(partition, wm, learned, pl)
            out.records[user] = rec
            self._track(user, partition, self._next_check(rec, partition, wm))
        return out

    def decide_silent(
        self, out: BatchResult, records: dict[str, UserRecord], seq: dict[str, SeqView] | None = None
    ) -> None:
        """Churn risk of the silent users of :meth:`scan_apply`, driven by the watermark."""
        for user, c in out.silent.items():
            rec, wm, pl, learned = records[user], c.watermark, c.learners, c.online
            sv = seq.get(user) if seq else None
            if learned is not None and pl is not None and pl.churn.warm():
                score, reasons = learned.p, learned.reasons
                version = f"river-{pl.churn.cfg.model}:n{pl.churn.n_learned}"
            else:
                score, reasons = self.scorer.churn(rec.state, wm)
                version = self.scorer.versions["online"]
            blended = sv is not None and "churn" in sv.tasks
            if blended:
                score = blend_binary(score, sv.p_churn)  # type: ignore[union-attr]
                reasons = _blend_reasons(reasons, sv.p_churn, sv.version, "churn")  # type: ignore[union-attr]
            if self.cfg.churn.step(rec.policy.churn, score, wm):
                last_id = f"silence:{rec.state.last_ts}"
                if blended:
                    out.explain.append((len(out.signals), "churn", rec.state.recent_window()))
                out.signals.append(self._signal(
                    Task.CHURN_RISK, user, score, self.cfg.churn.threshold, wm, last_id, reasons, False,
                    online=version, sequence=sv.version if blended else None,  # type: ignore[union-attr]
                ))  # fmt: skip
                _remember(rec.policy, out.signals[-1])

    def forget_partitions(self, keep: set[int]) -> None:
        """Drop watermarks, activity and models of partitions this worker no longer owns; the
        pending counts are rebuilt by :meth:`remember` as the records are indexed again."""
        self.watermarks = {p: w for p, w in self.watermarks.items() if p in keep}
        self.activity = {u: a for u, a in self.activity.items() if a[0] in keep}
        self._reindex()
        self.learners = {p: m for p, m in self.learners.items() if p in keep}
        self.pending = {"intent": 0, "churn": 0}

    def remember(self, user: str, partition: int, rec: UserRecord) -> None:
        """Index a recovered record (after a rebalance) for the churn scan."""
        self._count_pending((0, 0), rec)
        self.learners_for(partition)
        self._track(user, partition, self._next_check(rec, partition))
        wm = rec.state.last_ts - self.cfg.state.allowed_lateness_ms
        if wm > self.watermarks.get(partition, -(2**62)):
            self.watermarks[partition] = wm

    # ------------------------------------------------------------------ output
    def _signal(
        self, task: Task, user: str, score: float, threshold: float, ts: int, event_id: str, reasons: list[dict],
        cold: bool, *, online: str | None = None, sequence: str | None = None, categories: list[dict] | None = None,
    ) -> Signal:  # fmt: skip
        versions = dict(self.scorer.versions)
        if online is not None:
            versions["online"] = online
        if sequence is not None:
            versions["sequence"] = sequence
        return Signal(
            signal_id(user, task, event_id), user, task, round(float(score), 6), threshold, ts, self.clock(), event_id,
            versions, tuple(reasons), cold, None if categories is None else tuple(categories),
        )  # fmt: skip


def _remember(policy: PolicyState, sig: Signal) -> None:
    """Keep the signal's id in the user's record for the query API (``stream.logic.lookup``): it
    hashes the triggering event's id, which the state does not keep, so it cannot be recomputed."""
    policy.last_ids[sig.task] = sig.signal_id


def _merge(out: StepResult, part: BatchResult, partitions: dict[str, int]) -> None:
    """Add a half of the step (the events', or one partition's scan) to its result."""
    for user, rec in part.records.items():
        out.records[user] = rec
    for user in part.deleted:
        out.records.pop(user, None)
        if user not in out.deleted:
            out.deleted.append(user)
    out.partitions.update(partitions)
    out.signals.extend(part.signals)


def _blend_reasons(reasons: list[dict], p_seq: float, version: str, what: str) -> list[dict]:
    """Restate the online reasons in the blended log-odds (``models.blend.blend_binary``): each
    model contributes half its logit, so each online reason's contribution is halved and the
    sequence model appears as one more reason (its per-event attributions are added later)."""
    halved = [dict(r, contribution=round(r["contribution"] / 2, 4)) for r in reasons]
    seq = {
        "feature": "sequence_model", "value": round(float(p_seq), 4), "contribution": round(logit(p_seq) / 2, 4),
        "text": f"sequence model {version} rates {what} at {p_seq:.2f} from the recent events",
    }  # fmt: skip
    return sorted([*halved, seq], key=lambda r: -abs(r["contribution"]))
