"""Baseline consumers that the full pipeline's throughput is compared with (issue 8).

Each baseline reads the same preloaded backlog of simulated events as the pipeline and writes one
record per event to a sink topic; ``benchmarks.harness`` runs it as a child process and reads the
JSON it writes to ``--result`` once ``--count`` events have been handled:

* ``raw``: aiokafka only. ``getmany`` -> ``json.loads`` of each value -> ``producer.send`` of the
  value to the sink (not awaited per record; one ``flush`` at the end). The most a Python process
  on this machine can do with the same bytes: the ceiling of any Python pipeline.
* ``faust``: a plain Faust 0.15 app with one agent reading the events topic and ``send_soon``-ing
  each value to the sink, with Faust's default producer and consumer settings (only the group
  join timings are shortened, as in ``stream.app``, so that start-up is quick). What a
  straightforward Faust agent does without any of our batching: the pipeline should beat it.

Both record wall-clock times (``time.time()``, the harness runs on the same machine) when the
first event arrives, when 10% and 90% of ``count`` have been handled, and when all have been
handled and the sink flushed, and the process's CPU time (all threads) at the first and the last.
Start-up (group join, fetching metadata) is not in these figures.

Run by hand: ``python -m benchmarks.baselines raw --bootstrap 127.0.0.1:9092 --source shop.events
--sink bench.sink --count 50000 --result /tmp/raw.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from pathlib import Path


class Milestones:
    """Wall times at which 1, 10%, 90% and 100% of ``count`` events were handled."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.marks = {1: "first", max(1, count // 10): "p10", max(1, (count * 9) // 10): "p90"}
        self.times: dict[str, float] = {}
        self.n = 0

    def add(self, k: int = 1) -> bool:
        """Count ``k`` more handled events; True once ``count`` is reached."""
        before, self.n = self.n, self.n + k
        now = time.time()
        for mark, name in self.marks.items():
            if before < mark <= self.n and name not in self.times:
                self.times[name] = now
                if name == "first":
                    self.times["cpu_first"] = time.process_time()
        return self.n >= self.count

    def write(self, path: Path, **extra: object) -> None:
        self.times["done"] = time.time()
        self.times["cpu_done"] = time.process_time()
        self.times["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"count": self.n, **self.times, **extra}))
        tmp.replace(path)  # the harness polls for the file: make it appear complete


async def run_raw(bootstrap: str, source: str, sink: str, count: int, result: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=262_144)
    await consumer.start()
    await producer.start()
    marks = Milestones(count)
    try:
        done = False
        while not done:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for msgs in batches.values():
                for msg in msgs:
                    json.loads(msg.value)
                    await producer.send(sink, key=msg.key, value=msg.value)
                if marks.add(len(msgs)):
                    done = True
        await producer.flush()
        marks.write(result)
    finally:
        await producer.stop()
        await consumer.stop()


def run_faust(bootstrap: str, source: str, sink: str, count: int, result: Path, partitions: int,
              app_id: str | None = None) -> None:  # fmt: skip
    import faust

    app = faust.App(
        app_id or f"bench-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(result.parent / "faust-data"),  # in the harness's work directory, not the cwd
        web_enabled=False,
        topic_partitions=partitions,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
    )
    src = app.topic(source, key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_serializer="raw", value_serializer="raw")
    marks = Milestones(count)

    @app.agent(src)
    async def passthrough(stream: faust.StreamT) -> None:
        async for value in stream:
            dst.send_soon(value=value)
            if marks.add():
                await app.producer.flush()
                marks.write(result)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()  # runs until the harness sends SIGTERM


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["raw", "faust"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--sink", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--app-id", help="the Faust app id (default: a fresh random one)")
    a = p.parse_args(argv)
    if a.kind == "raw":
        asyncio.run(run_raw(a.bootstrap, a.source, a.sink, a.count, a.result))
    else:
        run_faust(a.bootstrap, a.source, a.sink, a.count, a.result, a.partitions, a.app_id)


if __name__ == "__main__":
    main()
