"""Profile one full-pipeline worker while it works through a preloaded backlog (py-spy).

``python -m benchmarks.profile_worker --events 60000 --seconds 30 --out /tmp/prof`` starts the
local Kafka broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), preloads simulated events, starts a worker
(``intentstream worker``), waits until it has handled its first events (so start-up is not in the
profile; ``--include-stall`` starts at the first batch of either agent instead), then samples it with ``py-spy record`` for ``--seconds``. It writes:

* ``OUT/worker.speedscope.json``: open in https://www.speedscope.app (or any speedscope viewer);
* ``OUT/worker.collapsed.txt``: the raw collapsed stacks;
* the top functions by *self* and by *inclusive* share of the samples, printed as a table.

Idle samples (the event loop waiting in ``select``) are kept (``--idle``): a worker that is mostly
idle while a backlog waits is limited by batching and buffering, not by CPU. Sampling is
non-blocking so that the profiler does not slow the worker down much; run it on a quiet machine.

``--offered N`` profiles the worker under a steady load instead of a backlog: a 2,000-event
warm-up is preloaded, and while py-spy samples, the rest of ``--events`` is produced at N
events/s (what ``intentstream bench`` offers for its latency figure).
Needs ``py-spy`` (``pip install py-spy``; a dev tool, not a dependency of the package).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.harness.bench import Bench
from benchmarks.harness.config import BenchConfig
from benchmarks.harness.load import Events, make_events, produce, send_paced
from benchmarks.harness.stats import _scrape, parse_metrics
from benchmarks.harness.warm import publish_sequence_model, warm_online_models
from stream.broker import client_config, free_port, kafka_for
from stream.settings import load_settings


def summarize(collapsed: str, top: int = 25) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, top self %, top inclusive %) from py-spy's collapsed stacks ("f1;f2;f3 count").

    >>> n, own, incl = summarize("main (a.py:1);run (b.py:2) 3\\nmain (a.py:1) 1\\n")
    >>> n, own[0], incl[0]
    (4, ('run (b.py:2)', 75.0), ('main (a.py:1)', 100.0))
    """
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    pct = 100.0 / total if total else 0.0
    return (
        total,
        [(f, c * pct) for f, c in own.most_common(top)],
        [(f, c * pct) for f, c in incl.most_common(top)],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("out/profile"))
    p.add_argument("--no-sequence", action="store_true", help="no sequence model in the worker")
    p.add_argument("--offered", type=float, default=None, help="produce at this many events/s while sampling")
    p.add_argument("--include-stall", action="store_true",
                   help="start sampling at the first batch of either agent, not at the first event handled")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (Python CPU; a thread waiting for the GIL "
                        "otherwise shows as busy in whatever call released it)")
    a = p.parse_args(argv)
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    a.out.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    workdir = Path(tempfile.mkdtemp(prefix="intentstream-profile-"))
    try:
        with kafka_for(settings.model_copy(update={"data_dir": workdir})) as bootstrap:
            model_dir = None
            if not a.no_sequence:
                model_dir = workdir / "models"
                publish_sequence_model(model_dir)
            online = warm_online_models(settings, a.partitions, 7)[0] if settings.online_learning else None
            bench = Bench(settings, bootstrap, workdir, BenchConfig(events=a.events, partitions=a.partitions), model_dir, online)
            s = bench.fresh("prof")
            bench.prepare_topics(s)  # with the warm online models, as in the benchmark
            events = make_events(a.events, a.users, 0)
            warm = min(2_000, len(events) // 10) if a.offered else len(events)
            asyncio.run(produce(s, bootstrap, s.events_topic, Events(events.records[:warm], events.users)))
            port = free_port()
            with bench.worker(s, port) as w:
                deadline = time.time() + 120
                start_on = "batches" if a.include_stall else "handled"
                while time.time() < deadline and parse_metrics(_scrape(port, "/metrics")[1])[start_on] < 1:
                    time.sleep(0.2)
                before = parse_metrics(_scrape(port, "/metrics")[1])["handled"]
                load = None
                if a.offered:
                    rest = Events(events.records[warm:], events.users)
                    load = threading.Thread(target=asyncio.run, args=(_paced(s, bootstrap, rest, a.offered),), daemon=True)
                    load.start()
                t0 = time.time()
                subprocess.run(
                    [pyspy, "record", "--pid", str(w.proc.pid), "--duration", str(int(a.seconds)),  # type: ignore[union-attr]
                     "--rate", str(a.rate), "--gil" if a.gil else "--idle", "--nonblocking", "--format", "raw",
                     "--output", str(a.out / "worker.collapsed.txt")],
                    check=True, capture_output=True,
                )  # fmt: skip
                after = parse_metrics(_scrape(port, "/metrics")[1])["handled"]
                rate = (after - before) / (time.time() - t0)
                if load is not None:
                    load.join()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    collapsed = (a.out / "worker.collapsed.txt").read_text()
    _to_speedscope(collapsed, a.out / "worker.speedscope.json")
    total, own, incl = summarize(collapsed)
    print(f"{total} samples over {a.seconds:.0f} s; worker handled {rate:,.0f} events/s while sampled")
    print("\ntop by self time (% of samples)")
    for f, pct in own:
        print(f"  {pct:5.1f}  {f}")
    print("\ntop inclusive (% of samples)")
    for f, pct in incl:
        print(f"  {pct:5.1f}  {f}")
    return 0


async def _paced(settings, bootstrap: str, events: Events, rate: float) -> None:
    """Produce ``events`` at ``rate`` events/s (:func:`benchmarks.harness.load.send_paced`)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        await send_paced(producer, settings.events_topic, events.records, rate)
        await producer.flush()
    finally:
        await producer.stop()


def _to_speedscope(collapsed: str, path: Path) -> None:
    """Write collapsed stacks as a speedscope "sampled" profile (one recording, two formats)."""
    import json

    frames: dict[str, int] = {}
    samples, weights = [], []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples.append([frames.setdefault(f, len(frames)) for f in stack.split(";")])
        weights.append(int(count))
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": f} for f in frames]},
        "profiles": [{"type": "sampled", "name": "intentstream worker", "unit": "none", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],  # fmt: skip
    }
    path.write_text(json.dumps(doc))


if __name__ == "__main__":
    sys.exit(main())
