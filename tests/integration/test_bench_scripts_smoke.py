"""Smoke test of the small benchmark scripts: they run on tiny sizes and write well-formed JSON.
No figure is checked (timings say nothing on a shared machine), only the shape of the result."""

from __future__ import annotations

import json

import pytest

from benchmarks import hop_latency, wakeup_cost

pytestmark = [pytest.mark.integration, pytest.mark.bench]


def test_hop_latency_reads_every_record_through_its_own_broker(tmp_path):
    out = tmp_path / "hop.json"
    assert hop_latency.main(["--rate", "200", "--records", "20", "--linger", "0,5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["linger_ms"] for r in rows] == [0, 5]
    for r in rows:
        assert r["records"] == 20
        assert 0 <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_wakeup_cost_reports_each_kind_of_sleep(tmp_path):
    out = tmp_path / "wake.json"
    assert wakeup_cost.main(["--seconds", "0.2", "--intervals", "10", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["time.sleep", "asyncio.sleep"]
    for r in rows:
        assert r["interval_ms"] == 10 and r["wakeups_per_s"] > 0 and r["cores"] >= 0 and r["cpu_us_per_wakeup"] >= 0
