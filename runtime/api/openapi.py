"""``GET /v1.0/openapi.json``: the OpenAPI 3.1 document of the sidecar's HTTP API.

The document is ``openapi.json`` beside this module, maintained by hand and kept true by
``tests/test_openapi.py`` (every route the app mounts is in it, with its verbs) and
``tests/test_schemathesis.py`` (the sidecar answers as it says).  It is read once, when the
routes are built, and served as the same bytes to every caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

PATH = "/v1.0/openapi.json"
DOCUMENT = Path(__file__).with_name("openapi.json")


def load_document() -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    document: dict[str, Any] = orjson.loads(DOCUMENT.read_bytes())
    return document


def routes(state: SidecarState) -> list[BaseRoute]:
    """The route serving the document (the same for every sidecar, ``state`` is not read)."""
    body = DOCUMENT.read_bytes()

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return [Route(PATH, openapi, methods=["GET"])]
