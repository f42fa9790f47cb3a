"""Errors of service invocation (part of the one tree rooted at :class:`bus.errors.OmnibusError`).

    OmnibusError
    └── InvokeError          an invocation could not be delivered or answered
        ├── AppUnreachable   the callee's sidecar could not reach its app (code APP_UNREACHABLE)
        ├── NoInstance       no running instance of the callee app
        ├── InvokeTimeout    no reply within the invocation's time-out
        └── CircuitOpen      the callee's circuit breaker is open

The HTTP layer answers every one of them as Dapr does: 500 ``ERR_DIRECT_INVOKE`` with the message.
``grpc_code`` is the gRPC status a Dapr sidecar pair would see for the same failure; Resiliency
``matching.gRPCStatusCodes`` filters retries of these failures by it.
"""

from __future__ import annotations

from bus.errors import OmnibusError

APP_UNREACHABLE = "APP_UNREACHABLE"

GRPC_UNKNOWN = 2
GRPC_DEADLINE_EXCEEDED = 4
GRPC_UNAVAILABLE = 14


class InvokeError(OmnibusError):
    """An invocation could not be delivered to the callee or answered by it."""

    code = "INVOKE_ERROR"
    grpc_code = GRPC_UNKNOWN


class AppUnreachable(InvokeError):
    """The callee's sidecar could not reach its app; ``reason`` says why (refused, time-out...)."""

    code = APP_UNREACHABLE
    grpc_code = GRPC_UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoInstance(InvokeError):
    """No running instance of the callee app serves invocations (known at once, by presence)."""

    code = "NO_INSTANCE"
    grpc_code = GRPC_UNAVAILABLE


class InvokeTimeout(InvokeError):
    """The callee did not answer within the invocation's time-out."""

    code = "INVOKE_TIMEOUT"
    grpc_code = GRPC_DEADLINE_EXCEEDED


class CircuitOpen(InvokeError):
    """The circuit breaker of the callee app is open: the call was not attempted."""

    code = "CIRCUIT_OPEN"
    grpc_code = GRPC_UNAVAILABLE
