"""The embedded broker: one SQLite database file shared by every process on the machine.

Storage layout (schema version 1, ``PRAGMA user_version``; WAL mode):

- ``messages(seq, topic, id, data, metadata, reply_to, correlation_id, created)``: every
  published message; ``seq`` is an AUTOINCREMENT key, so it grows in commit order across topics
  and processes.  ``metadata`` is a JSON object (NULL when empty).  Index ``(topic, seq)``.
  Lifetime: until every group of the topic has moved past it and acked it; trimming runs each
  ``trim interval`` for the topics this process acked on.  A topic without any group keeps its
  messages (a dead-letter topic is read later), and so does a group that is never read again,
  unless the component opts into ``maxLenApprox``: then at most that many are kept per topic.
- ``groups(topic, grp, cursor, created)``: one row per consumer group of a topic; ``cursor`` is
  the next ``seq`` to hand out for the first time.  A new group starts at the oldest message the
  topic still holds, so messages published before the first subscriber are kept for it (as the
  memory broker does).  Lifetime: forever (a group is durable, like a Redis consumer group).
- ``deliveries(topic, grp, seq, attempt, consumer, due)``: the messages a group has taken but
  not acked.  ``attempt`` counts deliveries to a handler; ``consumer`` is the holding
  subscription (NULL while a retry waits); ``due`` is when the row may be handed out again: the
  lease deadline (now + processingTimeout) while a consumer holds it, the end of the backoff for
  a retry.  A consumer that dies simply lets its leases expire.  Index ``(topic, grp, due)``.
  Lifetime: from the first delivery until the ack or the dead-lettering.
- ``inbox(seq, address, correlation_id, id, data, metadata, created)``: replies of
  request/reply, addressed to a process's inbox; taken (deleted) by that process at once, and
  swept after an hour if nobody took them (the requester died).  Replies to a broker's own
  inbox skip the table.
- ``presence(name, instance, address, started, last_beat, metadata)``: who is up, refreshed by
  the heartbeat; rows whose beat is older than ten TTLs are swept.  ``instance`` is the instance
  name for an app and ``<instance>@<kind>`` otherwise, so apps and services never collide.
- ``doorbells(address, port, last_beat)``: the loopback UDP port on which each broker with
  consumers or an inbox is woken (see wake-ups); refreshed every ten seconds, ignored after 30 s
  without a refresh, removed on close and swept.

Durability (invariant 1): a publish returns after the commit of its transaction, made with
``synchronous=FULL`` (the WAL is fsynced), so a published message survives a power loss.
Everything else (claims, acks, retries, dead letters) commits with ``synchronous=NORMAL``: such a
commit survives a crash of the process but its tail may be lost with the power; losing one only
means the message is delivered again, which at-least-once delivery allows.  A dead letter's
insert and the delete of its delivery share one transaction, so they are lost or kept together.

Concurrency: each broker owns one connection, used only on one dedicated thread, so the event
loop never blocks.  Concurrent publishes of one event-loop tick are grouped into one transaction;
each publish returns after the commit of its group.  Claims run in ``BEGIN IMMEDIATE``
transactions, so competing consumers (in any process) never hold the same lease at once.  One
attempt waits at most 50 ms for another process's write lock, then the thread serves the calls
queued behind it and the call is tried again (until ``busyTimeout``; a publish until it gets the
lock: contention alone never fails it).  A drained backlog's free pages go back to the system a
megabyte per write transaction, so other writers get the lock in between.

Wake-ups: a commit in this process wakes this process's consumers of the topic at once.  After a
commit that may give others work (publish, reply, retry, release, dead letter), a broker also
sends one datagram to the doorbell of every other broker on the file, naming the topics (or the
inbox) concerned, which wakes that broker's consumers of them; the list of doorbells is re-read
every ``trim interval``, and at once when a new doorbell announces itself.  Datagrams can be
lost, so commits of other processes are also noticed by polling ``PRAGMA data_version`` with an
interval that starts at ``minPollInterval`` and doubles up to ``maxPollInterval`` while nothing
changes.  Consumers also wake when the next lease or backoff in their group runs out, and every
``redeliverInterval``.

A release at shutdown counts as a delivery when the handler had started (the next delivery has
``attempt + 1``, so the app can de-duplicate work it may have done); deliveries that were claimed
but never handed to a handler are given back with their attempt count unchanged.

Modules: ``broker`` (the async side), ``settings`` (the component's settings), ``_store`` (the
SQL; the presence and doorbell rows in ``_presence_rows``), ``_schema`` (the tables),
``_thread`` (the database thread), ``_source`` (the consumer of a group) and ``_doorbell`` (the
datagrams of the wake-ups).  ``broker`` imports ``_source``, never the reverse.
"""

from bus.sqlite.broker import SqliteBroker
from bus.sqlite.settings import SqliteSettings, default_path

__all__ = [
    "SqliteBroker",
    "SqliteSettings",
    "default_path",
]
