"""A state store served as a request/reply service on the bus, and the client every sidecar uses.

Topic: ``omnibus.state.<store-name>`` (:func:`state_topic`), served in call mode (at most once,
not durable) by every sidecar that loaded the store's component; those sidecars compete for each
call.  Requests and replies are :mod:`state.wire` envelopes.  The serving side
(:class:`StateService`) does, for every caller alike:

1. the component's ``scopes`` against the caller's app id: a store the app is not scoped to is
   answered as absent (:class:`~state.wire.StoreNotFound`), as Dapr does;
2. the key prefix of the caller (:mod:`state.keys`), applied to keys and stripped from results;
3. the store operation; with a change feed (:mod:`state.feed`) every write carries a
   :class:`~state.store.Journal`, so the store records the change in its outbox in the same
   atomic write, and the answer waits for the relay pass that follows (never fails for it).

:class:`StateClient` is what a sidecar calls: a store it serves itself is called in-process
through :meth:`StateService.execute` (no bus, no serialization, the same checks); any other store
is a call over the bus.  Nobody serving a store is :class:`~state.wire.StoreNotFound` at once
(the broker's NoResponders), never a time-out; an error reply raises the error the server raised
(:data:`state.wire.ERROR_CODES`).

Every sidecar that loaded a store's component serves it, so they must mean one store (one SQLite
file, one Redis): two sidecars with a ``state.in-memory`` component of one name hold two stores,
and a third sidecar's calls reach either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bus.broker import BaseBroker, Subscription
from bus.envelope import Envelope
from bus.errors import InvalidArgument, InvalidName, NoResponders, RemoteError
from bus.message import Message, validate_topic
from bus.options import SubscriptionOptions
from bus.rpc import RequestMode
from state.errors import BulkError, NotSupported, StateError
from state.feed import ChangeFeed, ChangeRelay
from state.keys import KeyPrefix, KeyStrategy
from state.store import (
    BulkItem,
    DeleteRequest,
    Feature,
    Item,
    Journal,
    Operation,
    QueryResult,
    SetRequest,
    StateStore,
)
from state.wire import (
    BulkGet,
    Delete,
    Get,
    Query,
    Request,
    Result,
    Save,
    StoreNotFound,
    Transact,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
    from_remote,
    to_service_error,
)

log = logging.getLogger("omnibus.state")

TOPIC_PREFIX = "omnibus.state."
SERVE_GROUP = "omnibus-state"
DEFAULT_TIMEOUT = 30.0


def state_topic(store: str) -> str:
    """The topic on which the sidecars that loaded ``store`` serve it."""
    return TOPIC_PREFIX + store


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What a store's component says beyond the store: its type, who may use it, key prefixes."""

    type: str = ""
    scopes: tuple[str, ...] = ()
    keys: KeyStrategy = field(default_factory=KeyStrategy)

    def allows(self, app_id: str) -> bool:
        """True if the component is not scoped or scoped to ``app_id``."""
        return not self.scopes or app_id in self.scopes


