"""Building pubsub components: brokers, Dapr defaults, Resiliency retry policies, the home dir."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import MappingProxyType

import pytest

from bus.errors import ConfigError
from bus.memory import MemoryBroker
from bus.message import Message
from bus.options import FOREVER, RetryPolicy, SubscriptionOptions
from components import registry
from components.loader import load_resources
from components.registry import (
    PubSubDefaults,
    build_pubsub,
    default_home,
    ensure_default_components,
)
from components.resiliency import inbound_retry, inbound_timeout, to_retry_policy
from components.specs import ComponentSpec, Resources, RetrySpec
from tests.helpers import Collector

QUICKSTART = Path(__file__).parent / "resources" / "quickstart"

# Metadata that lets each backend build a broker without contacting a server.
METADATA = {
    "pubsub.in-memory": {},
    "pubsub.sqlite": {},
    "pubsub.redis": {"redisHost": "127.0.0.1:6379"},
    "pubsub.rabbitmq": {"connectionString": "amqp://guest:guest@127.0.0.1:5672/"},
}
# The types whose backend module exists: the tests grow as backends land.
AVAILABLE = [t for t, b in registry.BACKENDS.items() if importlib.util.find_spec(b.module)]
# Backends that need no server, so a round trip runs everywhere.
EMBEDDED = [t for t in ("pubsub.in-memory", "pubsub.sqlite") if t in AVAILABLE]


def component(type_: str = "pubsub.in-memory", **metadata: str) -> ComponentSpec:
    return ComponentSpec(
        name="pubsub",
        type=type_,
        metadata=MappingProxyType(metadata),
        source="/etc/omnibus/pubsub.yaml",
    )


def build(spec: ComponentSpec, home: Path, resources: Resources | None = None) -> registry.PubSub:
    return build_pubsub(spec, app_id="checkout", instance="i-1", home=home, resources=resources)


# --- brokers --------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", AVAILABLE)
def test_every_available_type_builds_an_unconnected_broker(type_: str, tmp_path: Path) -> None:
    pubsub = build(component(type_, **METADATA[type_]), tmp_path)
    backend = registry.BACKENDS[type_]
    module = importlib.import_module(backend.module)
    assert isinstance(pubsub.broker, getattr(module, backend.broker))
    assert pubsub.broker.instance == "i-1"
    assert (pubsub.name, pubsub.type) == ("pubsub", type_)
    assert pubsub.defaults == PubSubDefaults()
    assert "BULK_PUBLISH" in pubsub.capabilities
    assert ("MESSAGE_TTL" in pubsub.capabilities) == (type_ == "pubsub.rabbitmq")
    assert not (tmp_path / "bus.db").exists()  # nothing touched before the sidecar connects


def test_in_memory_brokers_do_not_share_a_hub(tmp_path: Path) -> None:
    first = build(component(), tmp_path).broker
    second = build(component(), tmp_path).broker
    assert isinstance(first, MemoryBroker) and isinstance(second, MemoryBroker)
    assert first.hub is not second.hub


@pytest.mark.skipif("pubsub.sqlite" not in AVAILABLE, reason="bus.sqlite is not installed")
def test_sqlite_defaults_to_the_bus_file_in_home(tmp_path: Path) -> None:
    default = build(component("pubsub.sqlite"), tmp_path).broker
    chosen = build(component("pubsub.sqlite", connectionString=str(tmp_path / "x.db")), tmp_path)
    assert default.settings.path == tmp_path / "bus.db"  # type: ignore[attr-defined]
    assert chosen.broker.settings.path == tmp_path / "x.db"  # type: ignore[attr-defined]
    # a file named in another case is the file chosen, not the default
    cased = build(component("pubsub.sqlite", connectionstring=str(tmp_path / "y.db")), tmp_path)
    assert cased.broker.settings.path == tmp_path / "y.db"  # type: ignore[attr-defined]


@pytest.mark.parametrize("type_", EMBEDDED)
async def test_built_broker_connects_and_delivers(type_: str, tmp_path: Path) -> None:
    # Given a broker built from a component, connected by its user (the sidecar)
    pubsub = build(component(type_), tmp_path)
    collector = Collector()
    async with pubsub.broker as broker:
        options = SubscriptionOptions(group="checkout", processing_timeout=5.0)
        await broker.subscribe("orders", collector, options)
        # When a message is published
        sent = Message(data=b'{"orderId": 1}')
        await broker.publish("orders", [sent])
        # Then it is delivered
        (got,) = await collector.wait_for(1)
    assert (got.id, got.data) == (sent.id, sent.data)


def test_unknown_type_names_the_file_and_the_supported_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(component("pubsub.kafka"), tmp_path)
    supported = ", ".join(AVAILABLE)
    assert str(caught.value) == (
        "/etc/omnibus/pubsub.yaml: component 'pubsub': spec.type: 'pubsub.kafka' is not a "
        f"supported pubsub type (supported: {supported})"
    )
    with pytest.raises(ConfigError, match="'state.redis' is not a supported pubsub type"):
        build(component("state.redis"), tmp_path)


def test_type_whose_module_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = registry._Backend("bus.nowhere", None, "NoBroker", ())
    monkeypatch.setitem(registry.BACKENDS, "pubsub.nowhere", absent)
    with pytest.raises(ConfigError) as caught:
        build(component("pubsub.nowhere"), tmp_path)
    assert "spec.type: 'pubsub.nowhere' is not available in this installation" in str(caught.value)
    assert "pubsub.nowhere" not in str(caught.value).split("supported: ")[1]


@pytest.mark.skipif("pubsub.sqlite" not in AVAILABLE, reason="bus.sqlite is not installed")
def test_backend_settings_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(component("pubsub.sqlite", connectionString=":memory:"), tmp_path)
    message = str(caught.value)
    assert message.startswith("/etc/omnibus/pubsub.yaml: component 'pubsub' (pubsub.sqlite): ")
    assert "connectionString" in message


# --- defaults from metadata -----------------------------------------------------------------


def test_metadata_sets_the_subscription_defaults(tmp_path: Path) -> None:
    spec = component(
        consumerID="{appID}-v2", concurrency="4", queueDepth="25", processingTimeout="1m30s"
    )
    assert build(spec, tmp_path).defaults == PubSubDefaults(
        group="checkout-v2", concurrency=4, batch_size=25, processing_timeout=90.0
    )
    assert build(component(processingTimeout="2500"), tmp_path).defaults.processing_timeout == 2.5
    cased = component(CONSUMERID="{appID}-v3", Concurrency="2")  # names match in any case
    assert (build(cased, tmp_path).defaults.group, build(cased, tmp_path).defaults.concurrency) == (
        "checkout-v3",
        2,
    )


def test_consumer_id_templates(tmp_path: Path) -> None:
    assert build(component(consumerID="{podName}"), tmp_path).defaults.group == "i-1"
    first = build(component(consumerID="w-{uuid}"), tmp_path).defaults.group
    second = build(component(consumerID="w-{uuid}"), tmp_path).defaults.group
    assert first and second and first != second and first.startswith("w-")


BAD_METADATA = {
    "concurrency": ({"concurrency": "x"}, "concurrency: expected a positive integer, got 'x'"),
    "queueDepth": ({"queueDepth": "0"}, "queueDepth: expected a positive integer, got '0'"),
    "processingTimeout": (
        {"processingTimeout": "soon"},
        "processingTimeout: 'soon' is not a duration (expected e.g. '30s', '1m30s', '500ms' or a "
        "number of milliseconds)",
    ),
    "processingTimeout zero": (
        {"processingTimeout": "0s"},
        "processingTimeout must be positive (omnibus always redelivers)",
    ),
    "consumerID": (
        {"consumerID": "a b"},
        "invalid consumerID 'a b': use at most 128 of A-Z a-z 0-9 _ . -, starting with a letter, "
        "digit or underscore",
    ),
}


@pytest.mark.parametrize(("metadata", "message"), BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_bad_metadata(tmp_path: Path, metadata: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(component(**metadata), tmp_path)
    assert str(caught.value) == (
        f"/etc/omnibus/pubsub.yaml: component 'pubsub' (pubsub.in-memory): {message}"
    )


# --- Resiliency -> retry policy -------------------------------------------------------------


def test_constant_policy_waits_the_same_every_time() -> None:
    policy = to_retry_policy(RetrySpec("constant", duration=2.0, max_retries=3))
    assert policy.max_attempts == 4  # maxRetries counts retries, attempts include the first
    assert [policy.delay(n) for n in (1, 2, 5)] == [2.0, 2.0, 2.0]
    assert policy.exhausted(4) and not policy.exhausted(3)


def test_exponential_policy_grows_by_dapr_multiplier_up_to_max_interval() -> None:
    policy = to_retry_policy(RetrySpec("exponential", duration=0.5, max_interval=3.0))
    assert policy.max_attempts == FOREVER and not policy.exhausted(10_000)
    assert (policy.initial_interval, policy.multiplier, policy.jitter) == (0.5, 1.5, 0.25)
    first, second, late = policy.delay(1), policy.delay(2), policy.delay(30)
    assert 0.5 <= first <= 0.75
    assert 0.75 <= second <= 1.0
    assert late == 3.0


def test_zero_retries_means_one_delivery() -> None:
    assert to_retry_policy(RetrySpec(max_retries=0)).max_attempts == 1


def test_resiliency_file_sets_retry_and_timeout_of_the_pubsub(tmp_path: Path) -> None:
    resources = load_resources([QUICKSTART], app_id="order-processor", environ={})
    spec = resources.components[0]
    defaults = build_pubsub(
        spec, app_id="order-processor", instance="i", home=tmp_path, resources=resources
    ).defaults
    assert defaults.retry == RetryPolicy(
        max_attempts=11, initial_interval=5.0, max_interval=5.0, multiplier=1.0, jitter=0.0
    )
    assert defaults.processing_timeout == 5.0  # the inbound "general" time-out
    assert defaults.group is None

    # another app: the resiliency file is scoped out, Dapr's and the bus's defaults apply
    other = load_resources([QUICKSTART], app_id="checkout", environ={})
    assert build(spec, tmp_path, other).defaults == PubSubDefaults()


RESERVED = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: defaults}
spec:
  policies:
    timeouts:
      DefaultTimeoutPolicy: 7s
      special: 3s
    retries:
      DefaultRetryPolicy: {maxRetries: 1}
      DefaultComponentInboundRetryPolicy: {maxRetries: 2}
      DefaultPubsubComponentInboundRetryPolicy: {maxRetries: 3}
      special: {maxRetries: 4}
  targets:
    components:
      orders: {inbound: {retry: special, timeout: special}}
      pubsub: {outbound: {retry: special}}
"""


