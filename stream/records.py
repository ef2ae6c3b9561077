"""Output records: signals and dead letters, as Faust records matching ``schemas/*.schema.json``.

The input event is validated by :func:`models.events.parse_event` (hand-written for speed and for
precise reasons), not by a Faust record: a record would reject bad input with a generic error
and no dead-letter reason.
"""

from __future__ import annotations

import faust

TASKS = ("purchase_intent", "churn_risk", "latent_needs")


class Reason(faust.Record, serializer="json"):
    """One contributing feature: ``contribution`` is in score units (log-odds for linear models)."""

    feature: str
    value: float
    contribution: float
    text: str = ""


class CategoryScore(faust.Record, serializer="json"):
    category_id: str
    score: float


class Signal(faust.Record, serializer="json"):
    signal_id: str  # deterministic from (user, task, triggering event): dedupe on it
    user: str  # pseudonymous user id
    task: str  # one of TASKS
    score: float
    threshold: float
    ts: int  # triggering event's time (epoch ms); for churn, the watermark that triggered it
    emitted_at: int  # wall clock (epoch ms)
    event_id: str  # triggering event (for churn: the user's last event)
    model_versions: dict[str, str]
    reasons: list[Reason]
    cold: bool = False  # True when the user had no history and a population prior was used
    categories: list[CategoryScore] | None = None  # latent_needs only


class DeadLetterRecord(faust.Record, serializer="json"):
    reason: str
    detail: str
    original_b64: str | None  # the original message value, base64, cut to INTENTSTREAM_DEAD_LETTER_MAX_BYTES
    original_bytes: int | None  # the size of the whole original value
    original_truncated: bool
    topic: str
    partition: int
    offset: int
