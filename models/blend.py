"""How the online and the sequence model's outputs are combined: one rule for the evaluation and
the stream, so that the figures in docs/EVALUATION.md describe what the workers emit.

* Binary tasks (purchase intent, churn risk): the mean of the two models' logits. Nothing is
  fitted, so nothing can leak from a test split into the rule; docs/EVALUATION.md has how it
  compares with either model alone.
* Ranked lists (latent needs): reciprocal-rank fusion, ``sum over lists of 1 / (RRF_K + rank)``.

>>> round(blend_binary(0.9, 0.5), 4)
0.75
>>> rrf([["a", "b", "c"], ["b", "d"]], k=3)
[('b', 0.1742), ('a', 0.0909), ('d', 0.0833)]
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

RRF_K = 10  # rank offset of reciprocal-rank fusion: 1 / (RRF_K + rank)
_EPS = 1e-6


def logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def blend_binary(p_online: float, p_sequence: float) -> float:
    """The blended probability: sigmoid of the mean of the two logits."""
    return sigmoid((logit(p_online) + logit(p_sequence)) / 2)


def blend_binary_array(p_online: np.ndarray, p_sequence: np.ndarray) -> np.ndarray:
    """:func:`blend_binary` over arrays (the evaluation scores whole test sets at once)."""
    a = np.clip(np.asarray(p_online, float), _EPS, 1 - _EPS)
    b = np.clip(np.asarray(p_sequence, float), _EPS, 1 - _EPS)
    z = (np.log(a / (1 - a)) + np.log(b / (1 - b))) / 2
    return 1.0 / (1.0 + np.exp(-z))


def rrf(lists: Sequence[Sequence[Hashable]], k: int) -> list[tuple[Hashable, float]]:
    """Reciprocal-rank fusion of ranked lists: the ``k`` best items with their fused scores
    (rounded to 4 places), best first; ties keep the order of first appearance."""
    score: dict[Hashable, float] = {}
    for lst in lists:
        for rank, item in enumerate(lst[:k], 1):
            score[item] = score.get(item, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(score.items(), key=lambda kv: -kv[1])[:k]
    return [(item, round(s, 4)) for item, s in best]
