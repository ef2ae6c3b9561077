"""What a worker does beside the step: checkpoint the online models, publish their quality,
archive the events for training, and keep the garbage collector out of the hot path."""

from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from models.archive import EventArchive
from models.events import Event
from models.online.learner import IncompatibleCheckpoint, PartitionLearners
from stream.agents.records import PartitionEvent, as_current
from stream.logic.signals import LEARNED

if TYPE_CHECKING:
    from stream.agents.outputs import FaustOutputs, TransactionalOutputs
    from stream.logic.pipeline import Pipeline
    from stream.metrics import Metrics
    from stream.settings import Settings

log = logging.getLogger(__name__)

MIN_CHECKPOINT_LABELS = 20  # the least learning between two label-count checkpoints


class Checkpoint(NamedTuple):
    """A partition's online models as of a checkpoint: when, labels learned, warm per task."""

    at: float
    learned: int
    warm: tuple[bool, ...]


def checkpoint_due(last: Checkpoint | None, now: Checkpoint, every_s: float, every_labels: int) -> bool:
    """Whether to checkpoint a partition's online models: at its first batch; when a model has
    just become warm (a crash must never bring back the cold rule); once the labels learned since
    the last checkpoint reach a tenth of those learned before it (at least
    :data:`MIN_CHECKPOINT_LABELS`, at most ``every_labels``), so that a crash loses a bounded share
    of the learning; and after ``every_s`` seconds if anything was learned.

    >>> c = Checkpoint(0.0, 1_000, (False, False))
    >>> [checkpoint_due(c, Checkpoint(t, n, w), 30.0, 2_000) for t, n, w in
    ...  [(5.0, 1_099, (False, False)), (5.0, 1_050, (True, False)), (5.0, 1_100, (False, False)),
    ...   (31.0, 1_001, (False, False)), (31.0, 1_000, (False, False))]]
    [False, True, True, True, False]
    >>> checkpoint_due(Checkpoint(0.0, 100_000, (True, True)), Checkpoint(1.0, 102_000, (True, True)), 30.0, 2_000)
    True
    """
    if last is None:
        return True
    step = min(every_labels, max(MIN_CHECKPOINT_LABELS, last.learned // 10))
    if now.warm != last.warm or now.learned - last.learned >= step:
        return True
    return now.at - last.at >= every_s and now.learned != last.learned


class OnlineModels:
    """The online models' life beside the pipeline: restored from and checkpointed to the models
    table (so they move with their partition and survive restarts, docs/ONLINE.md), and their
    progressive-validation quality published as gauges."""

    def __init__(self, settings: Settings, table: Any, outputs: FaustOutputs | TransactionalOutputs,
                 metrics: Metrics) -> None:  # fmt: skip
        self.settings, self.table, self.outputs, self.metrics = settings, table, outputs, metrics
        self.pipeline: Pipeline | None = None
        self._checkpointed: dict[int, Checkpoint] = {}

    def restore(self, partition: int) -> PartitionLearners:
        """The partition's online models from their last checkpoint, or fresh ones."""
        raw = self.table.get(str(partition).encode())
        if raw is not None:
            try:
                return PartitionLearners.from_bytes(raw)
            except IncompatibleCheckpoint as exc:
                log.warning("online models of partition %d not restored (%s): starting fresh", partition, exc)
        s = self.settings
        assert self.pipeline is not None
        return PartitionLearners.new(
            state=self.pipeline.cfg.state,
            intent_horizon_ms=s.intent_horizon_ms,
            churn_horizon_ms=s.churn_after_ms,
        )

    def checkpoint(self, partitions: dict[int, PartitionEvent]) -> None:
        """Write a partition's models to the models table when :func:`checkpoint_due` says so."""
        now, s = time.monotonic(), self.settings
        assert self.pipeline is not None
        for partition, fe in partitions.items():
            pl = self.pipeline.learners.get(partition)
            if pl is None:
                continue
            mark = Checkpoint(
                now, pl.intent.n_learned + pl.churn.n_learned, (pl.intent.warm(), pl.churn.warm())
            )
            if not checkpoint_due(
                self._checkpointed.get(partition), mark, s.model_checkpoint_s, s.model_checkpoint_labels
            ):
                continue
            self._checkpointed[partition] = mark
            with as_current(fe):
                self.outputs.write(self.table, str(partition).encode(), pl.to_bytes(), partition)

    def publish_quality(self) -> None:
        """Progressive-validation quality per task, pooled over this worker's partitions (each
        partition's figure weighted by its number of learned labels)."""
        assert self.pipeline is not None
        learners_by_partition = self.pipeline.learners.values()
        for label in LEARNED:
            task = label.head
            learners = [getattr(pl, task) for pl in learners_by_partition]
            self.metrics.online_models_warm.labels(task=label).set(sum(lr.warm() for lr in learners))
            self.metrics.online_labels_learned.labels(task=label).set(sum(lr.n_learned for lr in learners))
            rows = [m for pl in learners_by_partition if (m := pl.metrics()[task]).get("n")]

            def pooled(key: str, rows: list[dict] = rows) -> float | None:
                vals = [(r[key], r["n"]) for r in rows if r.get(key) is not None]
                return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

            if rows:
                self.metrics.set_online_quality(
                    label, roc_auc=pooled("roc_auc"), log_loss=pooled("log_loss"),
                    calibration_error=pooled("calibration_error"),
                )  # fmt: skip


class Archiver:
    """Validated, pseudonymised events also go to the Parquet archive that training reads, so that
    training is not limited by the topic's retention. One background thread writes a file every
    ``flush_s``: a crash loses at most that much of the archive (never of the stream), and the
    archive's atomic writes never leave a half file."""

    def __init__(self, archive: EventArchive | None, flush_s: float) -> None:
        self.archive, self.flush_s = archive, flush_s
        self._buffer: list[Event] = []
        self._flushed = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")

    def add(self, events: list[Event]) -> None:
        """Buffer ``events``; hand the buffer to the writer when it is due (also with none new)."""
        if self.archive is None:
            return
        self._buffer.extend(events)
        if self._buffer and time.monotonic() - self._flushed >= self.flush_s:
            batch, self._buffer = self._buffer, []
            self._flushed = time.monotonic()
            self._pool.submit(self._write, batch)

    def _write(self, events: list[Event]) -> None:
        try:
            self.archive.write(events)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the archive must never stop the stream
            log.error("archive write of %d events failed: %s", len(events), exc)


# The collector's thresholds once the worker is ready (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


def freeze_heap() -> None:
    """Leave everything alive at start-up (torch, Faust, River, the recovered models) out of the
    cyclic garbage collector's passes from now on (``gc.freeze``), and let the collector run less
    often (:data:`GC_THRESHOLDS`).

    The worker allocates a few dozen objects per event that die young (by reference counting: they
    form no cycles), so with Python's thresholds the collector ran every few dozen events, and each
    older-generation pass walked every long-lived object (docs/BENCHMARKS.md measured it). A full
    collection still runs, so cyclic garbage is still reclaimed; the collection just before the
    freeze clears the start-up heap's own cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info(
        "garbage collector: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), GC_THRESHOLDS
    )


def torch_threads(n: int) -> None:
    """torch's CPU parallelism (process-wide): a small GRU gains little from more threads, and
    every thread competes with the event loop and the broker client for the cores."""
    import torch

    torch.set_num_threads(n)
