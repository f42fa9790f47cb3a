"""Dapr resource files -> :class:`~components.specs.Resources`, filtered for one app id.

Every ``*.yaml``/``*.yml`` file directly inside each resources path (a file path is read as is),
in name order, each possibly holding several ``---``-separated documents.  Field names match in
any case, as Dapr reads its YAML through Go's JSON decoder (``pubsubName`` is ``pubsubname``; a
spelling that occurs twice is decoded in turn, as Go does).  Kinds read:

- ``Component`` (``dapr.io/v1alpha1``): ``metadata.name``, ``spec.type``, ``spec.version``
  (default ``v1``), ``spec.metadata: [{name, value | secretKeyRef: {name, key}}]``, ``scopes``.
- ``Subscription`` (``dapr.io/v1alpha1`` with ``spec.route``, ``dapr.io/v2alpha1`` with
  ``spec.routes``; either form is read from either version), ``scopes``.
- ``Resiliency`` (``dapr.io/v1alpha1``), see :mod:`components.resiliency`.

Other kinds (``Configuration``, ``HTTPEndpoint``...) are skipped with a log line, as are documents
without ``kind``.  A resource whose ``scopes`` do not list the app id is left out.

A metadata entry takes its value from one of: ``value`` (strings, numbers and booleans, rendered
as Dapr renders them: ``true``, ``20``), ``envRef: NAME`` (Dapr's, since 1.12), or
``secretKeyRef``.  Secrets come from the environment, as with Dapr's ``secretstores.local.env``:
that store answers a request for secret ``name`` with ``{name: $name}``, so
``secretKeyRef.name`` is the variable and ``key``, when given, must equal it; ``auth.secretStore``
is not used (a warning says so).  ``{env:NAME}`` anywhere in a value is replaced by ``$NAME``.
A variable that is not set is an error, never an empty string; ``APP_API_TOKEN`` and ``DAPR_*``
cannot be read, as in Dapr.

Every problem is a :class:`~bus.errors.ConfigError`:
``<file>: <field path>: expected <what>, got <what was there>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from bus.errors import ConfigError
from bus.message import validate_name
from components.fields import Field
from components.resiliency import parse_resiliency
from components.specs import (
    ComponentMetadata,
    ComponentSpec,
    ResiliencySpec,
    Resources,
    SubscriptionSpec,
)
from components.subscriptions import NAME_EXPECTED, has_path, parse_subscription

log = logging.getLogger("omnibus.components")

API_VERSIONS = {
    "Component": ("dapr.io/v1alpha1",),
    "Subscription": ("dapr.io/v1alpha1", "dapr.io/v2alpha1"),
    "Resiliency": ("dapr.io/v1alpha1",),
}
SUFFIXES = (".yaml", ".yml")
_ENV_REF = re.compile(r"\{env:([^{}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_SOURCES = ("value", "envRef", "secretKeyRef")
_TYPE = re.compile(r"[a-z][a-z0-9]*\.[A-Za-z0-9][A-Za-z0-9._-]*")


def load_resources(paths: Sequence[Path], *, app_id: str, environ: Mapping[str, str]) -> Resources:
    """Load every resource file under ``paths`` that applies to ``app_id``."""
    loader = _Loader(app_id, environ)
    for file in resource_files(paths):
        loader.load_file(file)
    return loader.result()


def parse_programmatic(
    payload: object, *, source: str = "GET /dapr/subscribe"
) -> tuple[SubscriptionSpec, ...]:
    """The subscriptions an app returned from ``GET /dapr/subscribe`` (parsed JSON).

    Read as Dapr reads it, with Go's JSON decoder: field names in any case (``PubsubName``,
    ``Topic``, ``Routes.Rules[].Match``...), and of two spellings in one object the last wins.
    ``null`` means none.  Entries with neither a route nor rules are skipped with a warning, as
    Dapr does; anything else malformed is a ConfigError.
    """
    if payload is None:
        return ()
    root = Field(source, "", payload, go_json=True)
    if not isinstance(payload, list):
        raise root.fail("a JSON array of subscriptions")
    specs: list[SubscriptionSpec] = []
    for entry in root.list():
        spec = parse_subscription(entry, kind="PROGRAMMATIC")
        if not has_path(spec):
            log.warning("%s: %s: no route for topic %r: skipped", source, entry.path, spec.topic)
            continue
        _check_unique(specs, spec, entry)
        specs.append(spec)
    return tuple(specs)


def resource_files(paths: Sequence[Path]) -> list[Path]:
    """The YAML files to read, in load order; a missing path is an error."""
    files: dict[Path, Path] = {}  # resolved -> as given, so a file named twice loads once
    for path in paths:
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        else:
            raise ConfigError(f"{path}: resources path does not exist")
        for file in found:
            files.setdefault(file.resolve(), file)
    return list(files.values())


class _Loader:
    """Accumulates the resources of several files and checks names are unique."""

    def __init__(self, app_id: str, environ: Mapping[str, str]) -> None:
        self.app_id = app_id
        self.environ = environ
        self.components: list[ComponentSpec] = []
        self.subscriptions: list[SubscriptionSpec] = []
        self.resiliencies: list[ResiliencySpec] = []

    def result(self) -> Resources:
        pubsubs = {c.name for c in self.components if c.kind == "pubsub"}
        for sub in self.subscriptions:
            if sub.pubsubname not in pubsubs:
                log.warning(
                    "%s: subscription to %r names pubsub %r, which is not loaded for app %r",
                    sub.source,
                    sub.topic,
                    sub.pubsubname,
                    self.app_id,
                )
        return Resources(
            components=tuple(self.components),
            subscriptions=tuple(self.subscriptions),
            resiliencies=tuple(self.resiliencies),
        )

    def load_file(self, file: Path) -> None:
        try:
            text = file.read_text(encoding="utf-8")
            docs = list(yaml.safe_load_all(text))
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text: {exc.reason}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: invalid YAML: {_yaml_problem(exc)}") from exc
        for index, doc in enumerate(docs):
            source = str(file) if len(docs) == 1 else f"{file} (document {index + 1})"
            self.load_document(Field(source, "", doc, go_json=True))

    def load_document(self, doc: Field) -> None:
        if not doc.present:
            return
        if not isinstance(doc.value, dict):
            raise doc.fail("a resource (a mapping with apiVersion, kind, metadata, spec)")
        kind = doc.child("kind").value
        if not isinstance(kind, str) or kind not in API_VERSIONS:
            log.info("%s: kind %r is not used by omnibus: skipped", doc.source, kind)
            return
        version = doc.child("apiVersion")
        if version.value not in API_VERSIONS[kind]:
            raise version.fail(" or ".join(repr(v) for v in API_VERSIONS[kind]))
        scopes = doc.child("scopes").strings()
        if scopes and self.app_id not in scopes:
            log.debug("%s: %s scoped to %s: skipped", doc.source, kind, ", ".join(scopes))
            return
        if kind == "Component":
            self.add_component(doc, scopes)
        elif kind == "Subscription":
            self.add_subscription(doc, scopes)
        else:
            name = doc.child("metadata").child("name").optional_string() or ""
            self.resiliencies.append(parse_resiliency(doc, name=name, scopes=scopes))

    def add_component(self, doc: Field, scopes: tuple[str, ...]) -> None:
        name_field = doc.child("metadata").child("name")
        name = name_field.check(lambda v: validate_name(v, "component name"), NAME_EXPECTED)
        for other in self.components:
            if other.name == name:
                raise name_field.error(
                    f"duplicate component name {name!r} (also in {other.source})"
                )
        secret_store = doc.child("auth").child("secretStore").optional_string()
        if secret_store is not None:
            log.warning(
                "%s: auth.secretStore %r is not used: secretKeyRef reads environment variables",
                doc.source,
                secret_store,
            )
        spec = doc.child("spec")
        component = ComponentSpec(
            name=name,
            type=spec.child("type").check(_component_type, "a component type like 'pubsub.redis'"),
            version=spec.child("version").optional_string() or "v1",
            metadata=ComponentMetadata(self.component_metadata(spec.child("metadata"))),
            scopes=scopes,
            source=doc.source,
        )
        self.components.append(component)

    def add_subscription(self, doc: Field, scopes: tuple[str, ...]) -> None:
        name = doc.child("metadata").child("name").optional_string() or ""
        spec = doc.child("spec")
        sub = parse_subscription(
            spec, kind="DECLARATIVE", name=name, scopes=scopes, metadata_value=self.value
        )
        if not has_path(sub):
            raise spec.child("routes").fail("a route: spec.route, spec.routes.default or rules")
        _check_unique(self.subscriptions, sub, spec)
        self.subscriptions.append(sub)

    def component_metadata(self, items: Field) -> dict[str, str]:
        metadata: dict[str, str] = {}
        seen: dict[str, str] = {}  # lower-cased -> as written: names match in any case
        for item in items.list():
            name_field = item.child("name")
            name = name_field.string()
            first = seen.setdefault(name.lower(), name)
            if first != name or name in metadata:
                also = "" if first == name else f" (as {first!r}: names match in any case)"
                raise name_field.error(f"duplicate metadata name {name!r}{also}")
            sources = [key for key in _VALUE_SOURCES if item.child(key).present]
            if len(sources) > 1:
                found = " and ".join(sources)
                raise item.error(f"expected one of value, envRef or secretKeyRef, got {found}")
            if sources == ["secretKeyRef"]:
                metadata[name] = self.secret(item.child("secretKeyRef"))
            elif sources == ["envRef"]:
                ref = item.child("envRef")
                metadata[name] = self.variable(ref, ref.string())
            else:
                metadata[name] = self.value(item.child("value"))
        return metadata

    def value(self, field: Field) -> str:
        """A metadata value as a string, with ``{env:NAME}`` replaced."""
        text = field.scalar()

        def substitute(match: re.Match[str]) -> str:
            if not _ENV_NAME.fullmatch(match.group(1)):
                raise field.fail("{env:NAME} with NAME an environment variable name")
            return self.variable(field, match.group(1))

        return _ENV_REF.sub(substitute, text)

    def secret(self, ref: Field) -> str:
        """The value of a ``secretKeyRef``: the environment variable ``name``."""
        name = ref.child("name").string()
        key = ref.child("key").optional_string()
        if key is not None and key != name:
            raise ref.child("key").fail(
                f"{name!r} or nothing (secrets are environment variables; the variable is "
                "secretKeyRef.name, as with Dapr's local.env secret store)"
            )
        return self.variable(ref.child("name"), name)

    def variable(self, field: Field, name: str) -> str:
        """The environment variable ``name``; unset or reserved ones are errors."""
        if name.upper() == "APP_API_TOKEN" or name.upper().startswith("DAPR_"):
            raise field.error(
                f"environment variable {name!r} may not be read by components "
                "(APP_API_TOKEN and DAPR_* are reserved, as in Dapr)"
            )
        if name not in self.environ:
            raise field.error(f"environment variable {name!r} is not set")
        return self.environ[name]


def _component_type(value: str) -> str:
    if not _TYPE.fullmatch(value):
        raise ValueError(value)
    return value


def _check_unique(known: Sequence[SubscriptionSpec], new: SubscriptionSpec, where: Field) -> None:
    for other in known:
        if (other.pubsubname, other.topic) == (new.pubsubname, new.topic):
            raise where.error(
                f"duplicate subscription to topic {new.topic!r} of pubsub {new.pubsubname!r}"
                + (f" (also in {other.source})" if other.source != new.source else "")
            )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc)
