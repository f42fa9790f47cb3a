"""A bare Starlette POST endpoint on uvicorn (uvloop + httptools): the HTTP ceiling of ingest.

It serves the sidecar's publish paths, reads the body and answers 204, nothing else; the same
generator sent against it shows what one Python HTTP server process can take on this machine.

Run: ``python -m benchmarks.apps.ceiling --port 8000``.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def publish(request: Request) -> Response:
    """Read the body and accept it."""
    await request.body()
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    """Ready."""
    return Response(status_code=204)


def build_app() -> Starlette:
    """The endpoint at the sidecar's single and bulk publish paths."""
    return Starlette(
        routes=[
            Route("/v1.0/publish/{pubsub}/{topic:path}", publish, methods=["POST"]),
            Route("/v1.0-alpha1/publish/bulk/{pubsub}/{topic:path}", publish, methods=["POST"]),
            Route("/v1.0/healthz", healthz),
        ]
    )


def main() -> None:
    """Serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
