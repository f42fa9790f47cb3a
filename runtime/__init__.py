"""The sidecar: Dapr's HTTP API over the omnibus bus (``python -m runtime.sidecar``).

The package is grouped by concern:

- the process: :mod:`runtime.config` (daprd-like flags -> ``SidecarConfig``),
  :mod:`runtime.environment` (``DAPR_API_TOKEN``, ``APP_API_TOKEN``, ``OMNIBUS_HOME``),
  :mod:`runtime.sidecar` (start-up and the ordered shutdown), :mod:`runtime.system_bus` (the broker
  that carries state and invocation), :mod:`runtime.states` and :mod:`runtime.async_invocations`
  (building those blocks from the components).
- :mod:`runtime.api`: the HTTP API, one module per building block: :mod:`~runtime.api.publish`
  (single publishes as pure ASGI in front of the router, the hot path, and bulk publishes),
  :mod:`~runtime.api.state`, :mod:`~runtime.api.invoke`, :mod:`~runtime.api.invocations`,
  :mod:`~runtime.api.meta` (health, metadata, shutdown), :mod:`~runtime.api.openapi`; plus
  :mod:`~runtime.api.app` (the Starlette app and ``SidecarState``), :mod:`~runtime.api.guard` (the
  API token and the body limit), :mod:`~runtime.api.dapr_errors` (the one mapping from exceptions
  to Dapr's error bodies and statuses) and :mod:`~runtime.api.body` (the one decoder of request
  bodies, with Go's JSON rules).
- :mod:`runtime.channel`: the pooled keep-alive HTTP/1.1 client to the app
  (:mod:`~runtime.channel.http1`) and the calls made on it (deliveries, ``AppChannel.call`` for
  invocation, the health probe).
- :mod:`runtime.pubsub`: the pubsub components, the coalescing publisher, CloudEvents, the
  subscriptions, delivery to the app, CEL routing, topic scopes and the intake.
- :mod:`runtime.cli`: the ``omnibus`` command.

Where omnibus differs from Dapr, on purpose:

- Retries and dead letters are the bus's, durable in the broker: RETRY, an error or a time-out is
  redelivered with backoff (a Resiliency file's inbound policy sets it) and, when attempts run out,
  published to the dead-letter topic (``deadLetterTopic``, else ``<topic>.deadletter``) and acked;
  DROP and 404 go there at once.  Dapr, without a ``deadLetterTopic``, hands the failure back to
  the broker (RabbitMQ then discards it by default); omnibus never drops a failed message silently.
- An expired event (TTL) or one no route matches is acked and logged, or sent to the
  subscription's ``deadLetterTopic`` when it names one, as in Dapr.  TTLs are enforced by the
  subscribing sidecar on every broker.
- A message that is not a JSON object (published with ``rawPayload``) reaches a CloudEvent
  subscription in Dapr's raw envelope (``data_base64``) instead of failing to deserialize; the raw
  envelope's ``id`` is the bus message id, stable across redeliveries.
- Invalid topic names answer 400 ``ERR_MALFORMED_REQUEST``; a body over ``--max-body-size`` 413
  ``ERR_BODY_TOO_LARGE``.
- ``--app-health-check-path`` alone gates readiness at start (the app must answer 2xx before the
  sidecar subscribes); with ``--enable-app-health-check`` it is probed all along, as in Dapr, and
  nothing is pulled for the app while it is unhealthy.
- Programmatic subscriptions are read once, at start-up, as in Dapr.
"""
