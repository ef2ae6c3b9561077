"""Custom River estimators used by the online pipelines.

:class:`AveragedLogisticRegression` is logistic regression trained by plain SGD whose *served*
weights are a moving average of the SGD iterates (averaged SGD, Polyak-Ruppert averaging, with an
exponential window so that it still follows drift). One pass of SGD over a few tens of thousands of
noisy, imbalanced labels (a 7 % positive rate for intent) leaves the last iterate bouncing around
the optimum; the average of the iterates sits much closer to it, which is what a batch fit gets by
iterating to convergence. On the Taobao intent replay this is worth several points of ROC AUC over
River's ``LogisticRegression`` with the same learning rate (docs/ONLINE.md).

Inputs are expected standardised (the pipeline puts a ``StandardScaler`` in front); each input is
clipped to ``[-clip, clip]`` first, because one user idle for weeks (``secs_since_last_event`` at
60 standard deviations) would otherwise move every weight with a single huge gradient.

>>> from river import datasets, evaluate, metrics, preprocessing
>>> model = preprocessing.StandardScaler() | AveragedLogisticRegression()
>>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.ROCAUC())
ROCAUC: 94.20%
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from river import base


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-min(z, 500.0)))
    e = math.exp(max(z, -500.0))
    return e / (1.0 + e)


class AveragedLogisticRegression(base.Classifier):
    """Binary logistic regression: SGD iterates, served through their moving average.

    Parameters
    ----------
    lr
        SGD step size (constant: averaging, not a decaying step, removes the noise).
    l2
        L2 penalty on the weights (not the intercept).
    window
        Averaging window in updates: the average weighs the iterates as ``1/n`` for the first
        ``window`` updates (exact mean), then exponentially with rate ``1/window``.
    clip
        Inputs are clipped to ``[-clip, clip]``.
    """

    def __init__(self, lr: float = 0.01, l2: float = 1e-4, window: int = 5000, clip: float = 5.0) -> None:
        self.lr = lr
        self.l2 = l2
        self.window = window
        self.clip = clip
        self.weights: dict = {}  # current SGD iterate
        self.intercept = 0.0
        self.avg_weights: dict = {}  # served weights
        self.avg_intercept = 0.0
        self.n = 0

    def _clip(self, x: dict) -> dict:
        c = self.clip
        return {k: (c if v > c else -c if v < -c else v) for k, v in x.items() if isinstance(v, (int, float))}

    def learn_one(self, x: dict, y: base.typing.ClfTarget) -> None:
        x = self._clip(x)
        w = self.weights
        g = sigmoid(self.intercept + sum(w.get(k, 0.0) * v for k, v in x.items())) - float(bool(y))
        lr, l2 = self.lr, self.l2
        for k, v in x.items():
            wk = w.get(k, 0.0)
            w[k] = wk - lr * (g * v + l2 * wk)
        self.intercept -= lr * g
        self.n += 1
        a = max(1.0 / self.n, 1.0 / self.window)
        aw = self.avg_weights
        for k, wk in w.items():
            ak = aw.get(k, 0.0)
            aw[k] = ak + a * (wk - ak)
        self.avg_intercept += a * (self.intercept - self.avg_intercept)

    def decision_function(self, x: dict) -> float:
        """The served log-odds: averaged intercept plus the averaged weights times clipped ``x``."""
        return self.avg_intercept + sum(self.contributions(x).values())

    def contributions(self, x: dict) -> dict:
        """Per-feature log-odds terms of the served model (they sum to the log-odds minus the intercept)."""
        aw = self.avg_weights
        return {k: aw.get(k, 0.0) * v for k, v in self._clip(x).items()}

    def predict_proba_one(self, x: dict) -> dict:
        p = sigmoid(self.decision_function(x))
        return {False: 1.0 - p, True: p}

    def score_many(self, X: np.ndarray, features: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, per-feature log-odds terms)`` of the rows of ``X`` (n, len(features)),
        whose columns are the inputs named ``features``: the vector form of :meth:`predict_proba_one`
        and :meth:`contributions`, with the same clip, products and left-to-right sums, so the
        same bits. This model keeps its weights by name, so the columns must be named.

        >>> m = AveragedLogisticRegression(lr=0.5)
        >>> m.learn_one({"a": 1.0, "b": -2.0}, True)
        >>> p, T = m.score_many(np.array([[1.0, 9.0], [-1.0, 0.5]]), ["a", "b"])
        >>> p.tolist() == [m.predict_proba_one({"a": a, "b": b})[True] for a, b in ([1.0, 9.0], [-1.0, 0.5])]
        True
        """
        X = _rows(X, len(features))
        c = self.clip
        aw = self.avg_weights
        T = np.array([aw.get(k, 0.0) for k in features]) * np.maximum(np.minimum(X, c), -c)
        return _probabilities(self.avg_intercept, T), T

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"lr": 0.05, "window": 100}

    def _more_tags(self) -> set:
        return set()


