"""Train the sequence model from history and publish it: what ``intentstream train`` and
``intentstream refresh`` run (the command line only parses arguments and prints the result).

* :func:`load_history` reads events from dataset files (any format of
  :mod:`models.datasets.importers`, JSON lines included) or from the event archive.
* :func:`train_to_registry` trains with early stopping on the time-based validation split (the
  last ``val_fraction`` of the time range), on CUDA with mixed precision when a GPU is present,
  and stores the checkpoint as a new registry version (not promoted unless asked).
* :func:`refresh` trains, then scores the new model **and the currently promoted model on the
  same validation targets of the new run**, and promotes the new version only if it is better.
  Comparing the validation figures stored with each version would compare runs on different data
  (each run validates on its own last days); re-scoring both on one split is the fair test.
  Where the current model was trained on events that the new validation period also holds, only
  the targets after the end of the current model's data are used (they are new to both models);
  if there are none (the same history retrained), the whole validation split is used and the
  report says so. A current version that is missing, corrupt or fails to load never blocks the
  refresh: the new version is promoted and the reason is reported.

The comparison criterion is the early-stopping one: mean of intent ROC AUC and next-category
HR@10 on the validation targets (``val_score``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from models.events import Event
from models.registry import ArtifactError, Registry
from models.sequence import checkpoint
from models.sequence.checkpoint import CHECKPOINT_NAME
from models.sequence.config import DAY_MS, SeqConfig
from models.sequence.data import FEATURE_SCHEMA_VERSION, build_windows, user_histories
from models.sequence.scorer import SequenceScorer
from models.sequence.train import TrainResult, evaluate, train

CRITERION = "val_score"


def load_history(
    inputs: Sequence[str | Path] = (),
    fmt: str | None = None,
    archive: str | Path | None = None,
    *,
    days: float = 30.0,
    now_ms: int | None = None,
) -> tuple[list[Event], dict[str, Any]]:
    """Events sorted by time from dataset files (``fmt`` is their format) or from the archive
    (the last ``days`` before ``now_ms``, default: the wall clock). Returns (events, source info)."""
    events: list[Event] = []
    info: dict[str, Any] = {}
    if inputs:
        from models.datasets.importers import load_events

        if fmt is None:
            raise ValueError("--format is required with --input")
        for path in inputs:
            evs, stats = load_events(path, fmt)
            events += evs
            info[str(path)] = {"events": len(evs), "rows_read": stats.rows_read}
    if archive is not None:
        from models.archive import EventArchive

        end = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        evs = EventArchive(archive).read(int(end - days * DAY_MS), end + 1)
        events += evs
        info[str(archive)] = {"events": len(evs), "days": days}
    if not inputs and archive is None:
        raise ValueError("give --input FILE (with --format) or --archive DIR")
    events.sort(key=lambda e: e.ts)
    return events, info


def _val_metrics(model, cfg: SeqConfig, events: Sequence[Event], from_ms: int) -> dict[str, float]:
    """Validation metrics of ``model`` on the targets at or after ``from_ms`` (context: all events)."""
    end = max(e.ts for e in events)
    w = build_windows(user_histories(events), cfg, data_end_ms=end, target_from_ms=from_ms)
    m = evaluate(model, w, next(model.parameters()).device, k=10)
    vals = [v for v in (m["intent_auc"], m["hr@10"]) if v == v]
    m[CRITERION] = float(sum(vals) / len(vals)) if vals else float("nan")
    return m


def _publish(registry: Registry, res: TrainResult, extra: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        res.save(str(Path(tmp) / CHECKPOINT_NAME))
        val = res.metrics["val"]
        meta = {
            "kind": "sequence",
            "metrics": {
                "val_intent_auc": val["intent_auc"],
                "val_hr@10": val["hr@10"],
                CRITERION: _criterion(val),
            },
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "data_range": list(res.data_range),
            "val_cutoff_ms": res.cutoff_ms,
            "config": res.config.to_dict(),
            "device": res.device,
            **extra,
        }
        return registry.save(tmp, _finite(meta))


def _criterion(m: dict[str, Any]) -> float:
    vals = [v for v in (m.get("intent_auc"), m.get("hr@10")) if v is not None and v == v]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def _finite(obj: Any) -> Any:
    """NaN as None: metadata must be strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def load_scorer(path: Path) -> SequenceScorer:
    """The registry loader: a version directory -> a scorer (raises on an unusable checkpoint)."""
    return SequenceScorer.load(Path(path) / CHECKPOINT_NAME)