class StateService:
    """One store with its component's scopes, key prefixes and change feed (and its relay)."""

    def __init__(
        self,
        store: StateStore,
        config: StoreConfig | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.store = store
        self.config = config or StoreConfig(keys=KeyStrategy(store=store.name))
        self.feed = feed
        self.relay = None if feed is None else ChangeRelay(store, feed)
        self._prefixes: dict[str, KeyPrefix] = {}  # by caller

    async def start(self) -> None:
        """Start the change feed's relay (the store must be connected)."""
        if self.relay is not None:
            await self.relay.start()

    async def stop(self) -> None:
        """Stop the relay after a last pass; the store stays open."""
        if self.relay is not None:
            await self.relay.stop()

    @property
    def name(self) -> str:
        """The store's (component's) name."""
        return self.store.name

    @property
    def features(self) -> frozenset[Feature]:
        """What the store can do."""
        return self.store.features

    async def execute(self, caller: str, request: Request) -> Result:
        """Run ``request`` for app ``caller``: scopes, key prefix, store, change feed."""
        if not self.config.allows(caller):
            raise StoreNotFound(f"state store {self.name} is not found")
        _check_features(self.store, request)
        prefix = self._prefixes.get(caller)
        if prefix is None:
            prefix = self._prefixes[caller] = self.config.keys.for_app(caller)
        if isinstance(request, Get):
            item = await self.store.get(prefix.storage_key(request.key))
            return None if item is None else _strip(item, prefix)
        if isinstance(request, BulkGet):
            return await self._bulk_get(prefix, request.keys)
        if isinstance(request, Save):
            await self._save(caller, prefix, request.requests)
        elif isinstance(request, Delete):
            await self._delete(caller, prefix, request.request)
        elif isinstance(request, Transact):
            await self._transact(caller, prefix, request.operations)
        else:
            return await self._query(prefix, request)
        return None

    async def _bulk_get(self, prefix: KeyPrefix, keys: Sequence[str]) -> list[BulkItem]:
        found = await self.store.bulk_get([prefix.storage_key(k) for k in keys])
        return [
            BulkItem(
                key,
                None if entry.item is None else _strip(entry.item, prefix),
                entry.error,
            )
            for key, entry in zip(keys, found, strict=True)
        ]

    async def _save(self, caller: str, prefix: KeyPrefix, requests: Sequence[SetRequest]) -> None:
        stored = [
            r.stored_as(prefix.storage_key(r.key), self._journal(caller, r.key)) for r in requests
        ]
        if not stored:
            return
        if len(stored) == 1:
            await self.store.set(stored[0])
        else:
            try:
                await self.store.bulk_set(stored)
            except BulkError as exc:
                await self._relayed()  # the saves that succeeded have their records
                raise BulkError([(prefix.app_key(k), e) for k, e in exc.errors]) from exc
        await self._relayed()

    async def _delete(self, caller: str, prefix: KeyPrefix, request: DeleteRequest) -> None:
        journal = self._journal(caller, request.key)
        await self.store.delete(request.stored_as(prefix.storage_key(request.key), journal))
        await self._relayed()

    async def _transact(
        self, caller: str, prefix: KeyPrefix, operations: Sequence[Operation]
    ) -> None:
        stored = [
            o.stored_as(prefix.storage_key(o.key), self._journal(caller, o.key)) for o in operations
        ]
        if stored:
            await self.store.transact(stored)
            await self._relayed()

    async def _query(self, prefix: KeyPrefix, request: Query) -> QueryResult:
        result = await self.store.query(request.query, prefix.head)
        return QueryResult([_strip(item, prefix) for item in result.results], result.token)

    def _journal(self, caller: str, key: str) -> Journal | None:
        """What the store records with a write when a feed is on (the app's key, unprefixed)."""
        return None if self.relay is None else Journal(caller, key)

    async def _relayed(self) -> None:
        """Wait for the relay pass that follows a committed write (see :mod:`state.feed`)."""
        if self.relay is not None:
            await self.relay.flush()

    async def reply(self, message: Message) -> bytes:
        """The bus replier: decode, execute, encode; errors become coded error replies."""
        try:
            caller, request = decode_request(Envelope.decode(message.data))
            result = await self.execute(caller, request)
        except (StateError, InvalidArgument) as exc:
            raise to_service_error(exc) from exc
        return encode_result(result).encode()

    async def serve(self, broker: BaseBroker) -> Subscription:
        """Serve this store on ``broker`` (call mode) until the subscription is stopped."""
        options = SubscriptionOptions(group=SERVE_GROUP, concurrency=64, batch_size=64)
        return await broker.serve(
            state_topic(self.name), self.reply, options, mode=RequestMode.CALL
        )


def _check_features(store: StateStore, request: Request) -> None:
    """NotSupported for a transaction or query the store does not advertise (Dapr checks first)."""
    if isinstance(request, Transact) and Feature.TRANSACTIONAL not in store.features:
        raise NotSupported(f"state store {store.name} doesn't support transactions")
    if isinstance(request, Query) and Feature.QUERY_API not in store.features:
        raise NotSupported(f"state store {store.name} doesn't support the query API")


def _strip(item: Item, prefix: KeyPrefix) -> Item:
    return replace(item, key=prefix.app_key(item.key))


class StateClient:
    """The state API of one sidecar: its own stores in-process, any other over the bus."""

    def __init__(
        self,
        app_id: str,
        bus: BaseBroker | None,
        services: Iterable[StateService] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.app_id = app_id
        self.bus = bus
        self.services: Mapping[str, StateService] = {s.name: s for s in services}
        self.timeout = timeout
        self._serving: list[Subscription] = []
        self._connected: list[StateService] = []

    def local(self, store: str) -> StateService | None:
        """The service of ``store`` if this sidecar loaded it."""
        return self.services.get(store)

    async def call(self, store: str, request: Request) -> Result:
        """Run ``request`` on ``store`` as this app; StoreNotFound if nobody serves it."""
        service = self.services.get(store)
        if service is not None:
            return await service.execute(self.app_id, request)
        if self.bus is None:
            raise StoreNotFound(f"state store {store} is not found")
        try:
            topic = validate_topic(state_topic(store))
        except InvalidName:
            raise StoreNotFound(f"state store {store!r} is not found") from None
        message = Message(data=encode_request(self.app_id, request).encode())
        try:
            reply = await self.bus.request(topic, message, self.timeout)
        except NoResponders:
            raise StoreNotFound(f"state store {store} is not found") from None
        except RemoteError as exc:
            raise from_remote(exc) from None
        try:
            return decode_result(request, Envelope.decode(reply.data))
        except InvalidArgument as exc:  # the server's fault, not the caller's: a 500
            raise StateError(f"state store {store} answered unreadably: {exc}") from None

    async def get(self, store: str, key: str) -> Item | None:
        """The item under the app's ``key``, None when absent."""
        result = await self.call(store, Get(key))
        assert result is None or isinstance(result, Item)
        return result

    async def start(self) -> None:
        """Connect every local store, start its feed's relay, serve it on the bus (if any)."""
        try:
            for service in self.services.values():
                await service.store.connect()
                self._connected.append(service)
                await service.start()
                if self.bus is not None:
                    self._serving.append(await service.serve(self.bus))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop serving, then stop the relays, then close the stores (errors logged, not raised)."""
        for subscription in self._serving:
            try:
                await subscription.stop()
            except Exception:
                log.exception("stopping the state service of %s failed", subscription.topic)
        self._serving.clear()
        for service in self._connected:
            try:
                await service.stop()
            except Exception:
                log.exception("stopping the change feed of %s failed", service.name)
        for service in self._connected:
            try:
                await service.store.close()
            except Exception:
                log.exception("closing state store %s failed", service.name)
        self._connected.clear()
