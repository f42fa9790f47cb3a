"""The synchronous side of the SQLite broker: its statements, run on its database thread.

The storage layout, the durability choices and the wake-up scheme are described in
:mod:`bus.sqlite`; this module holds the SQL that implements them (the tables are in
:mod:`bus.sqlite._schema`), and nothing here is async.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bus.errors import BrokerClosed
from bus.message import Message
from bus.presence import HEARTBEAT_TTL
from bus.sqlite._presence_rows import DOORBELL_TTL, PresenceRows
from bus.sqlite._schema import (
    LOCK_SLICE,
    SqliteDelivery,
    begin_immediate,
    connect,
    encode_metadata,
    row_message,
)

INBOX_TTL = 3600.0  # seconds an unclaimed reply is kept
PRESENCE_SWEEP = HEARTBEAT_TTL * 10
SWEEP_INTERVAL = 60.0
VACUUM_MIN_FREE_PAGES = 2048  # 8 MiB of 4 KiB pages
VACUUM_CHUNK = 256  # pages given back per write transaction (1 MiB: about a millisecond)


class SqliteStore(PresenceRows):
    """The synchronous side: every method runs on the broker's database thread."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self.writes = 0  # grouped write transactions, for tests and statistics
        self._vacuuming = False  # giving a drained backlog's free pages back, chunk by chunk

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BrokerClosed("the sqlite broker is not connected")
        return self._db

    def open(self) -> None:
        """Open (creating if needed) the bus file and its schema."""
        self._db = connect(self._path, self._busy_timeout)

    def close(self, inbox: str | None) -> None:
        """Drop the replies left for ``inbox`` and close the connection."""
        if self._db is None:
            return
        if inbox is not None:
            self.db.execute("DELETE FROM inbox WHERE address = ?", (inbox,))
        self._db.close()
        self._db = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
        db = self.db
        begin_immediate(db, self._busy_timeout, min(self._busy_timeout, LOCK_SLICE))
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def data_version(self) -> int:
        """A number that changes whenever another connection commits."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- writes grouped into one transaction -----------------------------------------------

    def write(
        self, messages: Sequence[tuple[str, Sequence[Message]]], replies: Sequence[Any]
    ) -> None:
        """Insert published messages and replies in one transaction (fsynced if any message)."""
        db, now = self.db, time.time()
        self.writes += 1
        if messages:
            db.execute("PRAGMA synchronous = FULL")
        try:
            with self.transaction():
                if messages:
                    db.executemany(
                        "INSERT INTO messages (topic, id, data, metadata, reply_to, "
                        "correlation_id, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                topic,
                                m.id,
                                m.data,
                                encode_metadata(m.metadata),
                                m.reply_to,
                                m.correlation_id,
                                now,
                            )
                            for topic, batch in messages
                            for m in batch
                        ],
                    )
                if replies:
                    db.executemany(
                        "INSERT INTO inbox (address, correlation_id, id, data, metadata, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [(*reply, now) for reply in replies],
                    )
        finally:
            if messages:
                db.execute("PRAGMA synchronous = NORMAL")

    # -- groups and deliveries -------------------------------------------------------------

    def ensure_group(self, topic: str, group: str) -> None:
        """Create the group at the oldest message the topic holds, unless it exists."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO groups (topic, grp, cursor, created) VALUES (?, ?, "
                "(SELECT COALESCE(MIN(seq), 0) FROM messages WHERE topic = ?), ?)",
                (topic, group, topic, time.time()),
            )

    def _has_work(self, topic: str, group: str, now: float) -> tuple[bool, float | None]:
        """Without a write lock: is anything due or new for the group? Also the next due time."""
        db = self.db
        next_due = db.execute(
            "SELECT MIN(due) FROM deliveries WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchone()[0]
        if next_due is not None and next_due <= now:
            return True, next_due
        new = db.execute(
            "SELECT 1 FROM messages WHERE topic = ? AND seq >= "
            "(SELECT cursor FROM groups WHERE topic = ? AND grp = ?) LIMIT 1",
            (topic, topic, group),
        ).fetchone()
        return new is not None, next_due

    def claim(
        self, topic: str, group: str, consumer: str, limit: int, lease: float
    ) -> tuple[list[SqliteDelivery], float | None]:
        """Lease up to ``limit`` deliveries: due ones first, then new messages in order.

        Also returns the group's next due time after the claim (None if nothing is held).
        """
        now = time.time()
        work, next_due = self._has_work(topic, group, now)
        if not work:
            return [], next_due
        out: list[SqliteDelivery] = []
        with self.transaction() as db:
            due = db.execute(
                "SELECT d.seq, d.attempt + 1, m.id, m.data, m.metadata, m.reply_to, "
                "m.correlation_id, m.created FROM deliveries d JOIN messages m ON m.seq = d.seq "
                "WHERE d.topic = ? AND d.grp = ? AND d.due <= ? ORDER BY d.seq LIMIT ?",
                (topic, group, now, limit),
            ).fetchall()
            if due:
                db.executemany(
                    "UPDATE deliveries SET attempt = ?, consumer = ?, due = ? "
                    "WHERE topic = ? AND grp = ? AND seq = ?",
                    [(row[1], consumer, now + lease, topic, group, row[0]) for row in due],
                )
                out.extend(SqliteDelivery(row_message(r[2:], topic, r[1]), r[0]) for r in due)
            if len(out) < limit:
                out.extend(
                    self._claim_new(db, topic, group, consumer, limit - len(out), now + lease)
                )
            next_due = db.execute(
                "SELECT MIN(due) FROM deliveries WHERE topic = ? AND grp = ?", (topic, group)
            ).fetchone()[0]
        return out, next_due

    def _claim_new(
        self, db: sqlite3.Connection, topic: str, group: str, consumer: str, limit: int, due: float
    ) -> list[SqliteDelivery]:
        rows = db.execute(
            "SELECT seq, id, data, metadata, reply_to, correlation_id, created FROM messages "
            "WHERE topic = ? AND seq >= (SELECT cursor FROM groups WHERE topic = ? AND grp = ?) "
            "ORDER BY seq LIMIT ?",
            (topic, topic, group, limit),
        ).fetchall()
        if not rows:
            return []
        db.executemany(
            "INSERT OR REPLACE INTO deliveries (topic, grp, seq, attempt, consumer, due) "
            "VALUES (?, ?, ?, 1, ?, ?)",
            [(topic, group, row[0], consumer, due) for row in rows],
        )
        db.execute(
            "UPDATE groups SET cursor = ? WHERE topic = ? AND grp = ?",
            (rows[-1][0] + 1, topic, group),
        )
        return [SqliteDelivery(row_message(row[1:], topic, 1), row[0]) for row in rows]

    def ack(self, topic: str, group: str, seqs: Sequence[int], consumer: str) -> None:
        """Forget the deliveries of ``seqs`` that ``consumer`` still holds: done for the group.

        A delivery whose lease ran out and that another consumer took is that consumer's now:
        a late ack must not delete its lease.
        """
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM deliveries WHERE topic = ? AND grp = ? AND seq = ? AND consumer = ?",
                [(topic, group, seq, consumer) for seq in seqs],
            )

    def retry(self, topic: str, group: str, seq: int, consumer: str, delay: float) -> None:
        """Make a held delivery due again in ``delay`` seconds (the backoff is durable)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET due = ?, consumer = NULL "
                "WHERE topic = ? AND grp = ? AND seq = ? AND consumer = ?",
                (time.time() + delay, topic, group, seq, consumer),
            )

    def dead_letter(self, topic: str, group: str, seq: int, target: str, consumer: str) -> None:
        """Copy the message to ``target`` and forget its delivery, in one transaction (only
        while ``consumer`` holds it, as for :meth:`ack`)."""
        with self.transaction() as db:
            held = db.execute(
                "DELETE FROM deliveries WHERE topic = ? AND grp = ? AND seq = ? AND consumer = ?",
                (topic, group, seq, consumer),
            ).rowcount
            if held:
                db.execute(
                    "INSERT INTO messages (topic, id, data, metadata, reply_to, correlation_id, "
                    "created) SELECT ?, id, data, metadata, reply_to, correlation_id, ? "
                    "FROM messages WHERE seq = ?",
                    (target, time.time(), seq),
                )

    def release(self, topic: str, group: str, consumer: str, seqs: Sequence[int] | None) -> None:
        """Make held deliveries due now; ``seqs=None``: every one this consumer never handled."""
        now = time.time()
        with self.transaction() as db:
            if seqs is None:
                db.execute(
                    "UPDATE deliveries SET due = ?, consumer = NULL, attempt = attempt - 1 "
                    "WHERE topic = ? AND grp = ? AND consumer = ?",
                    (now, topic, group, consumer),
                )
                return
            db.executemany(
                "UPDATE deliveries SET due = ?, consumer = NULL "
                "WHERE topic = ? AND grp = ? AND seq = ? AND consumer = ?",
                [(now, topic, group, seq, consumer) for seq in seqs],
            )

    def trim(
        self, topics: Iterable[str], max_len: int | None = None, chunk: int | None = None
    ) -> int:
        """Delete messages every group of their topic has moved past and acked.

        With ``max_len``, also the oldest messages beyond that many per topic, acked or not
        (the hard cap a user opts into); the groups skip them.  With ``chunk``, at most that
        many acked messages per topic, so that the write lock is held briefly: the caller
        repeats while a topic had a whole chunk to delete.
        """
        deleted = 0
        with self.transaction() as db:
            for topic in topics:
                keep_from = self._needed_from(db, topic)
                if keep_from is not None and chunk is None:
                    deleted += db.execute(
                        "DELETE FROM messages WHERE topic = ? AND seq < ?", (topic, keep_from)
                    ).rowcount
                elif keep_from is not None:
                    deleted += db.execute(
                        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages "
                        "WHERE topic = ? AND seq < ? ORDER BY seq LIMIT ?)",
                        (topic, keep_from, chunk),
                    ).rowcount
                if max_len is not None:
                    deleted += self._cap(db, topic, max_len)
        return deleted

    @staticmethod
    def _needed_from(db: sqlite3.Connection, topic: str) -> int | None:
        """The oldest seq some group of ``topic`` still needs; None if it has no group."""
        groups = db.execute("SELECT grp, cursor FROM groups WHERE topic = ?", (topic,)).fetchall()
        oldest: int | None = None
        for group, cursor in groups:
            pending = db.execute(
                "SELECT MIN(seq) FROM deliveries WHERE topic = ? AND grp = ?", (topic, group)
            ).fetchone()[0]
            needed = cursor if pending is None else min(cursor, pending)
            oldest = needed if oldest is None else min(oldest, needed)
        return oldest

    @staticmethod
    def _cap(db: sqlite3.Connection, topic: str, max_len: int) -> int:
        row = db.execute(
            "SELECT seq FROM messages WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (topic, max_len),
        ).fetchone()
        if row is None:
            return 0
        cut = row[0]
        db.execute("DELETE FROM deliveries WHERE topic = ? AND seq <= ?", (topic, cut))
        db.execute(
            "UPDATE groups SET cursor = ? WHERE topic = ? AND cursor <= ?", (cut + 1, topic, cut)
        )
        dropped = db.execute("DELETE FROM messages WHERE topic = ? AND seq <= ?", (topic, cut))
        return int(dropped.rowcount)

    def browse(self, topic: str, limit: int) -> list[Message]:
        """The oldest ``limit`` messages the topic holds, without delivering them."""
        rows = self.db.execute(
            "SELECT id, data, metadata, reply_to, correlation_id FROM messages "
            "WHERE topic = ? ORDER BY seq LIMIT ?",
            (topic, limit),
        ).fetchall()
        return [row_message(row, topic, 1) for row in rows]

    def retained(self, topic: str) -> int:
        """How many messages the topic holds."""
        return int(
            self.db.execute("SELECT COUNT(*) FROM messages WHERE topic = ?", (topic,)).fetchone()[0]
        )

    # -- inbox and presence ----------------------------------------------------------------

    def take_replies(self, address: str) -> list[Message]:
        """Remove and return the replies addressed to ``address``, oldest first."""
        db = self.db
        if db.execute("SELECT 1 FROM inbox WHERE address = ? LIMIT 1", (address,)).fetchone():
            rows = db.execute(
                "DELETE FROM inbox WHERE address = ? "
                "RETURNING id, data, metadata, NULL, correlation_id, seq",
                (address,),
            ).fetchall()
            return [row_message(row, "", 1) for row in sorted(rows, key=lambda r: r[5])]
        return []

    def sweep(self) -> None:
        """Drop stale replies, presence and doorbells; give a large free list back to the system."""
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM inbox WHERE created < ?", (now - INBOX_TTL,))
            db.execute("DELETE FROM presence WHERE last_beat < ?", (now - PRESENCE_SWEEP,))
            db.execute("DELETE FROM doorbells WHERE last_beat < ?", (now - DOORBELL_TTL,))

    def vacuum_step(self) -> bool:
        """Give up to ``VACUUM_CHUNK`` free pages back to the system, if the free list is large.

        After a backlog drained the file is mostly free pages; steady use reuses them.  A chunk
        at a time, each its own short write transaction, so other writers get the lock between
        chunks.  Returns True while there is more to give back.
        """
        db = self.db
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        if not self._vacuuming:  # start on a large free list, then give all of it back
            self._vacuuming = free > VACUUM_MIN_FREE_PAGES and free * 4 > pages
        if not self._vacuuming or not free:
            self._vacuuming = False
            return False
        with self.transaction() as db:
            db.execute(f"PRAGMA incremental_vacuum({VACUUM_CHUNK})").fetchall()  # to the end
        return True
