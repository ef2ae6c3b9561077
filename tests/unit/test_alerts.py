"""The Prometheus alert rules and the Grafana dashboard: valid, tested, and only about real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docker/prometheus/alerts.yml"
RULES_TEST = ROOT / "docker/prometheus/rules_test.yml"
DASHBOARD = ROOT / "docker/grafana/dashboards/intentstream.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found; install with: apt-get install -y prometheus"
)

METRIC_TOKEN = re.compile(r"\bintentstream_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def known_names() -> set[str]:
    """Sample names (for queries) and family names (which the alert texts mention) of Metrics."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    return set(metrics.series_names()) | {f.name for f in registry.collect()}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guard against vacuous tests: a wrong expectation must make promtool fail."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    broken = RULES_TEST.read_text().replace("severity: critical", "severity: page", 1)
    assert broken != RULES_TEST.read_text()
    (tmp_path / "rules_test.yml").write_text(broken)
    proc = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert proc.returncode != 0
    assert "IntentstreamWorkerNotReady" in proc.stdout + proc.stderr


def test_alerts_the_issue_asks_for_exist() -> None:
    names = set(re.findall(r"^\s*- alert: (\S+)$", ALERTS.read_text(), flags=re.M))
    assert names == {
        "IntentstreamConsumerLagGrowing",
        "IntentstreamNoEvents",
        "IntentstreamDeadLetterRateHigh",
        "IntentstreamModelRefreshFailing",
        "IntentstreamOnlineAucLow",
        "IntentstreamWorkerNotReady",
    }
    tested = set(re.findall(r"alertname: (\S+)$", RULES_TEST.read_text(), flags=re.M))
    assert len(tested) >= 2 and tested <= names


def test_alerts_only_mention_metrics_that_exist() -> None:
    unknown = set(METRIC_TOKEN.findall(ALERTS.read_text())) - known_names()
    assert not unknown, f"alerts.yml refers to metrics Metrics does not declare: {sorted(unknown)}"


def test_dashboard_parses_and_uses_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_only_metrics_that_exist() -> None:
    series = Metrics(CollectorRegistry()).series_names()
    queried = {name for expr in dashboard_exprs() for name in METRIC_TOKEN.findall(expr)}
    assert queried - series == set()
    # ...and it covers the metrics the issue lists (histograms through their buckets or sums).
    for family in [
        "events_consumed_total",
        "invalid_events_total",
        "dead_letters_total",
        "processing_seconds_bucket",
        "event_to_signal_seconds_bucket",
        "signals_emitted_total",
        "consumer_lag",
        "users_in_state",
        "pending_labels",
        "online_roc_auc",
        "online_log_loss",
        "sequence_model_info",
        "scoring_batch_size_sum",
        "scoring_seconds_bucket",
        "model_refresh_total",
        "worker_ready",
    ]:
        assert "intentstream_" + family in queried, family


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no query linter, so each query becomes a recording rule and is checked as one."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(concrete)}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    proc = promtool("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
