"""The OpenAPI document (runtime/api/openapi.json) against the routes the sidecar's app mounts.

Both ways: every route the Starlette app mounts (the invoke catch-all and the single-publish
endpoint in front of the router included) is in the document with each of its verbs, and every
path and verb of the document is served by a mounted route.  Plus: the served document is the
file, every ``$ref`` resolves, and every error answer is documented as Dapr's error body.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Match, Route

from bus.memory import MemoryBroker, MemoryHub
from runtime.api import publish as publish_api
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.api.invoke import INVOKE_PREFIX, InvokeRoute
from runtime.api.openapi import PATH, load_document
from runtime.pubsub.components import PubSubs
from tests.runtime_asgi import Component, call

VERBS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Verbs the invoke catch-all passes through (any verb; these are the ones the document lists).
INVOKE_VERBS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
_PARAM = re.compile(r"\{([^{}:]*)(:[^{}]*)?\}")
_ONE_SEGMENT = "^[^/"  # how the pattern of a documented path parameter without "/" begins


@pytest.fixture
async def app() -> AsyncIterator[ASGIApp]:
    pubsubs = PubSubs([Component("pubsub", MemoryBroker(MemoryHub()))])
    await pubsubs.connect()
    yield build_app(SidecarState(app_id="checkout", pubsubs=pubsubs, api_ready=True))
    await pubsubs.close()


def starlette_of(app: object) -> Starlette:
    """The Starlette app inside the middleware the sidecar wraps it in."""
    while not isinstance(app, Starlette):
        app = app._app  # type: ignore[attr-defined]  # ApiGuard, PublishEndpoint
    return app


def sample(template: str) -> str:
    """A concrete path of a route template: ``{x}`` one segment, ``{x:path}`` two."""
    return _PARAM.sub(lambda m: "seg/seg" if m[2] == ":path" else "seg", template)


def mounted(app: ASGIApp) -> list[tuple[str, set[str]]]:
    """A sample path and the verbs of every route the app serves, the publish endpoint too."""
    found = [(sample(publish_api.PREFIX + "{pubsub}/{topic:path}"), {"post", "put"})]
    assert {m.lower() for m in publish_api._METHODS} == {"post", "put"}
    for route in starlette_of(app).routes:
        if isinstance(route, Route):
            methods = {m.lower() for m in route.methods or ()}
            if "get" in methods:
                methods.discard("head")  # Starlette adds HEAD to every GET route by itself
            found.append((sample(route.path), methods))
        elif isinstance(route, InvokeRoute):
            found.append((sample(INVOKE_PREFIX + "{app}/method/{method:path}"), set(INVOKE_VERBS)))
        else:
            raise AssertionError(f"{route!r}: a route kind this test does not know; teach it")
    return found


def _parameter(document: dict[str, Any], item: dict[str, Any], name: str) -> dict[str, Any]:
    for operation in item.values():
        for parameter in operation.get("parameters", []):
            if "$ref" in parameter:
                parameter = _resolve(document, parameter["$ref"])
            if parameter["in"] == "path" and parameter["name"] == name:
                return dict(parameter)
    raise AssertionError(f"path parameter {name} is not described")


def documented() -> list[tuple[re.Pattern[str], str, set[str]]]:
    """Every path of the document as a regex (its parameters' own patterns say whether they may
    hold a "/"), with the path and its verbs."""
    document = load_document()
    found = []
    for path, item in document["paths"].items():

        def regex(match: re.Match[str], item: dict[str, Any] = item) -> str:
            schema = _parameter(document, item, match[1])["schema"]
            return "[^/]+" if schema.get("pattern", "").startswith(_ONE_SEGMENT) else ".+"

        pattern = re.compile(_PARAM.sub(regex, re.sub(r"[.]", r"\\.", path)))
        found.append((pattern, path, {v for v in item if v in VERBS}))
    return found


def test_every_mounted_route_and_verb_is_documented(app: ASGIApp) -> None:
    doc = documented()
    missing = []
    for path, verbs in mounted(app):
        covered = {v for pattern, _, vs in doc if pattern.fullmatch(path) for v in vs}
        missing += [f"{verb.upper()} {path}" for verb in sorted(verbs - covered)]
    assert not missing, f"routes missing from runtime/api/openapi.json: {missing}"


def _serves(app: ASGIApp, path: str, verb: str) -> bool:
    """Whether a route of its own serves ``verb`` on ``path``: the invoke route, the router's
    fallback for any path and verb, counts only for invocation paths."""
    if path.startswith(publish_api.PREFIX) and not path.startswith("/v1.0/publish/bulk/"):
        return verb.upper() in publish_api._METHODS
    scope = {"type": "http", "path": path, "method": verb.upper(), "headers": []}
    routes = [
        r
        for r in starlette_of(app).routes
        if not isinstance(r, InvokeRoute) or path.startswith(INVOKE_PREFIX)
    ]
    return any(r.matches(scope)[0] is Match.FULL for r in routes)


def test_every_documented_route_and_verb_is_served(app: ASGIApp) -> None:
    stale = [
        f"{verb.upper()} {path}"
        for _, path, verbs in documented()
        for verb in sorted(verbs)
        if not _serves(app, sample(path), verb)
    ]
    assert not stale, f"documented but not served: {stale}"


async def test_the_sidecar_serves_the_document(app: ASGIApp) -> None:
    reply = await call(app, "GET", PATH)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == load_document()
    assert reply.json()["openapi"].startswith("3.1")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_every_reference_resolves() -> None:
    document = load_document()
    for ref in _refs(document):
        _resolve(document, ref)


def test_every_error_answer_is_a_dapr_error_body() -> None:
    document = load_document()
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45" or status == "401":  # 401: Dapr's text/plain
                    continue
                if "$ref" in response:
                    response = _resolve(document, response["$ref"])
                schema = response["content"]["application/json"]["schema"]
                if schema != error_body:
                    schema = _resolve(document, schema["$ref"])
                    assert error_body in schema["allOf"], f"{verb} {path} {status}"
