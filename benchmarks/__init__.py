"""The throughput and latency harness behind ``omnibus bench`` (and ``python -m benchmarks``).

Layout:

- ``config``: the frozen run configuration (``--quick``, backends, scenarios, sizes).
- ``report`` / ``goals``: measurements, the goals they are held to, ratios to baselines.
- ``render``, ``plots``, ``markdown``: the rich table, PNG plots and BENCHMARKS.md.
- ``machine``: the machine description and /proc readings (RSS, CPU seconds) of processes.
- ``services``: the brokers (a private redis-server, unique names on RabbitMQ, a temp SQLite file).
- ``backends``: our brokers, built through the components registry as a sidecar builds them.
- ``payload``: the JSON payload carrying its send time, single and bulk bodies.
- ``loadgen``: the HTTP load generator (processes, keep-alive connections, a lean client).
- ``apps``: the bare Starlette ceiling and the counting subscriber app, run as child processes.
- ``processes``: child processes (apps, ``python -m runtime.sidecar``) and their readiness.
- ``busonly``: scenario 4, our broker's consume + ack in one process.
- ``baselines``: raw redis-py, raw aio-pika and FastStream doing the same work.
- ``http_phases``: scenarios 1, 2, 3 and 5 through real sidecar processes.
- ``runner`` and ``cli``: one run from start to report.

``bus_inprocess``, ``redis_vs_raw`` and ``rabbitmq_vs_raw`` are stand-alone scripts of each
backend's own measurements, each with a ``measure()`` function.
"""
