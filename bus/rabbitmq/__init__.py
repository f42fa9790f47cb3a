"""The RabbitMQ broker (aio-pika): durable, confirmed, delayed retry, dead letters, request/reply.

Topology (``d`` = durable unless the component sets ``durable: false``; names use ``@``, which a
topic or group can never contain, so our own objects never collide with a user's topic):

- ``<topic>``: exchange (``exchangeKind``, fanout by default, d), one per topic, as Dapr names it,
  with ``alternate-exchange = <topic>@held``.  Declared on first publish or subscribe; kept.
- ``<topic>@held``: fanout exchange + queue (d).  A message published while no group's queue is
  bound to the topic lands here instead of being dropped (RabbitMQ drops unroutable messages).
  The first subscription of a topic replays the held messages to the topic exchange, so every group
  bound by then gets them, then acks them: publishing before anybody subscribed loses nothing.
  If the topic exchange already exists without that argument (declared by a Dapr sidecar), omnibus
  uses it as it is and logs that unroutable messages of that topic are not kept.
- ``<group>-<topic>``: queue (d) per group, bound to the topic exchange with routing key ``""``
  (Dapr's name and default binding; a batch is published with its first message's ``routingKey``
  metadata, default ``""``, so with a direct or topic ``exchangeKind`` only messages routed with
  ``""`` reach omnibus queues; fanout, the default, ignores routing keys); arguments
  ``x-max-length``/``x-max-length-bytes`` from ``maxLen``/``maxLenBytes``; with
  ``enableDeadLetter`` also ``x-dead-letter-exchange = dlx-<queue>`` and queue ``dlq-<queue>``
  (Dapr's names) which collect what RabbitMQ itself discards (overflow, expired ``ttlInSeconds``).
- ``<queue>@retry@<ms>``: delay queues (d) of the retry ladder :data:`RETRY_LADDER_MS`, one per rung
  (a retry waits on the smallest rung at least as long as its backoff: never shorter, at most
  2.5 times longer, at least 100 ms; a backoff over 30 minutes is capped at 30 minutes)
  and group queue, ``x-message-ttl = ms``, dead-lettering to the default exchange with routing key
  ``<queue>``: a retried message comes back to its own group only, never through the fanout.
  ``x-expires`` removes an idle rung ``EXPIRE_AFTER_MS`` after its last use (every retry
  re-declares its rung first, on a channel of its own since a refused declaration closes the
  channel it was sent on, so a waiting message always outlives its queue's expiry).
- ``omnibus@presence@by-name``: topic exchange (auto-delete) carrying presence beats and
  withdrawals (routing key ``p.<name>``) and probes (``q.<name>``, ``q..all``); each broker
  listens on an exclusive server-named queue bound only to the names it looked up or announces,
  and keeps the table locally (see :mod:`bus.rabbitmq._presence`).
  ``omnibus@presence@roll@<name>`` / ``omnibus@presence@roll``: auto-delete queues that every
  broker announcing ``<name>`` / anything consumes (they never receive anything); their consumer
  count tells a broker how many answers to its first probe to await.
- calls (request mode ``call``) are published non-persistent with a per-message ``expiration``
  of their time-to-live, so RabbitMQ drops a call whose caller gave up.
- ``amq.rabbitmq.reply-to``: direct reply-to of the request inbox, one channel per broker.

Messages are persistent (``deliveryMode`` 2); every publish waits for its publisher confirm (a
batch is published at once and its confirms awaited together, up to ``PUBLISH_TIMEOUT``); a
confirm that is lost with the connection raises :class:`~bus.errors.PublishError`, never a silent
loss.  A publish while the connection is down (``connect_robust`` reconnecting) waits for the
reconnect at most ``connect_timeout`` (5 s, also each connect attempt's bound), then raises
:class:`~bus.errors.BrokerUnavailable`.  Our id is the AMQP
``message_id``, metadata are headers, the attempt is the header ``omnibus-attempt``.  Classic
queues carry only a boolean ``redelivered`` flag, so a delivery the broker hands out again (after
a crash, a lost connection or a hand-back at shutdown) counts as ``omnibus-attempt + 1``; a retry
re-publishes with the attempt it computed, plus one.

Consuming: manual acks, one channel per subscription with ``basic.qos(prefetchCount)``; the
Dispatcher batches settled deliveries (its ack linger), and the source acks each batch at once:
the contiguous prefix of delivery tags in one ``multiple=True`` ack, tags above a still-running
handler one by one.  An ack that cannot be sent is an error the Dispatcher logs (RabbitMQ
redelivers those messages).
``connect_robust`` re-opens channels and re-declares exchanges, queues, bindings and consumers
after a reconnect; deliveries of the dead channel are not acked (the broker redelivers
them).  A handler time-out (``processingTimeout``) is the Dispatcher's: it counts as RETRY; an
unacked message is redelivered when its channel or connection closes.

Modules: ``broker`` (the broker and its topology), ``settings`` (the component's settings),
``_wire`` (object names, encoding, decoding and publishing of messages), ``_source`` (the
consumer of a group queue) and ``_presence`` (the presence table).  ``broker`` imports
``_source`` and ``_presence``, never the reverse.
"""

from bus.rabbitmq._wire import RETRY_LADDER_MS, held_name, queue_name, retry_queue_name
from bus.rabbitmq.broker import RabbitBroker
from bus.rabbitmq.settings import DEFAULT_URL, RabbitSettings

__all__ = [
    "DEFAULT_URL",
    "RETRY_LADDER_MS",
    "RabbitBroker",
    "RabbitSettings",
    "held_name",
    "queue_name",
    "retry_queue_name",
]
