"""The query API (stream/api.py) served by a real Faust web app over HTTP, in-process.

The app is built by ``create_app`` but never started (no broker): ``app.web.wsgi()`` gives
Faust's aiohttp application with every page, served on a local port from a thread of its own so
that blocking clients (urllib, schemathesis) can call it. The table's store is filled with
records the pipeline made. tests/integration/test_api.py runs the same API on real workers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stream.agents.records import as_current, partition_for
from stream.api import openapi, user_schema
from stream.broker import free_port
from stream.logic.ingest import Pseudonymizer, ingest_one
from stream.logic.simulator import ShopperSimulator
from stream.settings import Settings

KEY = "api-views-test-key-0123456789"
TOKEN = "api-views-test-token-0123456789"


@dataclass
class Served:
    url: str
    runtime: Any
    users: list[str]  # raw ids of users with state

    def get(self, path: str, token: str | None = TOKEN, method: str = "GET", headers: dict | None = None):
        req = urllib.request.Request(self.url + path, method=method, headers=dict(headers or {}))
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)


def _fill(runtime, n_events: int = 1500) -> list[str]:
    """Run simulated events through the worker's own pipeline and store the records it made."""
    pseudo = Pseudonymizer(KEY.encode())
    raw = list(ShopperSimulator(seed=11, users=25).take(n_events))
    events = [ingest_one(json.dumps(e).encode(), pseudo) for e in raw]
    n = runtime.settings.events_partitions
    records: dict = {}
    pairs = [(partition_for(e.user, n), e) for e in events]
    out = runtime.pipeline.step({e.user: None for e in events}, pairs, lambda p, us: {u: records.get(u) for u in us})
    for user, rec in out.records.items():
        with as_current(runtime.router.partition_event(out.partitions[user])):
            runtime.table.data[user.encode()] = rec.to_bytes()
    runtime.router.assigned = set(range(n))
    return sorted({e["user_id"] for e in raw if pseudo(e["user_id"]) in out.records})


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    from stream.app import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("api"), store="memory://", pseudonym_key=KEY,
                        api_token=TOKEN, sequence_serving=False, online_learning=False)  # fmt: skip
    port, ready, stop = free_port(), threading.Event(), None
    box: dict[str, Any] = {}

    def serve() -> None:
        nonlocal stop
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        from aiohttp import web

        app = create_app(settings, "127.0.0.1:9")
        box["runtime"] = app.runtime
        box["users"] = _fill(app.runtime)
        runner = web.AppRunner(loop.run_until_complete(app.web.wsgi()))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        stop = asyncio.Event()
        ready.set()
        loop.run_until_complete(stop.wait())
        loop.run_until_complete(runner.cleanup())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(60), "the web app did not start"
    yield Served(f"http://127.0.0.1:{port}", box["runtime"], box["users"])
    stop._loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
    t.join(10)


def test_a_known_user_is_answered_in_the_schema_s_shape(served: Served) -> None:
    status, body, headers = served.get(f"/v1/users/{served.users[0]}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    d = json.loads(body)
    Draft202012Validator(user_schema()).validate(d)
    assert d["user"] == Pseudonymizer(KEY.encode())(served.users[0])
    assert d["served_by"] == served.runtime.settings.advertised_url
    assert any(d["last_signals"].values()) or d["events"]["click"] >= 0


def test_unknown_user_is_404_and_counted(served: Served) -> None:
    m = served.runtime.metrics
    before = m.value("intentstream_api_requests_total", result="not_found")
    status, body, _h = served.get("/v1/users/nobody-we-know")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert m.value("intentstream_api_requests_total", result="not_found") == before + 1


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abc", TOKEN + "x", ""])
def test_a_missing_or_wrong_token_is_401_and_counted_without_the_user(served: Served, token) -> None:
    m = served.runtime.metrics
    before = m.value("intentstream_api_requests_total", result="unauthorized")
    for path in (f"/v1/users/{served.users[0]}", "/v1/status", "/v1/signals"):
        status, body, headers = served.get(path, token=token)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert served.users[0].encode() not in body
    assert m.value("intentstream_api_requests_total", result="unauthorized") == before + 3
    exposition = m.exposition().decode()
    assert served.users[0] not in exposition and Pseudonymizer(KEY.encode())(served.users[0]) not in exposition


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/users/" + "x" * 129, 400),  # longer than any user id an event may carry
        ("/v1/users/%FF%FE", 400),  # not UTF-8 once percent-decoded
        ("/v1/users/%C3", 400),  # a cut UTF-8 sequence
        ("/v1/users/", 400),  # empty
        ("/v1/users/a%2Fb%00c", 404),  # odd but valid: looked up like any other id
        ("/v1/users/caf%C3%A9", 404),
        ("/v1/users/a%0Ab", 404),  # a newline in an id (schemathesis found the router's 404 in text/plain)
    ],
)
def test_bad_ids_get_400_never_500(served: Served, path: str, status: int) -> None:
    got, body, _h = served.get(path)
    assert got == status, body


