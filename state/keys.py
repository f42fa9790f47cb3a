"""Dapr's key prefixes: how an app's key becomes the key a store holds, and back.

A store holds ``<prefix>||<key>``; the prefix comes from the component's ``keyPrefix`` metadata
(name matched case-insensitively, value lower-cased, as Dapr's ``state_config.go`` does):

    appid      (default) the caller's app id: ``orders||k``
    name       the component (store) name: ``statestore||k``
    namespace  ``<NAMESPACE>.<appid>||k``; without a NAMESPACE, the app id alone, as Dapr
    none       no prefix: the key as given (apps share every key)
    <other>    that literal string (lower-cased, as Dapr): ``shared||k``

A key containing ``||`` is refused (:class:`InvalidKey`, an InvalidArgument: HTTP 400
``ERR_MALFORMED_REQUEST``) so an app cannot reach into another prefix.  With ``keyPrefix: none``
it is accepted: the app sees the store's raw keys anyway (Dapr refuses it there too; omnibus lets
a ``none`` app address keys other apps wrote, which is what ``none`` is for).
Results of bulk gets, transactions and queries carry the app's key: the prefix stripped back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bus.errors import ConfigError, InvalidArgument

SEPARATOR = "||"
KEY_PREFIX_METADATA = "keyPrefix"

APPID = "appid"
NAME = "name"
NAMESPACE = "namespace"
NONE = "none"


class InvalidKey(InvalidArgument):
    """A key the state API cannot take: empty, not text, or holding the ``||`` separator."""


@dataclass(frozen=True, slots=True)
class KeyStrategy:
    """A component's ``keyPrefix`` choice, resolved per caller by :meth:`for_app`."""

    strategy: str = APPID
    store: str = ""
    namespace: str = ""

    @classmethod
    def from_metadata(
        cls, store: str, metadata: Mapping[str, str], *, namespace: str = ""
    ) -> KeyStrategy:
        """The strategy of a component's metadata; ConfigError for a prefix holding ``||``."""
        strategy = APPID
        for name, value in metadata.items():
            if name.lower() == KEY_PREFIX_METADATA.lower():
                strategy = value.strip().lower() or APPID
                break
        if SEPARATOR in strategy:
            raise ConfigError(
                f"component {store!r}: metadata {KEY_PREFIX_METADATA!r}: "
                f"expected a prefix without {SEPARATOR!r}, got {strategy!r}"
            )
        return cls(strategy, store, namespace)

    def for_app(self, app_id: str) -> KeyPrefix:
        """The prefix the keys of ``app_id`` get in this store."""
        if self.strategy == NONE:
            return KeyPrefix(None)
        if self.strategy == NAME:
            return KeyPrefix(self.store)
        if self.strategy in (APPID, NAMESPACE):
            if not app_id:
                return KeyPrefix(None)
            if self.strategy == NAMESPACE and self.namespace:
                return KeyPrefix(f"{self.namespace}.{app_id}")
            return KeyPrefix(app_id)
        return KeyPrefix(self.strategy)


@dataclass(frozen=True, slots=True)
class KeyPrefix:
    """One caller's prefix in one store; ``None`` = keys are stored as given."""

    prefix: str | None

    @property
    def head(self) -> str:
        """What every storage key of this caller starts with (``""`` without a prefix)."""
        return "" if self.prefix is None else self.prefix + SEPARATOR

    def storage_key(self, key: object) -> str:
        """The key the store holds for the app's ``key``; InvalidKey if it cannot be one."""
        if not isinstance(key, str) or not key:
            raise InvalidKey("a state key must be a non-empty string")
        if self.prefix is None:
            return key
        if SEPARATOR in key:
            raise InvalidKey(f"input key {key!r} can't contain {SEPARATOR!r}")
        return self.prefix + SEPARATOR + key

    def app_key(self, stored: str) -> str:
        """The app's key for a storage key (the prefix stripped; other keys unchanged)."""
        head = self.head
        if head and stored.startswith(head):
            return stored[len(head) :]
        return stored