def test_reserved_default_policies_in_dapr_order(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RESERVED)
    resiliencies = load_resources([tmp_path], app_id="a", environ={}).resiliencies
    # a named inbound target wins; an outbound one does not count for delivery
    assert inbound_retry(resiliencies, "orders") == to_retry_policy(RetrySpec(max_retries=4))
    assert inbound_timeout(resiliencies, "orders") == 3.0
    # else the most specific reserved name: the pubsub inbound one before the generic ones
    assert inbound_retry(resiliencies, "pubsub") == to_retry_policy(RetrySpec(max_retries=3))
    assert inbound_timeout(resiliencies, "pubsub") == 7.0
    assert inbound_retry((), "pubsub") is None and inbound_timeout((), "pubsub") is None


def test_first_resiliency_file_targeting_the_component_wins(tmp_path: Path) -> None:
    template = (
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: NAME}\nspec:\n"
        "  policies: {retries: {r: {maxRetries: RETRIES}}}\n"
        "  targets: {components: {pubsub: {inbound: {retry: r}}}}\n"
    )
    for name, retries in (("a", "1"), ("b", "2")):
        text = template.replace("NAME", name).replace("RETRIES", retries)
        (tmp_path / f"{name}.yaml").write_text(text)
    resources = load_resources([tmp_path], app_id="a", environ={})
    assert build(component(), tmp_path, resources).defaults.retry.max_attempts == 2


