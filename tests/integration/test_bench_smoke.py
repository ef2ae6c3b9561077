"""Smoke test of ``intentstream bench``: it runs end to end on tiny sizes and writes well-formed JSON.

No figure is checked (the machine is shared, so timings say nothing here); only the shape of the
result, and that the harness leaves no process behind: every process it starts (broker, workers,
baselines) inherits a marker variable from the command, and none may be left once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

ROOT = Path(__file__).resolve().parents[2]


def _marked(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker``."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("BENCH_SMOKE_MARKER") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def _number_or_none(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v))


def _bench(broker, tmp_path, args: list[str]) -> dict:
    """Run ``intentstream bench ARGS --json OUT`` on the test broker; its JSON (also on stdout),
    after checking that it exited 0 and left no process behind."""
    pytest.importorskip("psutil")
    marker = uuid.uuid4().hex
    out = tmp_path / "bench.json"
    env = {
        **os.environ,
        "BENCH_SMOKE_MARKER": marker,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "INTENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "INTENTSTREAM_STORE": "memory://",
        "INTENTSTREAM_PSEUDONYM_KEY": "bench-smoke-key-0123456789",
    }
    cmd = [sys.executable, "-m", "stream.cli", "bench", *args, "--json", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    leftovers = _marked(marker)
    for pid in leftovers:  # clean up before failing, so one failure does not leak into the next tests
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert not leftovers, f"processes left behind: {leftovers}"
    result = json.loads(out.read_text())
    assert json.loads(stdout) == result, "stdout carries the same JSON as --json"
    left = [t for t in asyncio.run(_topics(broker.bootstrap)) if t.startswith("bench-")]
    assert not left, f"each measurement deletes its topics when it is done; left: {left}"
    return result


async def _topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def test_bench_all_runs_and_writes_its_json(broker, tmp_path):
    result = _bench(broker, tmp_path, ["all", "--events", "2000", "--users", "200", "--repeats", "1",
                                       "--partitions", "2", "--rate", "200"])  # fmt: skip
    assert {"meta", "pipeline", "baselines", "ratios", "latency", "state"} <= set(result)
    assert result["meta"]["events"] == 2000 and result["meta"]["repeats"] == 1
    # Workers start from online models learned on simulator history (as a restarted worker does).
    assert result["meta"]["online_models"]["warm_partitions"] == {"intent": 2, "churn": 2}

    pipeline = result["pipeline"]
    for key in ("events_per_s", "steady_events_per_s", "cpu_us_per_event", "startup_s", "stall_s", "worker_rss_mb"):
        assert _number_or_none(pipeline[key]), key
    assert len(pipeline["runs"]) == 1
    assert pipeline["runs"][0]["online_models_warm"] is True, "the worker recovered the seeded online models"
    assert set(result["baselines"]) == {"raw_aiokafka", "faust_passthrough"}
    for b in result["baselines"].values():
        assert _number_or_none(b["events_per_s"]) and _number_or_none(b["cpu_us_per_event"])
        assert len(b["runs"]) == 1
    assert all(_number_or_none(v) for v in result["ratios"].values())
    assert len(result["ratios"]) == 6

    latency = result["latency"]
    assert latency["offered_events_per_s"] == 200
    assert set(latency["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(latency["receive_latency_ms"]) == {"p50", "p95", "p99"}
    assert isinstance(latency["signals_matched"], int)
    assert all(isinstance(n, int) for n in latency["signals_by_online_model"].values())
    assert latency["worker_cpu_us_per_event"] > 0 and latency["worker_cores"] > 0
    assert latency["broker_cores"] is None and pipeline["runs"][0]["broker_cores"] is None, "not our broker: not measured"
    shape = latency["batches"]  # read from the worker's own metrics over the load
    assert shape["per_s"] > 0 and shape["mean_events"] >= 1 and shape["mean_ms"] > 0
    assert shape["scoring_calls_per_s"] > 0 and shape["scoring_mean_windows"] >= 1
    assert shape["over_100ms"] >= 0 and shape["worker_signals_over_100ms"] >= 0  # counts over the load
    assert isinstance(result["meta"]["batch_linger_ms"], int)

    state = result["state"]
    assert "skipped" in state or _number_or_none(state["bytes_per_user"])
    if "skipped" not in state:  # the whole table record: state, policy memory, pending labels, GRU state
        assert _number_or_none(state["record_bytes_per_user"]) and state["record_users"] > 0
        parts = state["record_parts_bytes_per_user"]
        assert set(parts) == {"state", "policy", "pending_labels", "sequence_state"}
        assert parts["sequence_state"] > 0  # the benchmark's sequence model keeps each user's state


def test_bench_scaling_runs_k_workers_on_k_partitions(broker, tmp_path):
    """Two workers of one application share the backlog: together they handle every event (a
    rebalance while they start may hand a few to both: at-least-once, de-duplicated by the state)."""
    result = _bench(broker, tmp_path, ["scaling", "--events", "600", "--users", "100", "--repeats", "1", "--scaling", "1,2"])
    assert set(result["scaling"]) == {"1", "2"}
    for k, summary in result["scaling"].items():
        (run,) = summary["runs"]
        assert run["workers"] == int(k)
        assert run["complete"] and run["handled"] >= 600, run.get("worker_log_tail")
        assert run["online_models_warm"] is True
        assert _number_or_none(run["events_per_s"]) and _number_or_none(run["cpu_us_per_event"])
