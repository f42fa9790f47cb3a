"""The sidecar: Dapr's HTTP API for pub/sub over the omnibus bus (``python -m runtime.sidecar``).

Modules, in the order a request or a message meets them:

- :mod:`runtime.config`: daprd-like flags -> ``SidecarConfig``; :mod:`runtime.environment`:
  ``DAPR_API_TOKEN``, ``APP_API_TOKEN``, ``OMNIBUS_HOME``.
- :mod:`runtime.sidecar`: start-up and the ordered shutdown of one process.
- :mod:`runtime.middleware`: the API token and the body limit, pure ASGI.
- :mod:`runtime.publish_api`: ``POST /v1.0/publish``, the hot path, as pure ASGI before the router.
- :mod:`runtime.app`: the Starlette routes (bulk publish, health, metadata, shutdown).
- :mod:`runtime.errors`: the one mapping from exceptions to Dapr's error bodies and statuses.
- :mod:`runtime.cloudevents`, :mod:`runtime.publish`: envelopes as Dapr builds them, and the
  publisher that coalesces concurrent publishes to a topic into one broker batch.
- :mod:`runtime.pubsubs`: the pub/sub components of the sidecar and their brokers;
  :mod:`runtime.scopes`: their topic scoping (``publishingScopes``, ``allowedTopics``...).
- :mod:`runtime.subscriptions`, :mod:`runtime.routing`, :mod:`runtime.delivery`,
  :mod:`runtime.bulk`: subscriptions on the bus, CEL routing, delivery to the app and the mapping
  of its answers, bulk subscribe.
- :mod:`runtime.intake`: the subscriptions as one intake, held while the app is unhealthy
  (``--enable-app-health-check``) or a component's inbound circuit breaker is open.
- :mod:`runtime.channel`, :mod:`runtime.http1`: the pooled keep-alive HTTP client to the app
  (deliveries, and ``AppChannel.call`` for service invocation), and the app's health probe.
- :mod:`runtime.api.body`: the one decoder of request bodies, with Go's JSON rules.

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
