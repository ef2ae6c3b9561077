"""/metrics, /healthz and /readyz served by a real Faust web app, called over HTTP in-process.

The app is never started (no broker is needed): ``app.web.wsgi()`` builds Faust's aiohttp
application with every registered page, and aiohttp's test server serves it on a local port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream.health import Health, register_views
from stream.metrics import Metrics

Check = Callable[[TestClient], Awaitable[None]]


def serve(metrics: Metrics, health: Health, check: Check) -> None:
    """Register the views on a fresh app, serve it, and run ``check`` against it."""

    async def main() -> None:
        app = faust.App("health-views-test", broker="memory://", store="memory://")
        register_views(app, metrics, health)
        web_app = await app.web.wsgi()
        async with TestClient(TestServer(web_app)) as client:
            await check(client)

    asyncio.run(main())


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_metrics_page_serves_the_registry_in_text_format(metrics: Metrics) -> None:
    metrics.count_event("purchase", 3)
    metrics.set_lag({("shop.events", 1): 42})

    async def check(client: TestClient) -> None:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        body = await resp.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        assert samples[("intentstream_events_consumed_total", (("type", "purchase"),))] == 3
        lag_key = ("intentstream_consumer_lag", (("partition", "1"), ("topic", "shop.events")))
        assert samples[lag_key] == 42
        # Not ready yet, and the scrape says so.
        assert samples[("intentstream_worker_ready", ())] == 0

    serve(metrics, Health(metrics=metrics), check)


def test_readyz_is_503_with_reasons_until_tables_and_model_are_ready(metrics: Metrics) -> None:
    health = Health(metrics=metrics)

    async def check(client: TestClient) -> None:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {
            "ready": False,
            "reasons": {"tables_recovered": "not yet", "model_loaded": "not yet"},
        }

        health.set_condition("tables_recovered", True)
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["reasons"] == {"model_loaded": "not yet"}

        health.set_condition("model_loaded", True)
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"ready": True}
        assert metrics.value("intentstream_worker_ready") == 1

        # A probe (say, a rebalance in progress) takes readiness away again.
        health.add_probe("recovering", lambda: "table recovery in progress")
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["reasons"] == {"recovering": "table recovery in progress"}
        assert metrics.value("intentstream_worker_ready") == 0

    serve(metrics, health, check)


def test_healthz_is_200_while_alive_even_when_not_ready(metrics: Metrics) -> None:
    health = Health(metrics=metrics)

    async def check(client: TestClient) -> None:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert json.loads(await resp.text()) == {"alive": True}

        health.fail("model scorer thread died")
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert await resp.json() == {"alive": False, "reason": "model scorer thread died"}
        # A dead worker is not ready either.
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["reasons"]["alive"] == "model scorer thread died"

    serve(metrics, health, check)


def test_a_raising_probe_reads_as_not_ready() -> None:
    health = Health(required=())

    def broken() -> str | None:
        raise RuntimeError("boom")

    health.add_probe("broken", broken)
    assert not health.ready
    assert health.reasons()["broken"].startswith("probe failed: RuntimeError")
