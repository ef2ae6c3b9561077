"""``intentstream bench``: throughput, latency, memory and restart figures of the stream worker.

Everything is measured against a real Kafka (a local broker, or ``KAFKA_BOOTSTRAP_SERVERS``)
with the simulator's event mix, and every figure comes with the baselines it is compared with,
measured in the same run on the same events (a shared 2-core machine is too noisy for figures
taken on different days to be compared). Each measurement gets topics and a consumer group of its
own (``bench-<run>-<name>...``), so repeats never see each other's records, and its topics are
deleted when it is done, so that it leaves the broker as it found it. With the local broker,
``broker_cores`` is the broker's CPU over a throughput or latency measurement (1.0 = one core busy
all the time; None with another broker).

Scenarios (``intentstream bench [pipeline|baselines|state|all|scaling|guarantees]``):

``pipeline``
    **Sustained throughput.** ``--events`` simulated events are preloaded into a fresh events
    topic, then one worker (``intentstream worker`` as a child process, in its own process group)
    is started on it. ``/metrics`` is polled every 0.1 s; "handled" is the sum of
    ``intentstream_events_consumed_total`` over the real event types plus late events: events
    that went through the whole pipeline (ingest, repartition, process). Events delivered again
    after a rebalance (dropped as duplicates) are reported apart, as ``redelivered``.

    * ``events_per_s`` (the headline): the backlog divided by the time from the first processed
      batch of either agent to the last event handled. Start-up (process start, group join,
      recovery) is left out; the wait before the second agent gets its first events is not.
    * ``steady_events_per_s``: the rate between 10% and 90% of the backlog handled, which leaves
      that wait and the tail out too (for the two-agent worker it is mostly the second agent's
      rate, once the first one has worked through the backlog).
    * ``cpu_us_per_event``: the worker's CPU time (all threads, psutil) over the same window as
      ``events_per_s``, per event. Less sensitive to a busy neighbour than the rates.
    * ``startup_s``: process start to ``/readyz`` 200; ``stall_s``: first batch to first event handled.

    Every pipeline worker starts with **warm online models**: checkpoints learned once per run on
    simulator history (:func:`warm_online_models`, described in ``meta.online_models``) are written
    to its models changelog before it starts, and it recovers them as a restarted worker would. A
    cold worker serves a prior, which costs far less per event than a warm model, so a benchmark
    of cold workers would flatter the pipeline. ``online_models_warm`` says whether the worker
    published learned-model metrics; the latency run counts its signals by online model
    (``signals_by_online_model``: ``river-linear`` learned, ``rule-v1`` the rules).

    **Event-to-signal latency** at an offered load of ``--rate`` events/s (default: half the median
    ``events_per_s`` measured in the same run). A fresh worker is warmed up with a quarter of
    ``--events`` (at most 2,000; until they are all handled), then events are produced at a
    steady rate for ``latency_seconds`` (at most ``--events`` of them) while a consumer reads the
    signal topics. Each event's send time is recorded (wall clock, just before ``producer.send``;
    the producer lingers up to 5 ms, as a real client would) and matched to the signals by
    ``event_id``. ``latency_ms`` uses the signal's Kafka timestamp (create time, set by the
    worker's producer when the signal is sent); ``receive_latency_ms`` uses the time our consumer
    received it (adds the signal producer's linger and the fetch).

    **Memory.** The worker's resident set size (psutil) after the throughput backlog.

``baselines``
    The same backlog through (a) a raw aiokafka consume -> ``json.loads`` -> produce loop and
    (b) a plain Faust pass-through agent (see :mod:`benchmarks.baselines`), measured the same way
    (first event to last, 10% to 90%, CPU per event). With ``pipeline`` in the same run, ``ratios``
    gives pipeline / baseline for each (for CPU per event, above 1 means the pipeline costs more).

``state``
    ``benchmarks.state_bench.run(users, seed)``: bytes per user of the stored state and
    read-modify-write updates per second, and bytes per user of the whole table record (state,
    signal-policy memory and the online models' pending labels; ``record_*``, on up to 10,000
    users) (skipped if that module is absent).

``scaling`` (not part of ``all``: minutes)
    The pipeline's backlog through k workers of one application on k partitions, k = 1, 2, 4
    (``--scaling``), all on this machine: the workers' handled events and CPU are summed, the
    rate is taken as for ``pipeline``.

``guarantees`` (not part of ``all``)
    The pipeline's backlog through one worker with ``at_least_once`` and with ``exactly_once``
    (Kafka transactions, stream/agents/outputs.py), interleaved ``--repeats`` times: medians of
    each and their ratio.

``--restart`` (with ``all`` or ``pipeline``, slow)
    A worker on a ``rocksdb://`` store fills its table with ``--restart-users`` users (one event
    each), is stopped with SIGTERM and started again on the same data directory:
    ``restart_ready_s`` is process start to ``/readyz`` 200 with that state, ``cold_ready_s`` the
    same on an empty store, in the same run; ``first_event_after_restart_s`` the time from
    producing one more event, once ready, until it is handled.

Medians over ``--repeats`` are reported; the repeats of the pipeline and of the baselines are
interleaved so that a noisy neighbour hurts all of them alike. The result is printed as a table
and as JSON (``--json PATH`` also writes it to a file).

>>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50)
3.0
>>> crossing([(0.0, 0), (1.0, 100), (2.0, 300)], 200)
1.5
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from stream.broker import EmbeddedBroker, client_config, create_plain_topics, create_topics, free_port
from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings, env_var

if TYPE_CHECKING:
    from stream.logic.pipeline import Pipeline, UserRecord

log = logging.getLogger(__name__)

#: Repository root: the baselines and the state benchmark live in ``benchmarks/`` beside ``stream/``.
ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.1
SCENARIOS = ("pipeline", "baselines", "state", "all", "scaling", "guarantees")
#: Events counted as "handled": every canonical type; ``invalid``/``other`` never reach the state.
NOT_HANDLED_TYPES = ("invalid", "other")


@dataclass(frozen=True)
class BenchConfig:
    events: int = 50_000
    users: int = 10_000
    partitions: int = 4
    repeats: int = 3
    seed: int = 0
    rate: float | None = None  # offered load for the latency run; None = half the measured events_per_s
    latency_seconds: float = 20.0  # length of the steady-load phase (capped by ``events``)
    restart: bool = False
    restart_users: int = 100_000
    sequence: bool = True  # serve a sequence model in the pipeline workers (see publish_sequence_model)
    scaling: tuple[int, ...] = (1, 2, 4)  # the scaling scenario: k partitions and k workers, for each k


# ------------------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (None if empty)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def crossing(timeline: list[tuple[float, float]], level: float) -> float | None:
    """The time at which a non-decreasing count sampled as ``(t, count)`` reached ``level``
    (interpolated linearly between samples); None if it never did."""
    prev: tuple[float, float] | None = None
    for t, n in timeline:
        if n >= level:
            if prev is None or n == prev[1]:
                return t
            t0, n0 = prev
            return t0 + (t - t0) * (level - n0) / (n - n0)
        prev = (t, n)
    return None


def _median(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------------------------- events
@dataclass
class Events:
    """Encoded simulated events, ready to produce: (key, value, event_id) in event-time order."""

    records: list[tuple[bytes, bytes, str]]
    users: int

    def __len__(self) -> int:
        return len(self.records)


def make_events(n: int, users: int, seed: int, *, distinct_users: bool = False) -> Events:
    """``n`` simulator events, shifted in time so that the last one is a second before now.

    The worker rejects events from the future; shifting keeps the simulator's spacing while putting
    the whole stream in the recent past. ``distinct_users`` gives every event a user of its own
    (to build a state of ``n`` users with ``n`` events).
    """
    from stream.logic.simulator import ShopperSimulator

    raw = ShopperSimulator(seed=seed, users=users).take(n)
    shift = time.time_ns() // 1_000_000 - 1_000 - (raw[-1]["ts"] if raw else 0)
    records = []
    seen: set[str] = set()
    for i, ev in enumerate(raw):
        ev["ts"] += shift
        if distinct_users:
            ev["user_id"] = f"r{seed}-{i:07d}"
            ev["session_id"] = f"{ev['user_id']}-1"
        seen.add(ev["user_id"])
        records.append((ev["user_id"].encode(), json.dumps(ev, separators=(",", ":")).encode(), ev["event_id"]))
    return Events(records, len(seen))


async def produce(settings: Settings, bootstrap: str, topic: str, events: Events) -> float:
    """Produce all events as fast as the client allows; returns the rate in events/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for key, value, _ in events.records:
            await producer.send(topic, key=key, value=value)  # enqueues; delivery is awaited by flush()
        await producer.flush()
        return len(events) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def send_paced(
    producer, topic: str, records: list[tuple[bytes, bytes, str]], rate: float,
    on_send: Callable[[str], None] | None = None,
) -> float:
    """Send ``records`` at ``rate`` events/s: record i is due at ``t0 + i / rate`` and everything
    due is sent in one go. ``on_send(event_id)`` runs just before each send. Returns the seconds
    the sending took (the last ``send`` enqueued; delivery is the caller's ``flush``)."""
    loop = asyncio.get_running_loop()
    t0, i = loop.time(), 0
    while i < len(records):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        while i < len(records) and t0 + i / rate <= now:
            key, value, eid = records[i]
            if on_send is not None:
                on_send(eid)
            await producer.send(topic, key=key, value=value)
            i += 1
    return loop.time() - t0


