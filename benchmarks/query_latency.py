"""Query API latency: ``GET /v1/users/{id}`` answered by the owning worker while it processes a
steady stream of events, against the same lookups on the same worker once the stream has stopped.

A local Kafka broker and one worker (RocksDB store, the API token on, so the lookup pays for the
check) start in a temporary directory. Simulated events are sent at ``--rate`` events/s; after
``--warmup`` seconds, a client thread looks users whose events were sent up, ``--qps`` times a
second, over one kept-alive HTTP connection, for ``--seconds``; then the stream stops, the worker
catches up, and the same number of lookups runs on the idle worker (the baseline).

    python -m benchmarks.query_latency                          # 1,000 events/s, 50 lookups/s, 30 s
    python -m benchmarks.query_latency --rate 1000 --seconds 60 --json out/query.json

Prints JSON: lookup latency p50/p90/p99/max in ms (as the client sees it, over loopback) under
load and idle, their ratio, the events/s the worker processed while it answered, how many
lookups were not 200, and the worker's own view of a lookup's cost without the wait for the event
loop (``intentstream_api_lookup_seconds``: its mean, and the bucket bound holding its p99). The
lookups and the batches share the event loop, so a lookup that arrives during a batch waits for
it to end.

The worker serves a sequence model of the default configuration with untrained weights (its
scoring costs what a trained one's does), so each lookup also reads the GRU heads.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from benchmarks import print_json
from benchmarks.harness.load import make_events, send_paced
from benchmarks.harness.stats import _scrape, percentile
from benchmarks.harness.workers import Child, _wait_ready
from stream.broker import client_config, create_topics, free_port
from stream.settings import Settings

KEY = "query-latency-bench-key-0123456789"
TOKEN = "query-latency-bench-token-0123456789"


def _metric(port: int, name: str) -> float:
    _status, text = _scrape(port, "/metrics", timeout=5)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _bucket_p99(port: int, name: str) -> float | None:
    """The upper bound (ms) of the histogram bucket that holds the 99th percentile."""
    _status, text = _scrape(port, "/metrics", timeout=5)
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= 0.99 * total:
            return le * 1000
    return None


class Prober:
    """Looks users up at ``qps`` over one kept-alive connection, from a thread of its own (so the
    producer's event loop in this process does not delay the client)."""

    def __init__(self, port: int, qps: float) -> None:
        self.port, self.qps = port, qps
        self.users: list[str] = []  # raw ids with state, filled as their events are sent
        self.samples: list[float] = []  # ms, 200 answers only
        self.other: dict[int, int] = {}
        self._stop = threading.Event()

    def run(self, seconds: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        rng = random.Random(0)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        t0 = time.perf_counter()
        i = 0
        while not self._stop.is_set() and time.perf_counter() - t0 < seconds:
            due = t0 + i / self.qps
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            i += 1
            if not self.users:
                continue
            user = urllib.parse.quote(rng.choice(self.users), safe="")
            start = time.perf_counter()
            conn.request("GET", f"/v1/users/{user}", headers=headers)
            resp = conn.getresponse()
            resp.read()
            took = (time.perf_counter() - start) * 1000
            if resp.status == 200:
                self.samples.append(took)
            else:
                self.other[resp.status] = self.other.get(resp.status, 0) + 1
        conn.close()


def _summary(samples: list[float]) -> dict:
    return {
        "lookups": len(samples),
        **{f"p{q}_ms": round(percentile(samples, q), 2) if samples else None for q in (50, 90, 99)},
        "max_ms": round(max(samples), 2) if samples else None,
    }


async def _load(settings: Settings, bootstrap: str, records, rate: float, prober: Prober, lag_s: float) -> float:
    """Send ``records`` at ``rate``; a user becomes lookup-able ``lag_s`` after their first event
    was sent (time for the worker to have processed it)."""
    from collections import deque

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5)
    await producer.start()
    loop = asyncio.get_running_loop()
    keys = {eid: key.decode() for key, _value, eid in records}
    seen: set[str] = set()
    pending: deque[tuple[float, str]] = deque()

    def on_send(eid: str) -> None:
        now, user = loop.time(), keys[eid]
        if user not in seen:
            seen.add(user)
            pending.append((now + lag_s, user))
        while pending and pending[0][0] <= now:
            prober.users.append(pending.popleft()[1])  # list.append: safe from this thread

    try:
        took = await send_paced(producer, settings.events_topic, records, rate, on_send=on_send)
        await producer.flush()
        prober.users.extend(u for _t, u in pending)
        return took
    finally:
        await producer.stop()


def publish_model(registry_root: Path) -> str:
    """An untrained sequence model of the default configuration, promoted in a registry."""
    import torch

    from models.registry import Registry
    from models.sequence import checkpoint
    from models.sequence.checkpoint import CHECKPOINT_NAME
    from models.sequence.config import SeqConfig
    from models.sequence.model import SequenceModel

    torch.manual_seed(0)
    cfg = SeqConfig()
    art = registry_root.parent / "artifact"
    art.mkdir(parents=True, exist_ok=True)
    checkpoint.save(art / CHECKPOINT_NAME, SequenceModel(cfg), cfg, vocab={1 + i: f"c{i:02d}" for i in range(20)})
    reg = Registry(registry_root)
    version = reg.save(art, {"metrics": {"val_score": 0.5}})
    reg.promote(version)
    return version


def run(rate: float, qps: float, seconds: float, warmup: float, users: int) -> dict:
    from stream.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        settings = Settings(app_id="qbench", events_topic="qbench.shop.events", dlq_topic="qbench.shop.events.dlq",
                            intent_topic="qbench.signals.intent", churn_topic="qbench.signals.churn",
                            latent_topic="qbench.signals.latent", pseudonym_key=KEY, data_dir=data / "w")  # fmt: skip
        with EmbeddedBroker.for_settings(settings, data / "broker") as broker:
            bootstrap = broker.bootstrap
            asyncio.run(create_topics(settings, bootstrap))
            publish_model(settings.registry_dir / "sequence")
            port = free_port()
            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "INTENTSTREAM_APP_ID": "qbench",
                   "INTENTSTREAM_EVENTS_TOPIC": settings.events_topic, "INTENTSTREAM_DLQ_TOPIC": settings.dlq_topic,
                   "INTENTSTREAM_INTENT_TOPIC": settings.intent_topic, "INTENTSTREAM_CHURN_TOPIC": settings.churn_topic,
                   "INTENTSTREAM_LATENT_TOPIC": settings.latent_topic, "INTENTSTREAM_PSEUDONYM_KEY": KEY,
                   "INTENTSTREAM_API_TOKEN": TOKEN, "INTENTSTREAM_DATA_DIR": str(data / "w"),
                   "INTENTSTREAM_WEB_PORT": str(port), "INTENTSTREAM_LOG_LEVEL": "WARNING"}  # fmt: skip
            with Child([sys.executable, "-m", "stream.cli", "worker"], env, data / "worker.log") as worker:
                if _wait_ready(worker, port, 120) is None:
                    raise RuntimeError(f"worker not ready:\n{worker.tail()}")
                events = make_events(int(rate * (warmup + seconds + 5)), users, seed=7)
                prober = Prober(port, qps)
                loaded = threading.Thread(target=lambda: asyncio.run(
                    _load(settings, bootstrap, events.records, rate, prober, lag_s=2.0)), daemon=True)  # fmt: skip
                loaded.start()
                time.sleep(warmup)
                consumed0, t0 = _metric(port, "intentstream_events_consumed_total"), time.perf_counter()
                prober.run(seconds)
                processed = (_metric(port, "intentstream_events_consumed_total") - consumed0) / (time.perf_counter() - t0)
                under_load, other_load = prober.samples, dict(prober.other)
                loaded.join(timeout=warmup + seconds + 60)
                time.sleep(3)  # the worker catches up with the last events
                idle = Prober(port, qps)
                idle.users = list(prober.users)
                idle.run(len(under_load) / qps + 1)
                text = _scrape(port, "/metrics", timeout=5)[1]
                served = [ln.split('version="', 1)[1].split('"', 1)[0] for ln in text.splitlines()
                          if ln.startswith("intentstream_sequence_model_info{")]  # fmt: skip
                server_p99 = _bucket_p99(port, "intentstream_api_lookup_seconds")
                batch_p99 = _bucket_p99(port, "intentstream_processing_seconds")
                server_n = _metric(port, "intentstream_api_lookup_seconds_count")
                server_s = _metric(port, "intentstream_api_lookup_seconds_sum")
    load, base = _summary(under_load), _summary(idle.samples[: len(under_load)])
    return {
        "rate": rate, "qps": qps, "seconds": seconds, "users": users, "sequence_model": served[0] if served else None,
        "events_per_s_processed": round(processed, 1),
        "under_load": load, "idle": base,
        "p99_ratio": round(load["p99_ms"] / base["p99_ms"], 2) if load["p99_ms"] and base["p99_ms"] else None,
        "not_200": {**other_load, **{f"idle_{k}": v for k, v in idle.other.items()}},
        "worker_mean_ms": round(1000 * server_s / server_n, 3) if server_n else None,
        "worker_p99_at_most_ms": server_p99,
        "batch_p99_at_most_ms": batch_p99,  # a batch holds the event loop: what a lookup may wait for
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="events per second sent to the worker")
    ap.add_argument("--qps", type=float, default=50.0, help="lookups per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long lookups run under load")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of events before the first lookup")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    print_json(run(a.rate, a.qps, a.seconds, a.warmup, a.users), a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
