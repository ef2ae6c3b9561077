"""Confidence intervals for the evaluation's metrics by a bootstrap over users.

Rows of one user are not independent (the events of one shopper share the shopper's habits), so
resampling rows would make the intervals too narrow: a user with many events would count as many
independent observations. :class:`UserBootstrap` draws users with replacement instead and gives
every row of a drawn user the weight "how many times the user was drawn". With integer weights,
the weighted metric equals the plain metric on the rows of the resampled users written out with
their repeats, so the figures are exact, not an approximation, and no rows are copied.

One draw of users serves all the models of a task, so the difference between two models on the
same resamples (:func:`paired_difference`) is a paired comparison: the user-to-user variation
both models share cancels out.

>>> b = UserBootstrap(["u1", "u1", "u2", "u3", "u3", "u4"], resamples=200, seed=0)
>>> auc = b.roc_auc([0, 1, 0, 1, 1, 0], [0.1, 0.8, 0.3, 0.7, 0.9, 0.2])
>>> auc.shape, bool(np.nanmax(auc) <= 1.0)
((200,), True)
>>> b.mean([1, 0, 1, 1, 0, 1]).shape
(200,)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

RESAMPLES = 1000
SEED = 0
# Resamples times rows handled at once: bounds the memory of the weight matrix.
_CHUNK_CELLS = 4_000_000


class UserBootstrap:
    """One fixed draw of ``resamples`` bootstrap samples of the users of ``users`` (one entry per
    row: the user the row belongs to). Each method takes per-row values in the same order and
    returns one metric value per resample (NaN where the metric is undefined on that resample)."""

    def __init__(self, users: Sequence[Hashable], resamples: int = RESAMPLES, seed: int = SEED) -> None:
        if resamples < 1:
            raise ValueError(f"resamples must be at least 1, got {resamples}")
        codes: dict[Hashable, int] = {}
        self.rows = np.fromiter((codes.setdefault(u, len(codes)) for u in users), np.int64, len(users))
        self.n_users = len(codes)
        self.resamples = resamples
        self.seed = seed
        rng = np.random.default_rng(seed)
        if self.n_users:
            # counts[b, u]: how many times user u was drawn in resample b (n_users draws each).
            draws = rng.integers(0, self.n_users, size=(resamples, self.n_users))
            offsets = np.arange(resamples)[:, None] * self.n_users
            self.counts = np.bincount((draws + offsets).ravel(), minlength=resamples * self.n_users)
            self.counts = self.counts.reshape(resamples, self.n_users).astype(float)
        else:
            self.counts = np.zeros((resamples, 0))

    def _check(self, values: Any) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        if v.shape != self.rows.shape:
            raise ValueError(f"{v.shape[0] if v.ndim else 0} values for {len(self.rows)} rows")
        return v

    def mean(self, values: Any) -> np.ndarray:
        """The mean of a per-row value (a hit, a reciprocal rank) over the rows of each resample."""
        v = self._check(values)
        per_user_sum = np.bincount(self.rows, weights=v, minlength=self.n_users)
        per_user_rows = np.bincount(self.rows, minlength=self.n_users).astype(float)
        total = self.counts @ per_user_rows
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (self.counts @ per_user_sum) / np.where(total > 0, total, 1), np.nan)

    def _tie_groups(self, labels: Any, scores: Any):
        """Yield, per chunk of resamples, the weighted positives and negatives of each group of
        tied scores, groups in ascending score order (shape: resamples in the chunk x groups)."""
        y = self._check(labels)
        s = self._check(scores)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 or 1")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores must be finite (no NaN or inf)")
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
        user_sorted, y_sorted = self.rows[order], y[order]
        step = max(1, _CHUNK_CELLS // max(1, len(s)))
        for lo in range(0, self.resamples, step):
            w = self.counts[lo : lo + step][:, user_sorted]
            pos = np.add.reduceat(w * y_sorted, starts, axis=1)
            yield pos, np.add.reduceat(w, starts, axis=1) - pos

    def binary(self, labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ROC AUC, average precision) of each resample, from one pass over the tied-score groups.

        ROC AUC counts ties one half (as :func:`models.datasets.tasks.roc_auc`); average precision
        takes one threshold per distinct score (as :func:`models.datasets.tasks.pr_auc`)."""
        if len(self.rows) == 0:
            return np.full(self.resamples, np.nan), np.full(self.resamples, np.nan)
        rocs, prs = [], []
        for pos, neg in self._tie_groups(labels, scores):
            total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
            defined = (total_pos > 0) & (total_neg > 0)
            safe_pos = np.where(total_pos > 0, total_pos, 1)
            neg_below = np.cumsum(neg, axis=1) - neg
            u = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
            rocs.append(np.where(defined, u / (safe_pos * np.where(total_neg > 0, total_neg, 1)), np.nan))
            pos, neg = pos[:, ::-1], neg[:, ::-1]  # from the highest score down
            tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
            # A group absent from a resample has no weight: it adds nothing, whatever its precision.
            precision = tp / np.where(tp + fp > 0, tp + fp, 1)
            prs.append(np.where(defined, (pos * precision).sum(axis=1) / safe_pos, np.nan))
        return np.concatenate(rocs), np.concatenate(prs)

    def roc_auc(self, labels: Any, scores: Any) -> np.ndarray:
        """ROC AUC of each resample (see :meth:`binary`)."""
        return self.binary(labels, scores)[0]

    def pr_auc(self, labels: Any, scores: Any) -> np.ndarray:
        """Average precision of each resample (see :meth:`binary`)."""
        return self.binary(labels, scores)[1]


def interval(samples: np.ndarray, level: float = 0.95, digits: int = 4) -> list[float] | None:
    """The percentile interval of the defined resamples; None when fewer than half are defined
    (the metric is then too often undefined for an interval to mean anything)."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) == 0 or 2 * len(s) < len(samples):
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return [round(float(lo), digits), round(float(hi), digits)]


def paired_difference(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, digits: int = 4
) -> list[float] | None:
    """The interval of ``a - b`` where ``a`` and ``b`` are one metric of two models on the same
    resamples (one :class:`UserBootstrap`): an interval that excludes 0 is a difference the users
    at hand resolve."""
    return interval(np.asarray(a, float) - np.asarray(b, float), level, digits)


__all__ = ["RESAMPLES", "SEED", "UserBootstrap", "interval", "paired_difference"]
