"""The measurements: :class:`Bench` runs one backlog, baseline, latency or restart measurement
at a time on a broker, each on topics of its own."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.config import POLL_S, BenchConfig
from benchmarks.harness.load import Events, make_events, produce, send_paced
from benchmarks.harness.stats import (
    _batch_shape,
    _cores,
    _scrape,
    cpu_seconds,
    crossing,
    parse_metrics,
    percentile,
)
from benchmarks.harness.warm import seed_online_models
from benchmarks.harness.workers import Child, _wait_ready, drop_topics
from stream.broker import client_config, create_plain_topics, create_topics, free_port
from stream.settings import Settings, env_var


def _measurement(method: Callable[..., dict]) -> Callable[..., dict]:
    """A :class:`Bench` measurement: when it is done, its topics are deleted, so that the next
    measurement starts on a broker that holds none of its records."""

    @functools.wraps(method)
    def measure(self: Bench, *args: object, **kwargs: object) -> dict:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.drop_topics()

    return measure


@dataclass
class Bench:
    """One benchmark run: a broker, a work directory and a counter for fresh topic names."""

    settings: Settings
    bootstrap: str
    workdir: Path
    config: BenchConfig
    model_dir: Path | None = None  # registry with a current sequence model, shared by the workers
    online_models: dict[int, bytes] | None = None  # warm online-model checkpoints per partition
    broker_pid: int | None = None  # the local broker process, whose CPU the results report
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _n: int = 0
    _apps: list[str] = field(default_factory=list)  # app ids whose topics are still on the broker

    def fresh(self, name: str, **overrides: object) -> Settings:
        """Settings with an app id and topics nobody else uses (for one measurement)."""
        self._n += 1
        p = f"bench-{self.run_id}-{name}{self._n}"
        self._apps.append(p)
        return self.settings.model_copy(
            update={
                "app_id": p, "events_topic": f"{p}.events", "dlq_topic": f"{p}.dlq",
                "intent_topic": f"{p}.intent", "churn_topic": f"{p}.churn", "latent_topic": f"{p}.latent",
                "events_partitions": self.config.partitions, "signal_partitions": self.config.partitions,
                "data_dir": self.workdir / p, "kafka_bootstrap_servers": self.bootstrap,
                "log_level": "WARNING", "model_dir": self.model_dir, **overrides,
            }
        )  # fmt: skip

    def drop_topics(self) -> None:
        """Delete the topics of the measurements made since the last call (see :func:`_measurement`)."""
        apps, self._apps = self._apps, []
        if apps:
            asyncio.run(drop_topics(self.settings, self.bootstrap, apps))

    def broker_cpu(self) -> float | None:
        """The local broker's CPU time so far (None with an external broker)."""
        return cpu_seconds(self.broker_pid) if self.broker_pid else None

    def worker(self, s: Settings, web_port: int) -> Child:
        env = dict(os.environ)
        fields = ("app_id", "events_topic", "dlq_topic", "intent_topic", "churn_topic", "latent_topic",
                  "events_partitions", "signal_partitions", "data_dir", "kafka_bootstrap_servers", "log_level", "store",
                  "processing_guarantee")  # fmt: skip
        env.update({env_var(f): str(getattr(s, f)) for f in fields})
        if s.model_dir is not None:
            env[env_var("model_dir")] = str(s.model_dir)
        # One key for all workers of a measurement (each has its own data dir, where a worker
        # without a key would make its own): a user must have one pseudonym whoever ingests it.
        key = s.pseudonym_key.get_secret_value() if s.pseudonym_key else f"bench-{self.run_id}-pseudonym-key"
        env[env_var("pseudonym_key")] = key
        env[env_var("web_port")] = str(web_port)
        return Child([sys.executable, "-m", "stream.cli", "worker"], env, s.data_dir / "worker.log")

    def prepare_topics(self, s: Settings) -> None:
        """A pipeline worker's topics, with its online models' changelog seeded (if warm)."""
        asyncio.run(create_topics(s, self.bootstrap))
        if self.online_models:
            asyncio.run(seed_online_models(s, self.bootstrap, self.online_models))

    # --------------------------------------------------------------------------- pipeline throughput
    @_measurement
    def pipeline_throughput(self, events: Events, workers: int = 1, **overrides: object) -> dict:
        """The backlog through ``workers`` workers of one application (one by default); their
        handled events, batches and CPU are summed (the scaling scenario runs several).
        ``overrides``: settings of these workers (the guarantees scenario's processing guarantee)."""
        s = self.fresh("pipe", **overrides)
        self.prepare_topics(s)
        produce_rate = asyncio.run(produce(s, self.bootstrap, s.events_topic, events))
        ports = [free_port() for _ in range(workers)]
        n = len(events)
        timeline: list[tuple[float, float]] = []
        t_ready = t_first_batch = t_cpu_done = None
        cpu_first = cpu_done = broker_first = broker_done = None
        deadline = time.time() + 60 + n / 200
        with contextlib.ExitStack() as stack:
            ws = [stack.enter_context(self.worker(s.model_copy(update={"data_dir": s.data_dir / f"w{i}"}) if workers > 1 else s, port))
                  for i, port in enumerate(ports)]  # fmt: skip

            def cpu() -> float:
                return sum(w.cpu_seconds() or 0.0 for w in ws)

            def alive() -> bool:
                return all(w.alive() for w in ws)

            def scrape() -> tuple[dict, bool]:
                """The workers' summed metrics, and whether every worker answered."""
                found = [_scrape(port, "/metrics") for port in ports]
                per = [parse_metrics(text) for status, text in found if status == 200]
                total = {k: sum(m.get(k) or 0.0 for m in per) for k in dict.fromkeys(k for m in per for k in m)}
                return total, len(per) == len(found)

            while time.time() < deadline and alive():
                time.sleep(POLL_S)
                now = time.time()
                if t_ready is None and all(_scrape(port, "/readyz")[0] == 200 for port in ports):
                    t_ready = now
                m, everyone = scrape()
                # The first batch of any worker starts the clock, even while a later one is still
                # starting: the others may work through much of the backlog meanwhile.
                if t_first_batch is None and m.get("batches", 0.0) > 0:
                    t_first_batch, cpu_first, broker_first = now, cpu(), self.broker_cpu()
                if not everyone:
                    continue
                timeline.append((now, m["handled"]))
                if m["handled"] >= n:
                    t_cpu_done, cpu_done, broker_done = now, cpu(), self.broker_cpu()
                    break
            rss = sum(w.rss_bytes() or 0 for w in ws)
            last = scrape()[0]
            signals = last.get("signals")
            warm_by = time.time() + 12.0  # the online-model gauges are refreshed every 5 s
            while self.online_models and not last.get("online_models_learned") and time.time() < warm_by and alive():
                time.sleep(0.5)
                last = scrape()[0]
            log_tail = "" if timeline and timeline[-1][1] >= n else "\n".join(w.tail() for w in ws)
            started = min(w.started for w in ws)
        handled = timeline[-1][1] if timeline else 0.0
        t10, t90 = crossing(timeline, 0.1 * n), crossing(timeline, 0.9 * n)
        t_first_event = crossing(timeline, 1)
        t_done = crossing(timeline, n)
        out = {
            "events": n,
            "handled": handled,
            "complete": handled >= n,
            "redelivered": last.get("redelivered", 0.0),
            "refetched_records": last.get("refetched", 0.0),
            # None when the whole backlog went through between two scrapes (POLL_S): too fast to time.
            "events_per_s": n / (t_done - t_first_batch) if t_done and t_first_batch and t_done > t_first_batch else None,
            "steady_events_per_s": 0.8 * n / (t90 - t10) if t10 and t90 and t90 > t10 else None,
            "cpu_us_per_event": 1e6 * (cpu_done - cpu_first) / n if cpu_done is not None and cpu_first is not None else None,
            "broker_cores": _cores(broker_first, broker_done, t_first_batch, t_cpu_done),
            "startup_s": t_ready - started if t_ready else None,
            "stall_s": t_first_event - t_first_batch if t_first_event and t_first_batch else None,
            "worker_rss_mb": rss / 2**20 if rss else None,
            "workers": workers,
            "users": events.users,
            "signals": signals,
            "online_models_warm": bool(last.get("online_models_learned")),
            "routed_local": last.get("routed_local", 0.0),
            "routed_forwarded": last.get("routed_forwarded", 0.0),
            "preload_events_per_s": produce_rate,
        }
        if log_tail:
            out["worker_log_tail"] = log_tail
            out["dead_letters"] = last.get("dead_letters", 0.0)
        return out

    # --------------------------------------------------------------------------- baselines
    @_measurement
    def baseline(self, kind: str, events: Events) -> dict:
        s = self.fresh(kind)
        source, sink = s.events_topic, f"{s.app_id}.sink"
        asyncio.run(create_plain_topics(s, self.bootstrap, [source, sink], self.config.partitions))
        produce_rate = asyncio.run(produce(s, self.bootstrap, source, events))
        result = s.data_dir / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.baselines", kind, "--bootstrap", self.bootstrap,
               "--source", source, "--sink", sink, "--count", str(len(events)),
               "--partitions", str(self.config.partitions), "--result", str(result), "--app-id", f"{s.app_id}-faust"]  # fmt: skip
        deadline = time.time() + 60 + len(events) / 200
        with Child(cmd, dict(os.environ), s.data_dir / f"{kind}.log") as child:
            while time.time() < deadline and child.alive() and not result.exists():
                time.sleep(POLL_S)
            rss = child.rss_bytes()
            log_tail = "" if result.exists() else child.tail()
        if not result.exists():
            return {"events": len(events), "complete": False, "log_tail": log_tail}
        r = json.loads(result.read_text())
        n = r["count"]
        return {
            "events": n,
            "complete": n >= len(events),
            "events_per_s": n / (r["done"] - r["first"]) if r["done"] > r["first"] else None,
            "steady_events_per_s": 0.8 * n / (r["p90"] - r["p10"]) if r["p90"] > r["p10"] else None,
            "cpu_us_per_event": 1e6 * (r["cpu_done"] - r["cpu_first"]) / n,
            "max_rss_mb": r.get("max_rss_mb") or (rss / 2**20 if rss else None),
            "preload_events_per_s": produce_rate,
        }

    # --------------------------------------------------------------------------- latency
    @_measurement
    def latency(self, events: Events, rate: float) -> dict:
        s = self.fresh("lat")
        self.prepare_topics(s)
        port = free_port()
        warm = min(2_000, self.config.events // 4)
        measured = len(events) - warm
        with self.worker(s, port) as w:
            return asyncio.run(self._latency(s, w, port, events, warm, measured, rate))

    async def _latency(self, s: Settings, w: Child, port: int, events: Events, warm: int, measured: int,
                       rate: float) -> dict:  # fmt: skip
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        async def metrics() -> dict[str, float]:
            status, text = await asyncio.to_thread(_scrape, port, "/metrics")
            return parse_metrics(text) if status == 200 else {}

        async def handled() -> float:
            return (await metrics()).get("handled", 0.0)

        async def wait_handled(n: int, timeout: float) -> bool:
            end = time.time() + timeout
            while time.time() < end and w.alive():
                if await handled() >= n:
                    return True
                await asyncio.sleep(0.2)
            return False

        producer = AIOKafkaProducer(**client_config(s, self.bootstrap), linger_ms=5, max_batch_size=262_144)
        consumer = AIOKafkaConsumer(
            *s.signal_topics().values(), **client_config(s, self.bootstrap),
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        await producer.start()
        await consumer.start()
        sent_ms: dict[str, float] = {}
        lat_kafka: list[float] = []
        lat_recv: list[float] = []
        by_second: collections.defaultdict[int, list[float]] = collections.defaultdict(list)  # send second -> latencies
        t0_ms = 0.0
        online_models: collections.Counter[str] = collections.Counter()
        stop = asyncio.Event()

        async def read_signals() -> None:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now_ms = time.time() * 1000
                for msgs in batches.values():
                    for msg in msgs:
                        sig = json.loads(msg.value)
                        eid = sig.get("event_id")
                        # Which online model scored it: "river-..." (learned) or the rule/prior.
                        online = str((sig.get("model_versions") or {}).get("online", "?"))
                        online_models[online.split(":")[0]] += 1
                        t_sent = sent_ms.get(eid)
                        if t_sent is not None:
                            lat = msg.timestamp - t_sent
                            lat_kafka.append(lat)
                            by_second[int((t_sent - t0_ms) // 1000)].append(lat)
                            lat_recv.append(now_ms - t_sent)

        reader = asyncio.create_task(read_signals())
        try:
            # Warm-up: the worker is ready before its second agent runs; wait until it handles events.
            for key, value, _ in events.records[:warm]:
                await producer.send(s.events_topic, key=key, value=value)
            await producer.flush()
            warmed = await wait_handled(warm, 120)
            # Steady load: event i is due at t0 + i / rate; everything due is sent in one go.
            loop = asyncio.get_running_loop()
            cpu0, broker0, m0 = w.cpu_seconds(), self.broker_cpu(), await metrics()
            t0 = loop.time()
            t0_ms = time.time() * 1000

            def stamp(eid: str) -> None:
                sent_ms[eid] = time.time() * 1000

            await send_paced(producer, s.events_topic, events.records[warm : warm + measured], rate, stamp)
            await producer.flush()
            send_s = loop.time() - t0
            caught_up = await wait_handled(warm + measured, 30 + measured / max(rate, 1))
            cpu1, broker1, busy_s, m1 = w.cpu_seconds(), self.broker_cpu(), loop.time() - t0, await metrics()
            await asyncio.sleep(1.0)  # the last signals' linger and fetch
        finally:
            stop.set()
            await reader
            await consumer.stop()
            await producer.stop()
        return {
            "offered_events_per_s": rate,
            "achieved_events_per_s": measured / send_s if send_s > 0 else None,
            "events": measured,
            "warmup_events": warm,
            "signals_by_online_model": dict(online_models),
            "warmed_up": warmed,
            "caught_up": caught_up,
            "signals_matched": len(lat_kafka),
            # The worker's CPU while it took the load (until it had handled every event): per event,
            # and in cores (1.0 = one core busy all the time).
            "worker_cpu_us_per_event": 1e6 * (cpu1 - cpu0) / measured if cpu0 is not None and cpu1 is not None else None,
            "worker_cores": _cores(cpu0, cpu1, 0.0, busy_s),
            "broker_cores": _cores(broker0, broker1, 0.0, busy_s),
            "batches": _batch_shape(m0, m1, busy_s),
            "latency_ms": {f"p{q}": percentile(lat_kafka, q) for q in (50, 95, 99)} | {"max": max(lat_kafka, default=None)},
            "receive_latency_ms": {f"p{q}": percentile(lat_recv, q) for q in (50, 95, 99)},
            # Per second of the steady load (by send time): whether the latency grows (the worker
            # falls behind) or spikes (a stall).
            "latency_ms_by_second": [
                {"second": sec, "signals": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                for sec, v in sorted(by_second.items())
            ],
        }

    # --------------------------------------------------------------------------- restart
    @_measurement
    def restart(self, users: int) -> dict:
        s = self.fresh("restart", store="rocksdb://")
        asyncio.run(create_topics(s, self.bootstrap))
        events = make_events(users, min(users, 10_000), self.config.seed + 1, distinct_users=True)
        asyncio.run(produce(s, self.bootstrap, s.events_topic, events))
        port = free_port()
        out: dict[str, object] = {"users": events.users, "store": "rocksdb://"}
        with self.worker(s, port) as w:
            out["cold_ready_s"] = _wait_ready(w, port, 120)
            deadline = time.time() + 60 + users / 200
            handled = 0.0
            while time.time() < deadline and w.alive() and handled < users:
                time.sleep(0.5)
                handled = parse_metrics(_scrape(port, "/metrics")[1])["handled"]
            out["loaded"] = handled
            time.sleep(2.0)  # a commit interval: the offsets and the last table writes are flushed
            t_stop = time.time()
        out["stop_s"] = time.time() - t_stop
        # One more event of a known user after the restart: the first batch of a restarted worker
        # also pays for whatever it rebuilds lazily (the churn-scan index), which /readyz does not show.
        key, value, _ = events.records[-1]
        probe = json.loads(value) | {"event_id": f"restart-probe-{self.run_id}", "ts": time.time_ns() // 1_000_000 - 1_000}
        with self.worker(s, port) as w:
            out["restart_ready_s"] = _wait_ready(w, port, 300)
            out["restart_rss_mb"] = (w.rss_bytes() or 0) / 2**20
            t_probe = time.time()
            asyncio.run(produce(s, self.bootstrap, s.events_topic, Events([(key, json.dumps(probe).encode(), "")], 1)))
            while time.time() < t_probe + 120 and w.alive():
                if parse_metrics(_scrape(port, "/metrics")[1])["handled"] >= 1:
                    out["first_event_after_restart_s"] = time.time() - t_probe
                    break
                time.sleep(POLL_S)
        return out