async def drop_topics(settings: Settings, bootstrap: str, apps: list[str]) -> None:
    """Delete every topic of the applications ``apps`` (``<app>.<name>``, ``<app>-<name>``: their
    own, Faust's changelogs and internal topics). A broker that refuses is logged, not fatal."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**client_config(settings, bootstrap))
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if any(t.startswith((f"{a}.", f"{a}-")) for a in apps)]
        if names:
            await admin.delete_topics(names)
    except (KafkaError, OSError) as exc:  # never hides the measurement's own result or error
        log.warning("could not delete the benchmark's topics %s: %s", apps, exc)
    finally:
        await admin.close()


# ------------------------------------------------------------------------------------- processes
def _scrape(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


_BATCH_SUMS = {
    "intentstream_processing_seconds_sum": "batch_seconds",
    "intentstream_processing_batch_size_sum": "batch_events",
    "intentstream_scoring_seconds_count": "scoring_calls",
    "intentstream_scoring_seconds_sum": "scoring_seconds",
    "intentstream_scoring_batch_size_sum": "scoring_windows",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The few worker metrics the harness needs, summed over their labels.

    >>> parse_metrics('intentstream_events_consumed_total{type="click"} 3.0\\n'
    ...               'intentstream_events_consumed_total{type="invalid"} 1.0\\n'
    ...               'intentstream_late_events_total 2.0\\n')["handled"]
    5.0
    """
    out = {"handled": 0.0, "redelivered": 0.0, "batches": 0.0, "signals": 0.0, "users_in_state": 0.0}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        base, _, labels = name.partition("{")
        if base == "intentstream_events_consumed_total":
            if not any(f'type="{t}"' in labels for t in NOT_HANDLED_TYPES):
                out["handled"] += float(value)
        elif base == "intentstream_late_events_total":
            out["handled"] += float(value)
        elif base == "intentstream_duplicate_events_total":  # none in the benchmark's events: redeliveries
            out["redelivered"] += float(value)
        elif base == "intentstream_records_refetched_total":
            out["refetched"] = out.get("refetched", 0.0) + float(value)
        elif base == "intentstream_processing_seconds_count":
            out["batches"] += float(value)
        elif base == "intentstream_processing_seconds_bucket" and labels.startswith('le="0.1"'):
            out["batches_within_100ms"] = out.get("batches_within_100ms", 0.0) + float(value)
        elif base == "intentstream_event_to_signal_seconds_count":
            out["worker_signals"] = out.get("worker_signals", 0.0) + float(value)
        elif base == "intentstream_event_to_signal_seconds_bucket" and labels.startswith('le="0.1"'):
            out["worker_signals_within_100ms"] = out.get("worker_signals_within_100ms", 0.0) + float(value)
        elif base in _BATCH_SUMS:  # batch shape under load (the latency phase's figures)
            out[_BATCH_SUMS[base]] = out.get(_BATCH_SUMS[base], 0.0) + float(value)
        elif base == "intentstream_signals_emitted_total":
            out["signals"] += float(value)
        elif base == "intentstream_users_in_state":
            out["users_in_state"] = float(value)
        elif base == "intentstream_events_routed_total":  # events processed where ingested / forwarded
            path = "routed_local" if 'path="local"' in labels else "routed_forwarded"
            out[path] = out.get(path, 0.0) + float(value)
        elif base == "intentstream_dead_letters_total":
            out["dead_letters"] = float(value)
        elif base == "intentstream_online_roc_auc":  # published only by learners that have learned
            out["online_models_learned"] = 1.0
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads) so far; None if unknown."""
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return None


@dataclass
class Child:
    """A child process in its own process group; :meth:`stop` ends the whole group."""

    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started = time.time()
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int | None:
        try:
            import psutil
        except ImportError:
            return None
        if not self.alive():
            return None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).memory_info().rss  # type: ignore[union-attr]
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process (all its threads) so far."""
        return None if self.proc is None else cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc, self.proc = self.proc, None
        return None if proc is None else stop_process_group(proc, timeout)

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# ------------------------------------------------------------------------------------- the run
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


