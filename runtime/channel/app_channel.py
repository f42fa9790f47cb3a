"""The app channel: the sidecar's one pooled, keep-alive HTTP client to its app.

One :class:`~runtime.channel.http1.Http1Client` for the life of the sidecar (aiohttp's client
cost four times as much CPU per delivery; see that module); its ``limit`` is
``--app-max-concurrency`` (-1: unbounded), so at most that many calls are in the app at once and
the rest wait.  Every call carries ``dapr-api-token`` when ``APP_API_TOKEN`` is set.  Time-outs
are the caller's (the subscription's processing time-out, the invocation's time-out).

:meth:`AppChannel.call` is the general request service invocation makes: any method, the target
(path and raw query) as given, multi-valued headers both ways, the answer verbatim.  The channel
writes ``Host``, ``Content-Length`` and ``dapr-api-token`` itself and drops the hop-by-hop
headers a caller gives (:data:`HOP_BY_HOP`), as a proxy must.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bus.backoff import Backoff
from bus.envelope import Headers
from bus.errors import OmnibusError
from runtime.api.body import MalformedBody, parse_json
from runtime.channel.http1 import Http1Client, HttpFailure
from runtime.config import HealthCheck

log = logging.getLogger("omnibus.runtime")

SUBSCRIBE_PATH = "/dapr/subscribe"
# The project's one backoff curve (bus.backoff): waiting for the app port to open, and for
# GET /dapr/subscribe while the app is still starting.
_LISTEN_BACKOFF = Backoff(initial=0.02, maximum=0.5, jitter=0.0)
_SUBSCRIBE_BACKOFF = Backoff(initial=0.05, maximum=1.0, jitter=0.0)

# RFC 9110 7.6.1's connection-specific headers, plus what the channel writes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
        "dapr-api-token",
    }
)


def is_hop_by_hop(name: str) -> bool:
    """True for a header that must not be forwarded to (or from) the app as is."""
    lowered = name.lower()
    return lowered in HOP_BY_HOP or lowered.startswith("proxy-")


class AppUnavailable(OmnibusError):
    """The app could not be reached (connection refused, reset, time-out)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AppResponse:
    """The app's answer to :meth:`AppChannel.call`: status, headers and body as sent."""

    status: int
    headers: Headers
    body: bytes


class AppChannel:
    """HTTP calls into the app at ``http://address:port``."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        max_concurrency: int = -1,
        app_api_token: str | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.base_url = f"http://{address}:{port}"
        self._limit = max_concurrency if max_concurrency > 0 else 0
        self._headers = {"dapr-api-token": app_api_token} if app_api_token else {}
        self._client: Http1Client | None = None

    async def __aenter__(self) -> AppChannel:
        self._client = Http1Client(
            self.address, self.port, limit=self._limit, headers=self._headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> Http1Client:
        """The open client (the channel must have been entered)."""
        if self._client is None:
            raise RuntimeError("the app channel is not open")
        return self._client

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; returns the status and body, or raises AppUnavailable.

        A path without a leading ``/`` (Dapr's quickstarts declare routes like ``orders``) gets
        one.
        """
        try:
            return await self.client.request("POST", path, body, headers)
        except HttpFailure as exc:
            raise AppUnavailable(str(exc)) from exc

    async def call(
        self, method: str, target: str, headers: Headers, body: bytes, *, timeout: float
    ) -> AppResponse:
        """Send one request to the app; its answer verbatim, or AppUnavailable.

        ``target`` is the path plus the raw query string; hop-by-hop ``headers`` are dropped.
        A header that cannot be written at all (CR or LF in it) raises
        :class:`~runtime.channel.http1.InvalidHeader` (an InvalidArgument): the caller's input is
        wrong.
        """
        pairs = [(name, value) for name, value in headers.items() if not is_hop_by_hop(name)]
        try:
            async with asyncio.timeout(timeout):
                status, raw, answer = await self.client.fetch(method, target, body, pairs)
        except TimeoutError:
            raise AppUnavailable(f"the app did not answer within {timeout:g}s") from None
        except HttpFailure as exc:
            raise AppUnavailable(str(exc)) from exc
        decoded = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)
        return AppResponse(status, decoded, answer)

    async def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` (start-up calls: bounded by ``timeout``); the status and body."""
        try:
            async with asyncio.timeout(timeout):
                return await self.client.request("GET", path)
        except (HttpFailure, TimeoutError) as exc:
            raise AppUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def wait_until_listening(self, health_path: str | None = None) -> None:
        """Wait (forever, with a capped backoff) until the app port accepts TCP connections.

        With ``health_path``, wait until a GET on it answers 2xx as well.
        """
        attempt = 0
        while True:
            if await self._accepts() and (health_path is None or await self._healthy(health_path)):
                return
            attempt += 1
            await asyncio.sleep(_LISTEN_BACKOFF.delay(attempt))

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.address, self.port)
        except OSError:
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    async def _healthy(self, path: str) -> bool:
        try:
            status, _ = await self.get(path)
        except AppUnavailable:
            return False
        return 200 <= status < 300

    async def programmatic_subscriptions(
        self, attempts: int = 10, timeout: float = 5.0
    ) -> object | None:
        """The JSON of ``GET /dapr/subscribe``; None when the app has none (404 or an error).

        Retried with a backoff while the app is still starting (connection errors, 5xx), as
        Dapr does; read once per start.
        """
        for attempt in range(1, attempts + 1):
            try:
                status, body = await self.get(SUBSCRIBE_PATH, timeout)
            except AppUnavailable as exc:
                problem = str(exc)
            else:
                if status == 404:
                    return None
                if status == 200:
                    try:
                        return parse_json(body, what=SUBSCRIBE_PATH) if body.strip() else None
                    except MalformedBody:
                        log.error(
                            "GET %s answered with invalid JSON; no programmatic subscriptions",
                            SUBSCRIBE_PATH,
                        )
                        return None
                problem = f"status {status}"
                if status < 500:
                    break
            if attempt < attempts:
                await asyncio.sleep(_SUBSCRIBE_BACKOFF.delay(attempt))
        log.error("GET %s failed (%s); no programmatic subscriptions", SUBSCRIBE_PATH, problem)
        return None


class AppHealth:
    """Probes the app's health and reports every change (the first probe's result included).

    Probes go over a connection of their own, so a busy channel (``--app-max-concurrency``
    calls in the app) does not make a healthy app look unhealthy.
    """

    def __init__(
        self,
        address: str,
        port: int,
        check: HealthCheck,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._client = Http1Client(address, port)
        self._check = check
        self._on_change = on_change
        self.healthy: bool | None = None  # None until the first probe

    async def run(self) -> None:
        """Probe until cancelled."""
        failures = 0
        try:
            while True:
                if await self._probe():
                    failures = 0
                    if self.healthy is not True:
                        log.info("the app is healthy")
                        await self._set(True)
                else:
                    failures += 1
                    first = self.healthy is None
                    if self.healthy is not False and (first or failures >= self._check.threshold):
                        log.warning("the app is unhealthy (%s failed)", self._check.path)
                        await self._set(False)
                await asyncio.sleep(self._check.interval)
        finally:
            await self._client.close()

    async def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        await self._on_change(healthy)

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self._check.timeout):
                status, _ = await self._client.request("GET", self._check.path)
        except (HttpFailure, TimeoutError):
            return False
        return 200 <= status < 300
