"""The query API and the live page, on every worker's web port (Faust's aiohttp server).

* ``GET /v1/users/{user_id}``: one shopper as the worker sees them now
  (``schemas/user_lookup.schema.json``, worked out by :func:`stream.logic.lookup.describe`). The
  raw id is pseudonymised here with the workers' key, as the ingest does, and never logged.
* ``GET /v1/signals?after=N``: the newest signals of all workers (the page's live stream);
  ``GET /v1/status``: events/s, consumer lag, partitions and the models serving.
* ``GET /v1/openapi.json``: the OpenAPI document of the above; ``GET /ui/``: the page
  (``stream/web/``, plain HTML and JavaScript, no build step, nothing fetched from elsewhere).

**Which worker answers.** A user's state lives in one internal partition, owned by one worker.
A worker asked about a user it does not own *forwards* the request to the owner, whose address
it takes from the assignment Faust's partition assignor shares with the whole group
(``app.router.table_metadata``: each member's ``canonical_url``, ``INTENTSTREAM_WEB_ADVERTISED_HOST``),
and relays the answer. It does not read a standby instead: standbys are off by default
(``INTENTSTREAM_STANDBY_REPLICAS=0``), a standby's copy trails the owner's, and only the owner
holds the partition's online models and watermark, without which the scores would differ from
the signals the owner emits. Faust's own ``app.table_route`` cannot be used: it finds the owner
by the Kafka partitioner's hash of the key, while the table is partitioned by
:func:`~stream.agents.records.partition_for`. A forwarded request carries
``X-Intentstream-Forwarded`` and is never forwarded again: a worker that received one for a
partition it does not own (a rebalance in between) answers 503 with ``Retry-After``.

**Access.** When ``INTENTSTREAM_API_TOKEN`` is set (a worker in production must set it) every
``/v1/`` request but the OpenAPI document needs ``Authorization: Bearer <token>``, compared in
constant time; a missing or wrong one gets 401 and counts in
``intentstream_api_requests_total{result="unauthorized"}``.

**Bad input** never reaches a 500: an id that is not UTF-8 once percent-decoded, or longer than
an event's user id may be (:data:`models.events.MAX_ID_LEN`), gets 400; other methods get 405
(aiohttp's router) and oversized request lines or headers 400 (aiohttp's parser).

**The event loop.** A lookup is one store read and one small scoring call (the online models and
one GRU head read on the stored state, no recurrence), done on the loop's thread like the
batches' scoring (``stream/agents/serving.py`` says why not on another thread). It holds the
loop for no more than that, but a lookup that arrives during a batch waits for the batch to end;
``benchmarks/query_latency.py`` measures both while the worker processes events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from models.events import MAX_ID_LEN
from stream.agents.records import as_current, partition_for
from stream.logic.ingest import Pseudonymizer
from stream.logic.lookup import Context, describe
from stream.logic.pipeline import UserRecord

if TYPE_CHECKING:
    from stream.agents.runtime import Runtime

log = logging.getLogger(__name__)

USERS_PREFIX = "/v1/users/"
FORWARDED = "X-Intentstream-Forwarded"
FORWARD_TIMEOUT_S = 2.0
FEED_SIZE = 200  # signals the page's stream keeps
FEED_IDLE_S = 120.0  # the signal tail stops this long after the page's last poll


def raw_user_id(raw_path: str) -> str:
    """The user id of a ``/v1/users/...`` request path, percent-decoded as UTF-8.

    >>> raw_user_id("/v1/users/caf%C3%A9?x=1")
    'café'
    >>> raw_user_id("/v1/users/%FF")
    Traceback (most recent call last):
    ...
    ValueError: the user id is not UTF-8 once percent-decoded
    """
    segment = raw_path.split("?", 1)[0][len(USERS_PREFIX) :]
    try:
        user_id = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the user id is not UTF-8 once percent-decoded") from None
    if not user_id:
        raise ValueError("the user id is empty")
    if len(user_id) > MAX_ID_LEN:
        raise ValueError(f"the user id is longer than {MAX_ID_LEN} characters")
    return user_id


def authorized(header: str | None, token: bytes | None) -> bool:
    """Whether an ``Authorization`` header carries the API token (always, when none is set).

    >>> authorized("Bearer s3cret-token-0123456789", b"s3cret-token-0123456789"), authorized(None, b"x" * 16)
    (True, False)
    """
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    # compare_digest on bytes: its time does not depend on where the two first differ.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"), token)


class SignalFeed:
    """The newest signals of every worker, read from the signal topics while the page is open.

    A consumer without a group starts at the first poll, a few signals back from each partition's
    end, and stops after :data:`FEED_IDLE_S` without one, so a worker nobody watches pays nothing.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.items: collections.deque[tuple[int, dict]] = collections.deque(maxlen=FEED_SIZE)
        self.seq = 0
        self.last_poll = 0.0
        self._task: asyncio.Task | None = None

    def since(self, after: int) -> list[tuple[int, dict]]:
        self.last_poll = time.monotonic()
        if self.runtime.bootstrap and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())
        return [(n, s) for n, s in self.items if n > after]

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from stream.broker import client_config

        s = self.runtime.settings
        consumer = AIOKafkaConsumer(
            **client_config(s, self.runtime.bootstrap or ""), group_id=None, enable_auto_commit=False,
            # exactly_once: only what a read_committed consumer of the signals would see
            isolation_level="read_committed" if s.processing_guarantee == "exactly_once" else "read_uncommitted",
        )  # fmt: skip
        try:
            await consumer.start()
            tps = [TopicPartition(t, p) for t in s.signal_topics().values() for p in range(s.signal_partitions)]
            consumer.assign(tps)
            for tp, end in (await consumer.end_offsets(tps)).items():
                consumer.seek(tp, max(0, end - 5))
            while time.monotonic() - self.last_poll < FEED_IDLE_S:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    for r in records:
                        with contextlib.suppress(ValueError, TypeError):
                            self.seq += 1
                            self.items.append((self.seq, json.loads(r.value)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the page loses its stream, the worker nothing
            log.warning("signal feed stopped: %s: %s", type(exc).__name__, exc)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class Rate:
    """Events per second from a counter's samples, taken when asked (over the last 10 s or so)."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)

    def update(self, total: float, now: float | None = None) -> float | None:
        """
        >>> r = Rate()
        >>> r.update(100, now=0.0) is None, r.update(600, now=1.0), r.update(1600, now=3.0)
        (True, 500.0, 500.0)
        """
        now = time.monotonic() if now is None else now
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= 10.0:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        return None if now - t0 <= 0 else round((total - n0) / (now - t0), 1)


class Api:
    """The views' logic, apart from Faust's web classes (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        s = runtime.settings
        self.token = s.api_token.get_secret_value().encode() if s.api_token is not None else None
        self.pseudonymize = Pseudonymizer(s.secret_key())
        self.url = s.advertised_url
        self.feed = SignalFeed(runtime)
        self.rate = Rate()

    # ------------------------------------------------------------------ the lookup
    def owner(self, partition: int) -> str | None:
        """The web address of the worker that owns ``partition`` of the user-state table."""
        table = self.runtime.table
        topic = table.changelog_topic.get_topic_name()
        with contextlib.suppress(Exception):  # no assignment yet
            for url, topics in self.runtime.app.router.table_metadata(table.name).items():
                if partition in topics.get(topic, ()):
                    return str(url).rstrip("/")
        return None

    def read(self, user: str, partition: int) -> UserRecord | None:
        rt = self.runtime
        with as_current(rt.router.partition_event(partition)):
            raw = rt.table.data.get(user.encode())
        return UserRecord.from_bytes(raw) if raw is not None else None

    def answer(self, user: str, partition: int, rec: UserRecord) -> dict[str, Any]:
        rt, s = self.runtime, self.runtime.settings
        ctx = Context(
            rt.pipeline.scorer, rt.pipeline.cfg.state, partition, rt.pipeline.watermarks.get(partition),
            learners=rt.pipeline.learners.get(partition), served=rt.server.active if rt.server else None,
            latent_top_k=s.latent_top_k, session_gap_ms=s.session_gap_ms,
        )  # fmt: skip
        return {**describe(user, rec, ctx), "served_by": self.url}

    async def lookup(self, raw_path: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, extra headers) of a ``/v1/users/...`` request (already authorized)."""
        m = self.runtime.metrics
        try:
            user_id = raw_user_id(raw_path)
        except ValueError as exc:
            m.count_api("bad_request")
            return 400, {"error": "bad_request", "detail": str(exc)}, {}
        user = self.pseudonymize(user_id)
        partition = partition_for(user, self.runtime.settings.events_partitions)
        if partition in self.runtime.router.assigned and not self.runtime.app.in_recovery:
            t0 = time.perf_counter()
            rec = self.read(user, partition)
            if rec is None:
                m.count_api("not_found")
                return 404, {"error": "not_found", "detail": "no state for this user"}, {}
            body = self.answer(user, partition, rec)
            m.api_lookup_seconds.observe(time.perf_counter() - t0)
            m.count_api("found")
            return 200, body, {}
        owner = self.owner(partition)
        if owner is None or owner == self.url or headers.get(FORWARDED):
            # No owner known, or it is this worker but its tables are still recovering, or a
            # forwarded request met a rebalance: the client asks again shortly.
            m.count_api("unavailable")
            return 503, {"error": "unavailable", "detail": "the user's partition is moving or recovering"}, {"Retry-After": "1"}
        return await self.forward(owner, raw_path, headers)

    async def forward(self, owner: str, raw_path: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        m = self.runtime.metrics
        fwd = {FORWARDED: "1"}
        if "Authorization" in headers:
            fwd["Authorization"] = headers["Authorization"]
        from aiohttp import ClientTimeout

        try:
            async with self.runtime.app.http_client.get(
                owner + raw_path, headers=fwd, timeout=ClientTimeout(total=FORWARD_TIMEOUT_S), allow_redirects=False
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
                extra = {"Retry-After": resp.headers["Retry-After"]} if "Retry-After" in resp.headers else {}
        except Exception as exc:  # noqa: BLE001 - the owner unreachable or gone: say so, never 500
            log.warning("forwarding a lookup to %s failed: %s", owner, type(exc).__name__)
            m.count_api("unavailable")
            return 503, {"error": "unavailable", "detail": "the worker owning this user did not answer"}, {"Retry-After": "1"}
        m.count_api("forwarded")
        return status, body, extra

    # ------------------------------------------------------------------ the page's feeds
    def status(self) -> dict[str, Any]:
        rt = self.runtime
        reg = rt.registry
        consumed = sum(
            s.value for fam in reg.collect() if fam.name == "intentstream_events_consumed"
            for s in fam.samples if s.name.endswith("_total")
        )  # fmt: skip
        lag = [s.value for fam in reg.collect() if fam.name == "intentstream_consumer_lag" for s in fam.samples]
        online = {
            str(p): {"intent": pl.intent.warm(), "churn": pl.churn.warm(),
                     "labels": pl.intent.n_learned + pl.churn.n_learned}
            for p, pl in sorted(rt.pipeline.learners.items())
        }  # fmt: skip
        active = rt.server.active if rt.server is not None else None
        return {
            "worker": self.url,
            "ready": rt.health.ready,
            "events_per_s": self.rate.update(consumed),
            "events_consumed": int(consumed),
            "consumer_lag": int(sum(lag)) if lag else None,
            "partitions": sorted(rt.router.assigned),
            "users_in_state": len(rt.pipeline.activity),
            "models": {
                "sequence": active.name if active is not None else None,
                "rule": rt.pipeline.scorer.versions["online"],
                "online_warm_partitions": online,
            },
        }


def register_api(app: Any, runtime: Runtime) -> Api:
    """Add the ``/v1/`` views and the page to a Faust app's web server (see the module docstring)."""
    from faust import web

    api = Api(runtime)
    metrics = runtime.metrics
    static = resources.files("stream") / "web"

    def denied(view: web.View, request: web.Request) -> web.Response | None:
        if authorized(request.headers.get("Authorization"), api.token):
            return None
        metrics.count_api("unauthorized")
        return view.json({"error": "unauthorized", "detail": "a valid bearer token is required"}, status=401,
                         headers={"WWW-Authenticate": 'Bearer realm="intentstream"'})  # fmt: skip

    class UserView(web.View):
        """One shopper (``schemas/user_lookup.schema.json``)."""

        async def get(self, request: web.Request, **_match: str) -> web.Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            status, body, headers = await api.lookup(request.raw_path, request.headers)
            return self.json(body, status=status, headers=headers or None)

    class SignalsView(web.View):
        """The newest signals, after a sequence number the page passes back."""

        async def get(self, request: web.Request) -> web.Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            try:
                after = int(request.query.get("after", "0"))
            except ValueError:
                after = 0
            items = api.feed.since(after)
            return self.json({"next": items[-1][0] if items else after, "signals": [s for _n, s in items]})

    class StatusView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            refused = denied(self, request)
            return refused if refused is not None else self.json(api.status())

    class OpenApiView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            return self.json(openapi())

    class PageView(web.View):
        """The page and its script, from the package (no build step)."""

        async def get(self, request: web.Request, **_match: str) -> web.Response:
            name = request.path.rsplit("/", 1)[-1] or "index.html"
            kinds = {"index.html": "text/html", "app.js": "text/javascript"}
            if name not in kinds:
                return self.json({"error": "not_found"}, status=404)
            return self.bytes((static / name).read_bytes(), content_type=kinds[name],
                              headers={"Cache-Control": "no-cache"})  # fmt: skip

    # Any characters, newlines and encoded slashes too: an id is any text; raw_user_id() reads it.
    app.page("/v1/users/{user_id:[\\s\\S]*}", name="intentstream_user")(UserView)
    app.page("/v1/signals", name="intentstream_signals")(SignalsView)
    app.page("/v1/status", name="intentstream_status")(StatusView)
    app.page("/v1/openapi.json", name="intentstream_openapi")(OpenApiView)
    app.page("/ui/{name:.*}", name="intentstream_page")(PageView)
    return api


def user_schema() -> dict[str, Any]:
    """``schemas/user_lookup.schema.json`` (the package holds the file; schemas/ links to it)."""
    return json.loads((resources.files("stream") / "web" / "user_lookup.schema.json").read_text())


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the query API, with the answer's JSON Schema as a component."""
    schema = user_schema()
    defs = schema.pop("$defs", {})
    for k in ("$schema", "$id"):
        schema.pop(k, None)
    text = json.dumps({"UserLookup": schema, **defs}).replace('"#/$defs/', '"#/components/schemas/')
    error = {"type": "object", "required": ["error"],
             "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}  # fmt: skip

    def answer(description: str, ref: str = "Error") -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}  # fmt: skip

    return {
        "openapi": "3.1.0",
        "info": {"title": "intentstream query API", "version": "1",
                 "description": "Ask a worker about one shopper (docs/API.md)."},  # fmt: skip
        "paths": {
            "/v1/users/{user_id}": {
                "get": {
                    "summary": "One shopper's scores, latent needs, session and last signals",
                    "operationId": "getUser",
                    "security": [{"bearer": []}],
                    "parameters": [{
                        "name": "user_id", "in": "path", "required": True,
                        "description": "the raw user id, as in the input events (pseudonymised by the worker)",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
                    }],  # fmt: skip
                    "responses": {
                        "200": answer("the shopper", "UserLookup"),
                        "400": answer("the id is not UTF-8 or too long"),
                        "401": answer("a valid bearer token is required (INTENTSTREAM_API_TOKEN)"),
                        "404": answer("no state for this user"),
                        "503": answer("the user's partition is moving or recovering: retry (Retry-After)"),
                    },
                }
            },
        },
        "components": {
            "schemas": {**json.loads(text), "Error": error},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
