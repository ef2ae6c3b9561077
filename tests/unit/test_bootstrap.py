"""The bootstrap over users behind the evaluation's 95% intervals (``models.bootstrap``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.bootstrap import UserBootstrap, interval, paired_difference
from models.datasets import tasks


def users_with_habits(n_users: int, rows_per_user: int = 20, seed: int = 0):
    """(users, labels, scores): each user has a propensity shared by all their rows, and the score
    sees it with noise, so rows of one user are correlated as real shoppers' events are."""
    rng = np.random.default_rng(seed)
    propensity = rng.beta(1, 4, size=n_users)
    users = np.repeat(np.arange(n_users), rows_per_user)
    y = (rng.random(len(users)) < propensity[users]).astype(int)
    s = np.round(propensity[users] + rng.normal(0, 0.15, len(users)), 2)  # rounding makes ties
    return [f"u{u}" for u in users], y, s


def expand(boot: UserBootstrap, b: int) -> np.ndarray:
    """Row indices of resample ``b`` written out: every row of a drawn user, once per draw."""
    per_user = [np.nonzero(boot.rows == u)[0] for u in range(boot.n_users)]
    counts = boot.counts[b].astype(int)
    return np.concatenate([np.tile(per_user[u], counts[u]) for u in range(boot.n_users) if counts[u]])


def test_each_resample_is_the_metric_on_the_resampled_users_rows():
    users, y, s = users_with_habits(30, seed=1)
    boot = UserBootstrap(users, resamples=5, seed=3)
    roc, pr = boot.binary(y, s)
    hits = (s > 0.3).astype(float)
    mean = boot.mean(hits)
    for b in range(5):
        idx = expand(boot, b)
        assert roc[b] == pytest.approx(tasks.roc_auc(y[idx], s[idx]), abs=1e-12)
        assert pr[b] == pytest.approx(tasks.pr_auc(y[idx], s[idx]), abs=1e-12)
        assert mean[b] == pytest.approx(hits[idx].mean(), abs=1e-12)
        # n_users draws per resample, some users more than once and some not at all
        assert boot.counts[b].sum() == 30 and (boot.counts[b] == 0).any()


def test_the_interval_holds_the_point_estimate():
    users, y, s = users_with_habits(200, seed=2)
    boot = UserBootstrap(users)
    roc, pr = boot.binary(y, s)
    hits = (s > np.median(s)).astype(float)
    for samples, point in [(roc, tasks.roc_auc(y, s)), (pr, tasks.pr_auc(y, s)), (boot.mean(hits), hits.mean())]:
        lo, hi = interval(samples)
        assert lo < point < hi
        assert hi - lo > 0.005  # 200 users do not pin a metric down to the third decimal


def test_the_interval_narrows_with_more_users():
    widths = {}
    for n in (50, 800):
        users, y, s = users_with_habits(n, seed=4)
        lo, hi = interval(UserBootstrap(users).roc_auc(y, s))
        widths[n] = hi - lo
    # 16 times the users: about a quarter of the width; half is a safe bound
    assert widths[800] < 0.5 * widths[50]


def test_resampling_is_by_user_so_repeating_rows_adds_no_precision():
    users, y, s = users_with_habits(60, seed=5)
    base = interval(UserBootstrap(users).roc_auc(y, s))
    # Every user's rows written ten times: the same users, so the same interval exactly.
    users10, y10, s10 = list(np.repeat(users, 10)), np.repeat(y, 10), np.repeat(s, 10)
    assert interval(UserBootstrap(users10).roc_auc(y10, s10)) == base
    # Resampling events instead (each row its own "user") would claim far more precision.
    by_event = interval(UserBootstrap(list(range(len(y10)))).roc_auc(y10, s10))
    assert (by_event[1] - by_event[0]) < 0.5 * (base[1] - base[0])


def test_one_user_with_many_rows_does_not_narrow_the_interval():
    users, y, s = users_with_habits(60, seed=6)
    base = interval(UserBootstrap(users).roc_auc(y, s))
    # The first user's rows repeated fifty times: still one user among sixty.
    first = np.array([u == "u0" for u in users])
    rep = np.r_[np.nonzero(~first)[0], np.tile(np.nonzero(first)[0], 50)]
    heavy = interval(UserBootstrap([users[i] for i in rep]).roc_auc(y[rep], s[rep]))
    assert heavy[1] - heavy[0] >= 0.9 * (base[1] - base[0])
    by_event = interval(UserBootstrap(list(range(len(rep)))).roc_auc(y[rep], s[rep]))
    assert (by_event[1] - by_event[0]) < heavy[1] - heavy[0]


def test_a_seed_fixes_the_resamples():
    users, y, s = users_with_habits(40, seed=7)
    a = UserBootstrap(users, resamples=300, seed=11).binary(y, s)
    b = UserBootstrap(users, resamples=300, seed=11).binary(y, s)
    c = UserBootstrap(users, resamples=300, seed=12).binary(y, s)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_resamples_with_one_class_are_undefined_and_too_many_give_no_interval():
    # Only u0 has positives: resamples that miss u0 have no AUC.
    users = ["u0", "u0"] + [f"u{i}" for i in range(1, 9)]
    y = np.array([1, 1] + [0] * 8)
    s = np.linspace(0, 1, 10)
    roc = UserBootstrap(users, resamples=500, seed=0).roc_auc(y, s)
    missed = np.isnan(roc)
    assert 0.1 < missed.mean() < 0.6  # (1 - 1/9)^9 = 0.35 of resamples miss u0
    assert np.all(roc[~missed] >= 0) and np.all(roc[~missed] <= 1)
    assert interval(np.r_[np.full(60, np.nan), np.full(40, 0.7)]) is None
    assert interval(np.r_[np.full(40, np.nan), np.full(60, 0.7)]) == [0.7, 0.7]


def test_paired_difference_on_the_same_resamples():
    users, y, s = users_with_habits(150, seed=8)
    boot = UserBootstrap(users)
    good = boot.roc_auc(y, s)
    assert paired_difference(good, good) == [0.0, 0.0]
    noisy = boot.roc_auc(y, s + np.random.default_rng(0).normal(0, 0.5, len(s)))
    lo, hi = paired_difference(good, noisy)
    assert lo > 0  # the model with the noisier score is worse on every plausible set of users


def test_inputs_must_match_the_rows():
    boot = UserBootstrap(["a", "b", "a"], resamples=10)
    with pytest.raises(ValueError, match="3 rows"):
        boot.mean([1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        boot.binary([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        boot.binary([0, 1, 1], [0.1, np.nan, 0.3])
    assert np.isnan(UserBootstrap([], resamples=4).roc_auc([], [])).all()
