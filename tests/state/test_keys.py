"""Dapr's key prefixes: every ``keyPrefix`` strategy, the ``||`` rule, stripping back."""

from __future__ import annotations

import pytest

from bus.errors import ConfigError
from state.keys import InvalidKey, KeyPrefix, KeyStrategy


def strategy(value: str | None, namespace: str = "") -> KeyStrategy:
    metadata = {} if value is None else {"keyPrefix": value}
    return KeyStrategy.from_metadata("statestore", metadata, namespace=namespace)


@pytest.mark.parametrize(
    ("value", "namespace", "expected"),
    [
        (None, "", "orders||k"),
        ("appid", "", "orders||k"),
        ("AppID", "", "orders||k"),
        ("name", "", "statestore||k"),
        ("namespace", "prod", "prod.orders||k"),
        ("namespace", "", "orders||k"),  # no NAMESPACE: the app id alone, as Dapr
        ("none", "", "k"),
        ("shared", "", "shared||k"),
        ("Shared", "", "shared||k"),  # Dapr lower-cases the strategy, literal prefixes too
        ("", "", "orders||k"),
    ],
)
def test_each_strategy_prefixes_as_dapr(value: str | None, namespace: str, expected: str) -> None:
    assert strategy(value, namespace).for_app("orders").storage_key("k") == expected


def test_the_metadata_name_matches_case_insensitively() -> None:
    keys = KeyStrategy.from_metadata("statestore", {"KEYPREFIX": "name"})
    assert keys.for_app("orders").storage_key("k") == "statestore||k"


def test_a_prefix_holding_the_separator_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="keyPrefix"):
        strategy("a||b")


@pytest.mark.parametrize("value", [None, "name", "shared", "namespace"])
def test_a_key_holding_the_separator_is_refused(value: str | None) -> None:
    with pytest.raises(InvalidKey, match="can't contain"):
        strategy(value).for_app("orders").storage_key("a||b")


def test_with_prefix_none_a_key_may_hold_the_separator() -> None:
    assert strategy("none").for_app("orders").storage_key("other||k") == "other||k"


@pytest.mark.parametrize("key", ["", None, 7])
def test_a_key_must_be_a_non_empty_string(key: object) -> None:
    with pytest.raises(InvalidKey):
        KeyPrefix("orders").storage_key(key)


def test_app_key_strips_only_the_callers_prefix() -> None:
    prefix = strategy(None).for_app("orders")
    assert prefix.head == "orders||"
    assert prefix.app_key("orders||k") == "k"
    assert prefix.app_key("orders||k||x") == "k||x"
    assert prefix.app_key("billing||k") == "billing||k"
    assert KeyPrefix(None).app_key("a||b") == "a||b"
    assert KeyPrefix(None).head == ""