def _cores(cpu0: float | None, cpu1: float | None, t0: float | None, t1: float | None) -> float | None:
    """CPU seconds per second between two readings (1.0 = one core busy all the time)."""
    if cpu0 is None or cpu1 is None or t0 is None or t1 is None or t1 <= t0:
        return None
    return (cpu1 - cpu0) / (t1 - t0)


def _batch_shape(before: dict[str, float], after: dict[str, float], seconds: float) -> dict | None:
    """How the worker batched a load, from two scrapes of its metrics: batches per second (the
    ingest's and the processing's), their mean size and wall time, and the sequence model's calls.
    Small batches cost more CPU per event: each has fixed costs (docs/BENCHMARKS.md).

    >>> before = {"batches": 10, "batch_events": 500, "batch_seconds": 0.1, "scoring_calls": 5,
    ...           "scoring_seconds": 0.02, "scoring_windows": 250, "batches_within_100ms": 10}
    >>> after = {"batches": 30, "batch_events": 1500, "batch_seconds": 0.3, "scoring_calls": 15,
    ...          "scoring_seconds": 0.06, "scoring_windows": 750, "batches_within_100ms": 28}
    >>> shape = _batch_shape(before, after, seconds=2.0)
    >>> shape["per_s"], shape["mean_events"], round(shape["scoring_mean_ms"], 3), shape["over_100ms"]
    (10.0, 50.0, 4.0, 2)
    """
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("batches", "batch_events", "batch_seconds",
                                                              "scoring_calls", "scoring_seconds", "scoring_windows",
                                                              "batches_within_100ms", "worker_signals",
                                                              "worker_signals_within_100ms")}  # fmt: skip
    if not before or not after or d["batches"] <= 0 or seconds <= 0:
        return None
    calls = d["scoring_calls"]
    return {
        "per_s": d["batches"] / seconds,
        "mean_events": d["batch_events"] / d["batches"],
        "mean_ms": 1000 * d["batch_seconds"] / d["batches"],
        "scoring_calls_per_s": calls / seconds,
        "scoring_mean_windows": d["scoring_windows"] / calls if calls else None,
        "scoring_mean_ms": 1000 * d["scoring_seconds"] / calls if calls else None,
        # Where a slow second comes from: batches the worker itself took over 100 ms on, and the
        # signals its own histogram saw over 100 ms after their event's Kafka timestamp.
        "over_100ms": d["batches"] - d["batches_within_100ms"],
        "worker_signals_over_100ms": d["worker_signals"] - d["worker_signals_within_100ms"],
    }