class ScaledAveragedLogisticRegression(base.Classifier):
    """``StandardScaler() | AveragedLogisticRegression()`` fused over a fixed feature order, on arrays.

    The stream's linear model reads the same features for every event, so the pipeline's dicts
    (one entry, one scaler lookup and one weight lookup per feature, several passes per event)
    become numpy vectors in the order of ``features``. The arithmetic is River's, element by
    element: Welford's update of :class:`river.preprocessing.StandardScaler`, its ``(x - mean) /
    var ** 0.5`` (0 where the variance is 0), then :class:`AveragedLogisticRegression`'s clip, SGD
    step and moving average; the sums run left to right as Python's ``sum`` does. So it gives the
    pipeline's probabilities, weights and terms bit for bit (tested on a long random stream), and a
    pipeline checkpoint converts into it exactly (:meth:`from_pipeline`).

    The array methods (:meth:`score_many`, :meth:`learn`) are what the stream calls; every score,
    the dict methods' included, is computed by :meth:`score_many`. ``learn_one`` and
    ``predict_proba_one`` take dicts, as any River classifier: ``features`` is fixed by the
    constructor or by the first dict seen; keys outside it are not read, and a missing one is an
    error (River's scaler would skip it; a fixed vector cannot).

    >>> from river import preprocessing
    >>> river_model = preprocessing.StandardScaler() | AveragedLogisticRegression()
    >>> fused = ScaledAveragedLogisticRegression(features=("a", "b"))
    >>> for i in range(200):
    ...     x = {"a": math.sin(i), "b": float(i % 7)}
    ...     river_model.learn_one(x, i % 3 == 0)
    ...     fused.learn_one(x, i % 3 == 0)
    >>> x = {"a": 0.5, "b": 2.0}
    >>> fused.predict_proba_one(x) == river_model.predict_proba_one(x)
    True
    """

    def __init__(
        self, lr: float = 0.01, l2: float = 1e-4, window: int = 5000, clip: float = 5.0, features: Sequence[str] = ()
    ) -> None:
        self.lr = lr
        self.l2 = l2
        self.window = window
        self.clip = clip
        self._start(list(features))

    def _start(self, features: list[str]) -> None:
        self.features = features
        k = len(features)
        self.seen = 0  # the scaler's count (every feature is seen with every example)
        self.mean = np.zeros(k)
        self.var = np.zeros(k)
        self._sd = np.zeros(k)  # var ** 0.5, refreshed on learning
        self._refresh_divisor()
        self.weights = np.zeros(k)
        self.intercept = 0.0
        self.avg_weights = np.zeros(k)
        self.avg_intercept = 0.0
        self.n = 0

    @classmethod
    def from_pipeline(cls, model: base.Classifier, features: Sequence[str]) -> ScaledAveragedLogisticRegression:
        """The fused model holding exactly the state of a ``StandardScaler | AveragedLogisticRegression``
        pipeline (a checkpoint written before the stream used this class)."""
        scale, lr = model["scale"], model["lr"]  # type: ignore[index]
        out = cls(lr.lr, lr.l2, lr.window, lr.clip, features)
        counts = {scale.counts.get(n, 0) for n in out.features}
        if len(counts) > 1:
            raise ValueError("the scaler saw the features unequally often; it cannot be fused")
        out.seen = counts.pop() if counts else 0
        out.mean = np.array([float(scale.means.get(n, 0.0)) for n in out.features])
        out.var = np.array([float(scale.vars.get(n, 0.0)) for n in out.features])
        out._sd = np.float_power(out.var, 0.5)
        out._refresh_divisor()
        out.weights = np.array([lr.weights.get(n, 0.0) for n in out.features])
        out.avg_weights = np.array([lr.avg_weights.get(n, 0.0) for n in out.features])
        out.intercept, out.avg_intercept, out.n = lr.intercept, lr.avg_intercept, lr.n
        return out

    # ------------------------------------------------------------------ arrays (the stream's path)
    def _refresh_divisor(self) -> None:
        """``_div``: the standard deviations with 1 where the variance is 0; ``_keep``: None if no
        variance is 0, else 1 where it is not and 0 where it is. Derived from ``_sd``, so not
        pickled (:meth:`__getstate__`); every change of ``_sd`` calls this."""
        zero = self.var == 0
        if zero.any():
            self._div, self._keep = np.where(zero, 1.0, self._sd), (~zero).astype(float)
        else:
            self._div, self._keep = self._sd, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_div", None)
        state.pop("_keep", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._refresh_divisor()

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """``x`` (float64, in ``features`` order) standardised and clipped: the inputs of the weights.

        ``(x - mean) / sd`` and 0 where the variance is 0, as River's scaler; computed as a plain
        division by ``_div`` (dividing by 1 is exact) times ``_keep``, then clipped, with direct
        ufuncs: ``np.divide(..., where=)`` and ``np.clip`` cost several times more on ~60 values."""
        z = x - self.mean
        np.divide(z, self._div, out=z)
        if self._keep is not None:
            np.multiply(z, self._keep, out=z)
        c = self.clip
        np.minimum(z, c, out=z)
        return np.maximum(z, -c, out=z)

    def score_many(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, per-feature log-odds terms w_i * z_i)`` of the served (averaged)
        weights for each row of ``X`` (n, features), a single row being a batch of one: the one
        scoring computation of this model, so that a batch's scores are the bits each row would
        get alone (the scaling and the weights are element-wise; each row's terms are summed in
        order, then the intercept added, as River's ``decision_function`` does).

        >>> m = ScaledAveragedLogisticRegression(features=["a", "b"])
        >>> for x, y in (([1.0, 2.0], True), ([3.0, 0.5], False), ([2.0, 1.0], True)):
        ...     m.learn(np.array(x), y)
        >>> X = np.array([[1.5, 0.25], [4.0, 3.0]])
        >>> p, T = m.score_many(X)
        >>> p.tolist() == [m.predict_proba_one({"a": a, "b": b})[True] for a, b in X.tolist()]
        True
        >>> alone = [m.score_many(x[None]) for x in X]  # each row as a batch of one
        >>> all(q.tolist() == [p[i]] and (u == T[i]).all() for i, (q, u) in enumerate(alone))
        True
        """
        T = self.avg_weights * self.scaled(_rows(X, len(self.features)))
        return _probabilities(self.avg_intercept, T), T

    def terms(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """``(log-odds, per-feature terms)`` of one vector ``x``, from :meth:`score_many`'s terms
        (the log-odds are their ordered sum plus the intercept, as the probability's)."""
        t = self.score_many(x[None])[1][0]
        return self.avg_intercept + sum(t.tolist()), t

    def learn(self, x: np.ndarray, y: bool) -> None:
        """One example: the scaler learns ``x``, then one SGD step on the rescaled ``x``, then the average."""
        self.seen += 1
        old = self.mean
        self.mean = old + (x - old) / self.seen
        self.var = self.var + ((x - old) * (x - self.mean) - self.var) / self.seen
        self._sd = np.float_power(self.var, 0.5)  # Python's ** (C pow), not sqrt: River's exact bits
        self._refresh_divisor()
        z = self.scaled(x)
        w = self.weights
        g = sigmoid(self.intercept + sum((w * z).tolist())) - float(bool(y))
        self.weights = w = w - self.lr * (g * z + self.l2 * w)
        self.intercept -= self.lr * g
        self.n += 1
        a = max(1.0 / self.n, 1.0 / self.window)
        self.avg_weights = self.avg_weights + a * (w - self.avg_weights)
        self.avg_intercept += a * (self.intercept - self.avg_intercept)

    # ------------------------------------------------------------------ River's dict interface
    def array(self, x: dict) -> np.ndarray:
        """``x`` as the float64 vector the array methods take (fixes ``features`` on first use)."""
        if not self.features:
            self._start(list(x))
        try:
            return np.fromiter((x[n] for n in self.features), float, len(self.features))
        except KeyError as exc:
            raise ValueError(f"feature {exc.args[0]!r} missing: this model reads a fixed set of features") from None

    def learn_one(self, x: dict, y: base.typing.ClfTarget) -> None:
        self.learn(self.array(x), bool(y))

    def contributions(self, x: dict) -> dict:
        """Per-feature log-odds terms, by name (as :meth:`AveragedLogisticRegression.contributions`)."""
        return dict(zip(self.features, self.score_many(self.array(x)[None])[1][0].tolist(), strict=True))

    def predict_proba_one(self, x: dict) -> dict:
        p = self.score_many(self.array(x)[None])[0].item()
        return {False: 1.0 - p, True: p}


def _rows(X: np.ndarray, k: int) -> np.ndarray:
    """``X`` as float64 rows of ``k`` inputs; a batch must say it is one, so a lone vector is refused."""
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] != k:
        raise ValueError(f"score_many takes rows of {k} features (shape (n, {k})), got shape {X.shape}")
    return X


def _probabilities(intercept: float, T: np.ndarray) -> np.ndarray:
    """``sigmoid(intercept + sum of each row of T)``, summed left to right and with :func:`sigmoid`
    per row as the dict interface does, so that a vector score is the dict score bit for bit."""
    return np.array([sigmoid(intercept + sum(row)) for row in T.tolist()], dtype=np.float64)


__all__ = ["AveragedLogisticRegression", "ScaledAveragedLogisticRegression", "sigmoid"]
