"""Progressive-validation metrics of an online model, fed as delayed labels arrive.

Each time a label is resolved, the probability the model gave *when the prediction was made*
(kept in the snapshot) is scored against it: River's progressive validation, with the real label
delay of the stream. So the figures are what the served scores were worth, not a replay.

Reported (:meth:`ProgressiveMetrics.as_dict`, the shape the metrics endpoint exposes):

* ``n``, ``positives``, ``base_rate``: labels scored so far and their positive share (lifetime);
* ``log_loss``: mean binary cross-entropy over the lifetime (probabilities clipped to 1e-7);
* ``window``, ``roc_auc``, ``calibration_error``: over the last ``window`` labels, the ROC AUC
  (None until both classes are in the window) and the expected calibration error (10 equal-width
  bins of p, mean |mean p - positive rate| weighted by bin size). A window, not the lifetime,
  because a drifting model should show its current quality.
* ``dropped``: predictions the pending bound evicted before a label came (never learned).

>>> m = ProgressiveMetrics(window=4)
>>> for p, y in [(0.9, 1), (0.2, 0), (0.7, 1), (0.4, 0), (0.6, 0)]:
...     m.update(y, p)
>>> d = m.as_dict()
>>> d["n"], d["positives"], d["roc_auc"], round(d["log_loss"], 4)
(5, 2, 1.0, 0.4225)
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from models.datasets.tasks import roc_auc

_EPS = 1e-7


class ProgressiveMetrics:
    """Lifetime counts and log loss, windowed ROC AUC and calibration error (see the module)."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        self.window = window
        self.n = 0
        self.positives = 0
        self.loss_sum = 0.0
        self.dropped = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)

    def update(self, y: int, p: float) -> None:
        """Score one resolved label ``y`` against the probability ``p`` given at prediction time."""
        p = float(np.float32(p))  # what a checkpoint keeps, so a restored window is identical
        self.n += 1
        self.positives += y
        q = min(max(p, _EPS), 1.0 - _EPS)
        self.loss_sum -= math.log(q) if y else math.log(1.0 - q)
        self._recent.append((p, y))

    def __getstate__(self) -> dict:
        # The window as two packed arrays: 5 bytes a label in a checkpoint instead of ~10x that.
        d = self.__dict__.copy()
        recent = d.pop("_recent")
        d["_p"] = np.array([r[0] for r in recent], dtype=np.float32)
        d["_y"] = np.array([r[1] for r in recent], dtype=np.uint8)
        return d

    def __setstate__(self, d: dict) -> None:
        p, y = d.pop("_p"), d.pop("_y")
        self.__dict__.update(d)
        self._recent = deque(zip(p.tolist(), y.tolist(), strict=True), maxlen=self.window)

    def as_dict(self) -> dict[str, float | int | None]:
        """A flat dict of plain numbers (None where undefined), for the metrics endpoint."""
        out: dict[str, float | int | None] = {
            "n": self.n,
            "positives": self.positives,
            "base_rate": self.positives / self.n if self.n else None,
            "log_loss": self.loss_sum / self.n if self.n else None,
            "window": len(self._recent),
            "roc_auc": None,
            "calibration_error": None,
            "dropped": self.dropped,
        }
        if self._recent:
            p = np.fromiter((r[0] for r in self._recent), float, len(self._recent))
            y = np.fromiter((r[1] for r in self._recent), float, len(self._recent))
            if 0 < y.sum() < len(y):
                out["roc_auc"] = roc_auc(y, p)
            out["calibration_error"] = expected_calibration_error(y, p)
        return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean over equal-width probability bins of |mean p - positive rate|, weighted by bin size.

    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    0.0
    """
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(idx):
        m = idx == b
        total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


__all__ = ["ProgressiveMetrics", "expected_calibration_error"]
