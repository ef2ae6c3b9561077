"""The worker's :meth:`~stream.logic.pipeline.Pipeline.step`, one event at a time, for the offline
evaluation (``models.evaluation``, which asks for the state and the served online score at each
event, so each event is its own batch). No Kafka, no sequence model: the evaluation trains and
scores that itself, on the windows the state keeps. Each part of the replay (train, test) is an
input partition of its own, with its own watermark, as two partitions of a topic would be.

Expiry is off (an evaluation asks about every customer at its cut-off, however long silent); the
rest is the worker's configuration as :class:`~stream.settings.Settings` defaults it.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.events import Event
from models.features.state import APPLIED, DUPLICATE, LATE, StateConfig, UserState
from models.online.learner import PartitionLearners
from stream.logic.pipeline import Pipeline, PipelineConfig, UserRecord
from stream.logic.policy import PolicyRule
from stream.logic.scoring import RuleScorer
from stream.settings import Settings

NO_EXPIRY_MS = 100 * 365 * 86_400_000
_STATUS = {"duplicate_event_id": DUPLICATE, "late_event": LATE}


def _default(name: str):
    return Settings.model_fields[name].default


class PipelineReplay:
    """Satisfies ``models.evaluation.Replay``: ``event`` returns the event's status, the user's
    state after it and the online score the worker would have served at it (None for a purchase
    or an event not applied)."""

    def __init__(self, cfg: StateConfig, learners: PartitionLearners | None = None, *,
                 churn_after_ms: int = _default("churn_after_ms")) -> None:  # fmt: skip
        rule = dict(hysteresis=_default("hysteresis"), cooldown_ms=_default("cooldown_ms"))
        pcfg = PipelineConfig(
            state=cfg, intent=PolicyRule(_default("intent_threshold"), **rule),
            churn=PolicyRule(_default("churn_threshold"), **rule), latent_top_k=_default("latent_top_k"),
            churn_risk_after_ms=_default("churn_risk_after_ms"), state_ttl_ms=NO_EXPIRY_MS,
        )  # fmt: skip
        self.learners = learners
        self.pipeline = Pipeline(pcfg, RuleScorer(churn_after_ms, cfg), clock=lambda: 0,
                                 learners=(lambda _p: learners) if learners is not None else None)  # fmt: skip
        self.records: dict[str, UserRecord] = {}

    @property
    def states(self) -> Mapping[str, UserState]:
        return {u: r.state for u, r in self.records.items()}

    @property
    def watermark(self) -> int:
        return self.pipeline.watermarks.get(0, -(2**62))

    def _lookup(self, _partition: int, users: list[str]) -> dict[str, UserRecord | None]:
        return {u: self.records.get(u) for u in users}

    def event(self, ev: Event, part: int = 0) -> tuple[str, UserState, float | None]:
        out = self.pipeline.step({ev.user: self.records.get(ev.user)}, [(part, ev)], self._lookup)
        self._store(out.records, out.deleted)
        if out.rejected:
            return _STATUS[out.rejected[0].reason], self.records[ev.user].state, None
        (c,) = out.candidates
        return APPLIED, self.records[ev.user].state, None if c.intent is None else float(c.intent[0])

    def advance(self, watermark: int) -> None:
        """Move the watermark forward (never back) and settle what is due by then, as the churn
        scan does when the partition's events reach it."""
        pipe = self.pipeline
        if watermark <= self.watermark:
            return
        pipe.watermarks[0] = watermark
        for _ in range(len(self.records) + 1):  # each scan moves its users' next check past the watermark
            due = pipe.due_for_scan(0)
            if not due:
                return
            scan = pipe.scan(0, self._lookup(0, due))
            self._store(scan.records, scan.deleted)

    def _store(self, records: Mapping[str, UserRecord], deleted: list[str]) -> None:
        self.records.update(records)
        for u in deleted:
            self.records.pop(u, None)