def train_to_registry(
    events: Sequence[Event],
    registry: Registry,
    cfg: SeqConfig | None = None,
    *,
    device: str | None = None,
    max_seconds: float | None = None,
    log: TextIO | None = sys.stderr,
    promote: bool = False,
) -> tuple[TrainResult, str, dict[str, Any]]:
    """Train on ``events`` and store the checkpoint as a new version; returns (result, version,
    summary). ``promote=True`` makes it current unconditionally (after the registry's checks)."""
    cfg = cfg or SeqConfig()
    t0 = time.perf_counter()
    res = train(list(events), cfg, device=device, log=log, max_seconds=max_seconds)
    version = _publish(registry, res, {"train_events": len(events)})
    if promote:
        registry.promote(version, loader=load_scorer)
    summary = {
        "version": version,
        "promoted": promote,
        "device": res.device,
        "mixed_precision": res.device.startswith("cuda"),
        "events": len(events),
        "users": len({e.user for e in events}),
        "train_events_per_s": round(res.train_events_per_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": res.metrics["epochs"],
        "best_epoch": res.metrics["best_epoch"],
        "val_cutoff_ms": res.cutoff_ms,
        "metrics": _finite({k: v for k, v in res.metrics["val"].items() if k != "train_loss"}),
    }
    return res, version, summary


def refresh(
    events: Sequence[Event],
    registry: Registry,
    cfg: SeqConfig | None = None,
    *,
    device: str | None = None,
    max_seconds: float | None = None,
    log: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Train, compare with the current model on the new run's validation split, promote if better."""
    res, version, summary = train_to_registry(
        events, registry, cfg, device=device, max_seconds=max_seconds, log=log
    )
    dev = torch.device(res.device)
    current = registry.current()
    cur_model = None
    cur_error = None
    if current is not None:
        try:
            _, loaded = registry.load_current(
                lambda p: checkpoint.load(Path(p) / CHECKPOINT_NAME, map_location=dev)
            )
            cur_model = loaded
        except (ArtifactError, OSError) as e:  # corrupt or missing: never blocks a refresh
            cur_error = str(e)
    compare_from = res.cutoff_ms
    overlap_note = None
    if cur_model is not None and cur_model.data_range[1] >= res.cutoff_ms:
        after = cur_model.data_range[1] + 1
        if any(e.ts >= after for e in events):
            compare_from = after
        else:
            overlap_note = "the current model's training data covers the whole validation split"
    new_m = _val_metrics(res.model, res.config, events, compare_from)
    out: dict[str, Any] = {
        **summary,
        "compared_from_ms": compare_from,
        "new": _finite(_slim(new_m)),
        "current_version": current,
    }
    if overlap_note:
        out["note"] = overlap_note
    if cur_model is None:
        promote = True
        out["reason"] = "no usable current version" + (f" ({cur_error})" if cur_error else "")
    else:
        cur_m = _val_metrics(cur_model.model, cur_model.config, events, compare_from)
        out["current"] = _finite(_slim(cur_m))
        n, c = new_m[CRITERION], cur_m[CRITERION]
        promote = n == n and (c != c or n > c)
        out["reason"] = f"{CRITERION} new {n:.4f} {'>' if promote else '<='} current {c:.4f}"
    if promote:
        try:
            registry.promote(version, loader=load_scorer)
        except ArtifactError as e:
            promote = False
            out["reason"] = f"new version failed its checks: {e}"
    out["promoted"] = promote
    out["current_after"] = registry.current()
    return out


def _slim(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("intent_auc", "intent_n", "hr@10", "mrr@10", "next_cat_n", CRITERION)
    return {k: m[k] for k in keys if k in m}


def seq_config_with(overrides: Sequence[str]) -> SeqConfig:
    """A :class:`SeqConfig` with ``FIELD=VALUE`` overrides (the ``--set`` option)."""
    fields: dict[str, Any] = {}
    defaults = SeqConfig()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(defaults, key):
            raise ValueError(f"--set expects FIELD=VALUE with a SeqConfig field, got {item!r}")
        kind = type(getattr(defaults, key))
        fields[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dataclasses.replace(defaults, **fields)


__all__ = ["CRITERION", "load_history", "load_scorer", "refresh", "seq_config_with", "train_to_registry"]
