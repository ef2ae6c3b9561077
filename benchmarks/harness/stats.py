"""What a measurement reduces its readings to: percentiles, rates, medians over repeats, and the
few worker metrics (``/metrics``) and CPU times the figures are computed from.

>>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50)
3.0
>>> crossing([(0.0, 0), (1.0, 100), (2.0, 300)], 200)
1.5
"""

from __future__ import annotations

import contextlib
import math
import statistics
import urllib.error
import urllib.request

#: Events counted as "handled": every canonical type; ``invalid``/``other`` never reach the state.
NOT_HANDLED_TYPES = ("invalid", "other")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (None if empty)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def crossing(timeline: list[tuple[float, float]], level: float) -> float | None:
    """The time at which a non-decreasing count sampled as ``(t, count)`` reached ``level``
    (interpolated linearly between samples); None if it never did."""
    prev: tuple[float, float] | None = None
    for t, n in timeline:
        if n >= level:
            if prev is None or n == prev[1]:
                return t
            t0, n0 = prev
            return t0 + (t - t0) * (level - n0) / (n - n0)
        prev = (t, n)
    return None


def _median(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(xs) if xs else None

def _scrape(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


_BATCH_SUMS = {
    "intentstream_processing_seconds_sum": "batch_seconds",
    "intentstream_processing_batch_size_sum": "batch_events",
    "intentstream_scoring_seconds_count": "scoring_calls",
    "intentstream_scoring_seconds_sum": "scoring_seconds",
    "intentstream_scoring_batch_size_sum": "scoring_windows",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The few worker metrics the harness needs, summed over their labels.

    >>> parse_metrics('intentstream_events_consumed_total{type="click"} 3.0\\n'
    ...               'intentstream_events_consumed_total{type="invalid"} 1.0\\n'
    ...               'intentstream_late_events_total 2.0\\n')["handled"]
    5.0
    """
    out = {"handled": 0.0, "redelivered": 0.0, "batches": 0.0, "signals": 0.0, "users_in_state": 0.0}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        base, _, labels = name.partition("{")
        if base == "intentstream_events_consumed_total":
            if not any(f'type="{t}"' in labels for t in NOT_HANDLED_TYPES):
                out["handled"] += float(value)
        elif base == "intentstream_late_events_total":
            out["handled"] += float(value)
        elif base == "intentstream_duplicate_events_total":  # none in the benchmark's events: redeliveries
            out["redelivered"] += float(value)
        elif base == "intentstream_records_refetched_total":
            out["refetched"] = out.get("refetched", 0.0) + float(value)
        elif base == "intentstream_processing_seconds_count":
            out["batches"] += float(value)
        elif base == "intentstream_processing_seconds_bucket" and labels.startswith('le="0.1"'):
            out["batches_within_100ms"] = out.get("batches_within_100ms", 0.0) + float(value)
        elif base == "intentstream_event_to_signal_seconds_count":
            out["worker_signals"] = out.get("worker_signals", 0.0) + float(value)
        elif base == "intentstream_event_to_signal_seconds_bucket" and labels.startswith('le="0.1"'):
            out["worker_signals_within_100ms"] = out.get("worker_signals_within_100ms", 0.0) + float(value)
        elif base in _BATCH_SUMS:  # batch shape under load (the latency phase's figures)
            out[_BATCH_SUMS[base]] = out.get(_BATCH_SUMS[base], 0.0) + float(value)
        elif base == "intentstream_signals_emitted_total":
            out["signals"] += float(value)
        elif base == "intentstream_users_in_state":
            out["users_in_state"] = float(value)
        elif base == "intentstream_events_routed_total":  # events processed where ingested / forwarded
            path = "routed_local" if 'path="local"' in labels else "routed_forwarded"
            out[path] = out.get(path, 0.0) + float(value)
        elif base == "intentstream_dead_letters_total":
            out["dead_letters"] = float(value)
        elif base == "intentstream_online_roc_auc":  # published only by learners that have learned
            out["online_models_learned"] = 1.0
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads) so far; None if unknown."""
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return None



def _cores(cpu0: float | None, cpu1: float | None, t0: float | None, t1: float | None) -> float | None:
    """CPU seconds per second between two readings (1.0 = one core busy all the time)."""
    if cpu0 is None or cpu1 is None or t0 is None or t1 is None or t1 <= t0:
        return None
    return (cpu1 - cpu0) / (t1 - t0)


def _batch_shape(before: dict[str, float], after: dict[str, float], seconds: float) -> dict | None:
    """How the worker batched a load, from two scrapes of its metrics: batches per second (the
    ingest's and the processing's), their mean size and wall time, and the sequence model's calls.
    Small batches cost more CPU per event: each has fixed costs (docs/BENCHMARKS.md).

    >>> before = {"batches": 10, "batch_events": 500, "batch_seconds": 0.1, "scoring_calls": 5,
    ...           "scoring_seconds": 0.02, "scoring_windows": 250, "batches_within_100ms": 10}
    >>> after = {"batches": 30, "batch_events": 1500, "batch_seconds": 0.3, "scoring_calls": 15,
    ...          "scoring_seconds": 0.06, "scoring_windows": 750, "batches_within_100ms": 28}
    >>> shape = _batch_shape(before, after, seconds=2.0)
    >>> shape["per_s"], shape["mean_events"], round(shape["scoring_mean_ms"], 3), shape["over_100ms"]
    (10.0, 50.0, 4.0, 2)
    """
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("batches", "batch_events", "batch_seconds",
                                                              "scoring_calls", "scoring_seconds", "scoring_windows",
                                                              "batches_within_100ms", "worker_signals",
                                                              "worker_signals_within_100ms")}  # fmt: skip
    if not before or not after or d["batches"] <= 0 or seconds <= 0:
        return None
    calls = d["scoring_calls"]
    return {
        "per_s": d["batches"] / seconds,
        "mean_events": d["batch_events"] / d["batches"],
        "mean_ms": 1000 * d["batch_seconds"] / d["batches"],
        "scoring_calls_per_s": calls / seconds,
        "scoring_mean_windows": d["scoring_windows"] / calls if calls else None,
        "scoring_mean_ms": 1000 * d["scoring_seconds"] / calls if calls else None,
        # Where a slow second comes from: batches the worker itself took over 100 ms on, and the
        # signals its own histogram saw over 100 ms after their event's Kafka timestamp.
        "over_100ms": d["batches"] - d["batches_within_100ms"],
        "worker_signals_over_100ms": d["worker_signals"] - d["worker_signals_within_100ms"],
    }



def _summary(runs: list[dict]) -> dict:
    """Medians of the numeric figures of repeated runs, plus the runs themselves."""
    keys = dict.fromkeys(
        k for r in runs for k, v in r.items() if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    )
    out: dict = {k: _median([r.get(k) for r in runs]) for k in keys}
    out["complete"] = all(r.get("complete", False) for r in runs)
    out["runs"] = runs
    return out


def _ratios(pipeline: dict, baselines: dict) -> dict:
    out = {}
    for name, b in baselines.items():
        for metric in ("events_per_s", "steady_events_per_s"):
            p, q = pipeline.get(metric), b.get(metric)
            out[f"{metric.removesuffix('events_per_s')}pipeline_vs_{name}"] = p / q if p and q else None
        p, q = pipeline.get("cpu_us_per_event"), b.get("cpu_us_per_event")
        out[f"cpu_per_event_pipeline_vs_{name}"] = p / q if p and q else None
    return out