# --- the home directory and the embedded default ---------------------------------------------


def test_default_home() -> None:
    assert default_home({"OMNIBUS_HOME": "/srv/omnibus"}) == Path("/srv/omnibus")
    assert default_home({"OMNIBUS_HOME": "~/x"}) == Path.home() / "x"
    assert default_home({}) == Path.home() / ".omnibus"
    assert default_home({"OMNIBUS_HOME": ""}) == Path.home() / ".omnibus"


def test_ensure_default_components_writes_once_and_never_overwrites(tmp_path: Path) -> None:
    home = tmp_path / "home"
    directory = ensure_default_components(home)
    assert directory == home / "components"
    spec, store = load_resources([directory], app_id="any-app", environ={}).components
    assert (spec.name, spec.type) == ("pubsub", "pubsub.sqlite")
    assert spec.metadata["connectionString"] == str(home / "bus.db")
    assert (store.name, store.type) == ("statestore", "state.sqlite")
    assert store.metadata["connectionString"] == str(home / "state.db")

    # a user's edit survives later starts
    edited = (directory / "pubsub.yaml").read_text().replace("bus.db", "mine.db")
    (directory / "pubsub.yaml").write_text(edited)
    assert ensure_default_components(home) == directory
    assert (directory / "pubsub.yaml").read_text() == edited
    assert sorted(p.name for p in directory.iterdir()) == ["pubsub.yaml", "statestore.yaml"]


def test_ensure_default_components_reports_an_unwritable_home(tmp_path: Path) -> None:
    home = tmp_path / "file"
    home.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        ensure_default_components(home)
    assert str(caught.value).startswith(
        f"{home / 'components' / 'pubsub.yaml'}: cannot write the default component: "
    )
