"""The ``intentstream`` command line.

Every command reads the same :class:`~stream.settings.Settings` (environment variables; see
``intentstream config``). Without ``KAFKA_BOOTSTRAP_SERVERS`` the commands that need Kafka start
a local Apache Kafka broker themselves (stream/broker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from stream.settings import ConfigError, Settings, describe, load_settings

log = logging.getLogger("intentstream")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The Kafka client logs every send at DEBUG, a measurable share of a worker's time: keep it quiet.
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


# ---------------------------------------------------------------------------------------- config
def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    rows = describe(settings)
    width = max(len(r[0]) for r in rows)
    for var, value, desc in rows:
        print(f"{var:<{width}}  {value:<28}  {desc}")
    return 0


# ---------------------------------------------------------------------------------------- broker
def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    """``broker install``: fetch Kafka's jars; ``broker``: run the local broker in the foreground
    with all topics created, until SIGTERM or Ctrl-C."""
    from stream.broker import KAFKA_VERSION, EmbeddedBroker, create_topics, default_kafka_home, install_kafka

    if args.action == "install":
        libs = install_kafka(settings.kafka_home or default_kafka_home(), java_home=settings.java_home)
        print(f"Kafka {KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars in {libs}")
        return 0
    broker = EmbeddedBroker.for_settings(settings, port=args.port)
    with broker:
        counts = asyncio.run(create_topics(settings, broker.bootstrap))
        print(f"Kafka {KAFKA_VERSION} ready in {broker.start_s:.1f} s, data in {broker.data_dir}", flush=True)
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        for topic, n in sorted(counts.items()):
            print(f"  {topic}: {n} partitions", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            _wait_for_signal(broker)
    return 0


def _wait_for_signal(broker: object = None) -> None:
    """Until SIGTERM or SIGINT; or until ``broker`` exits by itself, which is an error."""
    from stream.broker import BrokerError

    stop = {"flag": False}

    def handler(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["flag"]:
        if broker is not None and not broker.alive():  # type: ignore[attr-defined]
            raise BrokerError(f"the broker exited on its own; see {broker.log_path}")  # type: ignore[attr-defined]
        time.sleep(0.2)


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from stream.broker import create_topics, kafka_for

    with kafka_for(settings) as bootstrap:
        counts = asyncio.run(create_topics(settings, bootstrap))
    for topic, n in sorted(counts.items()):
        print(f"{topic}: {n} partitions")
    return 0


# ---------------------------------------------------------------------------------------- worker
def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from stream.broker import create_topics, kafka_for

    settings.check_worker()
    with kafka_for(settings) as bootstrap:
        asyncio.run(create_topics(settings, bootstrap))
        return run_worker(settings, bootstrap)


def run_worker(settings: Settings, bootstrap: str) -> int:
    import faust

    from stream.app import create_app

    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings, bootstrap)
    class Worker(faust.Worker):
        def _schedule_shutdown(self, signum: int) -> None:  # mode.Worker's SIGTERM and SIGINT handler
            _stop_deadline(settings.stop_timeout_s)
            super()._schedule_shutdown(signum)

    worker = Worker(app, loglevel=settings.log_level, quiet=True, override_logging=False)
    worker.spinner = None  # its start-up animation writes terminal escapes even into a log file
    _setup_logging(settings.log_level)
    worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then shuts down cleanly
    return 0


def _stop_deadline(seconds: float) -> None:
    """End the process ``seconds`` after the first stop request, whatever the stop waits for (a
    broker gone makes every flush and commit wait for its timeouts). The store is not marked clean
    then, so the next start rebuilds it from the changelog."""
    import os
    import threading

    if getattr(_stop_deadline, "armed", False):
        return
    _stop_deadline.armed = True  # type: ignore[attr-defined]

    def expire() -> None:
        time.sleep(seconds)
        logging.getLogger("stream.cli").error(
            "stop did not finish within INTENTSTREAM_STOP_TIMEOUT_S=%g s: exiting now", seconds
        )
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=expire, name="stop-deadline", daemon=True).start()


# ---------------------------------------------------------------------------------------- simulate
def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from stream.broker import create_topics, kafka_for

    with kafka_for(settings) as bootstrap:
        asyncio.run(create_topics(settings, bootstrap))
        sent = asyncio.run(
            simulate(settings, bootstrap, rate=args.rate, users=args.users, seed=args.seed,
                     count=args.count, seconds=args.seconds, history_ms=int(args.history_hours * 3_600_000),
                     time_scale=args.time_scale)
        )  # fmt: skip
    print(json.dumps({"events_sent": sent}))
    return 0


async def simulate(
    settings: Settings,
    bootstrap: str,
    *,
    rate: float,
    users: int = 1000,
    seed: int = 0,
    count: int | None = None,
    seconds: float | None = None,
    history_ms: int = 2 * 86_400_000,
    time_scale: float | None = None,
    stop: asyncio.Event | None = None,
    on_sent: object = None,
) -> int:
    """Produce simulated events to the events topic at ``rate`` per second.

    Event time starts ``history_ms`` in the past and runs compressed (as fast as ``rate`` and
    ``time_scale`` allow) until it reaches the wall clock; it never runs ahead of it. Once caught
    up, events come at the simulated population's own pace (about 0.003 events/s per user).
    """
    from aiokafka import AIOKafkaProducer

    from stream.broker import client_config
    from stream.logic.simulator import ShopperSimulator, paced

    now_ms = time.time_ns() // 1_000_000
    sim = ShopperSimulator(seed=seed, users=users, start_ms=now_ms - history_ms)
    producer = AIOKafkaProducer(**client_config(settings, bootstrap), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    sent = 0
    loop = asyncio.get_running_loop()
    t_end = loop.time() + seconds if seconds else None
    try:
        for wait_s, event in paced(
            sim.events(), now_ms=lambda: time.time_ns() // 1_000_000, rate=rate, time_scale=time_scale
        ):
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if (stop is not None and stop.is_set()) or (t_end is not None and loop.time() >= t_end):
                break
            await producer.send(
                settings.events_topic,
                key=str(event["user_id"]).encode(),
                value=json.dumps(event, separators=(",", ":")).encode(),
            )
            sent += 1
            if on_sent is not None:
                on_sent(event)  # type: ignore[operator]
            if count is not None and sent >= count:
                break
    finally:
        await producer.stop()  # flushes what is buffered
    return sent


# ---------------------------------------------------------------------------------------- replay
def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stream.broker import create_topics, kafka_for
    from stream.replay import load_sorted, replay

    rows, stats = load_sorted(args.file, args.format)
    print(stats.summary(), file=sys.stderr)
    with kafka_for(settings) as bootstrap:
        asyncio.run(create_topics(settings, bootstrap))
        sent = asyncio.run(replay(settings, bootstrap, rows, speed=None if args.max else args.speed))
    print(json.dumps({"events_sent": sent, "rows_read": stats.rows_read, "skipped": dict(stats.skipped)}))
    return 0


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(settings, seconds=args.seconds, rate=args.rate, users=args.users)


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from stream.demo import watch

    if not settings.kafka_bootstrap_servers:
        raise ConfigError("intentstream watch: set KAFKA_BOOTSTRAP_SERVERS to the broker to watch")
    asyncio.run(watch(settings, settings.kafka_bootstrap_servers, seconds=args.seconds))
    return 0


# ---------------------------------------------------------------------------------------- bench
def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """The benchmark harness lives in ``benchmarks/`` beside the product package, which the
    worker images leave out: it is imported only when this command runs."""
    from pathlib import Path

    try:
        from benchmarks.harness import BenchConfig, main
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.harness"):
            raise
        raise ConfigError(
            "intentstream bench: the benchmark harness (benchmarks/) is not installed; run it from a "
            "source checkout installed with `make venv` (pip install -e .)"
        ) from None

    config = BenchConfig(events=args.events, users=args.users, partitions=args.partitions or settings.events_partitions,
                         repeats=args.repeats, seed=args.seed, rate=args.rate, restart=args.restart,
                         sequence=not args.no_sequence, scaling=_counts(args.scaling))  # fmt: skip
    return main(settings, args.scenario, config, Path(args.json) if args.json else None)


def _counts(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; an error naming ``--scaling`` otherwise."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise SystemExit(f"--scaling must be positive whole numbers separated by commas, got {text!r}")
    return counts


# ---------------------------------------------------------------------------------------- train, refresh, evaluate
def _train_threads(args: argparse.Namespace) -> None:
    """``--threads``: on a machine whose cores are busy (the demo's broker, worker and simulator),
    more torch threads than free cores make training several times slower, not faster."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"intentstream {args.command}: --threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _history(settings: Settings, args: argparse.Namespace) -> list:
    if args.from_topic is not None:
        events, info = _topic_history(settings, args)
    else:
        from models.training import load_history

        # Without a source, the archive the workers write (INTENTSTREAM_ARCHIVE_DIR, default DATA_DIR/archive).
        archive = args.archive if (args.archive or args.input) else settings.archive_root
        events, info = load_history(args.input or (), args.format, archive, days=args.days)
    if not events:
        raise ConfigError(f"intentstream {args.command}: no events in {', '.join(info) or 'the input'}")
    print(json.dumps({"history": info, "events": len(events)}), file=sys.stderr)
    return events


def _topic_history(settings: Settings, args: argparse.Namespace) -> tuple[list, dict]:
    """``--from-topic [TOPIC]``: the pseudonymised events of the internal topic (stream/history.py)."""
    from aiokafka.errors import KafkaError

    from stream.broker import kafka_for
    from stream.history import TopicReadError, read_topic_history

    if args.input or args.archive:
        raise ConfigError(f"intentstream {args.command}: --from-topic cannot be used with --input/--archive")
    topic = args.from_topic or settings.repartition_topic
    try:
        with kafka_for(settings) as bootstrap:
            return read_topic_history(settings, bootstrap, topic, days=args.days)
    except (ValueError, TopicReadError, KafkaError) as exc:
        raise ConfigError(f"intentstream {args.command}: cannot read topic {topic!r}: {exc}") from None


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    """Train the sequence model and store it as a new registry version (docs/EVALUATION.md)."""
    from models.registry import Registry
    from models.training import seq_config_with, train_to_registry

    _train_threads(args)
    registry = Registry(settings.registry_dir / "sequence")
    _, _, summary = train_to_registry(_history(settings, args), registry, seq_config_with(args.set), device=args.device,
                                      max_seconds=args.max_seconds, promote=args.promote)  # fmt: skip
    print(json.dumps(summary))
    return 0


def cmd_refresh(settings: Settings, args: argparse.Namespace) -> int:
    """Train, re-score the current model on the new validation split, promote only if better."""
    from models.registry import Registry
    from models.training import refresh, seq_config_with

    _train_threads(args)
    registry = Registry(settings.registry_dir / "sequence")
    out = refresh(_history(settings, args), registry, seq_config_with(args.set), device=args.device, max_seconds=args.max_seconds)
    print(json.dumps(out))
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """Replay train then test through the stream's state and models; write report.json and plots
    (``--task all``: the three tasks and a summary)."""
    from stream.evaluate import check_arguments, run

    problem = check_arguments(args)
    if problem:
        print(f"intentstream evaluate: error: {problem}", file=sys.stderr)
        return 2  # argparse's code for a usage error
    report = run(args)
    print(json.dumps({"task": report["task"], "models": report["models"], "out": str(args.out)}))
    return 0


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="intentstream",
        description="Real-time shopper intent: events in Kafka -> per-user state -> signals out.",
        epilog="Configuration comes from environment variables: run `intentstream config` to list them.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="show every setting, its value and the variable that sets it").set_defaults(fn=cmd_config)

    b = sub.add_parser("broker", help="run a local Apache Kafka broker with all topics; `broker install` fetches it")
    b.add_argument("action", nargs="?", default="run", choices=["run", "install"],
                   help="run (default) or install: fetch Kafka's jars from Maven Central (INTENTSTREAM_KAFKA_HOME)")
    b.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    b.set_defaults(fn=cmd_broker)

    t = sub.add_parser("topics", help="create every topic with its partition count (idempotent)")
    t.add_argument("action", choices=["create"])
    t.set_defaults(fn=cmd_topics)

    sub.add_parser("worker", help="run a stream worker (Faust)").set_defaults(fn=cmd_worker)

    s = sub.add_parser("simulate", help="produce realistic synthetic shopper events")
    s.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    s.add_argument("--users", type=int, default=1000, help="active simulated users (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--count", type=int, default=None, help="stop after this many events")
    s.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    s.add_argument("--history-hours", type=float, default=48.0, help="event time starts this far in the past")
    s.add_argument("--time-scale", type=float, default=None, help="max simulated ms per wall ms while in the past")
    s.set_defaults(fn=cmd_simulate)

    r = sub.add_parser("replay", help="stream a dataset file into the events topic in event-time order")
    r.add_argument("file", type=Path)
    r.add_argument("--format", required=True, help="taobao | cdnow | yoochoose | diginetica-purchases | diginetica-views | jsonl")
    pace = r.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="event-time speed-up (default 1: real time)")
    pace.add_argument("--max", action="store_true", help="as fast as possible")
    r.set_defaults(fn=cmd_replay)

    d = sub.add_parser("demo", help="broker + worker + simulator + live view of the signals")
    d.add_argument("--seconds", type=float, default=None, help="stop after N seconds (default: Ctrl-C)")
    d.add_argument("--rate", type=float, default=500.0, help="simulated events per second")
    d.add_argument("--users", type=int, default=300, help="active simulated users")
    d.set_defaults(fn=cmd_demo)

    w = sub.add_parser("watch", help="live view of the signal topics of a running system")
    w.add_argument("--seconds", type=float, default=None)
    w.set_defaults(fn=cmd_watch)

    bn = sub.add_parser("bench", help="throughput, latency, memory against the pipeline's baselines (docs/BENCHMARKS.md)")
    bn.add_argument("scenario", nargs="?", default="all", choices=["pipeline", "baselines", "state", "all", "scaling", "guarantees"])
    bn.add_argument("--events", type=int, default=50_000, help="events in each preloaded backlog (default 50000)")
    bn.add_argument("--users", type=int, default=10_000, help="simulated active users (default 10000)")
    bn.add_argument("--partitions", type=int, default=None, help="partitions per topic (default INTENTSTREAM_EVENTS_PARTITIONS)")
    bn.add_argument("--repeats", type=int, default=3, help="repeats per measurement; medians are reported (default 3)")
    bn.add_argument("--seed", type=int, default=0)
    bn.add_argument("--rate", type=float, default=None, help="offered load for the latency run (default: half the sustained max)")
    bn.add_argument("--restart", action="store_true", help="also time a restart with 100k users of rocksdb state (slow)")
    bn.add_argument("--no-sequence", action="store_true", help="pipeline workers without a sequence model (online models only)")
    bn.add_argument("--scaling", default="1,2,4", help="the scaling scenario's partition and worker counts (default 1,2,4)")
    bn.add_argument("--json", default=None, help="also write the JSON result to this file")
    bn.set_defaults(fn=cmd_bench)

    for name, fn, help_ in (
        ("train", cmd_train, "train the sequence model on history and store it in the registry (INTENTSTREAM_MODEL_DIR)"),
        ("refresh", cmd_refresh, "train, compare with the current model on the same validation split, promote if better"),
    ):
        tr = sub.add_parser(name, help=help_)
        tr.add_argument("--input", action="append", type=Path, help="history file (repeatable); needs --format")
        tr.add_argument("--format", default=None, help="format of --input: taobao | cdnow | yoochoose | diginetica-* | jsonl")
        tr.add_argument("--archive", default=None, help="event archive directory or URI (default without --input: INTENTSTREAM_ARCHIVE_DIR)")
        tr.add_argument("--from-topic", nargs="?", const="", default=None, metavar="TOPIC",
                        help="read history from Kafka: the pseudonymised events topic (default: <app_id>-events-by-user, "
                             "from INTENTSTREAM_APP_ID), up to its end offsets at start; not with --input/--archive")  # fmt: skip
        tr.add_argument("--days", type=float, default=30.0, help="with --archive or --from-topic: the last N days of event time (default 30)")  # fmt: skip
        tr.add_argument("--device", default=None, help="cuda | cpu (default: cuda when present)")
        tr.add_argument("--max-seconds", type=float, default=None, help="cap on training time")
        tr.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's, one per core); 1 beside other busy processes")  # fmt: skip
        tr.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a SeqConfig field")
        if name == "train":
            tr.add_argument("--promote", action="store_true", help="make the new version current")
        tr.set_defaults(fn=fn)

    ev = sub.add_parser("evaluate", help="evaluate intent/churn/latent on dataset files (docs/EVALUATION.md)")
    from stream.evaluate import add_arguments

    add_arguments(ev)
    ev.set_defaults(fn=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    from stream.broker import BrokerError

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command != "worker":
        _setup_logging(settings.log_level)
    try:
        return int(args.fn(settings, args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"intentstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
