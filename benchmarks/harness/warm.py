"""The models a benchmark worker starts with, so that it costs what a worker in service costs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from stream.broker import client_config, create_plain_topics
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.logic.pipeline import Pipeline, SequenceModel, UserRecord

#: Churn horizon the benchmark's online models are warmed with (see :func:`warm_online_models`).
WARM_CHURN_HORIZON_MS = 30 * 60_000


def learning_pipeline(settings: Settings, churn_horizon_ms: int) -> Pipeline:
    """The worker's :class:`~stream.logic.pipeline.Pipeline` with fresh online models (intent with
    the configured horizon, churn with ``churn_horizon_ms``) and the rule scorer."""
    from models.online.learner import PartitionLearners
    from stream.agents.runtime import pipeline_config
    from stream.logic.pipeline import Pipeline
    from stream.logic.scoring import RuleScorer

    cfg = pipeline_config(settings)

    def make(_p: int) -> PartitionLearners:
        return PartitionLearners.new(state=cfg.state, intent_horizon_ms=settings.intent_horizon_ms,
                                     churn_horizon_ms=churn_horizon_ms)  # fmt: skip

    return Pipeline(cfg, RuleScorer(settings.churn_after_ms), learners=make)


def replay(pipe: Pipeline, raw: list[dict], partitions: int, model: SequenceModel | None = None) -> dict[str, UserRecord]:
    """Raw simulator events through ``pipe`` as a worker applies them: batches of 1,000 through
    :meth:`~stream.logic.pipeline.Pipeline.step` (the churn scan included; ``model``: the sequence
    model, whose per-user state the records then hold). Returns the users' records left at the
    end (expired users deleted)."""
    from models.events import parse_event
    from models.features.hashing import stable_hash

    records: dict[str, UserRecord] = {}
    for i in range(0, len(raw), 1_000):
        pairs = []
        for d in raw[i : i + 1_000]:
            ev = parse_event(d)  # validated as the worker's ingest does (raw user ids: nothing leaves)
            pairs.append((stable_hash(ev.user) % partitions, ev))
        batch = {ev.user: records.get(ev.user) for _p, ev in pairs}
        out = pipe.step(batch, pairs, lambda _p, users: {u: records.get(u) for u in users}, model)
        records.update(out.records)
        for u in out.deleted:
            records.pop(u, None)
    return records


def warm_online_models(settings: Settings, partitions: int, seed: int, events: int = 30_000) -> tuple[dict[int, bytes], dict]:
    """Online-model checkpoints, one per partition, that have learned from simulator history.

    A worker in service has warm online models, and a warm linear model costs more per event than
    the prior a cold one serves (scaling the features, the log-odds, the reasons). So every
    benchmark worker starts from these checkpoints (:func:`seed_online_models`), as a restarted
    worker does. They are learned by the worker's own :class:`~stream.logic.pipeline.Pipeline`
    (state, label join, watermark scans) over ``events`` simulator events of 1,000 users: intent
    with the configured horizon; churn with a horizon of :data:`WARM_CHURN_HORIZON_MS` instead of
    ``churn_after_ms`` (30 days of silence would take millions of simulated events). The churn
    model then answers another question, at the same cost per event: only its cost matters here,
    and its per-event score is never a signal (churn signals come from the scan of silent users).
    """
    from stream.logic.simulator import ShopperSimulator

    pipe = learning_pipeline(settings, WARM_CHURN_HORIZON_MS)
    raw = ShopperSimulator(seed=seed, users=1_000).take(events)
    replay(pipe, raw, partitions)
    learned = {p: pl.to_bytes() for p, pl in sorted(pipe.learners.items())}
    meta = {
        "history_events": len(raw),
        "span_hours": round((raw[-1]["ts"] - raw[0]["ts"]) / 3_600_000, 2) if raw else 0,
        "labels_learned": {t: sum(getattr(pl, t).n_learned for pl in pipe.learners.values()) for t in ("intent", "churn")},
        "warm_partitions": {t: sum(getattr(pl, t).warm() for pl in pipe.learners.values()) for t in ("intent", "churn")},
        "churn_horizon_ms": WARM_CHURN_HORIZON_MS,
    }
    return learned, meta


async def seed_online_models(settings: Settings, bootstrap: str, checkpoints: dict[int, bytes]) -> None:
    """Write online-model checkpoints to the worker's ``online-models`` changelog (partition p's
    under key ``p``, as the worker checkpoints them), so that it recovers them at start-up."""
    from aiokafka import AIOKafkaProducer

    topic = settings.changelog_topics()["online-models"]
    await create_plain_topics(settings, bootstrap, [topic], settings.events_partitions)
    producer = AIOKafkaProducer(**client_config(settings, bootstrap), max_request_size=16 * 2**20)  # type: ignore[arg-type]
    await producer.start()
    try:
        for p, raw in checkpoints.items():
            await producer.send_and_wait(topic, key=str(p).encode(), value=raw, partition=p)
    finally:
        await producer.stop()


def publish_sequence_model(model_dir: Path) -> dict:
    """Promote a sequence model with the default architecture into a fresh registry.

    Its weights are untrained (seeded): the cost of scoring, which is what a benchmark measures,
    depends on the architecture and the shapes only, and training one would make every benchmark
    run wait for a training run. Quality figures come from ``intentstream evaluate`` instead."""
    import torch

    from models.registry import Registry
    from models.sequence import checkpoint
    from models.sequence.checkpoint import CHECKPOINT_NAME
    from models.sequence.config import SeqConfig
    from models.sequence.model import SequenceModel

    torch.manual_seed(0)
    cfg = SeqConfig()
    art = model_dir / "incoming"
    art.mkdir(parents=True)
    checkpoint.save(art / CHECKPOINT_NAME, SequenceModel(cfg), cfg, vocab={})
    reg = Registry(model_dir / "sequence")
    version = reg.save(art, {"metrics": {}, "note": "benchmark: untrained weights"})
    reg.promote(version)
    shutil.rmtree(art)
    return {"version": version, "arch": cfg.arch, "d_model": cfg.d_model, "max_len": cfg.max_len, "weights": "untrained (seed 0)"}


def benchmark_model(settings: Settings, model_dir: Path) -> SequenceModel:
    """The benchmark's sequence model (:func:`publish_sequence_model`) as the step sees it."""
    from stream.logic.serving import SequenceServing, ServedModel

    publish_sequence_model(model_dir)
    serving = SequenceServing(model_dir / "sequence", intent_horizon_ms=settings.intent_horizon_ms,
                              churn_horizon_ms=settings.churn_after_ms, device="cpu")  # fmt: skip
    serving.poll()
    served = serving.swap()
    assert served is not None, f"the benchmark model was not served: {serving.rejected}"
    return ServedModel(served, settings.latent_top_k, settings.explain_events)
