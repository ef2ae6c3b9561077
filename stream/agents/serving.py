"""The sequence model in a running worker: registry polls on a loading thread, the swap between
batches, and the model as the pipeline step sees it (:class:`~stream.logic.pipeline.SequenceModel`).

Scoring runs on the event loop's thread, once per batch: torch releases the GIL in each op and, on
a thread of its own, waited for the loop's switch interval at every op while the loop ran Python
(``python -m benchmarks.gil_convoy`` shows it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from models.features.recent import RecentEvent
from models.sequence import explain
from stream.logic.pipeline import BatchResult, SeqView
from stream.logic.serving import SequenceServing, Served, pick_device
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


class BatchModel:
    """One served version, for one batch: a failure to score is logged and the online models serve
    the batch alone (a model must never cost an event)."""

    def __init__(self, server: ModelServer, served: Served) -> None:
        self.server, self.served = server, served

    def views(
        self, windows: Sequence[Sequence[RecentEvent] | None], latent: list[bool]
    ) -> list[SeqView | None] | None:
        todo = [i for i, w in enumerate(windows) if w]
        if not todo:
            return None
        batch = [windows[i] for i in todo]
        mask = [latent[i] for i in todo]
        serving, metrics, served = self.server.serving, self.server.metrics, self.served
        t0 = time.perf_counter()
        try:
            sc = serving.score(served, batch, None, mask)
        except Exception as exc:  # noqa: BLE001
            log.error("sequence scoring of %d windows failed (%s: %s): online models serve this batch alone",
                      len(batch), type(exc).__name__, exc)  # fmt: skip
            return None
        metrics.observe_scoring(len(batch), time.perf_counter() - t0)
        shadow = serving.shadow
        if shadow is not None:
            try:
                sh = serving.score(shadow, batch, None, [False] * len(batch))
                metrics.observe_shadow(Task.PURCHASE_INTENT, sh.p_intent - sc.p_intent)
                metrics.observe_shadow(Task.CHURN_RISK, sh.p_churn - sc.p_churn)
            except Exception as exc:  # noqa: BLE001
                log.error("shadow scoring failed (%s: %s)", type(exc).__name__, exc)
        k = self.server.settings.latent_top_k
        views: list[SeqView | None] = [None] * len(windows)
        name, tasks = served.name, served.tasks
        for i, pi, pc, top in zip(
            todo, sc.p_intent.tolist(), sc.p_churn.tolist(), sc.top_categories, strict=True
        ):
            views[i] = SeqView(name, tasks, pi, pc, tuple(c for c in top if c)[:k])
        return views

    def explain(self, result: BatchResult) -> None:
        """Add the sequence model's occlusion attributions to the signals it contributed to."""
        n = self.server.settings.explain_events
        if not result.explain or n == 0:
            return
        scorer = self.served.scorer
        cfg = scorer.config
        for head in ("intent", "churn"):
            items = [(i, w) for i, h, w in result.explain if h == head and w]
            if not items:
                continue
            sigs = [result.signals[i] for i, _ in items]
            try:
                attrs = explain.occlusion(scorer, [w for _, w in items], head, n)
            except Exception as exc:  # noqa: BLE001 - a signal without attributions is still a signal
                log.error("explaining %d signals failed (%s: %s)", len(sigs), type(exc).__name__, exc)
                continue
            for (i, _w), sig, lst in zip(items, sigs, attrs, strict=True):
                extra = []
                for a in lst[:3]:
                    r = explain.describe(a, sig.ts, scorer.vocab, cfg.category_buckets, head)
                    r["contribution"] = round(r["contribution"] / 2, 4)  # half: the blend's weight
                    extra.append(r)
                reasons = sorted([*sig.reasons, *extra], key=lambda r: -abs(r["contribution"]))[:6]
                result.signals[i] = sig.with_reasons(reasons)
