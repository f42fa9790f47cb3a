"""schemathesis against runtime/api/openapi.json, on an in-process sidecar app.

The app is the real one (:func:`runtime.api.app.build_app`) over in-memory components: a memory
broker as pub/sub component and system bus, an in-memory state store, service invocation served
by an echo app, async invocations with an in-memory result store.  schemathesis generates
requests from the document, valid and invalid ones (bounded: 25 examples per operation,
derandomized, so every run sends the same requests), and checks every answer:

- ``not_a_server_error``: no 5xx, except the three 500s Dapr defines for what a caller asked
  (:data:`DAPR_DEFINED_500`: a failed transaction, an etag mismatch included; an app that is not
  running; ``healthz?appid=`` naming another app);
- ``dapr_error_body``: every 4xx and 5xx has Dapr's error body ``{"errorCode", "message"}``
  (HEAD answers have no body, by HTTP's rules).

Invocations are sent to the sidecar's own app id, so that they reach the echo app; an unknown app
id is a 500 ERR_DIRECT_INVOKE at once, and the random-request fuzzer (tests/test_fuzz.py) sends
those.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import CheckContext, CheckFunction, Response
from schemathesis.checks import not_a_server_error

from bus.envelope import Headers
from bus.memory import MemoryBroker
from bus.options import RetryPolicy
from invoke.async_client import AsyncClient
from invoke.async_server import AsyncPolicy
from invoke.call import Call, Reply
from invoke.client import Invoker
from invoke.results import Results
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.api.openapi import DOCUMENT
from runtime.async_invocations import Invocations, StateResultStore
from runtime.pubsub.components import PubSubs
from state import MemoryStore
from state.keys import KeyStrategy
from state.service import StateClient, StateService, StoreConfig
from tests.runtime_asgi import Component

Case = schemathesis.Case[Any]
APP_ID = "checkout"
STORE = "statestore"
BASE_URL = "http://testserver"  # schemathesis's in-process ASGI client
QUICK = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.02, jitter=0.0)
DAPR_DEFINED_500 = frozenset(
    {"ERR_STATE_TRANSACTION", "ERR_DIRECT_INVOKE", "ERR_HEALTH_APPID_NOT_MATCH"}
)
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": 25, "deterministic": True},
        # The coverage phase is off: it doubles the time for little more than the verbs a path
        # does not serve, which tests/test_fuzz.py sends.
        "phases": {"coverage": {"enabled": False}},
    }
)


async def echo(call: Call, timeout: float) -> Reply:
    """The app behind the sidecar: answers every method with the request's body."""
    content_type = call.headers.get("content-type") or "application/octet-stream"
    return Reply(200, Headers([("content-type", content_type)]), call.body)


def sidecar_app() -> ASGIApp:
    """The sidecar's app; its lifespan connects the components in schemathesis's event loop."""
    broker = MemoryBroker()
    pubsubs = PubSubs([Component("pubsub", broker)])
    state = SidecarState(app_id=APP_ID, pubsubs=pubsubs, api_ready=True, bus=broker)
    service = StateService(MemoryStore(STORE), StoreConfig(keys=KeyStrategy(store=STORE)))
    state.states = StateClient(APP_ID, broker, [service])
    state.invoker = Invoker(broker, APP_ID)
    results_store = MemoryStore("results")
    client = AsyncClient(broker, APP_ID, Results(StateResultStore(results_store), ttl=60))

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await broker.connect()
        await pubsubs.connect()
        await state.states.start()  # type: ignore[union-attr]
        await state.invoker.serve(echo)  # type: ignore[union-attr]
        await client.start()
        state.invocations = Invocations(client, results_store, broker, AsyncPolicy(retry=QUICK))
        try:
            yield
        finally:
            await client.stop()
            await state.invoker.close()  # type: ignore[union-attr]
            await state.states.close()  # type: ignore[union-attr]
            await pubsubs.close()
            await broker.close()

    return build_app(state, lifespan=lifespan)


# Loaded from the file at collection (schemathesis's lazy from_fixture does not run on pytest 9);
# tests/test_openapi.py checks the sidecar serves these very bytes.
schema = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG)


@pytest.fixture
def sidecar() -> ASGIApp:
    """A fresh sidecar app per operation; schemathesis's plugin ends its lifespan after each."""
    return sidecar_app()


def dapr_error_body(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx and 5xx answer has Dapr's error body."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{response.status_code}, not JSON: {response.content!r}") from None
    assert isinstance(body, dict), body
    assert isinstance(body.get("errorCode"), str) and body["errorCode"], body
    assert isinstance(body.get("message"), str), body
    return None


def no_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """``not_a_server_error``, less the 500s Dapr defines for what the caller asked."""
    if response.status_code == 500 and _error_code(response) in DAPR_DEFINED_500:
        return None
    return not_a_server_error(ctx, response, case)


def _error_code(response: Response) -> object:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body.get("errorCode") if isinstance(body, dict) else None


def aimed(case: Case) -> Case:
    """Invocations go to this sidecar's own app (see the module docstring)."""
    if "appId" in (case.path_parameters or {}):
        case.path_parameters["appId"] = APP_ID
    return case


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_sidecar_answers_as_its_document_says(case: Case, sidecar: ASGIApp) -> None:
    checks: list[CheckFunction] = [no_server_error, dapr_error_body]
    aimed(case).call_and_validate(base_url=BASE_URL, app=sidecar, checks=checks)
