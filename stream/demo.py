"""``intentstream demo``: a local Kafka broker + one worker + the simulator + a live terminal view.

After ``TRAIN_AFTER_S`` seconds of simulated traffic the demo runs ``intentstream refresh
--from-topic`` once in the background (a short CPU training run on the events the worker has
pseudonymised so far); the running worker picks the promoted sequence model up without a restart
and its signals then name both models. Everything runs under this process: the broker and the worker are child processes in their own
process groups, stopped (TERM, then KILL) on Ctrl-C, on ``--seconds`` or on any error, so the
demo leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field

from stream.broker import EmbeddedBroker, client_config, create_topics, free_port
from stream.logic.signals import Task
from stream.procs import die_with_parent, stop_process_group
from stream.settings import Settings

HOUR_MS = 3_600_000
# Demo event time starts a week in the past and runs compressed (300 users at 500 events/s cover
# about 9 minutes of event time per wall second), so churn is shown on a shorter horizon than
# production's: a user silent for 3 hours of event time is evaluated within the first minute.
DEMO_HISTORY_MS = 7 * 24 * HOUR_MS
DEMO_ENV = {
    "INTENTSTREAM_CHURN_RISK_AFTER_MS": str(3 * HOUR_MS),
    "INTENTSTREAM_CHURN_AFTER_MS": str(12 * HOUR_MS),
    "INTENTSTREAM_STORE": "memory://",
    "INTENTSTREAM_LOG_LEVEL": "WARNING",
}
BAD_EVERY = 400  # one malformed event in this many shows the dead-letter path at work
TRAIN_AFTER_S = 40.0  # simulated traffic before the background training run starts
# A short run: its churn head is trained for the demo's churn horizon so that it is blended too.
# One torch thread: the broker, the worker and the simulator keep both cores busy, and a second
# torch thread then slowed training several-fold instead of speeding it up.
TRAIN_ARGS = ["--from-topic", "--days", "30", "--device", "cpu", "--threads", "1", "--max-seconds", "30",
              "--set", "max_epochs=3", "--set", f"churn_ms={12 * HOUR_MS}"]  # fmt: skip


@dataclass
class ViewState:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    processed: float = 0.0
    dead: int = 0
    users: float = 0.0
    signals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Task, 0))
    model: str = f"online only; sequence model training starts after {TRAIN_AFTER_S:.0f} s"
    latest: deque = field(default_factory=lambda: deque(maxlen=12))
    rates: deque = field(default_factory=lambda: deque(maxlen=10))  # (t, sent, processed)
    failure: str | None = None  # why the demo stopped early (its worker or its broker exited)


def _fmt_signal(sig: dict) -> str:
    t = time.strftime("%m-%d %H:%M", time.gmtime(sig["ts"] / 1000))
    if sig["task"] == Task.LATENT_NEEDS:
        cats = ", ".join(f"{c['category_id']} {c['score']:.2f}" for c in (sig.get("categories") or [])[:3])
        what = f"next categories: {cats}"
    else:
        reasons = "; ".join(r.get("text") or r["feature"] for r in sig["reasons"][:3])
        what = f"score {sig['score']:.2f} >= {sig['threshold']:.2f}{' (cold)' if sig.get('cold') else ''}  {reasons}"
    models = "+".join(sig.get("model_versions", {}).values())
    return f"  {t}  {sig['task']:<15} user {sig['user'][:8]}  [{models}]  {what}"


def render(v: ViewState, header: str) -> str:
    now = time.monotonic()
    rate_s = rate_p = 0.0
    if len(v.rates) >= 2:
        (t0, s0, p0), (t1, s1, p1) = v.rates[0], v.rates[-1]
        if t1 > t0:
            rate_s, rate_p = (s1 - s0) / (t1 - t0), (p1 - p0) / (t1 - t0)
    lines = [
        header,
        f"elapsed {now - v.started:5.0f} s   events sent {v.sent:,} ({rate_s:,.0f}/s)   processed {v.processed:,.0f} "
        f"({rate_p:,.0f}/s)   dead-lettered {v.dead:,}   users in state {v.users:,.0f}",
        "signals  " + "   ".join(f"{k} {n:,}" for k, n in v.signals.items()),
        f"models   {v.model}",
        "latest signals (event time, task, pseudonymous user, why):",
        *v.latest,
    ]
    return "\n".join(lines)


def _scrape(port: int) -> dict[str, float]:
    """Sum a few counters from the worker's /metrics (best effort: the worker may be starting)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base == "intentstream_sequence_model_info" and 'version="' in name:
            out["sequence:" + name.split('version="', 1)[1].split('"', 1)[0]] = 1.0
        if base in ("intentstream_events_consumed_total", "intentstream_users_in_state"):
            out[base] = out.get(base, 0.0) + float(value)
    return out


