"""The sequence model inside a worker: which version serves, how a new one replaces it.

A background thread calls :meth:`SequenceServing.poll` every ``model_poll_s``: when the registry's
current version differs from the one served, it verifies the version's checksums, loads the
checkpoint, checks it against this worker's configuration and scores a probe window. Only a
version that passes all of that becomes *pending*; the agent calls :meth:`swap` between batches,
so a batch is always scored by one model and the switch is a single assignment. A version that
fails is remembered with its reason (logged once, counted in ``model_refresh_total``) and the
served model keeps serving; promoting a newer, good version later replaces it as usual.

Compatibility rules (a model is trained for one question; the worker asks its own):

* the checkpoint's feature schema must be this code's (:mod:`models.sequence.checkpoint`);
* the intent head is blended only if its horizon equals ``INTENTSTREAM_INTENT_HORIZON_MS`` and
  the churn head only if its horizon equals ``INTENTSTREAM_CHURN_AFTER_MS``; otherwise that task
  is served by the online model alone and the reason is logged. Latent needs are always blended.

Optionally (``INTENTSTREAM_SEQUENCE_SHADOW=true``) the newest version *above* the current one, a
candidate not yet promoted, is loaded the same way and scores the same windows; its scores only
feed metrics (``shadow_score_difference``), never a signal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from models.features.recent import RecentEvent
from models.registry import ArtifactError, Registry
from models.sequence import explain
from models.sequence.checkpoint import CHECKPOINT_NAME, CheckpointError
from models.sequence.scorer import SequenceScorer
from stream.logic.pipeline import BatchResult, SeqView
from stream.logic.sequence_state import Scored, SeqMemory, SeqQuery, advance_rounds, at_rest, model_tag

log = logging.getLogger(__name__)

_PROBE = [RecentEvent(0, 1, 1, 10.0, 1_700_000_000_000, 0), RecentEvent(2, 1, 1, 10.0, 1_700_000_060_000, 0)]


@dataclasses.dataclass(frozen=True)
class Served:
    version: str
    scorer: SequenceScorer
    tasks: frozenset[str]  # binary tasks this model is blended into: subset of {"intent", "churn"}

    @property
    def name(self) -> str:
        return f"seq-{self.version}"

    @property
    def tag(self) -> int:
        """Stored with each user's hidden state, so a state from another version is not reused."""
        return model_tag(self.name)


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class SequenceServing:
    def __init__(
        self,
        root: str | Path,
        *,
        intent_horizon_ms: int,
        churn_horizon_ms: int,
        device: str = "cpu",
        max_batch: int = 512,
        shadow: bool = False,
    ) -> None:
        self.registry = Registry(root, create=False)  # workers only read (read-only mounts)
        self.intent_horizon_ms, self.churn_horizon_ms = intent_horizon_ms, churn_horizon_ms
        self.device, self.max_batch, self.shadow_enabled = device, max_batch, shadow
        self.active: Served | None = None
        self.shadow: Served | None = None
        self.rejected: dict[str, str] = {}  # version -> why it is not served
        self._pending: Served | None = None
        self._pending_shadow: Served | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading (background)
    def poll(self) -> list[tuple[str, bool]]:
        """Look at the registry once; load what changed. Returns ``(version, ok)`` per load
        attempt (for the refresh counter). Safe to call from any one thread at a time."""
        attempts: list[tuple[str, bool]] = []
        try:
            current = self.registry.current()
        except (OSError, ValueError) as exc:  # a state.json someone broke by hand
            self._reject("state", f"registry state unreadable: {exc}")
            return [("state", False)]
        held = {x.version: x for x in (self.active, self._pending, self.shadow, self._pending_shadow) if x is not None}
        target = self._pending or self.active
        if current is not None and current not in self.rejected and (target is None or target.version != current):
            served = held.get(current)  # e.g. the shadow candidate, now promoted
            if served is None:
                served = self._load(current)
                attempts.append((current, served is not None))
            if served is not None:
                with self._lock:
                    self._pending = served
        if self.shadow_enabled:
            cand = self._candidate(current)
            if cand is not None and cand not in self.rejected and cand not in held:
                served = self._load(cand)
                attempts.append((cand, served is not None))
                if served is not None:
                    with self._lock:
                        self._pending_shadow = served
        return attempts

    def _candidate(self, current: str | None) -> str | None:
        if not self.registry.versions_dir.is_dir():
            return None
        nums = sorted(p.name for p in self.registry.versions_dir.iterdir() if p.name.isdigit())
        newer = [v for v in nums if current is None or v > current]
        return newer[-1] if newer else None

    def _load(self, version: str) -> Served | None:
        try:
            self.registry.verify(version)
            path = self.registry.path(version) / CHECKPOINT_NAME
            if not path.is_file():
                raise ArtifactError(f"version {version} has no {CHECKPOINT_NAME}")
            scorer = SequenceScorer.load(path, device=self.device, max_batch=self.max_batch)
            probe = scorer.score_batch([_PROBE])
            if not all(math.isfinite(float(x)) for x in (probe.p_intent[0], probe.p_churn[0])):
                raise ArtifactError(f"version {version} scores a probe window as NaN/inf")
        except (ArtifactError, CheckpointError, FileNotFoundError) as exc:
            self._reject(version, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - any failure keeps the current model serving
            self._reject(version, f"{type(exc).__name__}: {exc}")
            return None
        cfg, tasks = scorer.config, set()
        if cfg.intent_ms == self.intent_horizon_ms:
            tasks.add("intent")
        else:
            log.warning("sequence model %s: intent horizon %d ms != INTENTSTREAM_INTENT_HORIZON_MS %d; "
                        "intent is served by the online model alone", version, cfg.intent_ms, self.intent_horizon_ms)  # fmt: skip
        if cfg.churn_ms == self.churn_horizon_ms:
            tasks.add("churn")
        else:
            log.warning("sequence model %s: churn horizon %d ms != INTENTSTREAM_CHURN_AFTER_MS %d; "
                        "churn risk is served by the online model alone", version, cfg.churn_ms, self.churn_horizon_ms)  # fmt: skip
        log.info("sequence model %s loaded on %s (blended into: %s)", version, self.device, sorted(tasks) or "latent needs only")
        return Served(version, scorer, frozenset(tasks))

    def _reject(self, version: str, reason: str) -> None:
        if self.rejected.get(version) != reason:
            log.error("sequence model %s rejected, the served model stays: %s", version, reason)
        self.rejected[version] = reason

    # ------------------------------------------------------------------ serving (agent)
    def swap(self) -> Served | None:
        """Between batches: make a pending version the served one. Returns it if it changed."""
        with self._lock:
            new, self._pending = self._pending, None
            shadow, self._pending_shadow = self._pending_shadow, None
        if shadow is not None:
            self.shadow = shadow
        if new is not None:
            self.active = new
        if self.shadow is not None and self.active is not None and self.shadow.version <= self.active.version:
            self.shadow = None  # the candidate was promoted (or overtaken): nothing left to compare
        return new


class ServedModel:
    """A served version as :meth:`~stream.logic.pipeline.Pipeline.step` sees it
    (``SequenceModel``): each user's hidden state advanced through the batch's events, the
    silent users' scores at rest, attributions for the signals it contributed to. A failure to
    score raises; the worker's ``BatchModel`` catches it and counts what was scored."""

    def __init__(self, served: Served, latent_top_k: int, explain_events: int) -> None:
        self.served, self.latent_top_k, self.explain_events = served, latent_top_k, explain_events
        cfg = served.scorer.config
        self.shape = (cfg.n_layers, cfg.d_model) if cfg.arch == "gru" else None
        self.stepped = self.rebuilt = 0  # of the last views() call

    def views(
        self, queries: Sequence[SeqQuery], memory: Mapping[str, SeqMemory | None]
    ) -> tuple[list[SeqView], dict[str, SeqMemory]] | None:
        adv = advance_rounds(self.served.scorer, self.served.tag, self.shape, queries, memory)
        self.stepped, self.rebuilt = adv.stepped, adv.rebuilt
        return [self._view(s) for s in adv.scored], adv.memory

    def at_rest(
        self, windows: Sequence[Sequence[RecentEvent]], events: Sequence[int], memory: Sequence[SeqMemory | None]
    ) -> list[SeqView] | None:
        return [self._view(s) for s in at_rest(self.served.scorer, self.served.tag, self.shape, windows, events, memory)]

    def _view(self, s: Scored) -> SeqView:
        cats = tuple(c for c in s.categories if c)[: self.latent_top_k]
        return SeqView(self.served.name, self.served.tasks, s.p_intent, s.p_churn, cats)

    def explain(self, result: BatchResult) -> None:
        """Add the sequence model's occlusion attributions over the recent-event ring to the
        signals it contributed to."""
        n = self.explain_events
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
