"""The sequence model in a running worker: registry polls on a loading thread, the swap between
batches, and the model as the pipeline step sees it (:class:`~stream.logic.pipeline.SequenceModel`).

Scoring runs on the event loop's thread, once per batch: torch releases the GIL in each op and, on
a thread of its own, waited for the loop's switch interval at every op while the loop ran Python
(``python -m benchmarks.gil_convoy`` shows it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from models.features.recent import RecentEvent
from stream.logic.pipeline import SeqView
from stream.logic.sequence_state import SeqMemory, SeqQuery
from stream.logic.serving import SequenceServing, Served, ServedModel, pick_device
from stream.logic.signals import Task

if TYPE_CHECKING:
    from stream.health import Health
    from stream.metrics import Metrics
    from stream.settings import Settings

log = logging.getLogger(__name__)


class ModelServer:
    """Serves the registry's current sequence model (``INTENTSTREAM_SEQUENCE_SERVING``)."""

    def __init__(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self.settings, self.metrics, self.health = settings, metrics, health
        self.serving = SequenceServing(
            settings.registry_dir / "sequence", intent_horizon_ms=settings.intent_horizon_ms,
            churn_horizon_ms=settings.churn_after_ms, device=pick_device(settings.sequence_device),
            max_batch=settings.sequence_max_batch, shadow=settings.sequence_shadow,
        )  # fmt: skip
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequence-load")

    @property
    def active(self) -> Served | None:
        return self.serving.active

    async def poll(self) -> None:
        """Look at the registry on the loading thread; count each load attempt. Readiness waits
        for the first look (and the load of the current model, if there is one)."""
        loop = asyncio.get_running_loop()
        try:
            attempts = await loop.run_in_executor(self._load_pool, self.serving.poll)
        except Exception as exc:  # noqa: BLE001 - the registry must never stop the worker
            log.error("model registry poll failed: %s: %s", type(exc).__name__, exc)
            attempts = [("poll", False)]
        for _version, ok in attempts:
            self.metrics.count_model_refresh(ok)
        self.health.set_condition("model_loaded", True)

    def for_batch(self) -> BatchModel | None:
        """Between batches: switch to a newly loaded version; the model to score this batch with."""
        serving = self.serving
        shadow_before = serving.shadow
        new = serving.swap()
        if new is not None:
            log.info("now serving sequence model %s", new.name)
            self.metrics.set_sequence_model(new.name)
        if serving.shadow is not None and serving.shadow is not shadow_before:
            self.metrics.set_shadow_model(serving.shadow.name)
        return BatchModel(self, serving.active) if serving.active is not None else None


class BatchModel(ServedModel):
    """One served version, for one batch: a failure to score is logged and the online models serve
    the batch alone (a model must never cost an event)."""

    def __init__(self, server: ModelServer, served: Served) -> None:
        super().__init__(served, server.settings.latent_top_k, server.settings.explain_events)
        self.server = server

    def views(
        self, queries: Sequence[SeqQuery], memory: Mapping[str, SeqMemory | None]
    ) -> tuple[list[SeqView], dict[str, SeqMemory]] | None:
        serving, metrics = self.server.serving, self.server.metrics
        t0 = time.perf_counter()
        try:
            views, states = super().views(queries, memory)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001
            log.error("sequence scoring of %d events failed (%s: %s): online models serve this batch alone",
                      len(queries), type(exc).__name__, exc)  # fmt: skip
            return None
        metrics.observe_scoring(len(queries), time.perf_counter() - t0)
        metrics.count_sequence_states(self.stepped, self.rebuilt)
        shadow = serving.shadow
        if shadow is not None:
            # A candidate keeps no states of its own: it scores each event's ring from zeros.
            try:
                sh = shadow.scorer.from_window([q.window for q in queries], [False] * len(queries))
                metrics.observe_shadow(Task.PURCHASE_INTENT, sh.p_intent - np.array([v.p_intent for v in views]))
                metrics.observe_shadow(Task.CHURN_RISK, sh.p_churn - np.array([v.p_churn for v in views]))
            except Exception as exc:  # noqa: BLE001
                log.error("shadow scoring failed (%s: %s)", type(exc).__name__, exc)
        return views, states

    def at_rest(
        self, windows: Sequence[Sequence[RecentEvent]], events: Sequence[int], memory: Sequence[SeqMemory | None]
    ) -> list[SeqView] | None:
        try:
            return super().at_rest(windows, events, memory)
        except Exception as exc:  # noqa: BLE001
            log.error("sequence scoring of %d silent users failed (%s: %s): the online model serves them alone",
                      len(windows), type(exc).__name__, exc)  # fmt: skip
            return None
