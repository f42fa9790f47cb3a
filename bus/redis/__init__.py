"""The Redis Streams broker, wire-compatible with Dapr's ``pubsub.redis``.

Storage layout (one Redis database; each key with its lifetime):

- ``<topic>`` (stream; kept until trimmed): one entry per message, field ``data`` = the message
  bytes, field ``metadata`` = a JSON object of strings: the message metadata plus ``omnibus-id``
  (our message id) and, on requests, ``omnibus-reply-to`` / ``omnibus-correlation-id``.  An entry
  with only ``data`` (from a Dapr sidecar) gets its stream entry id as message id.
  Consumer group = subscription group, created at ``0`` (a new group reads everything retained);
  consumer = the broker's instance name, so each instance has its own pending list.  Trimmed with
  ``XTRIM MINID`` to the oldest entry some group still needs (its oldest pending entry, else the
  one after its last delivered entry); ``MAXLEN ~`` on publish only if ``maxLenApprox`` is set.
- ``omnibus:retry:<topic>:<group>`` (sorted set; while retries wait): entry id -> unix ms when a
  RETRY, or a delivery handed back at shutdown, is due again.  The entry stays pending meanwhile;
  the first consumer of the group to look once it is due claims it (XCLAIM) and delivers it with
  attempt = its delivery count.  The reclaim of entries idle past processingTimeout (dead
  consumers) skips entries that have a due time in the future.
- ``omnibus:inbox:<instance>.<random>`` (Pub/Sub channel; the broker's life): replies to this
  broker's requests, each a JSON header line followed by the data bytes.
- ``omnibus:presence:names`` (sorted set) name -> last beat; ``omnibus:presence:beats:<name>``
  (sorted set) instance key -> last beat; ``omnibus:presence:info:<name>`` (hash) instance key ->
  JSON (address, started, metadata); the instance key is the instance name for an app and
  ``<instance>@<kind>`` otherwise, so apps and services never collide.  Beats refresh a ten-TTL
  expiry on the per-name keys; listings ignore beats older than the heartbeat TTL.

Modules: ``broker`` (the broker, request/reply and presence), ``settings`` (the component's
settings), ``link`` (the lean pipelined connection every per-message command goes out on, and the
Pub/Sub listener of the reply inbox), ``_wire`` (encoding of entries and replies, redis-py
connections, error translation), ``_scripts`` (the Lua scripts) and ``_source`` (the consumer of
one group).  ``broker`` imports ``_source``, never the reverse.
"""

from bus.redis.broker import RedisBroker
from bus.redis.settings import RedisSettings

__all__ = [
    "RedisBroker",
    "RedisSettings",
]
