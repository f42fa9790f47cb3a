"""Service invocation over the bus: calls, replies, the server of an app's calls and the invoker.

Transport-agnostic: no HTTP here.  The runtime turns HTTP requests into :class:`Call` values and
:class:`Reply` values back into HTTP responses.
"""

from invoke.call import (
    AppCaller,
    Call,
    Reply,
    async_topic,
    call_topic,
    same_namespace,
    validate_own_app_id,
)
from invoke.errors import APP_UNREACHABLE, AppUnreachable, InvokeError

__all__ = [
    "APP_UNREACHABLE",
    "AppCaller",
    "AppUnreachable",
    "Call",
    "InvokeError",
    "Reply",
    "async_topic",
    "call_topic",
    "same_namespace",
    "validate_own_app_id",
]
