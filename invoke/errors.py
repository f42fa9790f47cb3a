"""Errors of service invocation (part of the one tree rooted at :class:`bus.errors.OmnibusError`).

OmnibusError
└── InvokeError          an invocation could not be delivered or answered
    └── AppUnreachable   the callee's sidecar could not reach its app (code APP_UNREACHABLE)
"""

from __future__ import annotations

from bus.errors import OmnibusError

APP_UNREACHABLE = "APP_UNREACHABLE"


class InvokeError(OmnibusError):
    """An invocation could not be delivered to the callee or answered by it."""

    code = "INVOKE_ERROR"


class AppUnreachable(InvokeError):
    """The callee's sidecar could not reach its app; ``reason`` says why (refused, time-out...)."""

    code = APP_UNREACHABLE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
