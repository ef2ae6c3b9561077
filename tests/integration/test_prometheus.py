"""A real Prometheus server scrapes a real worker, and a query returns the worker's data."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from stream.broker import free_port

from .conftest import ROOT, consume, produce
from .test_backbone import ev

ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed: run `make tools`"),
]


def query(port, promql):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def test_prometheus_scrapes_a_worker(system, tmp_path):
    settings, new_worker = system
    worker = new_worker()
    worker.start()
    produce(settings.kafka_bootstrap_servers, settings.events_topic,
            [(b"erin", ev(i, "click", user="erin", item_id=f"i{i}", category_id="books")) for i in range(5)])  # fmt: skip
    consume(settings.kafka_bootstrap_servers, [settings.latent_topic], until=lambda m: len(m) >= 1, timeout=30)

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        f"  - job_name: intentstream\n    static_configs: [{{targets: ['127.0.0.1:{worker.web_port}']}}]\n"
    )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                result = query(port, 'sum(intentstream_events_consumed_total{type="click"})')
            except OSError:
                result = []
            if result and float(result[0]["value"][1]) >= 5:
                break
            time.sleep(1)
        assert result and float(result[0]["value"][1]) == 5.0
        # erin's record was written (once per batch she was in, before her events were counted)
        written = query(port, "sum(intentstream_state_record_bytes_count)")
        assert written and float(written[0]["value"][1]) >= 1
        mean = query(port, "sum(intentstream_state_record_bytes_sum) / sum(intentstream_state_record_bytes_count)")
        assert mean and 100 < float(mean[0]["value"][1]) < 4096
        up = query(port, 'up{job="intentstream"}')
        assert up and up[0]["value"][1] == "1"
        # The project's alert rules load and evaluate against the live series.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert rules and all(rule["health"] in ("ok", "unknown") for rule in rules)
    finally:
        prom.terminate()
        prom.wait(20)