async def watch(settings: Settings, bootstrap: str, *, seconds: float | None = None, view: ViewState | None = None,
                web_port: int | None = None, header: str = "intentstream", stop: asyncio.Event | None = None) -> ViewState:
    """Consume the signal topics and the dead-letter topic and redraw the view twice a second."""
    from aiokafka import AIOKafkaConsumer

    v = view or ViewState()
    topics = {name: task for task, name in settings.signal_topics().items()}
    consumer = AIOKafkaConsumer(
        *topics, settings.dlq_topic, **client_config(settings, bootstrap),
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    tty = sys.stdout.isatty()
    loop = asyncio.get_running_loop()
    t_end = loop.time() + seconds if seconds else None
    last_draw = 0.0
    try:
        while not (stop and stop.is_set()) and (t_end is None or loop.time() < t_end):
            batches = await consumer.getmany(timeout_ms=250, max_records=2000)
            for tp, msgs in batches.items():
                for msg in msgs:
                    if tp.topic == settings.dlq_topic:
                        v.dead += 1
                        continue
                    sig = json.loads(msg.value)
                    v.signals[sig["task"]] = v.signals.get(sig["task"], 0) + 1
                    v.latest.appendleft(_fmt_signal(sig))
                    if not tty:
                        print(_fmt_signal(sig), flush=True)
            if loop.time() - last_draw >= 0.5:
                last_draw = loop.time()
                if web_port:
                    m = await asyncio.to_thread(_scrape, web_port)
                    v.processed = m.get("intentstream_events_consumed_total", v.processed)
                    v.users = m.get("intentstream_users_in_state", v.users)
                    served = [k.removeprefix("sequence:") for k in m if k.startswith("sequence:")]
                    if served:
                        v.model = f"online + sequence model {served[0]} (hot-swapped into the running worker)"
                v.rates.append((time.monotonic(), v.sent, v.processed))
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + render(v, header) + "\n")
                    sys.stdout.flush()
    finally:
        await consumer.stop()
    return v


def _bad_event(n: int) -> bytes:
    samples = [b'{"event_id": "bad-%d", "type": "click"' % n, b'{"event_id":"bad-%d","user_id":"x","type":"refund","ts":1}' % n]
    return samples[n % 2]


def run_demo(settings: Settings, *, seconds: float | None, rate: float, users: int) -> int:
    demo_dir = settings.data_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    broker = EmbeddedBroker.for_settings(settings, demo_dir / "broker")
    worker: subprocess.Popen | None = None
    try:
        if settings.kafka_bootstrap_servers:
            bootstrap = settings.kafka_bootstrap_servers
        else:
            bootstrap = broker.start().bootstrap
        asyncio.run(create_topics(settings, bootstrap))
        web_port = free_port()
        env = {**os.environ, **DEMO_ENV, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "INTENTSTREAM_DATA_DIR": str(demo_dir), "INTENTSTREAM_WEB_PORT": str(web_port)}  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"], env=env, start_new_session=True, preexec_fn=die_with_parent,
            stdout=open(demo_dir / "worker.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        header = (f"intentstream demo  broker {bootstrap}  live page http://127.0.0.1:{web_port}/ui/  "
                  f"metrics http://127.0.0.1:{web_port}/metrics  (Ctrl-C to stop; worker log {demo_dir / 'worker.log'})")  # fmt: skip
        if not sys.stdout.isatty():  # a terminal shows it at the top of the live view instead
            print(header, flush=True)
        view = ViewState()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_demo_loop(settings, bootstrap, web_port, header, seconds, rate, users, worker, env,
                                   broker if broker.alive() else None, view))
        if view.failure:
            print(f"intentstream demo: {view.failure}", file=sys.stderr)
            return 1
        return 0
    finally:
        if worker is not None:
            stop_process_group(worker, 10)
        broker.stop()


async def _demo_loop(settings: Settings, bootstrap: str, web_port: int, header: str, seconds: float | None,
                     rate: float, users: int, worker: subprocess.Popen, worker_env: dict[str, str],
                     broker: EmbeddedBroker | None = None, view: ViewState | None = None) -> None:
    from aiokafka import AIOKafkaProducer

    from stream.cli import simulate

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    view = view if view is not None else ViewState()
    bad = AIOKafkaProducer(**client_config(settings, bootstrap))
    await bad.start()

    def on_sent(event: dict) -> None:
        view.sent += 1
        if view.sent % BAD_EVERY == 0:
            asyncio.ensure_future(bad.send(settings.events_topic, value=_bad_event(view.sent)))

    async def guard() -> None:
        while not stop.is_set():
            if broker is not None and not broker.alive():
                view.failure = f"the Kafka broker exited (see {broker.log_path}); run the demo again to restart it"
                stop.set()
            elif worker.poll() is not None:
                view.failure = (f"the worker exited with code {worker.returncode} (see "
                                f"{settings.data_dir / 'demo' / 'worker.log'})")  # fmt: skip
                stop.set()
            await asyncio.sleep(0.5)

    async def train_later() -> None:
        """One background refresh, as the CronJob runs it in production (k8s/)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), TRAIN_AFTER_S)
        if stop.is_set():
            return
        view.model = "online only; training the sequence model on the events so far (background, CPU)"
        log = open(settings.data_dir / "demo" / "train.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "refresh", *TRAIN_ARGS], env=worker_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)  # fmt: skip
        try:
            while proc.poll() is None and not stop.is_set():
                await asyncio.sleep(0.5)
        finally:
            if proc.poll() is None:
                stop_process_group(proc, 10)
            log.close()
        if proc.returncode not in (0, None) and not stop.is_set():
            view.model = f"online only; the training run failed (exit {proc.returncode}), see {log.name}"

    tasks = [
        asyncio.create_task(train_later()),
        asyncio.create_task(simulate(settings, bootstrap, rate=rate, users=users, stop=stop, on_sent=on_sent,
                                     history_ms=DEMO_HISTORY_MS)),
        asyncio.create_task(watch(settings, bootstrap, view=view, web_port=web_port, header=header, stop=stop)),
        asyncio.create_task(guard()),
    ]
    try:
        if seconds:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
        else:
            await stop.wait()
    finally:
        stop.set()
        # Without a broker the clients' last flushes would wait for their request timeouts.
        grace = 5.0 if view.failure else 30.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bad.stop(), grace)
        print(render(view, header))
