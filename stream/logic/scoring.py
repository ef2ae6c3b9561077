"""Scorers: user state -> scores with their reasons.

:class:`Scorer` is the contract the pipeline calls. :class:`RuleScorer` is the first, transparent
scorer: a hand-set logistic rule over the shared online features (``models.features.online``),
so that signals are meaningful before any model has learned anything; its log-odds terms double as
the explanation. The online River models and the sequence model plug in behind the same contract.

>>> from models.events import Event
>>> from models.features.state import StateConfig, UserState, apply_event
>>> cfg, st, t = StateConfig(), UserState.new(), 1_700_000_000_000
>>> for i, typ in enumerate(["click", "click", "add_to_cart", "click", "add_to_cart"]):
...     _ = apply_event(st, Event(f"e{i}", "u", typ, t + 30_000 * i, item_id=f"i{i % 2}", price=10.0), cfg)
>>> score, reasons, cold = RuleScorer(cfg=cfg).intent(st, t + 120_000)
>>> score > 0.5, cold, reasons[0]["feature"]
(True, False, 'session_carts')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from models.features.online import online_features
from models.features.state import StateConfig, UserState, top_categories

Reasons = list[dict]


class Scorer(Protocol):
    versions: dict[str, str]

    def intent(
        self, state: UserState, now_ms: int, features: Mapping[str, float] | None = None
    ) -> tuple[float, Reasons, bool]:
        """(probability of a purchase within the intent horizon, reasons, cold start?);
        ``features``: ``online_features(state, now_ms)`` if the caller has them already."""

    def churn(self, state: UserState, watermark_ms: int) -> tuple[float, Reasons]:
        """(probability the user has churned, reasons), evaluated for a silent user."""

    def latent(self, state: UserState, now_ms: int, k: int) -> list[tuple[str, float]]:
        """The k categories the user most likely needs next, with scores."""


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


# (feature, weight, cap, readable text) — log-odds per unit of the (capped) feature.
INTENT_TERMS: tuple[tuple[str, float, float, str], ...] = (
    ("session_carts", 1.3, 3.0, "{v:.0f} add-to-cart in this session"),
    ("cart_items", 0.5, 3.0, "{v:.0f} items waiting in the cart"),
    ("last_is_add_to_cart", 0.9, 1.0, "just added an item to the cart"),
    ("session_clicks", 0.15, 10.0, "{v:.0f} product views in this session"),
    ("session_searches", 0.25, 3.0, "{v:.0f} searches in this session"),
    ("has_purchased", 0.7, 1.0, "has bought before"),
    ("minutes_since_cart_add", -0.03, 60.0, "{v:.0f} min since the last cart add"),
)
INTENT_BIAS = -4.0
COLD_PRIOR = 0.03  # share of non-purchase events followed by a purchase, simulator and Taobao alike


class RuleScorer:
    """Transparent first scorer (see the module docstring)."""

    versions = {"online": "rule-v1"}

    def __init__(self, churn_after_ms: int = 30 * 86_400_000, cfg: StateConfig | None = None) -> None:
        self.churn_after_ms = churn_after_ms
        self.cfg = cfg or StateConfig()

    def intent(
        self, state: UserState, now_ms: int, features: Mapping[str, float] | None = None
    ) -> tuple[float, Reasons, bool]:
        if sum(state.totals) <= 1:
            return COLD_PRIOR, [{"feature": "cold_start", "value": 1.0, "contribution": 0.0,
                                 "text": "first event of a new user: population prior"}], True  # fmt: skip
        f = features if features is not None else online_features(state, now_ms, self.cfg)
        z, terms = INTENT_BIAS, []
        for name, w, cap, text in INTENT_TERMS:
            v = min(f[name], cap)
            if v:
                z += w * v
                terms.append({"feature": name, "value": round(f[name], 4), "contribution": round(w * v, 4),
                              "text": text.format(v=f[name])})  # fmt: skip
        terms.sort(key=lambda r: -abs(r["contribution"]))
        return _sigmoid(z), terms[:3], False

    def churn(self, state: UserState, watermark_ms: int) -> tuple[float, Reasons]:
        silence = max(0, watermark_ms - state.last_ts)
        span = max(0, state.last_ts - state.first_seen)
        sessions = max(1, state.n_sessions)
        # The user's own rhythm: mean time between session starts (a new user borrows a quarter
        # of the churn horizon), so a weekly shopper silent for 3 days is not yet at risk.
        usual_gap = span / (sessions - 1) if sessions > 1 else self.churn_after_ms / 4
        usual_gap = max(usual_gap, self.cfg.session_gap_ms)
        ratio = silence / usual_gap
        purchases = state.totals[3]
        terms = [
            ("silence_vs_usual_gap", math.log1p(ratio), 1.6, f"silent {ratio:.1f}x longer than usual"),
            ("silence_vs_churn_horizon", silence / self.churn_after_ms, 2.0,
             f"silent for {silence / 3_600_000:.1f} h of event time"),
            ("log1p_purchases", math.log1p(purchases), -0.5, f"{purchases} purchases so far"),
        ]  # fmt: skip
        z = -2.5 + sum(v * w for _, v, w, _ in terms)
        reasons = [{"feature": n, "value": round(v, 4), "contribution": round(v * w, 4), "text": t} for n, v, w, t in terms]
        reasons.sort(key=lambda r: -abs(r["contribution"]))
        return _sigmoid(z), reasons

    def latent(self, state: UserState, now_ms: int, k: int) -> list[tuple[str, float]]:
        return top_categories(state, k, now_ms, self.cfg)