def _wait_ready(w: Child, port: int, timeout: float) -> float | None:
    end = time.time() + timeout
    while time.time() < end and w.alive():
        if _scrape(port, "/readyz")[0] == 200:
            return time.time() - w.started
        time.sleep(POLL_S)
    return None


def state(users: int, seed: int) -> dict:
    """``benchmarks.state_bench.run(users, seed)`` in a child process (its memory is its own)."""
    if not (ROOT / "benchmarks" / "state_bench.py").exists():
        return {"skipped": "benchmarks/state_bench.py not found"}
    code = f"import json; from benchmarks.state_bench import run; print(json.dumps(run({users}, {seed})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"skipped": f"state_bench failed: {proc.stderr.strip().splitlines()[-1:]}"}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = ("users", "events", "bytes_per_user", "bytes_p50", "bytes_p99", "bytes_max", "updates_per_s", "apply_only_per_s",
            "record_users", "record_bytes_per_user", "record_bytes_p50", "record_bytes_p99", "record_bytes_max",
            "record_parts_bytes_per_user")  # fmt: skip
    return {k: r[k] for k in keep if k in r}


# ------------------------------------------------------------------------------------- orchestration
def run(settings: Settings, scenario: str, config: BenchConfig, *, bootstrap: str | None = None,
        progress: object = None) -> dict:  # fmt: skip
    """Run ``scenario`` and return the result as a JSON-able dict (see the module docstring)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {SCENARIOS}")
    say = progress if callable(progress) else (lambda msg: None)
    want = {"pipeline", "baselines", "state"} if scenario == "all" else {scenario}
    result: dict = {"meta": _meta(settings, config, scenario)}
    broker_pid = None
    workdir = Path(tempfile.mkdtemp(prefix="intentstream-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            model_dir = None
            if want & {"pipeline", "baselines", "scaling", "guarantees"}:
                if bootstrap is None and settings.kafka_bootstrap_servers:
                    bootstrap = settings.kafka_bootstrap_servers
                if bootstrap is None:
                    broker = stack.enter_context(EmbeddedBroker.for_settings(settings, workdir / "broker"))
                    bootstrap, broker_pid = broker.bootstrap, broker.process.pid if broker.process else None
                result["meta"]["bootstrap"] = bootstrap
                if config.sequence and want & {"pipeline", "scaling", "guarantees"}:
                    model_dir = workdir / "models"
                    result["meta"]["sequence_model"] = publish_sequence_model(model_dir)
            if want & {"pipeline", "baselines"}:
                online = None
                if "pipeline" in want and settings.online_learning:
                    say("warming the online models on simulator history")
                    online, result["meta"]["online_models"] = warm_online_models(settings, config.partitions, config.seed + 7)
                bench = Bench(settings, bootstrap, workdir, config, model_dir, online, broker_pid)
                events = make_events(config.events, config.users, config.seed)
                runs: dict[str, list[dict]] = {"pipeline": [], "raw_aiokafka": [], "faust_passthrough": []}
                for r in range(config.repeats):
                    if "baselines" in want:
                        say(f"repeat {r + 1}/{config.repeats}: raw aiokafka baseline")
                        runs["raw_aiokafka"].append(bench.baseline("raw", events))
                        say(f"repeat {r + 1}/{config.repeats}: Faust pass-through baseline")
                        runs["faust_passthrough"].append(bench.baseline("faust", events))
                    if "pipeline" in want:
                        say(f"repeat {r + 1}/{config.repeats}: full pipeline")
                        runs["pipeline"].append(bench.pipeline_throughput(events))
                if "pipeline" in want:
                    result["pipeline"] = _summary(runs["pipeline"])
                if "baselines" in want:
                    result["baselines"] = {k: _summary(runs[k]) for k in ("raw_aiokafka", "faust_passthrough")}
                if want >= {"pipeline", "baselines"}:
                    result["ratios"] = _ratios(result["pipeline"], result["baselines"])
                if "pipeline" in want:
                    rate = config.rate or 0.5 * (result["pipeline"].get("events_per_s") or 0)
                    if rate > 0:
                        say(f"latency at {rate:,.0f} events/s")
                        # Warm-up (a quarter of --events, at most 2,000) plus --latency-seconds of load,
                        # at most --events of it.
                        measured = min(config.events, max(100, int(rate * config.latency_seconds)))
                        lat_events = make_events(min(2_000, config.events // 4) + measured, config.users, config.seed + 2)
                        result["latency"] = bench.latency(lat_events, rate)
                    else:
                        result["latency"] = {"skipped": "no throughput measured; pass --rate"}
                    if config.restart:
                        say(f"restart with {config.restart_users:,} users (rocksdb://)")
                        result["restart"] = bench.restart(config.restart_users)
            if "scaling" in want:
                result["scaling"] = _scaling(settings, config, workdir, bootstrap, model_dir, say, broker_pid)
            if "guarantees" in want:
                result["guarantees"] = _guarantees(settings, config, workdir, bootstrap, model_dir, say, broker_pid)
            if "state" in want:
                say(f"state benchmark with {config.users:,} users")
                result["state"] = state(config.users, config.seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _scaling(settings: Settings, config: BenchConfig, workdir: Path, bootstrap: str, model_dir: Path | None,
             say: Callable[[str], None], broker_pid: int | None = None) -> dict:  # fmt: skip
    """The same backlog through k workers of one application on k partitions, for k in
    ``config.scaling``: medians of ``config.repeats`` runs each (warm online models per partition,
    the sequence model served from ``model_dir`` if given)."""
    events = make_events(config.events, config.users, config.seed)
    out: dict = {}
    for k in config.scaling:
        cfg = replace(config, partitions=k)
        online = warm_online_models(settings, k, config.seed + 7)[0] if settings.online_learning else None
        bench = Bench(settings, bootstrap, workdir, cfg, model_dir, online, broker_pid)
        runs = []
        for r in range(config.repeats):
            say(f"scaling: {k} partition(s) and worker(s), repeat {r + 1}/{config.repeats}")
            runs.append(bench.pipeline_throughput(events, workers=k))
        out[str(k)] = _summary(runs)
    return out


def _guarantees(settings: Settings, config: BenchConfig, workdir: Path, bootstrap: str, model_dir: Path | None,
                say: Callable[[str], None], broker_pid: int | None = None) -> dict:  # fmt: skip
    """The pipeline's backlog through one worker with each processing guarantee, the two
    interleaved ``config.repeats`` times (a drifting machine hits both alike); medians, and
    exactly-once against at-least-once."""
    events = make_events(config.events, config.users, config.seed)
    online = warm_online_models(settings, config.partitions, config.seed + 7)[0] if settings.online_learning else None
    bench = Bench(settings, bootstrap, workdir, config, model_dir, online, broker_pid)
    runs: dict[str, list[dict]] = {"at_least_once": [], "exactly_once": []}
    for r in range(config.repeats):
        for guarantee, got in runs.items():
            say(f"guarantees: {guarantee}, repeat {r + 1}/{config.repeats}")
            got.append(bench.pipeline_throughput(events, processing_guarantee=guarantee))
    out: dict = {g: _summary(v) for g, v in runs.items()}
    a, e = out["at_least_once"], out["exactly_once"]
    for metric in ("events_per_s", "cpu_us_per_event"):
        out[f"{metric}_exactly_once_vs_at_least_once"] = e[metric] / a[metric] if e.get(metric) and a.get(metric) else None
    return out


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


def replay(pipe: Pipeline, raw: list[dict], partitions: int) -> dict[str, UserRecord]:
    """Raw simulator events through ``pipe`` as a worker applies them: batches of 1,000, each
    followed by the churn scan of every partition at its watermark. Returns the users' records
    left at the end (expired users deleted)."""
    from models.events import parse_event
    from models.features.hashing import stable_hash

    records: dict[str, UserRecord] = {}
    for i in range(0, len(raw), 1_000):
        pairs = []
        for d in raw[i : i + 1_000]:
            ev = parse_event(d)  # validated as the worker's ingest does (raw user ids: nothing leaves)
            pairs.append((stable_hash(ev.user) % partitions, ev))
        batch = {ev.user: records.get(ev.user) for _p, ev in pairs}
        out = pipe.process(batch, pairs)
        records.update(out.records)
        for p in range(partitions):
            due = pipe.due_for_scan(p)
            if due:
                scan = pipe.scan(p, {u: records.get(u) for u in due})
                records.update(scan.records)
                for u in scan.deleted:
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


def _summary(runs: list[dict]) -> dict:
    """Medians of the numeric figures of repeated runs, plus the runs themselves."""
    keys = dict.fromkeys(
        k for r in runs for k, v in r.items() if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    )
    out: dict = {k: _median([r.get(k) for r in runs]) for k in keys}
    out["complete"] = all(r.get("complete", False) for r in runs)
    out["runs"] = runs
    return out


def _ratios(pipeline: dict, baselines: dict) -> dict:
    out = {}
    for name, b in baselines.items():
        for metric in ("events_per_s", "steady_events_per_s"):
            p, q = pipeline.get(metric), b.get(metric)
            out[f"{metric.removesuffix('events_per_s')}pipeline_vs_{name}"] = p / q if p and q else None
        p, q = pipeline.get("cpu_us_per_event"), b.get("cpu_us_per_event")
        out[f"cpu_per_event_pipeline_vs_{name}"] = p / q if p and q else None
    return out


def _meta(settings: Settings, config: BenchConfig, scenario: str) -> dict:
    import faust

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scenario": scenario,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "faust": faust.__version__,
        "store": settings.store,
        "batch_size": settings.batch_size,
        "batch_wait_ms": settings.batch_wait_ms,
        "batch_linger_ms": settings.batch_linger_ms,
        **{k: v for k, v in vars(config).items()},
    }


# ------------------------------------------------------------------------------------- output
def _fmt(v: object, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.2f}{unit}"
    return f"{v}{unit}"


def table(result: dict) -> str:
    """The headline figures as a plain-text table (medians over the repeats)."""
    rows: list[tuple[str, str]] = []
    p = result.get("pipeline")
    if p:
        rows += [
            ("pipeline events/s (first batch to last handled)", _fmt(p.get("events_per_s"))),
            ("pipeline steady events/s (10% to 90% handled)", _fmt(p.get("steady_events_per_s"))),
            ("pipeline worker CPU per event", _fmt(p.get("cpu_us_per_event"), " us")),
            ("broker cores busy during the backlog", _fmt(p.get("broker_cores"))),
            ("worker start-up to /readyz", _fmt(p.get("startup_s"), " s")),
            ("stall: first batch to first event handled", _fmt(p.get("stall_s"), " s")),
            ("worker RSS after backlog", _fmt(p.get("worker_rss_mb"), " MiB")),
        ]
    for name, b in (result.get("baselines") or {}).items():
        rows.append((f"{name} events/s", _fmt(b.get("events_per_s"))))
        rows.append((f"{name} CPU per event", _fmt(b.get("cpu_us_per_event"), " us")))
    for name, r in (result.get("ratios") or {}).items():
        rows.append((f"ratio {name}", _fmt(r, "x")))
    lat = result.get("latency")
    if lat and "latency_ms" in lat:
        rows.append(("latency offered / achieved events/s",
                     f"{_fmt(lat['offered_events_per_s'])} / {_fmt(lat['achieved_events_per_s'])}"))  # fmt: skip
        for q in ("p50", "p95", "p99"):
            rows.append((f"event-to-signal {q} (signal Kafka ts)", _fmt(lat["latency_ms"][q], " ms")))
        rows.append(("event-to-signal p99 (received)", _fmt(lat["receive_latency_ms"]["p99"], " ms")))
        rows.append(("signals matched", _fmt(lat["signals_matched"])))
        rows.append(("worker CPU per event under that load", _fmt(lat.get("worker_cpu_us_per_event"), " us")))
        rows.append(("worker cores busy under that load", _fmt(lat.get("worker_cores"))))
        rows.append(("broker cores busy under that load", _fmt(lat.get("broker_cores"))))
        shape = lat.get("batches")
        if shape:
            rows.append(("batches per second under that load (ingest + process)", _fmt(shape["per_s"])))
            rows.append(("events per batch under that load", _fmt(shape["mean_events"])))
    for k, sc in (result.get("scaling") or {}).items():
        rows.append((f"scaling: {k} partition(s) and worker(s), events/s", _fmt(sc.get("events_per_s"))))
        rows.append((f"scaling: {k} partition(s) and worker(s), CPU per event", _fmt(sc.get("cpu_us_per_event"), " us")))
        runs = sc.get("runs", [])
        rows.append((f"scaling: {k} partition(s) and worker(s), complete runs",
                     f"{sum(bool(r.get('complete')) for r in runs)} of {len(runs)}"))  # fmt: skip
        rows.append((f"scaling: {k} partition(s) and worker(s), events redelivered (per run)",
                     " / ".join(_fmt(r.get("redelivered")) for r in runs)))  # fmt: skip
    g = result.get("guarantees")
    if g:
        for name in ("at_least_once", "exactly_once"):
            rows.append((f"{name}: events/s", _fmt(g[name].get("events_per_s"))))
            rows.append((f"{name}: worker CPU per event", _fmt(g[name].get("cpu_us_per_event"), " us")))
        rows.append(("exactly_once / at_least_once events/s", _fmt(g.get("events_per_s_exactly_once_vs_at_least_once"), "x")))
    st = result.get("state")
    if st:
        rows += [("state bytes/user", _fmt(st.get("bytes_per_user"))), ("state updates/s", _fmt(st.get("updates_per_s"))),
                 ("table record bytes/user (state + policy + pending labels)", _fmt(st.get("record_bytes_per_user")))]  # fmt: skip
    rs = result.get("restart")
    if rs:
        rows += [
            (f"restart with {rs.get('users'):,} users: ready in", _fmt(rs.get("restart_ready_s"), " s")),
            ("cold start (empty store): ready in", _fmt(rs.get("cold_ready_s"), " s")),
            ("first event handled after the restart in", _fmt(rs.get("first_event_after_restart_s"), " s")),
        ]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    import logging

    names = ("aiokafka", "kafka", "stream.broker")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def main(settings: Settings, scenario: str, config: BenchConfig, json_path: Path | None = None) -> int:
    """Run, print the table to stderr and the JSON to stdout (and to ``json_path``)."""
    with _quiet_loggers():
        result = run(settings, scenario, config, progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    text = json.dumps(result, indent=2, default=str)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    print(table(result), file=sys.stderr)
    print(text)
    return 0
