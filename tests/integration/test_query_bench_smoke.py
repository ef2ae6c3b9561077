"""Smoke test of benchmarks/query_latency.py on tiny sizes: it starts its own broker and worker,
looks users up under load and idle, and reports well-formed figures. No figure is checked
(timings say nothing on a shared machine), only the shape and that the lookups were answered."""

from __future__ import annotations

import json

import pytest

from benchmarks import query_latency

pytestmark = [pytest.mark.integration, pytest.mark.bench]


def test_query_latency_answers_lookups_under_load_and_idle(tmp_path):
    out = tmp_path / "query.json"
    args = ["--rate", "200", "--qps", "20", "--seconds", "4", "--warmup", "4", "--users", "200", "--json", str(out)]
    assert query_latency.main(args) == 0
    doc = json.loads(out.read_text())
    for phase in ("under_load", "idle"):
        r = doc[phase]
        assert r["lookups"] >= 20, doc
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert doc["not_200"] == {} and doc["events_per_s_processed"] > 0 and doc["worker_mean_ms"] > 0
    assert doc["sequence_model"], "the lookups read the sequence model's heads too"
