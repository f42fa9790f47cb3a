"""Pub/sub in the sidecar: the pubsub components, the coalescing publisher, CloudEvents, and the
subscriptions that deliver to the app.

- :mod:`~runtime.pubsub.components`: the sidecar's pubsub components and their scopes;
- :mod:`~runtime.pubsub.publisher`: building a published message and coalescing publishes;
- :mod:`~runtime.pubsub.cloudevents`: the CloudEvents envelope, as Dapr builds it;
- :mod:`~runtime.pubsub.subscribing`: opening subscriptions, one handler each;
- :mod:`~runtime.pubsub.app_delivery` and :mod:`~runtime.pubsub.bulk_delivery`: posting events
  (one at a time, or in bulk) to the app and reading its answer;
- :mod:`~runtime.pubsub.routing`: CEL routing rules; :mod:`~runtime.pubsub.scopes`: topic scopes;
- :mod:`~runtime.pubsub.intake`: holding intake while a circuit breaker is open or the app is
  unhealthy.

The HTTP side of publishing is :mod:`runtime.api.publish`.
"""
