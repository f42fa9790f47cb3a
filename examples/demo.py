"""``make demo``: two plain-HTTP apps talking through omnibus sidecars on the embedded bus.

1. ``order-subscriber`` starts under ``omnibus run`` and subscribes to ``pubsub/orders``
   (the sidecar asks it ``GET /dapr/subscribe``);
2. once its sidecar reports the subscription, ``order-publisher`` starts under ``omnibus run`` and
   publishes the orders through its own sidecar;
3. the subscriber exits after the last order;
4. ``order-service`` starts under ``omnibus run``: methods that keep orders in the state store;
5. ``order-client`` invokes it synchronously (``neworder``, ``order``), then asynchronously
   (``Prefer: respond-async``: 202 and a ``Location`` it polls), and uses state of its own;
   when it exits 0, so does the demo.

Everything lives in a temporary OMNIBUS_HOME (the default components and the SQLite bus file are
created there on first use), removed at the end.  Any failure or a time-out exits non-zero with
the reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 5
TIME_LIMIT = 80.0  # seconds for the whole demo


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Run:
    """One ``omnibus run`` process, its output copied line by line with a name in front."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "run", *argv],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.copier = threading.Thread(target=self._copy, daemon=True)
        self.copier.start()

    def _copy(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"{self.name:>10} | {line.rstrip()}", flush=True)

    def wait(self, deadline: float) -> int | None:
        """The exit code, or None if still running at ``deadline`` (monotonic)."""
        try:
            code = self.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            return None
        self.copier.join(timeout=2)
        return code

    def ready(self, check: Callable[[], bool], deadline: float) -> bool:
        """Poll ``check`` until it holds; False if this run exits or ``deadline`` passes first."""
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def succeeded(self, deadline: float) -> bool:
        """Wait for the exit; True for code 0, else say why it failed."""
        code = self.wait(deadline)
        if code != 0:
            say(f"FAILED: the {self.name} exited with {'a time-out' if code is None else code}")
        return code == 0

    def stop(self) -> None:
        """SIGTERM (omnibus run stops the app, then the sidecar), then kill."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.copier.join(timeout=2)


def subscribed(port: int, topic: str) -> bool:
    """True once the sidecar on ``port`` lists a subscription to ``topic``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/metadata", timeout=1) as resp:
            metadata = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return any(s.get("topic") == topic for s in metadata.get("subscriptions", []))


def healthy(port: int) -> bool:
    """True once the sidecar on ``port`` is ready (components, app channel, subscriptions)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/healthz", timeout=1) as resp:
            return bool(resp.status == 204)
    except OSError:
        return False


def run_invocation(env: Mapping[str, str], deadline: float) -> int:
    """Steps 4 and 5: a service with state, invoked sync and async by a client."""
    examples = ROOT / "examples"
    service_port = free_port()
    say("4. starting order-service under omnibus run (methods backed by the state store)")
    service = Run(
        "service",
        ["--app-id", "order-service", "--app-port", "0", "--dapr-http-port", str(service_port)]
        + ["--", sys.executable, str(examples / "order-service.py")],
        env,
    )
    runs = [service]
    try:
        if not service.ready(lambda: healthy(service_port), deadline):
            say("FAILED: order-service's sidecar never became healthy")
            return 1
        say("5. order-client invokes order-service, sync then async, and keeps state of its own")
        client = Run(
            "client",
            ["--app-id", "order-client", "--"]
            + [sys.executable, str(examples / "order-client.py")],
            env,
        )
        runs.append(client)
        if not client.succeeded(deadline):
            return 1
    finally:
        for run in runs:
            run.stop()
    return 0


def run_demo(home: Path, deadline: float) -> int:
    env = {**os.environ, "OMNIBUS_HOME": str(home), "ORDERS_EXPECTED": str(ORDERS)}
    env["ORDER_COUNT"] = str(ORDERS)
    examples = ROOT / "examples"
    sub_port = free_port()
    say(f"OMNIBUS_HOME={home} (components and the SQLite bus are created there)")
    say("1. starting order-subscriber under omnibus run")
    subscriber = Run(
        "subscriber",
        ["--app-id", "order-subscriber", "--app-port", "0", "--dapr-http-port", str(sub_port)]
        + ["--", sys.executable, str(examples / "order-subscriber.py")],
        env,
    )
    runs = [subscriber]
    try:
        if not subscriber.ready(lambda: subscribed(sub_port, "orders"), deadline):
            say("FAILED: the subscriber's sidecar never subscribed to 'orders'")
            return 1
        say(f"2. subscribed; publishing {ORDERS} orders from order-publisher")
        publisher = Run(
            "publisher",
            ["--app-id", "order-publisher", "--"]
            + [sys.executable, str(examples / "order-publisher.py")],
            env,
        )
        runs.append(publisher)
        if not publisher.succeeded(deadline):
            return 1
        say("3. published; waiting for the subscriber to receive every order")
        if not subscriber.succeeded(deadline):
            return 1
    finally:
        for run in runs:
            run.stop()
    say(f"pub/sub: {ORDERS} orders went publisher -> sidecar -> bus -> sidecar -> subscriber")
    if run_invocation(env, deadline) != 0:
        return 1
    say("done: pub/sub, sync and async invocation and state, all over the embedded bus")
    return 0


def main() -> int:
    # SIGTERM ends the demo through its finally blocks, which stop both omnibus runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="omnibus-demo-") as home:
        code = run_demo(Path(home), started + TIME_LIMIT)
    say(f"finished in {time.monotonic() - started:.1f}s with exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
