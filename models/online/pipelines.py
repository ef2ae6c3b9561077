"""The River model families compared for the online tasks, built by name.

* ``linear``: ``StandardScaler | AveragedLogisticRegression`` (SGD whose served weights are the
  moving average of the iterates; :mod:`models.online.estimators`), run as
  :class:`~models.online.estimators.ScaledAveragedLogisticRegression`: the same two steps fused
  over numpy vectors, bit for bit the same numbers. Cheap (a few µs per event), a few KiB to
  checkpoint, its log-odds decompose exactly into per-feature terms
  ``w_i * z_i`` (``z`` the scaled, clipped feature), which are the reasons shown to people.
  Logistic loss keeps it calibrated as long as it is well specified.
* ``linear_sgd``: ``StandardScaler | LogisticRegression`` (River's, plain SGD): the same model
  without averaging, kept to show what the averaging buys.
* ``amf``: ``forest.AMFClassifier``, an aggregated Mondrian forest: online trees whose
  predictions are averaged over all prunings of each tree, with no hyper-parameter search needed
  and no scaling (splits are on raw feature ranges). Captures interactions and thresholds the
  linear model cannot; costs more time per event and its checkpoint grows with the data.
* ``arf``: ``forest.ARFClassifier``, adaptive random forest of Hoeffding trees with drift
  detectors (for comparison).

Features are the ones of :func:`models.features.online.online_features`: nothing else is invented
here. Which family serves which task is decided by measurement (``benchmarks/online_eval.py``,
``docs/ONLINE.md``) and recorded in :data:`DEFAULT_MODEL`.

>>> model = build("linear")
>>> model.learn_one({"a": 1.0, "b": 0.0}, True)
>>> 0.0 < model.predict_proba_one({"a": 1.0, "b": 0.0})[True] < 1.0
True
>>> sorted(FAMILIES)
['amf', 'arf', 'linear', 'linear_sgd']
"""

from __future__ import annotations

from river import base, compose, forest, linear_model, optim, preprocessing

from models.online.estimators import AveragedLogisticRegression, ScaledAveragedLogisticRegression

FAMILIES = ("linear", "linear_sgd", "amf", "arf")

# Chosen per task by the measurements in docs/ONLINE.md.
DEFAULT_MODEL = {"intent": "linear", "churn": "linear"}


def build(family: str, seed: int = 42, features: tuple[str, ...] = ()) -> base.Classifier:
    """A fresh, untrained River classifier of ``family`` (one of :data:`FAMILIES`). ``features``
    fixes the ``linear`` model's feature order (by default, the first example's keys)."""
    if family == "linear":
        return ScaledAveragedLogisticRegression(features=features)
    if family == "linear_sgd":
        return compose.Pipeline(
            ("scale", preprocessing.StandardScaler()),
            ("lr", linear_model.LogisticRegression(optimizer=optim.SGD(0.01), l2=1e-4)),
        )
    if family == "amf":
        return forest.AMFClassifier(n_estimators=10, step=1.0, use_aggregation=True, dirichlet=0.5, seed=seed)
    if family == "arf":
        return forest.ARFClassifier(n_models=10, seed=seed)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def linear_contributions(model: base.Classifier, x: dict[str, float]) -> dict[str, float] | None:
    """Per-feature log-odds terms ``w_i * z_i`` of a ``linear`` pipeline (None for other models).

    ``z`` is ``x`` after the pipeline's scaler, read without updating it; the terms plus the
    intercept are exactly the model's log-odds.
    """
    if isinstance(model, ScaledAveragedLogisticRegression):
        return model.contributions(x)
    if not isinstance(model, compose.Pipeline) or "lr" not in model.steps:
        return None
    z = model["scale"].transform_one(x)
    lr = model["lr"]
    if isinstance(lr, AveragedLogisticRegression):
        return lr.contributions(z)
    w = lr.weights
    return {k: w.get(k, 0.0) * v for k, v in z.items()}


def linear_terms(model: base.Classifier, x: dict[str, float]) -> tuple[float, dict[str, float]] | None:
    """``(log-odds, per-feature terms)`` of a ``linear`` pipeline in one pass (None for others).

    The stream scores every event and explains the few that fire; scaling ``x`` once for both
    the score and the terms halves the cost of a warm model's prediction. The log-odds are
    :meth:`AveragedLogisticRegression.decision_function`'s own sum of these terms, so
    ``sigmoid(log_odds)`` equals ``predict_proba_one(x)[True]`` bit for bit.
    """
    if isinstance(model, ScaledAveragedLogisticRegression):
        log_odds, t = model.terms(model.array(x))
        return log_odds, dict(zip(model.features, t.tolist(), strict=True))
    if not isinstance(model, compose.Pipeline) or "lr" not in model.steps:
        return None
    lr = model["lr"]
    if not isinstance(lr, AveragedLogisticRegression):
        return None
    terms = lr.contributions(model["scale"].transform_one(x))
    return lr.avg_intercept + sum(terms.values()), terms


__all__ = ["DEFAULT_MODEL", "FAMILIES", "build", "linear_contributions", "linear_terms"]