def test_wrong_methods_and_huge_headers_never_get_a_500(served: Served) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        assert served.get(f"/v1/users/{served.users[0]}", method=method)[0] == 405
    assert served.get(f"/v1/users/{served.users[0]}", method="HEAD")[0] == 200
    assert served.get(f"/v1/users/{served.users[0]}", headers={"X-Big": "x" * 20_000})[0] == 400
    assert served.get(f"/v1/users/{served.users[0]}", headers={f"X-H{i}": "x" * 100 for i in range(200)})[0] == 400
    assert served.get("/v1/users/" + "y" * 20_000)[0] == 400


def test_a_user_of_a_partition_nobody_owns_yet_gets_503_with_retry_after(served: Served) -> None:
    rt = served.runtime
    saved, rt.router.assigned = rt.router.assigned, set()
    try:
        status, body, headers = served.get(f"/v1/users/{served.users[0]}")
    finally:
        rt.router.assigned = saved
    assert status == 503 and headers["Retry-After"] == "1" and json.loads(body)["error"] == "unavailable"


def test_status_and_page_are_served_and_the_page_loads_nothing_from_elsewhere(served: Served) -> None:
    status, body, _h = served.get("/v1/status")
    d = json.loads(body)
    assert status == 200 and d["partitions"] == [0, 1, 2, 3] and d["users_in_state"] > 0
    for name in ("", "index.html", "app.js"):
        status, body, headers = served.get(f"/ui/{name}", token=None)
        assert status == 200 and b"http://" not in body and b"https://" not in body, name
    assert served.get("/ui/../stream/api.py", token=None)[0] == 404


def test_the_openapi_document_is_served_and_embeds_the_schema(served: Served) -> None:
    status, body, _h = served.get("/v1/openapi.json", token=None)
    doc = json.loads(body)
    assert status == 200 and doc == openapi()
    assert set(doc["components"]["schemas"]["UserLookup"]["required"]) == set(user_schema()["required"])


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(served: Served) -> None:
    import hypothesis
    import schemathesis

    schema = schemathesis.openapi.from_dict(openapi())
    op = schema["/v1/users/{user_id}"]["GET"]
    known = iter(served.users * 4)
    calls = {"n": 0, "found": 0}

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
    @hypothesis.given(case=op.as_strategy(), use_known=hypothesis.strategies.booleans())
    def check(case, use_known) -> None:
        if use_known:
            case.path_parameters = {"user_id": next(known, served.users[0])}
        response = case.call_and_validate(base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"})
        calls["n"] += 1
        calls["found"] += response.status_code == 200

    check()
    assert calls["n"] >= 100 and calls["found"] >= 10


def test_a_lookup_is_forwarded_once_and_a_forwarded_one_never_again(served: Served) -> None:
    """The owner known but not this worker: the request goes there with the token and the hop
    header. Here "there" is this same server under another name, which does not own the user
    either, so the forwarded request must stop at 503 instead of bouncing."""
    rt = served.runtime
    port = served.url.rsplit(":", 1)[1]
    saved_assigned, saved_owner = rt.router.assigned, rt.api.owner
    rt.router.assigned, rt.api.owner = set(), lambda partition: f"http://localhost:{port}"
    m = rt.metrics
    fwd0 = m.value("intentstream_api_requests_total", result="forwarded")
    try:
        status, body, headers = served.get(f"/v1/users/{served.users[0]}")
        assert status == 503 and headers["Retry-After"] == "1", body
        assert m.value("intentstream_api_requests_total", result="forwarded") == fwd0 + 1
        # a wrong token is refused before any forwarding
        assert served.get(f"/v1/users/{served.users[0]}", token="bad-token-0123456789abcdef")[0] == 401
        assert m.value("intentstream_api_requests_total", result="forwarded") == fwd0 + 1
    finally:
        rt.router.assigned, rt.api.owner = saved_assigned, saved_owner
