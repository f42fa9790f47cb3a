"""How backends key presence entries so that apps and services are separate namespaces.

An app and a served topic may share a name (and the instance announcing both): each backend
stores an entry under :func:`storage_instance`, the instance name for an app and
``<instance>@<kind>`` otherwise (``@`` never occurs in a validated instance name), and reads the
instance back with :func:`instance_of`.  The kind itself travels in the entry's metadata.
"""

from __future__ import annotations

from bus.presence import APP, Presence


def storage_instance(entry: Presence) -> str:
    """The key of ``entry`` within its name: unique per (instance, kind)."""
    return entry.instance if entry.kind == APP else f"{entry.instance}@{entry.kind}"


def instance_of(stored: str) -> str:
    """The instance name of a key made by :func:`storage_instance`."""
    return stored.partition("@")[0]
