"""The sidecar's HTTP front ends, one module per building block.

:mod:`~runtime.api.publish` (single publishes as pure ASGI, the hot path; bulk publishes),
:mod:`~runtime.api.state`, :mod:`~runtime.api.invoke`, :mod:`~runtime.api.invocations` (async
invocations), :mod:`~runtime.api.meta` (health, metadata, shutdown), :mod:`~runtime.api.openapi`;
:mod:`~runtime.api.app` assembles them behind :mod:`~runtime.api.guard` (API token, body limit).
Every body is decoded by :mod:`~runtime.api.body` and every error answered through
:mod:`~runtime.api.dapr_errors`.
"""
