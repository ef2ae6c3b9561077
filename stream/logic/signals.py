"""What the workers emit: one :class:`Signal` per decision, for one :class:`Task`.

A signal is built once, complete, by the policy (``stream.logic.pipeline``), and serialised once,
by :meth:`Signal.to_json`, to the record ``schemas/signal.schema.json`` describes (a contract test
holds the two together). The models speak of their *heads* (``intent``, ``churn``, ``latent``);
:attr:`Task.head` is the one place the two names meet.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Task(StrEnum):
    PURCHASE_INTENT = "purchase_intent"
    CHURN_RISK = "churn_risk"
    LATENT_NEEDS = "latent_needs"

    @property
    def head(self) -> str:
        """The models' name for the task (``models.online.labels``, ``models.sequence``)."""
        return _HEADS[self]

    @classmethod
    def of_head(cls, head: str) -> Task:
        return _TASKS_OF_HEADS[head]


_HEADS = {Task.PURCHASE_INTENT: "intent", Task.CHURN_RISK: "churn", Task.LATENT_NEEDS: "latent"}
_TASKS_OF_HEADS = {head: task for task, head in _HEADS.items()}
LEARNED = (Task.PURCHASE_INTENT, Task.CHURN_RISK)  # the tasks with an online model and a label


@dataclass(frozen=True, slots=True)
class Signal:
    signal_id: str  # deterministic from (user, task, triggering event): consumers dedupe on it
    user: str  # pseudonymous user id
    task: Task
    score: float
    threshold: float
    ts: int  # the triggering event's time (epoch ms); for churn, the watermark that triggered it
    emitted_at: int  # wall clock (epoch ms)
    event_id: str  # the triggering event (for churn: the user's last event)
    model_versions: Mapping[str, str]
    reasons: tuple[Mapping[str, Any], ...]  # feature, value, contribution (log-odds), text
    cold: bool = False  # the user had no history and a population prior was used
    categories: tuple[Mapping[str, Any], ...] | None = None  # latent_needs only: category_id, score

    def with_reasons(self, reasons: list[Mapping[str, Any]]) -> Signal:
        return dataclasses.replace(self, reasons=tuple(reasons))

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal_id": self.signal_id, "user": self.user, "task": str(self.task), "score": self.score,
            "threshold": self.threshold, "ts": self.ts, "emitted_at": self.emitted_at, "event_id": self.event_id,
            "model_versions": dict(self.model_versions), "reasons": [dict(r) for r in self.reasons],
            "cold": self.cold, "categories": None if self.categories is None else [dict(c) for c in self.categories],
        }  # fmt: skip

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()
