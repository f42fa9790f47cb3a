"""An app written with the official Dapr Python SDK, unchanged: ``DaprClient().invoke_method``
over HTTP (the SDK's default for invocation), run under ``omnibus run`` (which sets
``DAPR_HTTP_PORT``).

    python tests/apps/sdk_invoker.py CALLEE_APP_ID

Prints one JSON line per call: the status, content type and text of the reply.
"""

from __future__ import annotations

import json
import sys

from dapr.clients import DaprClient


def main() -> None:
    """Invoke the callee twice (a POST with a JSON body, a GET) and print the replies."""
    callee = sys.argv[1]
    with DaprClient() as client:
        posted = client.invoke_method(
            callee,
            "inspect/sdk?via=python",
            data=json.dumps({"hello": "omnibus"}),
            content_type="application/json",
            http_verb="POST",
        )
        print(json.dumps({"status": posted.status_code, "body": posted.text()}), flush=True)
        got = client.invoke_method(callee, "status/201", http_verb="GET")
        print(json.dumps({"status": got.status_code, "body": got.text()}), flush=True)


if __name__ == "__main__":
    main()
