"""stream.metrics and stream.lag: declarations, label hygiene, lag series, lag arithmetic."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream.lag import compute_lag, read_offsets, select_partitions
from stream.metrics import (
    API_RESULTS,
    EVENT_TYPE_LABELS,
    INVALID_REASONS,
    LABEL_NAMES,
    REBUILD_CAUSES,
    SEQUENCE_STATES,
    TASKS,
    Metrics,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found; install with: apt-get install -y prometheus"
)

# Every metric of issue 9, by the family name the text exposition uses.
EXPECTED = {
    "intentstream_events_consumed_total": "counter",
    "intentstream_invalid_events_total": "counter",
    "intentstream_dead_letters_total": "counter",
    "intentstream_late_events_total": "counter",
    "intentstream_duplicate_events_total": "counter",
    "intentstream_state_rebuilds_total": "counter",
    "intentstream_records_refetched_total": "counter",
    "intentstream_processing_seconds": "histogram",
    "intentstream_processing_batch_size": "histogram",
    "intentstream_event_to_signal_seconds": "histogram",
    "intentstream_signals_emitted_total": "counter",
    "intentstream_events_routed_total": "counter",
    "intentstream_local_partitions": "gauge",
    "intentstream_consumer_lag": "gauge",
    "intentstream_rebalances_total": "counter",
    "intentstream_assigned_partitions": "gauge",
    "intentstream_users_in_state": "gauge",
    "intentstream_state_record_bytes": "histogram",
    "intentstream_pending_labels": "gauge",
    "intentstream_online_roc_auc": "gauge",
    "intentstream_online_log_loss": "gauge",
    "intentstream_online_calibration_error": "gauge",
    "intentstream_online_models_warm": "gauge",
    "intentstream_online_labels_learned": "gauge",
    "intentstream_sequence_model_info": "gauge",
    "intentstream_scoring_batch_size": "histogram",
    "intentstream_scoring_seconds": "histogram",
    "intentstream_sequence_states_total": "counter",
    "intentstream_shadow_score_difference": "histogram",
    "intentstream_shadow_model_info": "gauge",
    "intentstream_model_refresh_total": "counter",
    "intentstream_worker_ready": "gauge",
    "intentstream_api_requests_total": "counter",
    "intentstream_api_lookup_seconds": "histogram",
}


def exercised(m: Metrics) -> Metrics:
    """Give every metric at least one sample, the way a running worker would."""
    m.count_event("click", 5)
    m.count_invalid("missing_field")
    m.dead_letters.inc()
    m.late_events.inc()
    m.duplicate_events.inc()
    m.count_state_rebuild("unclean_shutdown")
    m.records_refetched.inc(2)
    m.observe_batch(1000, 0.4)
    m.observe_event_to_signal(1_700_000_000.0, sent_at_s=1_700_000_000.25)
    m.count_signal("purchase_intent")
    m.events_routed.labels(path="local").inc(3)
    m.local_partitions.set(2)
    m.set_lag({("shop.events", 0): 3, ("shop.events", 1): 0})
    m.rebalances.inc()
    m.count_sequence_states(7, 1)
    m.retain_partitions([("shop.events", 0), ("shop.events", 1)])
    m.users_in_state.set(1234)
    m.observe_records([620, 1040, 2100])
    m.set_pending_labels("purchase_intent", 17)
    m.set_online_quality("purchase_intent", roc_auc=0.81, log_loss=0.42, calibration_error=0.03)
    m.set_sequence_model("seq-2026-11-22T17-00-00Z")
    m.observe_scoring(256, 0.085)
    m.set_shadow_model("seq-000004")
    m.observe_shadow("purchase_intent", [0.02, -0.1])
    m.count_model_refresh(True)
    m.count_model_refresh(False)
    m.set_ready(True)
    return m


def families(m: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}


def test_every_metric_is_exposed_with_its_type_and_a_sample() -> None:
    text = exercised(Metrics(CollectorRegistry())).exposition().decode()
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    # prometheus_client adds a *_created gauge per counter and histogram (creation time).
    assert {k: v for k, v in declared.items() if not k.endswith("_created")} == EXPECTED
    sample_names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")
    }
    for name, kind in EXPECTED.items():
        wanted = name + "_count" if kind == "histogram" else name
        assert wanted in sample_names, f"{name} has no sample"


def test_a_fresh_registry_per_instance_and_declarations_happen_once() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.count_event("purchase")
    assert a.value("intentstream_events_consumed_total", type="purchase") == 1
    assert b.value("intentstream_events_consumed_total", type="purchase") == 0
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_bounded_counters_start_at_zero_and_quality_gauges_start_absent() -> None:
    m = Metrics(CollectorRegistry())
    for t in EVENT_TYPE_LABELS:
        assert m.value("intentstream_events_consumed_total", type=t) == 0
    for r in INVALID_REASONS:
        assert m.value("intentstream_invalid_events_total", reason=r) == 0
    for task in TASKS:
        assert m.value("intentstream_signals_emitted_total", task=task) == 0
        # An AUC of 0 before the first label would fire the AUC alert.
        assert m.value("intentstream_online_roc_auc", task=task) is None


@needs_promtool
def test_exposition_passes_promtool_check_metrics() -> None:
    body = exercised(Metrics(CollectorRegistry())).exposition()
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout.decode() + proc.stderr.decode()
    )


def test_label_names_come_from_the_allow_list_and_values_stay_bounded() -> None:
    m = exercised(Metrics(CollectorRegistry()))
    user_like = ["u_8f14e45fceea167a5a36dedd4bea2543", "user-42", "alice@example.com", "42", "<script>"]
    for value in user_like:
        m.count_event(value)
        m.count_invalid(value)
    with pytest.raises(ValueError):
        m.count_signal(user_like[0])
    with pytest.raises(ValueError):
        m.set_pending_labels(user_like[0], 1)

    allowed_values = {
        "type": set(EVENT_TYPE_LABELS),
        "reason": set(INVALID_REASONS),
        "task": set(TASKS),
        "result": {"success", "failure", *API_RESULTS},
        "path": {"local", "forwarded"},
        "cause": set(REBUILD_CAUSES),
        "state": set(SEQUENCE_STATES),
    }
    for fam in families(m).values():
        for sample in fam.samples:
            names = set(sample.labels) - {"le"}  # le: histogram bucket bound
            assert names <= LABEL_NAMES, f"{sample.name} has unexpected labels {names - LABEL_NAMES}"
            for name, value in sample.labels.items():
                if name in allowed_values:
                    assert value in allowed_values[name], f"{sample.name}{{{name}={value!r}}}"
    # The user-like values were folded into "other", five times each.
    assert m.value("intentstream_events_consumed_total", type="other") == len(user_like)
    assert m.value("intentstream_invalid_events_total", reason="other") == len(user_like)
    # count_invalid also counts the record as consumed, so the sum over type is every record read.
    assert m.value("intentstream_events_consumed_total", type="invalid") == 1 + len(user_like)


def test_revoked_partitions_lose_their_lag_series() -> None:
    m = Metrics(CollectorRegistry())
    m.set_lag({("shop.events", 0): 5, ("shop.events", 1): 7, ("shop.events", 2): 9})
    m.retain_partitions([("shop.events", 1)])
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="0") is None
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="1") == 7
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="2") is None
    assert m.value("intentstream_assigned_partitions") == 1
    assert b'partition="0"' not in m.exposition()

    m.remove_partition("shop.events", 1)
    m.remove_partition("shop.events", 1)  # twice, or never set: a no-op
    m.remove_partition("other.topic", 3)
    assert b"intentstream_consumer_lag{" not in m.exposition()


def test_event_to_signal_is_clamped_at_zero_for_clock_skew() -> None:
    m = Metrics(CollectorRegistry())
    m.observe_event_to_signal(100.0, sent_at_s=99.0)
    m.observe_event_to_signal(100.0, sent_at_s=100.5)
    assert m.value("intentstream_event_to_signal_seconds_count") == 2
    assert m.value("intentstream_event_to_signal_seconds_sum") == 0.5


def test_quality_gauges_ignore_undefined_values() -> None:
    m = Metrics(CollectorRegistry())
    m.set_online_quality("churn_risk", roc_auc=0.7)
    m.set_online_quality("churn_risk", roc_auc=float("nan"), log_loss=0.5)
    assert m.value("intentstream_online_roc_auc", task="churn_risk") == 0.7
    assert m.value("intentstream_online_log_loss", task="churn_risk") == 0.5
    assert m.value("intentstream_online_calibration_error", task="churn_risk") is None


def test_sequence_model_info_keeps_one_version() -> None:
    m = Metrics(CollectorRegistry())
    m.set_sequence_model("v1")
    m.set_sequence_model("v2")
    assert m.value("intentstream_sequence_model_info", version="v2") == 1
    assert m.value("intentstream_sequence_model_info", version="v1") is None


# --------------------------------------------------------------------------- compute_lag
T0, T1, T2, T3 = (TP("shop.events", p) for p in range(4))


@pytest.mark.parametrize(
    ("ends", "positions", "committed", "expected"),
    [
        pytest.param({T0: 100}, {T0: 60}, {T0: 10}, {T0: 40}, id="position wins over committed"),
        pytest.param({T0: 100}, {T0: None}, {T0: 75}, {T0: 25}, id="committed when no position"),
        pytest.param({T0: 100}, {}, {T0: 75}, {T0: 25}, id="committed when partition missing from positions"),
        pytest.param({T0: 100}, {T0: 100}, {}, {T0: 0}, id="caught up"),
        pytest.param({T0: 100}, {T0: 103}, {}, {T0: 0}, id="never negative (end read before position)"),
        pytest.param({T0: 100}, {T0: None}, {T0: None}, {}, id="unknown without position or commit"),
        pytest.param({T0: 100}, {T0: -1}, {T0: -1}, {}, id="negative sentinels mean unknown"),
        pytest.param({T0: None}, {T0: 5}, {}, {}, id="unknown without end offset"),
        pytest.param({T0: 0}, {T0: 0}, {}, {T0: 0}, id="empty partition"),
        pytest.param(
            {T0: 10, T1: 20, T2: 30, T3: 40},
            {T0: 10, T1: None, T2: 1},
            {T1: 5, T3: 40},
            {T0: 0, T1: 15, T2: 29, T3: 0},
            id="mixed",
        ),
    ],
)
def test_compute_lag(ends, positions, committed, expected) -> None:
    assert compute_lag(ends, positions, committed) == expected


def test_only_partitions_with_end_offsets_are_reported() -> None:
    # A position for a partition we have no end offset for (e.g. just revoked) is ignored.
    assert compute_lag({T0: 10}, {T0: 4, T1: 4}, {T1: 2}) == {T0: 6}


def test_select_partitions_skips_table_changelogs() -> None:
    changelog = TP("intentstream-user_state-changelog", 0)
    repart = TP("intentstream-events-by-user", 0)
    assigned = {T0, T1, changelog, repart}
    assert select_partitions(assigned) == {T0, T1, repart}
    assert select_partitions(assigned, topics={"shop.events"}) == {T0, T1}


class FakeConsumer:
    """Just the accessors :func:`stream.lag.read_offsets` uses, with revoked partitions raising."""

    def __init__(self) -> None:
        self.ends = {T0: 100, T1: 50}
        self.positions = {T0: 90}
        self._committed_offset = {T1: 45}

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]  # KeyError for a revoked partition, as the client raises for it

    async def position(self, tp: TP) -> int | None:
        if tp not in self.ends:
            raise RuntimeError("partition not assigned")
        return self.positions.get(tp)


def test_read_offsets_feeds_compute_lag_and_tolerates_revoked_partitions() -> None:
    import asyncio

    ends, positions, committed = asyncio.run(read_offsets(FakeConsumer(), [T0, T1, T2]))
    assert ends == {T0: 100, T1: 50, T2: None}
    assert positions == {T0: 90, T1: None, T2: None}
    assert compute_lag(ends, positions, committed) == {T0: 10, T1: 5}


class FakeApp:
    """The one attribute of a Faust app that :func:`stream.lag.update_lag` reads."""

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer


def test_update_lag_publishes_input_partitions_and_drops_the_rest() -> None:
    import asyncio

    from stream.lag import update_lag

    consumer = FakeConsumer()
    consumer.ends[TP("intentstream-user_state-changelog", 0)] = 10_000  # assigned, written, never read
    m = Metrics(CollectorRegistry())
    m.set_lag({("shop.events", 3): 99})  # owned before the last rebalance

    lag = asyncio.run(update_lag(FakeApp(consumer), m))

    assert lag == {T0: 10, T1: 5}
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="0") == 10
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="1") == 5
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="3") is None
    assert "changelog" not in "".join(ln for ln in m.exposition().decode().splitlines() if not ln.startswith("#"))
    assert m.value("intentstream_assigned_partitions") == 2


def test_install_counts_rebalances_and_removes_revoked_series_on_a_faust_app() -> None:
    import asyncio

    import faust

    from stream.lag import install

    async def main() -> Metrics:
        app = faust.App("lag-install-test", broker="memory://", store="memory://")
        m = Metrics(CollectorRegistry())
        install(app, m, interval_s=60.0)
        m.set_lag({("shop.events", 0): 1, ("shop.events", 1): 2, ("shop.events", 2): 3})
        await app.on_partitions_revoked.send({T2})
        assert m.value("intentstream_consumer_lag", topic="shop.events", partition="2") is None
        assert m.value("intentstream_consumer_lag", topic="shop.events", partition="1") == 2
        await app.on_partitions_assigned.send({T0, TP("intentstream-user_state-changelog", 0)})
        return m

    m = asyncio.run(main())
    assert m.value("intentstream_rebalances_total") == 1
    assert m.value("intentstream_assigned_partitions") == 1
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="0") == 1
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="1") is None


def test_a_reader_retains_only_its_own_topics() -> None:
    """Faust's lag reader (internal topic) must not delete the raw ingest's shop.events series."""
    m = Metrics(CollectorRegistry())
    m.set_lag({("shop.events", 0): 5, ("app-events-by-user", 0): 2, ("app-events-by-user", 1): 3})
    m.retain_partitions([("app-events-by-user", 1)], topics={"app-events-by-user"})
    assert m.value("intentstream_consumer_lag", topic="shop.events", partition="0") == 5
    assert m.value("intentstream_consumer_lag", topic="app-events-by-user", partition="0") is None
    assert m.value("intentstream_consumer_lag", topic="app-events-by-user", partition="1") == 3
