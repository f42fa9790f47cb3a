"""Loading Dapr resource files and programmatic subscriptions into typed specs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bus.errors import ConfigError
from components.loader import load_resources, parse_programmatic, resource_files
from components.specs import (
    BulkSubscribe,
    ComponentSpec,
    Resources,
    RetrySpec,
    RouteRule,
    Routes,
    SubscriptionSpec,
)

RESOURCES = Path(__file__).parent / "resources"
QUICKSTART = RESOURCES / "quickstart"
MULTI = RESOURCES / "multi"
ENV = {"RABBIT_USER": "guest", "RABBIT_PASSWORD": "s3cret", "REDIS_PASSWORD": "r3dis"}


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, *, environ: dict[str, str] | None = None) -> Resources:
    write(tmp_path, text)
    return load_resources([tmp_path], app_id="app", environ=environ or {})


# --- good files -----------------------------------------------------------------------------


def test_quickstart_files_load_into_specs() -> None:
    resources = load_resources([QUICKSTART], app_id="order-processor", environ={})

    (component,) = resources.components
    assert component.name == "orderpubsub"
    assert component.type == "pubsub.redis"
    assert component.kind == "pubsub"
    assert component.version == "v1"
    assert dict(component.metadata) == {"redisHost": "localhost:6379", "redisPassword": ""}
    assert component.source == str(QUICKSTART / "pubsub.yaml")

    v1, v2 = resources.subscriptions  # files load in name order
    assert (v1.name, v1.pubsubname, v1.topic) == ("order-sub", "orderpubsub", "orders")
    assert v1.routes == Routes(default="/orders")
    assert v1.scopes == ("order-processor",)
    assert v1.type == "DECLARATIVE"
    assert v1.bulk == BulkSubscribe()
    assert v1.dead_letter_topic is None
    assert v2.routes == Routes(
        rules=(
            RouteRule('event.type == "widget"', "/widgets"),
            RouteRule('event.type == "gadget"', "/gadgets"),
        ),
        default="/products",
    )
    assert v2.dead_letter_topic == "poisonMessages"
    assert dict(v2.metadata) == {"rawPayload": "true"} and v2.raw_payload
    assert v2.bulk == BulkSubscribe(enabled=True, max_messages=50, max_await_ms=40)
    assert v2.source == str(QUICKSTART / "subscription-v2.yml")

    (resiliency,) = resources.resiliencies
    assert resiliency.name == "myresiliency"
    assert resiliency.retries["pubsubRetry"] == RetrySpec("constant", 5.0, 60.0, 10)
    # exponential without duration starts at Dapr's 500ms initial interval
    assert resiliency.retries["retryForever"] == RetrySpec("exponential", 0.5, 15.0, -1)
    assert resiliency.timeouts == {"general": 5.0}
    assert resiliency.components["orderpubsub"]["inbound"] == {
        "timeout": "general",
        "retry": "pubsubRetry",
    }
    assert resiliency.components["orderpubsub"]["outbound"] == {"retry": "retryForever"}
    assert resiliency.apps["checkout"] == {
        "timeout": "general",
        "retry": "retryForever",
        "circuitBreaker": "simpleCB",
    }


def test_unknown_kinds_and_other_files_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="omnibus.components"):
        resources = load_resources([QUICKSTART], app_id="order-processor", environ={})
    assert "kind 'Configuration' is not used by omnibus: skipped" in caplog.text
    assert len(resources.components) == 1
    assert [f.name for f in resource_files([QUICKSTART])] == [
        "configuration.yaml",
        "pubsub.yaml",
        "resiliency.yaml",
        "subscription-v1.yaml",
        "subscription-v2.yml",
    ]


def test_scopes_leave_out_resources_of_other_apps() -> None:
    resources = load_resources([QUICKSTART], app_id="checkout", environ={})
    assert [c.name for c in resources.components] == ["orderpubsub"]  # not scoped
    assert [s.name for s in resources.subscriptions] == ["widget-sub"]
    assert resources.resiliencies == ()

    multi = load_resources([MULTI], app_id="order-processor", environ=ENV)
    assert [c.name for c in multi.components] == ["pubsub"]
    assert [s.name for s in multi.subscriptions] == ["checkout-orders"]

    checkout = load_resources([MULTI], app_id="checkout", environ=ENV)
    assert [c.name for c in checkout.components] == ["pubsub", "statestore"]
    assert checkout.components[1].scopes == ("checkout",)


def test_multi_document_file_resolves_env_and_secrets() -> None:
    resources = load_resources([MULTI], app_id="checkout", environ=ENV)
    pubsub, state = resources.components
    assert dict(pubsub.metadata) == {
        "connectionString": "amqp://guest:s3cret@localhost:5672",
        "password": "s3cret",
        "durable": "true",  # YAML booleans and numbers become Dapr's strings
        "prefetchCount": "20",
        "username": "guest",  # envRef
    }
    assert pubsub.source == f"{MULTI / 'all.yaml'} (document 1)"
    assert state.metadata["redisPassword"] == "r3dis"  # secretKeyRef without key
    assert state.kind == "state"


def test_auth_secret_store_is_not_used_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - name: redisPassword\n    secretKeyRef: {name: PW, key: PW}\n"
        + "auth:\n  secretStore: envstore\n"
    )
    with caplog.at_level(logging.WARNING, logger="omnibus.components"):
        resources = load_text(tmp_path, text, environ={"PW": "pw"})
    assert resources.components[0].metadata == {"redisPassword": "pw"}
    assert "auth.secretStore 'envstore' is not used" in caplog.text


def test_env_placeholders_in_subscription_metadata(tmp_path: Path) -> None:
    text = SUBSCRIPTION + "  {pubsubname: p, topic: t, route: /t, metadata: {q: '{env:Q}-x'}}\n"
    resources = load_text(tmp_path, text, environ={"Q": "orders"})
    assert resources.subscriptions[0].metadata == {"q": "orders-x"}


def test_several_paths_and_a_file_path(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: mem}\n"
        "spec: {type: pubsub.in-memory}\n",
        "mem.yaml",
    )
    again = QUICKSTART / ".." / "quickstart" / "pubsub.yaml"
    resources = load_resources([QUICKSTART, extra, again], app_id="x", environ={})
    assert [c.name for c in resources.components] == ["orderpubsub", "mem"]
    assert resources.components[1].version == "v1"  # the default


def test_subscription_to_an_unloaded_pubsub_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="omnibus.components"):
        resources = load_text(
            tmp_path,
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: nowhere, topic: t, route: /t}\n",
        )
    assert "names pubsub 'nowhere', which is not loaded for app 'app'" in caplog.text
    assert resources.subscriptions[0].topic == "t"


def test_empty_documents_and_files_are_fine(tmp_path: Path) -> None:
    write(tmp_path, "", "empty.yaml")
    write(tmp_path, "---\n---\n# only comments\n", "comments.yml")
    assert load_resources([tmp_path], app_id="app", environ={}).components == ()


# --- bad files: the message names the file, the field, what was expected and what was found --

COMPONENT = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n"
GOOD_SPEC = "  type: pubsub.redis\n"
SUBSCRIPTION = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: s}\nspec:\n"
RESILIENCY = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\nspec:\n"

BAD_FILES = {
    "yaml syntax": (
        "kind: Component\nspec: [unclosed\n",
        "invalid YAML: expected ',' or ']', but got '<stream end>' at line 3, column 1",
    ),
    "not a mapping": (
        "- a\n- b\n",
        "expected a resource (a mapping with apiVersion, kind, metadata, spec), got a list",
    ),
    "api version": (
        "apiVersion: dapr.io/v2alpha1\nkind: Component\n",
        "apiVersion: expected 'dapr.io/v1alpha1', got 'dapr.io/v2alpha1'",
    ),
    "no name": (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: {type: pubsub.redis}\n",
        "metadata.name: expected a name (up to 128 of A-Z a-z 0-9 _ . -), got nothing",
    ),
    "bad name": (
        COMPONENT.format(name="'my pubsub'") + GOOD_SPEC,
        "metadata.name: expected a name (up to 128 of A-Z a-z 0-9 _ . -), got 'my pubsub'",
    ),
    "no type": (
        COMPONENT.format(name="p") + "  version: v1\n",
        "spec.type: expected a component type like 'pubsub.redis', got nothing",
    ),
    "bad type": (
        COMPONENT.format(name="p") + "  type: redis\n",
        "spec.type: expected a component type like 'pubsub.redis', got 'redis'",
    ),
    "metadata not a list": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata: {redisHost: x}\n",
        "spec.metadata: expected a list, got a mapping",
    ),
    "metadata without name": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - value: x\n",
        "spec.metadata[0].name: expected a non-empty string, got nothing",
    ),
    "metadata value a list": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - name: a\n    value: [1]\n",
        "spec.metadata[0].value: expected a string, number or boolean, got a list",
    ),
    "metadata names differing only in case": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - {name: redisHost, value: x}\n  - {name: redishost, value: y}\n",
        "spec.metadata[1].name: duplicate metadata name 'redishost' (as 'redisHost': names "
        "match in any case)",
    ),
    "duplicate metadata": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - {name: a, value: x}\n  - {name: a, value: y}\n",
        "spec.metadata[1].name: duplicate metadata name 'a'",
    ),
    "value and secret": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - {name: a, value: x, secretKeyRef: {name: A}}\n",
        "spec.metadata[0]: expected one of value, envRef or secretKeyRef, got value and "
        "secretKeyRef",
    ),
    "secret not set": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - name: redisPassword\n    secretKeyRef: {name: NOT_SET}\n",
        "spec.metadata[0].secretKeyRef.name: environment variable 'NOT_SET' is not set",
    ),
    "secret key differs": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - name: a\n    secretKeyRef: {name: SET, key: password}\n",
        "spec.metadata[0].secretKeyRef.key: expected 'SET' or nothing (secrets are environment "
        "variables; the variable is secretKeyRef.name, as with Dapr's local.env secret store), "
        "got 'password'",
    ),
    "secret without name": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - name: a\n    secretKeyRef: {}\n",
        "spec.metadata[0].secretKeyRef.name: expected a non-empty string, got nothing",
    ),
    "env not set": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - {name: a, value: '{env:NO}'}\n",
        "spec.metadata[0].value: environment variable 'NO' is not set",
    ),
    "env ref not set": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - {name: a, envRef: UNSET}\n",
        "spec.metadata[0].envRef: environment variable 'UNSET' is not set",
    ),
    "env ref empty": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - {name: a, envRef: ''}\n",
        "spec.metadata[0].envRef: expected a non-empty string, got ''",
    ),
    "reserved variable": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - name: a\n    secretKeyRef: {name: dapr_api_token}\n",
        "spec.metadata[0].secretKeyRef.name: environment variable 'dapr_api_token' may not be "
        "read by components (APP_API_TOKEN and DAPR_* are reserved, as in Dapr)",
    ),
    "reserved app token": (
        COMPONENT.format(name="p")
        + GOOD_SPEC
        + "  metadata:\n  - {name: a, value: '{env:APP_API_TOKEN}'}\n",
        "spec.metadata[0].value: environment variable 'APP_API_TOKEN' may not be read by "
        "components (APP_API_TOKEN and DAPR_* are reserved, as in Dapr)",
    ),
    "env bad name": (
        COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - {name: a, value: '{env:A B}'}\n",
        "spec.metadata[0].value: expected {env:NAME} with NAME an environment variable name, "
        "got '{env:A B}'",
    ),
    "scopes not a list": (
        COMPONENT.format(name="p") + GOOD_SPEC + "scopes: app\n",
        "scopes: expected a list, got 'app'",
    ),
    "subscription without topic": (
        SUBSCRIPTION + "  pubsubname: p\n  route: /x\n",
        "spec.topic: expected a topic name (up to 200 of A-Z a-z 0-9 _ . : / -), got nothing",
    ),
    "subscription bad topic": (
        SUBSCRIPTION + "  pubsubname: p\n  topic: 'a b'\n  route: /x\n",
        "spec.topic: expected a topic name (up to 200 of A-Z a-z 0-9 _ . : / -), got 'a b'",
    ),
    "subscription without route": (
        SUBSCRIPTION + "  pubsubname: p\n  topic: t\n",
        "spec.routes: expected a route: spec.route, spec.routes.default or rules, got nothing",
    ),
    "rule without path": (
        SUBSCRIPTION + "  pubsubname: p\n  topic: t\n  routes:\n    rules:\n    - match: 'true'\n",
        "spec.routes.rules[0].path: expected the app path the rule routes to, got nothing",
    ),
    "rules not a list": (
        SUBSCRIPTION + "  pubsubname: p\n  topic: t\n  routes: {rules: {match: x}}\n",
        "spec.routes.rules: expected a list, got a mapping",
    ),
    "bulk count": (
        SUBSCRIPTION + "  {pubsubname: p, topic: t, route: /t, bulkSubscribe: "
        "{enabled: true, maxMessagesCount: 0}}\n",
        "spec.bulkSubscribe.maxMessagesCount: expected an integer >= 1, got 0",
    ),
    "bulk enabled": (
        SUBSCRIPTION + "  {pubsubname: p, topic: t, route: /t, bulkSubscribe: {enabled: yes!}}\n",
        "spec.bulkSubscribe.enabled: expected a boolean (true/false, yes/no, on/off, 1/0, "
        "t/f, y/n), got 'yes!'",
    ),
    "subscription metadata": (
        SUBSCRIPTION + "  {pubsubname: p, topic: t, route: /t, metadata: [rawPayload]}\n",
        "spec.metadata: expected a mapping, got a list",
    ),
    "dead letter topic": (
        SUBSCRIPTION + "  {pubsubname: p, topic: t, route: /t, deadLetterTopic: 'x y'}\n",
        "spec.deadLetterTopic: expected a topic name (up to 200 of A-Z a-z 0-9 _ . : / -), "
        "got 'x y'",
    ),
    "retry policy": (
        RESILIENCY + "  policies:\n    retries:\n      r: {policy: linear}\n",
        "spec.policies.retries.r.policy: expected 'constant' or 'exponential', got 'linear'",
    ),
    "max retries": (
        RESILIENCY + "  policies:\n    retries:\n      r: {maxRetries: -2}\n",
        "spec.policies.retries.r.maxRetries: expected an integer >= -1, got -2",
    ),
    "retry duration": (
        RESILIENCY + "  policies:\n    retries:\n      r: {duration: soon}\n",
        "spec.policies.retries.r.duration: expected a duration like '5s', '1m30s', '500ms' or "
        "milliseconds, got 'soon'",
    ),
    "timeout missing": (
        RESILIENCY + "  policies:\n    timeouts:\n      t:\n",
        "spec.policies.timeouts.t: expected a duration like '5s', got null",
    ),
    "unknown retry name": (
        RESILIENCY
        + "  policies:\n    retries:\n      r: {}\n"
        + "  targets:\n    components:\n      pubsub:\n        inbound: {retry: other}\n",
        "spec.targets.components.pubsub.inbound.retry: expected the name of a policy under "
        "spec.policies.retries (r), got 'other'",
    ),
    "unknown direction": (
        RESILIENCY + "  targets:\n    components:\n      pubsub:\n        incoming: {}\n",
        "spec.targets.components.pubsub.incoming: unknown key: expected one of inbound, outbound",
    ),
    "circuit breaker not a mapping": (
        RESILIENCY + "  policies:\n    circuitBreakers:\n      cb: 5\n",
        "spec.policies.circuitBreakers.cb: expected a mapping, got 5",
    ),
    "unknown app timeout": (
        RESILIENCY + "  targets:\n    apps:\n      a: {timeout: t}\n",
        "spec.targets.apps.a.timeout: expected the name of a policy under spec.policies.timeouts "
        "(none), got 't'",
    ),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_names_file_field_expected_and_found(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, environ={"SET": "x"})
    assert str(caught.value) == f"{tmp_path / 'bad.yaml'}: {message}"


def test_metadata_names_match_in_any_case_and_list_as_written(tmp_path: Path) -> None:
    # Given a component whose metadata names are not spelled as Dapr's docs spell them
    text = COMPONENT.format(name="p") + GOOD_SPEC + "  metadata:\n  - {name: REDISHOST, value: h}\n"
    spec = load_text(tmp_path, text).components[0]
    # Then they are found in any case, and listed (as /v1.0/metadata shows them) as written
    assert spec.metadata["redisHost"] == spec.metadata.get("redishost") == "h"
    assert "RedisHost" in spec.metadata and list(spec.metadata) == ["REDISHOST"]
    with pytest.raises(KeyError):
        spec.metadata["redisPassword"]


def test_a_component_shows_its_metadata_names_but_no_values() -> None:
    # Given a spec holding a password, as it would appear in a log line or an error
    spec = ComponentSpec("p", "pubsub.redis", metadata={"redisPassword": "hunter2"})
    # Then its repr names the key and leaves the value out
    assert "redisPassword" in repr(spec) and "hunter2" not in repr(spec)


def test_duplicates_across_files_name_both_files(tmp_path: Path) -> None:
    component = COMPONENT.format(name="orderpubsub") + GOOD_SPEC
    write(tmp_path, component, "z.yaml")
    with pytest.raises(ConfigError) as caught:
        load_resources([QUICKSTART, tmp_path], app_id="a", environ={})
    assert str(caught.value) == (
        f"{tmp_path / 'z.yaml'}: metadata.name: duplicate component name 'orderpubsub' "
        f"(also in {QUICKSTART / 'pubsub.yaml'})"
    )

    subscription = SUBSCRIPTION + "  {pubsubname: orderpubsub, topic: orders, route: /o}\n"
    write(tmp_path, subscription, "z.yaml")
    with pytest.raises(ConfigError) as caught:
        load_resources([QUICKSTART, tmp_path], app_id="order-processor", environ={})
    assert str(caught.value) == (
        f"{tmp_path / 'z.yaml'}: spec: duplicate subscription to topic 'orders' of pubsub "
        f"'orderpubsub' (also in {QUICKSTART / 'subscription-v1.yaml'})"
    )


def test_error_in_a_later_document_names_the_document(tmp_path: Path) -> None:
    text = COMPONENT.format(name="a") + GOOD_SPEC + "---\n" + COMPONENT.format(name="b")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == (
        f"{tmp_path / 'bad.yaml'} (document 2): spec.type: expected a component type like "
        "'pubsub.redis', got nothing"
    )


def test_missing_resources_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_resources([tmp_path / "nope"], app_id="a", environ={})
    assert str(caught.value) == f"{tmp_path / 'nope'}: resources path does not exist"


def test_unreadable_bytes(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"kind: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_resources([tmp_path], app_id="a", environ={})
    assert str(caught.value) == f"{tmp_path / 'bin.yaml'}: not UTF-8 text: invalid start byte"


# --- programmatic subscriptions (GET /dapr/subscribe) ----------------------------------------


def test_programmatic_both_forms() -> None:
    payload = [
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {
            "pubsubname": "pubsub",
            "topic": "inventory",
            "route": "/ignored",
            "routes": {
                "rules": [
                    {"match": 'event.type == "widget"', "path": "/widgets"},
                    {"path": "/all"},
                ],
                "default": "/products",
            },
            "deadLetterTopic": "poison",
            "metadata": {"rawPayload": "true", "priority": 3},
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 5},
        },
    ]
    orders, inventory = parse_programmatic(payload)
    assert orders.routes == Routes(default="/orders")
    assert orders.type == "PROGRAMMATIC"
    assert orders.source == "GET /dapr/subscribe"
    assert inventory.routes == Routes(
        rules=(RouteRule('event.type == "widget"', "/widgets"), RouteRule("", "/all")),
        default="/products",  # routes.default wins over route, as in Dapr
    )
    assert inventory.dead_letter_topic == "poison"
    assert dict(inventory.metadata) == {"rawPayload": "true", "priority": "3"}
    assert inventory.bulk == BulkSubscribe(enabled=True, max_messages=10, max_await_ms=5)


def test_programmatic_null_empty_and_pathless(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_programmatic(None) == ()
    assert parse_programmatic([]) == ()
    with caplog.at_level(logging.WARNING, logger="omnibus.components"):
        specs = parse_programmatic(
            [{"pubsubname": "p", "topic": "a"}, {"pubsubname": "p", "topic": "b", "route": "b"}]
        )
    assert [(s.topic, s.routes.default) for s in specs] == [("b", "/b")]
    assert "GET /dapr/subscribe: [0]: no route for topic 'a': skipped" in caplog.text


BAD_PAYLOADS = {
    "object": ({"topic": "t"}, "expected a JSON array of subscriptions, got a mapping"),
    "string": ("[]", "expected a JSON array of subscriptions, got '[]'"),
    "entry": (["orders"], "[0]: expected a mapping, got 'orders'"),
    "pubsub": (
        [{"topic": "t", "route": "/t"}],
        "[0].pubsubname: expected a name (up to 128 of A-Z a-z 0-9 _ . -), got nothing",
    ),
    "topic": (
        [{"pubsubname": "p", "topic": 7, "route": "/t"}],
        "[0].topic: expected a topic name (up to 200 of A-Z a-z 0-9 _ . : / -), got 7",
    ),
    "routes": (
        [{"pubsubname": "p", "topic": "t", "routes": ["/a"]}],
        "[0].routes: expected a mapping, got a list",
    ),
    "match": (
        [{"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": 1, "path": "/a"}]}}],
        "[0].routes.rules[0].match: expected a non-empty string, got 1",
    ),
    "bulk": (
        [{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": 1}}],
        "[0].bulkSubscribe.enabled: expected a boolean (true/false, yes/no, on/off, 1/0, "
        "t/f, y/n), got 1",
    ),
    "metadata": (
        [{"pubsubname": "p", "topic": "t", "route": "/t", "metadata": {"a": {"b": 1}}}],
        "[0].metadata.a: expected a string, number or boolean, got a mapping",
    ),
    "duplicate": (
        [{"pubsubname": "p", "topic": "t", "route": "/a"}] * 2,
        "[1]: duplicate subscription to topic 't' of pubsub 'p'",
    ),
}


@pytest.mark.parametrize(("payload", "message"), BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_programmatic_bad_payloads(payload: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_programmatic(payload, source="GET http://127.0.0.1:5000/dapr/subscribe")
    assert str(caught.value) == f"GET http://127.0.0.1:5000/dapr/subscribe: {message}"


def test_circuit_breaker_names_may_be_targeted(tmp_path: Path) -> None:
    text = (
        RESILIENCY
        + "  policies:\n    circuitBreakers:\n      cb: {}\n"
        + "  targets:\n    components:\n      pubsub:\n        inbound: {circuitBreaker: cb}\n"
    )
    (resiliency,) = load_text(tmp_path, text).resiliencies
    assert resiliency.components["pubsub"]["inbound"] == {"circuitBreaker": "cb"}


@pytest.mark.parametrize(
    ("value", "raw"), [("true", True), ("T", True), (" yes ", True), ("1", True), ("false", False)]
)
def test_raw_payload_reads_dapr_s_boolean_vocabulary(value: str, raw: bool) -> None:
    spec = SubscriptionSpec(
        "pubsub", "orders", Routes(default="/o"), metadata={"rawPayload": value}
    )
    assert spec.raw_payload is raw


def test_a_raw_payload_that_is_no_boolean_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="rawPayload: expected a boolean"):
        SubscriptionSpec("pubsub", "orders", Routes(default="/o"), metadata={"rawPayload": "maybe"})


def test_field_names_of_resource_files_match_in_any_case_as_dapr_s_decoder(
    tmp_path: Path,
) -> None:
    # Dapr reads resource YAML through Go's JSON decoder: `pubsubName`, `Topic`, `Spec` all work
    text = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: mem}\n"
        "Spec: {Type: pubsub.in-memory}\n---\n"
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: s}\n"
        "spec: {pubsubName: mem, Topic: orders, Routes: {Default: /orders},"
        " DeadLetterTopic: dead, metadata: {rawPayload: 'true'}}\n"
    )
    resources = load_text(tmp_path, text)
    assert [(c.name, c.type) for c in resources.components] == [("mem", "pubsub.in-memory")]
    (sub,) = resources.subscriptions
    assert (sub.pubsubname, sub.topic, sub.dead_letter_topic) == ("mem", "orders", "dead")
    assert sub.routes.default == "/orders"
    assert sub.metadata == {"rawPayload": "true"}
