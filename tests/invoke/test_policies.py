"""Resiliency ``targets.apps`` as invocation policies: retries with Dapr's matching lists."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from components.loader import load_resources
from components.specs import Resources

RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    timeouts:
      quick: 2s
    retries:
      some:
        policy: constant
        duration: 10ms
        maxRetries: 3
        matching:
          httpStatusCodes: "500,502-504,15,404-405-500,-1,0,"
          gRPCStatusCodes: "14, 2-4"
      every:
        policy: constant
        maxRetries: 1
  targets:
    apps:
      orders: {retry: some, timeout: quick}
      billing: {retry: every}
"""


def _load(tmp_path: Path, text: str) -> Resources:
    (tmp_path / "resiliency.yaml").write_text(text)
    return load_resources([tmp_path], app_id="checkout", environ={})


def test_matching_lists_parse_as_dapr_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="omnibus.components"):
        (resiliency,) = _load(tmp_path, RESILIENCY).resiliencies
    some = resiliency.retries["some"]
    assert some.http_status_codes == frozenset({500, 502, 503, 504})
    assert some.grpc_status_codes == frozenset({2, 3, 4, 14})
    for bad in ("'15'", "'404-405-500'", "'-1'", "'0'"):
        assert bad in caplog.text
    every = resiliency.retries["every"]
    assert every.http_status_codes is None and every.grpc_status_codes is None
