"""The embedded SQLite backend for the conformance suite: one temporary database file per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.sqlite import SqliteBroker, SqliteSettings
from tests.backends import BackendEnv


@pytest.fixture
async def backend_sqlite(tmp_path: Path) -> AsyncIterator[BackendEnv]:
    settings = SqliteSettings(path=tmp_path / "bus.db", trim_interval=0.2)
    observer = SqliteBroker(settings, instance="observer")

    def new_broker(**kwargs: Any) -> SqliteBroker:
        return SqliteBroker(settings, **kwargs)

    async def retained(topic: str) -> int:
        return await observer.retained(topic)

    yield BackendEnv("sqlite", new_broker, durable=True, retained=retained)
    await observer.close()
