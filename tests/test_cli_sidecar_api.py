"""One HTTP client for every CLI request to a sidecar: the API token, and ``omnibus publish``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime.cli.sidecar_api import send
from runtime.cli.sidecars import PublishFailed, publish_via_sidecar


class _Tokens(BaseHTTPRequestHandler):
    """Records the ``dapr-api-token`` headers of each request; answers with ``status``."""

    status = 204
    seen: list[list[str]] = []

    def _answer(self) -> None:
        self.seen.append(self.headers.get_all("dapr-api-token") or [])
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Tokens]]]:
    handler = type("Handler", (_Tokens,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_the_environment_token_goes_with_every_request(
    server: tuple[str, type[_Tokens]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.setenv("DAPR_API_TOKEN", "from-env")
    send("GET", url + "/v1.0/metadata")
    publish_via_sidecar(url, "p", "t", b"{}", content_type="application/json", metadata={})
    assert handler.seen == [["from-env"], ["from-env"]]


def test_a_token_the_caller_gives_replaces_the_environment_one(
    server: tuple[str, type[_Tokens]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.setenv("DAPR_API_TOKEN", "from-env")
    send("GET", url + "/v1.0/metadata", headers=[("dapr-api-token", "given")])
    publish_via_sidecar(
        url, "p", "t", b"{}", content_type="application/json", metadata={}, api_token="given"
    )
    assert handler.seen == [["given"], ["given"]]


def test_a_publish_answered_with_another_success_status_fails(
    server: tuple[str, type[_Tokens]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
    handler.status = 200
    with pytest.raises(PublishFailed, match="/v1.0/publish/p/t: unexpected status 200"):
        publish_via_sidecar(url, "p", "t", b"{}", content_type="application/json", metadata={})
    assert handler.seen == [[]]
