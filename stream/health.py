"""Liveness, readiness and the ``/metrics``, ``/healthz``, ``/readyz`` pages of the worker.

Kubernetes restarts a pod whose liveness probe fails and stops routing to (and, for a rollout,
waits on) a pod whose readiness probe fails. The two therefore answer different questions:

* **alive**: the process is able to make progress. It only turns false on a fatal error the
  worker cannot recover from (:meth:`Health.fail`), so a slow table recovery never causes a
  restart loop.
* **ready**: the worker serves fresh answers: every required condition is met (by default its
  tables are recovered and a model is loaded) and no registered probe reports a problem.

Faust serves these pages on its own web server (``web_port``, 6066 by default), next to its
built-in pages, so no second HTTP server is needed.

>>> h = Health()
>>> h.ready, h.reasons()
(False, {'tables_recovered': 'not yet', 'model_loaded': 'not yet'})
>>> h.set_condition("tables_recovered", True)
>>> h.set_condition("model_loaded", True)
>>> h.ready
True
>>> h.set_condition("model_loaded", False, "registry unreachable")
>>> h.ready, h.reasons()
(False, {'model_loaded': 'registry unreachable'})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from stream.metrics import Metrics

#: Conditions a worker must meet before it reports ready.
DEFAULT_REQUIRED: tuple[str, ...] = ("tables_recovered", "model_loaded")

#: A probe returns ``None`` when fine, else a short reason; it is evaluated at every readiness check.
Probe = Callable[[], str | None]


class Health:
    """Process health: an ``alive`` flag and readiness conditions with human-readable reasons.

    The worker sets conditions as it starts (``set_condition("tables_recovered", True)`` once
    recovery completes, ``set_condition("model_loaded", True)`` once a model is loaded), and may
    add probes for states it can read at any time (``add_probe("recovering", ...)``). When a
    :class:`~stream.metrics.Metrics` is given, ``intentstream_worker_ready`` follows readiness.
    """

    def __init__(self, required: Iterable[str] = DEFAULT_REQUIRED, metrics: Metrics | None = None) -> None:
        self._conditions: dict[str, tuple[bool, str]] = {name: (False, "not yet") for name in required}
        self._probes: dict[str, Probe] = {}
        self._fatal: str | None = None
        self._metrics = metrics
        self._publish()

    @property
    def alive(self) -> bool:
        """False only after :meth:`fail`."""
        return self._fatal is None

    @property
    def ready(self) -> bool:
        """True when alive and nothing in :meth:`reasons` stands in the way."""
        return not self.reasons()

    def set_condition(self, name: str, ok: bool, reason: str = "") -> None:
        """Record whether condition ``name`` holds; ``reason`` explains why not (shown by /readyz).

        Any name may be used: a name not in ``required`` becomes required from now on, so a
        worker can add a condition (say, ``"broker_connected"``) without changing this class.
        """
        self._conditions[name] = (ok, "" if ok else (reason or "not yet"))
        self._publish()

    def add_probe(self, name: str, probe: Probe) -> None:
        """Add a check run at every readiness query; it returns ``None`` or the reason it fails."""
        self._probes[name] = probe

    def fail(self, reason: str) -> None:
        """Mark the process dead (liveness fails): for errors only a restart can fix."""
        self._fatal = reason
        self._publish()

    def reasons(self) -> dict[str, str]:
        """Why the worker is not ready, by condition name; empty when it is ready."""
        out: dict[str, str] = {}
        if self._fatal is not None:
            out["alive"] = self._fatal
        for name, (ok, reason) in self._conditions.items():
            if not ok:
                out[name] = reason
        for name, probe in self._probes.items():
            try:
                problem = probe()
            except Exception as exc:  # a broken probe must read as "not ready", never crash the page
                problem = f"probe failed: {exc!r}"
            if problem:
                out[name] = problem
        return out

    def _publish(self) -> None:
        # Probes are not evaluated here (they may read Faust state that is not there yet); the
        # gauge is refreshed again whenever /readyz is served.
        if self._metrics is not None:
            self._metrics.set_ready(self.alive and all(ok for ok, _ in self._conditions.values()))


def register_views(app: Any, metrics: Metrics, health: Health) -> None:
    """Add ``/metrics``, ``/healthz`` and ``/readyz`` to a Faust app's web server.

    * ``GET /metrics``: the registry in Prometheus text format (``CONTENT_TYPE_LATEST``).
    * ``GET /healthz``: 200 ``{"alive": true}`` while alive, else 503 with the reason.
    * ``GET /readyz``: 200 ``{"ready": true}`` when ready, else 503 ``{"ready": false, "reasons": {...}}``.

    Call it once per app, before the worker starts. Do not also enable Faust's own Prometheus
    sensor pages (``faust.sensors.prometheus.setup_prometheus_sensors``), which take ``/metrics``
    too and whose ``*_ms`` names fail ``promtool check metrics``.
    """
    # Imported here so that importing this module (for Health) does not pull in Faust.
    from faust import web

    class MetricsPage(web.View):
        """Prometheus scrape endpoint for this worker's registry."""

        async def get(self, request: web.Request) -> web.Response:
            # Refresh worker_ready with probes included, so a scrape never shows a stale flag.
            metrics.set_ready(health.ready)
            # The content type carries a charset, which aiohttp refuses in content_type=, so it
            # goes in as a plain header.
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    class LivenessPage(web.View):
        """Liveness probe: 503 only after a fatal error."""

        async def get(self, request: web.Request) -> web.Response:
            if health.alive:
                return self.json({"alive": True})
            return self.json({"alive": False, "reason": health.reasons().get("alive", "")}, status=503)

    class ReadinessPage(web.View):
        """Readiness probe: 200 only when tables are recovered and a model is loaded."""

        async def get(self, request: web.Request) -> web.Response:
            reasons = health.reasons()
            metrics.set_ready(not reasons)
            if not reasons:
                return self.json({"ready": True})
            return self.json({"ready": False, "reasons": reasons}, status=503)

    app.page("/metrics", name="intentstream_metrics")(MetricsPage)
    app.page("/healthz", name="intentstream_healthz")(LivenessPage)
    app.page("/readyz", name="intentstream_readyz")(ReadinessPage)
