"""The online learners' scores per batch against one event at a time, in one process.

``python -m benchmarks.batched_scores --events 20000 --rounds 6`` replays simulator events through
the worker's ``Pipeline.apply`` (warm online models, the benchmark's checkpoints, batches of
1,000, records stored as bytes between batches) with the learners' scores computed together per
batch (``PartitionLearners.on_event(batch=True)`` then ``flush()``: what a worker does since
2026-12-03) and one event at a time (``batch=False``), alternating, and prints the process CPU
time per event of ``apply`` and of storing the records. Both ways give the same bits
(``tests/unit/test_pipeline.py``); only the cost differs. Running both in one process, in
alternation, keeps a shared machine's drift out of the comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=6, help="replays of each way, alternating")
    a = p.parse_args(argv)

    from benchmarks.harness.load import make_events
    from benchmarks.harness.warm import warm_online_models
    from models.online.learner import PartitionLearners
    from stream.agents.records import partition_for
    from stream.agents.runtime import pipeline_config
    from stream.agents.upkeep import freeze_heap
    from stream.logic.ingest import Pseudonymizer, ingest_one
    from stream.logic.pipeline import Pipeline, UserRecord, records_to_bytes
    from stream.logic.scoring import RuleScorer
    from stream.settings import load_settings

    s = load_settings()
    pseudonymize = Pseudonymizer(b"batched-scores-key-0123456789")
    now_ms = time.time_ns() // 1_000_000
    evs = [ingest_one(value, pseudonymize, now_ms=now_ms) for _k, value, _e in make_events(a.events, a.users, 1).records]
    items = [(partition_for(ev.user, s.events_partitions), ev) for ev in evs]
    checkpoints, _meta = warm_online_models(s, s.events_partitions, 8)

    class OneAtATime(PartitionLearners):
        def on_event(self, *args, batch=False, **kw):  # type: ignore[no-untyped-def]
            return super().on_event(*args, **kw)

    def replay(cls: type[PartitionLearners]) -> tuple[float, float]:
        pipe = Pipeline(pipeline_config(s), RuleScorer(s.churn_after_ms), learners=lambda part: cls.from_bytes(checkpoints[part]))
        table: dict[str, bytes] = {}
        apply_s = store_s = 0.0
        for i in range(0, len(items), a.batch):
            batch = items[i : i + a.batch]
            records = {u: UserRecord.from_bytes(table[u]) if u in table else None for u in {ev.user for _p, ev in batch}}
            t0 = time.process_time()
            result = pipe.apply(records, batch, windows=True)
            t1 = time.process_time()
            pipe.decide(result, records, None)  # type: ignore[arg-type]
            t2 = time.process_time()
            table.update(records_to_bytes(result.records))
            apply_s += t1 - t0
            store_s += time.process_time() - t2
        return 1e6 * apply_s / len(items), 1e6 * store_s / len(items)

    freeze_heap()
    ways = {"per batch": PartitionLearners, "one at a time": OneAtATime}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for r in range(a.rounds):
        for name in ways if r % 2 == 0 else reversed(list(ways)):
            runs[name].append(replay(ways[name]))
    print(f"{a.events:,} events, {a.users:,} users, batches of {a.batch:,}; process CPU per event, {a.rounds} rounds:")
    for name, got in runs.items():
        applies, stores = [x for x, _ in got], [y for _, y in got]
        print(f"  {name:<14} apply {' / '.join(f'{x:.1f}' for x in applies)} us (median {statistics.median(applies):.1f});"
              f" store median {statistics.median(stores):.1f} us")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
