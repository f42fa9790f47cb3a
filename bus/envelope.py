"""HTTP-shaped values that travel on the bus: multi-valued headers and an envelope around a body.

Service invocation and state carry HTTP requests and responses over request/reply, so what
travels is what HTTP has: a status, headers whose names compare case-insensitively and which may
repeat (two ``Set-Cookie`` survive), a body of any size the broker takes, plus a few scalar
attributes (method, path, query, app ids).  The bus itself reads none of it.

Wire format of :meth:`Envelope.encode` (bytes, never pickle)::

    4 bytes   big-endian length N of the head
    N bytes   head: JSON {"s": status, "h": [[name, value], ...], "a": {name: value}}
    rest      the body, as is

The body is never copied into JSON or base64, so a 4 MiB body costs 4 MiB on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import orjson

from bus.errors import InvalidArgument

_EMPTY: Mapping[str, str] = MappingProxyType({})
_HEAD_LENGTH = 4


class Headers:
    """An ordered list of ``(name, value)`` pairs; names compare case-insensitively."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        self._pairs: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, else ``default``."""
        wanted = name.lower()
        for key, value in self._pairs:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        wanted = name.lower()
        return [value for key, value in self._pairs if key.lower() == wanted]

    def items(self) -> list[tuple[str, str]]:
        """Every pair, names in their original case."""
        return list(self._pairs)

    def add(self, name: str, value: str) -> None:
        """Append one more value of ``name``."""
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidArgument("header names and values must be strings")
        self._pairs.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value``."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Drop every value of ``name``."""
        wanted = name.lower()
        self._pairs = [(k, v) for k, v in self._pairs if k.lower() != wanted]

    def without(self, names: Iterable[str]) -> Headers:
        """A copy without any of ``names``."""
        dropped = {name.lower() for name in names}
        return Headers((k, v) for k, v in self._pairs if k.lower() not in dropped)

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers(self._pairs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k.lower(), v) for k, v in self._pairs] == [(k.lower(), v) for k, v in other._pairs]

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A status, headers, a body and scalar attributes, as one request or reply carries them."""

    status: int = 0
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or isinstance(self.status, bool):
            raise InvalidArgument("envelope status must be an integer")
        if not isinstance(self.body, bytes):
            object.__setattr__(self, "body", bytes(self.body))
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def encode(self) -> bytes:
        """The envelope as bytes (see the module docstring)."""
        head = orjson.dumps(
            {"s": self.status, "h": self.headers.items(), "a": dict(self.attributes)}
        )
        return len(head).to_bytes(_HEAD_LENGTH, "big") + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Read an envelope written by :meth:`encode`; garbage raises :class:`InvalidArgument`."""
        view = memoryview(data)
        if len(view) < _HEAD_LENGTH:
            raise InvalidArgument("envelope is shorter than its length prefix")
        size = int.from_bytes(view[:_HEAD_LENGTH], "big")
        end = _HEAD_LENGTH + size
        if end > len(view):
            raise InvalidArgument("envelope head is cut short")
        try:
            head = orjson.loads(view[_HEAD_LENGTH:end])
            status, pairs, attributes = head["s"], head["h"], head["a"]
            headers = Headers((str(k), str(v)) for k, v in pairs)
            attributes = {str(k): str(v) for k, v in attributes.items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"malformed envelope head: {exc}") from None
        return cls(status=status, headers=headers, body=bytes(view[end:]), attributes=attributes)
