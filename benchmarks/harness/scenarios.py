"""The scenarios (``all``, ``pipeline``, ``baselines``, ``state``, ``scaling``, ``guarantees``):
which measurements each runs, on which broker, and the result they make together."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from benchmarks.harness.bench import Bench
from benchmarks.harness.config import ROOT, SCENARIOS, BenchConfig
from benchmarks.harness.load import make_events
from benchmarks.harness.report import table
from benchmarks.harness.stats import _ratios, _summary
from benchmarks.harness.warm import publish_sequence_model, warm_online_models
from stream.broker import EmbeddedBroker
from stream.settings import Settings


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
