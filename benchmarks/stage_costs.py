"""CPU per event of each stage of the worker's pure logic, in one process (no broker, no Faust).

``python -m benchmarks.stage_costs --events 20000 --batch 1000`` runs simulator events through
what a worker does per batch, with warm online models and the benchmark's sequence model, and
prints the process CPU time per event of each step:

* ingest: validate and pseudonymise (``ingest_one``), pack; the process side: unpack and
  ``Event.from_dict``;
* load (``UserRecord.from_bytes``), then ``Pipeline.step`` itself, timed by stage through its
  ``mark`` hook (apply, sequence model, decide, explain, churn scan), store (``records_to_bytes``,
  as the worker stores a batch), signal JSON.

What is left of a worker's CPU per event (``intentstream bench pipeline``) beyond these is Faust,
aiokafka and the threads' hand-offs. ``--gc`` chooses the cyclic garbage collector: ``on``
(Python's default), ``freeze`` (what a worker does once ready, ``stream.agents.upkeep.freeze_heap``:
``gc.freeze()`` after start-up and higher thresholds) or ``off``. The collector's passes land on
whichever step allocates when they run, so compare totals across ``--gc`` settings, not single
steps. The last line is the ceiling this cost sets on one core (a worker's Python runs on one
thread), before any Kafka or Faust cost. Timings on a shared 2-core machine vary by about 20% from
run to run. ``--idle-ms`` sleeps before each batch, as a worker under a moderate load waits for
its next events: on the development machine the same work then costs more CPU
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--batch", type=int, default=1_000, help="events per batch (the worker's INTENTSTREAM_BATCH_SIZE)")
    p.add_argument("--gc", choices=["on", "freeze", "off"], default="freeze")
    p.add_argument("--idle-ms", type=float, default=0.0,
                   help="sleep this long before each batch, as a worker under a moderate load waits for events")
    a = p.parse_args(argv)

    import torch

    from benchmarks.harness.load import make_events
    from benchmarks.harness.warm import publish_sequence_model, warm_online_models
    from models.events import Event
    from models.online.learner import PartitionLearners
    from stream.agents.records import partition_for
    from stream.agents.runtime import pipeline_config
    from stream.agents.upkeep import freeze_heap
    from stream.logic import packing
    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.pipeline import Pipeline, UserRecord, records_to_bytes
    from stream.logic.scoring import RuleScorer
    from stream.logic.serving import SequenceServing, ServedModel
    from stream.settings import load_settings

    torch.set_num_threads(1)  # the worker's default (INTENTSTREAM_SEQUENCE_THREADS)
    s = load_settings()
    events = make_events(a.events, a.users, 1)
    pseudonymize = Pseudonymizer(b"stage-costs-key-0123456789")
    checkpoints, _meta = warm_online_models(s, s.events_partitions, 8)
    pipe = Pipeline(pipeline_config(s), RuleScorer(s.churn_after_ms),
                    learners=lambda part: PartitionLearners.from_bytes(checkpoints[part]))  # fmt: skip
    tmp = tempfile.TemporaryDirectory(prefix="stage-costs-")
    registry = Path(tmp.name)
    publish_sequence_model(registry)
    serving = SequenceServing(registry / "sequence", intent_horizon_ms=s.intent_horizon_ms, churn_horizon_ms=s.churn_after_ms,
                              device="cpu", max_batch=s.sequence_max_batch, shadow=False)  # fmt: skip
    serving.poll()
    served = serving.swap()
    model = ServedModel(served, s.latent_top_k, s.explain_events) if served else None  # the worker's, less its metrics
    if a.gc == "off":
        gc.disable()
    elif a.gc == "freeze":
        freeze_heap()

    cost: collections.Counter[str] = collections.Counter()
    table: dict[str, bytes] = {}
    mark = time.process_time()

    def step(name: str) -> None:
        nonlocal mark
        now = time.process_time()
        cost[name] += now - mark
        mark = now

    def lookup(_partition: int, users: list[str]) -> dict[str, UserRecord | None]:
        return {u: UserRecord.from_bytes(table[u]) if u in table else None for u in users}

    for i in range(0, a.events, a.batch):
        if a.idle_ms:
            time.sleep(a.idle_ms / 1000)
        mark = time.process_time()
        now_ms = time.time_ns() // 1_000_000
        packs: dict[int, tuple[list[dict], list[int]]] = {}
        for _key, value, _eid in events.records[i : i + a.batch]:
            ev = ingest_one(value, pseudonymize, now_ms=now_ms)
            evs, kts = packs.setdefault(partition_for(ev.user, s.events_partitions), ([], []))
            evs.append(ev.to_dict())
            kts.append(now_ms)
        step("ingest: validate, pseudonymise")
        raw = [(part, packing.pack(evs, kts)) for part, (evs, kts) in packs.items()]
        step("ingest: pack")
        items = [(part, Event.from_dict(d)) for part, blob in raw for d, _kts in packing.unpack(blob)]
        step("process: unpack, Event.from_dict")
        records = {u: UserRecord.from_bytes(table[u]) if u in table else None for u in {ev.user for _p, ev in items}}
        step("process: load (UserRecord.from_bytes)")
        out = pipe.step(records, items, lookup, model, mark=lambda stage: step(f"process: step: {stage}"))
        table.update(records_to_bytes(out.records))
        for u in out.deleted:
            table.pop(u, None)
        step("process: store (records_to_bytes)")
        for sig in out.signals:
            sig.to_json()
        step("process: signal JSON")

    width = max(len(k) for k in cost)
    idle = f", idle {a.idle_ms:g} ms before each" if a.idle_ms else ""
    print(f"{a.events:,} events in batches of {a.batch:,}{idle}, gc {a.gc}; process CPU per event:")
    for name, seconds in cost.items():
        print(f"  {name:<{width}}  {1e6 * seconds / a.events:7.1f} us")
    total_us = 1e6 * sum(cost.values()) / a.events
    print(f"  {'total':<{width}}  {total_us:7.1f} us")
    # A worker's Python (this logic) runs on one thread, so one core bounds it, before any Kafka or
    # Faust cost: the ceiling a benchmark of the whole worker can at best approach.
    print(f"one core at this cost: at most {1e6 / total_us:,.0f} events/s from the pure logic alone")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
