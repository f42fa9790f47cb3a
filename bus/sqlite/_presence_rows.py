"""The rows of presence and of the wake-up doorbells in the bus file (see :mod:`bus.sqlite`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager

import orjson

from bus.presence import Presence
from bus.presence_keys import instance_of, storage_instance
from bus.sqlite._schema import encode_metadata

DOORBELL_TTL = 30.0  # seconds a doorbell row counts without a refresh


class PresenceRows:
    """Presence and doorbell statements of :class:`~bus.sqlite._store.SqliteStore`."""

    @property
    def db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def beat(self, entries: Sequence[Presence]) -> None:
        """Insert or refresh presence entries with a beat of now."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO presence (name, instance, address, started, last_beat, "
                "metadata) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.name,
                        storage_instance(e),
                        e.address,
                        e.started,
                        now,
                        encode_metadata(e.metadata),
                    )
                    for e in entries
                ],
            )

    def hang_doorbell(self, address: str, port: int | None) -> None:
        """Register (or refresh) the UDP port that wakes ``address``; ``None`` removes it."""
        with self.transaction() as db:
            if port is None:
                db.execute("DELETE FROM doorbells WHERE address = ?", (address,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO doorbells (address, port, last_beat) VALUES (?, ?, ?)",
                    (address, port, time.time()),
                )

    def doorbells(self, exclude: str) -> list[int]:
        """The UDP ports of the other live doorbells."""
        rows = self.db.execute(
            "SELECT port FROM doorbells WHERE address != ? AND last_beat >= ?",
            (exclude, time.time() - DOORBELL_TTL),
        ).fetchall()
        return [row[0] for row in rows]

    def remove_presence(self, name: str, instance: str) -> None:
        """Delete one presence entry."""
        with self.transaction() as db:
            db.execute("DELETE FROM presence WHERE name = ? AND instance = ?", (name, instance))

    def list_presence(self, name: str | None, since: float) -> list[Presence]:
        """Presence entries (of ``name``, or all) that beat at or after ``since``."""
        query = "SELECT name, instance, address, started, last_beat, metadata FROM presence "
        if name is None:
            rows = self.db.execute(query + "WHERE last_beat >= ?", (since,)).fetchall()
        else:
            rows = self.db.execute(
                query + "WHERE name = ? AND last_beat >= ?", (name, since)
            ).fetchall()
        return [
            Presence(
                name=r[0],
                instance=instance_of(r[1]),
                address=r[2],
                started=r[3],
                last_beat=r[4],
                metadata=orjson.loads(r[5]) if r[5] else {},
            )
            for r in rows
        ]
