"""Why the sequence model scored a user as it did: occlusion attributions over the window.

It replays the ring (the user's last ``lookback`` events) from a zero state, not the stored
whole-history state: removing an event from a state is not possible, and explanations are made
for emitted signals only, so the replay's cost stays small.

For each of the last ``max_events`` events of a window, the window is scored again without that
event; the event's contribution is how much the head's logit drops when it is missing (positive:
the event raised the score). All variants of all windows go through one batched forward pass, so
explaining the handful of users who get a signal in a batch costs one extra scoring call.

Occlusion is model-agnostic and exact for what it states ("without this event the model would
have said ..."); it ignores interactions between events, which is the usual price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from models.blend import logit
from models.events import EVENT_TYPES
from models.features.recent import RecentEvent
from models.features.state import RecentWindow
from models.sequence.data import hash_bucket
from models.sequence.scorer import SequenceScorer

HEADS = ("intent", "churn")


@dataclasses.dataclass(frozen=True)
class Attribution:
    event: RecentEvent
    back: int  # events between it and the newest one (0: the newest)
    contribution: float  # logit(score with the event) - logit(score without it)


def occlusion(
    scorer: SequenceScorer, windows: Sequence[Sequence[RecentEvent]], head: str = "intent", max_events: int = 8
) -> list[list[Attribution]]:
    """Per window, the attributions of its last ``max_events`` events, largest |contribution| first.

    A window of one event has nothing to compare with and gets an empty list.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}")
    L = scorer.config.lookback  # the ring: what the heads read
    # The stream's packed windows stay packed (the scorer reads them straight from their bytes).
    trimmed = [w[-L:] if isinstance(w, RecentWindow) else list(w)[-L:] for w in windows]
    variants: list[list[RecentEvent]] = []
    owners: list[tuple[int, int]] = []  # (window index, removed position)
    for i, w in enumerate(trimmed):
        variants.append(w)
        owners.append((i, -1))
        if len(w) < 2:
            continue
        for j in range(max(0, len(w) - max_events), len(w)):
            variants.append(w.without(j) if isinstance(w, RecentWindow) else w[:j] + w[j + 1 :])
            owners.append((i, j))
    if not variants:
        return []
    s = scorer.score_batch(variants, latent=[False] * len(variants))  # binary heads only
    p = s.p_intent if head == "intent" else s.p_churn
    base = {i: logit(float(p[n])) for n, (i, j) in enumerate(owners) if j < 0}
    out: list[list[Attribution]] = [[] for _ in trimmed]
    for n, (i, j) in enumerate(owners):
        if j >= 0:
            out[i].append(Attribution(trimmed[i][j], len(trimmed[i]) - 1 - j, round(base[i] - logit(float(p[n])), 4)))
    for lst in out:
        lst.sort(key=lambda a: -abs(a.contribution))
    return out


def describe(a: Attribution, now_ms: int, vocab: dict[int, str], category_buckets: int, head: str = "intent") -> dict:
    """A reason in the signals' format: feature, value, contribution and readable text."""
    ev = a.event
    kind = EVENT_TYPES[ev.type] if 0 <= ev.type < len(EVENT_TYPES) else f"type {ev.type}"
    age_s = max(0, now_ms - ev.ts) // 1000
    age = f"{age_s}s" if age_s < 120 else f"{age_s // 60} min" if age_s < 7200 else f"{age_s // 3600} h"
    cat = vocab.get(hash_bucket(ev.category, category_buckets)) if ev.category else None
    what = f"{kind} {age} ago" + (f" in category {cat}" if cat else "")
    direction = "raised" if a.contribution >= 0 else "lowered"
    return {
        "feature": f"sequence:{kind}[-{a.back}]",
        "value": 1.0,
        "contribution": a.contribution,
        "text": f"{what} {direction} the sequence model's {head} log-odds by {abs(a.contribution):.2f}",
    }


__all__ = ["Attribution", "describe", "occlusion"]
