"""The app channel: the sidecar's HTTP/1.1 client to its app (deliveries, invocations, probes).

:mod:`runtime.channel.http1` is the pooled keep-alive client; :mod:`runtime.channel.app_channel`
builds the calls into the app on it.  Others import the names below.
"""

from runtime.channel.app_channel import (
    HOP_BY_HOP,
    SUBSCRIBE_PATH,
    AppChannel,
    AppHealth,
    AppResponse,
    AppUnavailable,
    is_hop_by_hop,
)

__all__ = [
    "HOP_BY_HOP",
    "SUBSCRIBE_PATH",
    "AppChannel",
    "AppHealth",
    "AppResponse",
    "AppUnavailable",
    "is_hop_by_hop",
]
