"""``python -m runtime.sidecar``: one sidecar process, daprd-like.

Start-up, in order:

1. parse the flags and load the resources (``--resources-path``, else the default components
   under ``OMNIBUS_HOME``); a bad file exits 1 with the ConfigError on stderr, no traceback;
2. serve the HTTP API (uvicorn, uvloop, httptools, no access log);
3. connect every pub/sub broker (``/v1.0/healthz/outbound`` answers 204 from here on) and
   announce presence ``omnibus.sidecar`` on each;
4. with ``--app-port``: wait until the app port accepts connections (and its health path answers,
   if given), read ``GET /dapr/subscribe`` once, open the declarative and programmatic
   subscriptions; then ``/v1.0/healthz`` answers 204.

Shutdown (SIGTERM, SIGINT or ``POST /v1.0/shutdown``), in order: stop HTTP intake and let requests
in flight finish (bounded by ``--drain-timeout``), wait for accepted publishes, stop every
subscription (handlers finish within the broker's drain bound, the rest are handed back
unacked), close the app channel, close the brokers; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Generator, Mapping, Sequence

import uvicorn

from bus.errors import ConfigError, OmnibusError
from bus.presence import Presence
from components.loader import load_resources, parse_programmatic
from components.registry import build_pubsub, default_home, ensure_default_components
from components.specs import Resources, SubscriptionSpec
from runtime.api import invoke as invoke_api
from runtime.api.app import SidecarState, build_app
from runtime.async_invocations import (
    serve_async_invocations,
    start_invocations,
    stop_async_invocations,
)
from runtime.channel import AppChannel, AppHealth
from runtime.config import SidecarConfig, parse_args
from runtime.environment import Environment, read_environment
from runtime.pubsub.components import PubSubComponent, PubSubs
from runtime.pubsub.intake import APP_UNHEALTHY, Intake
from runtime.pubsub.scopes import TopicScopes
from runtime.pubsub.subscribing import unique_subscriptions
from runtime.states import start_states, stop_states
from runtime.system_bus import SystemBus, choose_system_bus

log = logging.getLogger("omnibus.runtime")

PRESENCE_NAME = "omnibus.sidecar"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the sidecar orders the shutdown itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Sidecar:
    """One running sidecar: its components, API, app channel and subscriptions."""

    def __init__(
        self,
        config: SidecarConfig,
        env: Environment,
        resources: Resources,
        components: Sequence[PubSubComponent],
        instance: str,
        system_bus: SystemBus | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.resources = resources
        self.instance = instance
        self.pubsubs = PubSubs(
            components,
            {
                spec.name: TopicScopes.from_metadata(spec.metadata, config.app_id)
                for spec in resources.components
                if spec.kind == "pubsub"
            },
        )
        self.stopping = asyncio.Event()
        self.state = SidecarState(
            app_id=config.app_id,
            pubsubs=self.pubsubs,
            app_port=config.app_port,
            app_channel_address=config.app_channel_address,
            app_max_concurrency=config.app_max_concurrency,
            request_shutdown=self.stopping.set,
            instance=instance,
            namespace=env.namespace,
        )
        self.system_bus = system_bus or choose_system_bus(
            config.bus,
            components,
            app_id=config.app_id,
            instance=instance,
            home=env.home,
            drain_timeout=config.drain_timeout,
        )
        self.state.bus = self.system_bus.broker
        self.state.invoker = invoke_api.build_invoker(self.state, resources)
        self.channel: AppChannel | None = None
        self.intake: Intake | None = None  # the subscriptions, once the app is up
        self._health: asyncio.Task[None] | None = None  # --enable-app-health-check
        app = build_app(self.state, api_token=env.api_token, max_body_size=config.max_body_size)
        self.server = _Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.http_port,
                loop="none",
                http="httptools",
                lifespan="off",
                access_log=False,
                # Local callers only: no X-Forwarded-* rewriting (a wrapper around every
                # request) and no "server: uvicorn" header.
                proxy_headers=False,
                server_header=False,
                log_config=None,
                timeout_graceful_shutdown=max(int(config.drain_timeout), 1),
            )
        )

    async def run(self) -> int:
        """Start, serve until asked to stop, shut down in order; the process exit code."""
        serving = asyncio.create_task(self._serve_http(), name="http")
        starting = asyncio.create_task(self._start(), name="start")
        stopped = asyncio.create_task(self.stopping.wait(), name="stop")
        code = 0
        try:
            done, _ = await asyncio.wait(
                {serving, starting, stopped}, return_when=asyncio.FIRST_COMPLETED
            )
            if stopped in done:
                pass
            elif starting in done and starting.exception() is None:
                await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not self.stopping.is_set():
                    code = self._start_failure(serving, starting) or 1
            else:
                code = self._start_failure(serving, starting)
        finally:
            stopped.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
            await self._shutdown(serving)
        return code

    async def _serve_http(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:  # uvicorn exits the process when it cannot bind; we stop in order
            address = f"{self.config.host}:{self.config.http_port}"
            raise OSError(f"cannot serve the HTTP API on {address}") from None

    def _start_failure(self, serving: asyncio.Task[None], starting: asyncio.Task[None]) -> int:
        for task in (starting, serving):
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, OmnibusError | OSError):
                    log.error("start-up failed: %s", exc)
                else:
                    log.error("start-up failed", exc_info=exc)
                return 1
        if serving.done():
            log.error("the HTTP server stopped (is port %d free?)", self.config.http_port)
            return 1
        return 0

    async def _start(self) -> None:
        while not self.server.started:
            if self.server.should_exit:
                return
            await asyncio.sleep(0.01)
        self.state.api_ready = True
        if self.system_bus.owned:
            await self.system_bus.broker.connect()
        # state stores: before the pubsubs connect, so outbound-ready means state is served too
        self.state.states = await start_states(
            self.resources,
            app_id=self.config.app_id,
            bus=self.state.bus,
            pubsubs=self.pubsubs,
            home=self.env.home,
            namespace=self.env.namespace,
        )
        # async invocation: submissions and results before outbound-ready, the callee side
        # once the app is up
        self.state.invocations = await start_invocations(
            self.system_bus.broker,
            self.config,
            self.resources,
            self.env.home,
            namespace=self.env.namespace,
        )
        await self.pubsubs.connect()
        await self._announce()
        log.info("components connected: %s", ", ".join(c.name for c in self.pubsubs) or "none")
        if self.config.app_port is None:
            if self.resources.subscriptions:
                log.warning("no --app-port: declarative subscriptions are not opened")
            return
        self.channel = AppChannel(
            self.config.app_channel_address,
            self.config.app_port,
            max_concurrency=self.config.app_max_concurrency,
            app_api_token=self.env.app_api_token,
        )
        await self.channel.__aenter__()
        self.state.channel = self.channel
        await self.channel.wait_until_listening(self.config.app_health_check_path)
        await invoke_api.serve_invocations(
            self.state, self.channel, self.config.app_max_concurrency
        )
        await serve_async_invocations(self.state, self.channel)
        specs = unique_subscriptions(
            [*self.resources.subscriptions, *await self._programmatic(self.channel)]
        )
        self.state.subscriptions.extend(specs)
        await self._open_intake(self.channel, specs)
        self.state.app_ready = True
        log.info("app channel ready on port %d", self.config.app_port)

    async def _open_intake(self, channel: AppChannel, specs: Sequence[SubscriptionSpec]) -> None:
        """Open the subscriptions; with app health checks, held until the app is healthy."""
        self.intake = Intake(self.pubsubs, channel, self.config.app_id, self.resources.resiliencies)
        check = self.config.app_health
        if check is None or self.config.app_port is None:
            await self.intake.open(specs)
            return
        await self.intake.hold(APP_UNHEALTHY)
        await self.intake.open(specs)
        address, port = self.config.app_channel_address, self.config.app_port
        health = AppHealth(address, port, check, self._app_health)
        self._health = asyncio.create_task(health.run(), name="app-health")

    async def _app_health(self, healthy: bool) -> None:
        if self.intake is not None:
            await (self.intake.release if healthy else self.intake.hold)(APP_UNHEALTHY)

    async def _programmatic(self, channel: AppChannel) -> tuple[SubscriptionSpec, ...]:
        payload = await channel.programmatic_subscriptions()
        try:
            return parse_programmatic(payload)
        except ConfigError as exc:
            log.error("ignoring the app's programmatic subscriptions: %s", exc)
            return ()

    async def _announce(self) -> None:
        port = self.config.http_port
        for component in self.pubsubs:
            entry = Presence(
                name=PRESENCE_NAME,
                instance=self.instance,
                address=f"http://{self.config.host}:{port}",
                metadata={
                    "app_id": self.config.app_id,
                    "app_port": str(self.config.app_port or ""),
                    "pid": str(os.getpid()),
                    "pubsub": component.name,
                },
            )
            await component.broker.announce(entry)

    async def _shutdown(self, serving: asyncio.Task[None]) -> None:
        log.info("shutting down")
        self.state.app_ready = False
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        self.state.api_ready = False
        await self.pubsubs.drain_publishes()
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health])
        if self.intake is not None:  # concurrently: each drains within its broker's bound
            await self.intake.close()
        await invoke_api.stop_invocations(self.state)
        await stop_async_invocations(self.state)
        if self.channel is not None:
            await self.channel.close()
        await stop_states(self.state.states)  # state stores: stop serving, close
        await self.pubsubs.close()
        if self.system_bus.owned:
            await self.system_bus.broker.close()
        log.info("stopped")


def load(
    config: SidecarConfig, env: Environment, environ: Mapping[str, str], instance: str
) -> tuple[Resources, list[PubSubComponent]]:
    """Read the resources and build (not connect) the pub/sub components; ConfigError if bad."""
    paths = list(config.resources_paths)
    home = default_home(environ)
    if not paths:
        paths = [ensure_default_components(home)]
    resources = load_resources(paths, app_id=config.app_id, environ=environ)
    components: list[PubSubComponent] = [
        build_pubsub(
            spec,
            app_id=config.app_id,
            instance=instance,
            home=home,
            resources=resources,
            drain_timeout=config.drain_timeout,
        )
        for spec in resources.components
        if spec.kind == "pubsub"
    ]
    return resources, components


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.error").setLevel(max(root.level, logging.WARNING))


async def _serve(sidecar: Sidecar) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.stopping.set)
    return await sidecar.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sidecar until it is told to stop; the exit code."""
    environ = dict(os.environ)
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        _configure_logging(config.log_level)
        env = read_environment(environ)
        instance = f"{config.app_id[:100]}-{uuid.uuid4().hex[:8]}"
        resources, components = load(config, env, environ, instance)
    except ConfigError as exc:
        print(f"omnibus: {exc}", file=sys.stderr)
        return 1
    import uvloop

    sidecar_runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with sidecar_runner as runner:
        return runner.run(_serve(Sidecar(config, env, resources, components, instance)))


if __name__ == "__main__":
    sys.exit(main())
