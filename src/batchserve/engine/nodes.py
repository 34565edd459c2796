"""A node among the nodes sharing one store: its row and the lease its heartbeat renews, the
leadership one node holds at a time, and the notifications that wake it.

- **Lease.** Every second the node renews ``lease_until`` in its row. A node whose lease ran
  out is dead: the leader takes back its chunks. A node on the same host whose process is gone
  is dead at once (a restarted server recovers its own work without waiting for its lease).
- **Leader.** On PostgreSQL the leader is the node holding a session advisory lock, kept on a
  connection of its own: when the node dies, the connection closes and another node takes the
  lock at its next try (every second). A leader that goes silent without dying (paused by the
  OS, cut off) stops leading once its own lease has run out, and the other nodes end its lock's
  connection, so that one of them leads. On SQLite, which one node has to itself, that node
  leads.
- **Wake-ups.** On PostgreSQL a thread ``LISTEN``\\ s on the store's channel: a batch changed,
  records wait, a batch ended, a one-record request came or was answered. Nodes also look on
  their own every fraction of a second, so a notification lost only delays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from batchserve import __version__
from batchserve.store import Store
from batchserve.store.models import Node, utcnow
from batchserve.store.nodes import CHANNEL
from batchserve.store.sql import PG_OPTIONS

log = logging.getLogger(__name__)

#: The advisory lock whose holder leads (any 64-bit number no other program uses: "batchsrv").
LEADER_LOCK = int.from_bytes(b"batchsrv", "big") & 0x7FFF_FFFF_FFFF_FFFF
HEARTBEAT_SECONDS = 1.0


def host_key() -> str:
    """This host's boot and process namespace: two nodes with the same key see each other's
    processes, so one can tell at once that the other's process is gone."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("no-proc")
    return ":".join(parts)[:200]


def process_alive(pid: int) -> bool:
    """Whether a process of this host (and namespace) runs: a zombie, killed and not yet
    reaped by its parent, does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust the signal


@dataclass(frozen=True)
class Identity:
    id: str
    role: str  # all (API and workers), api, or compute
    host: str
    host_key: str
    pid: int

    @classmethod
    def here(cls, role: str) -> Identity:
        return cls(uuid.uuid4().hex, role, socket.gethostname(), host_key(), os.getpid())


def dead_nodes(nodes: list[Node], me: Identity, now: Any) -> list[Node]:
    """The nodes among these whose lease ran out, or whose process on this host is gone."""
    return [
        n
        for n in nodes
        if n.id != me.id
        and (n.lease_until < now or (n.host_key == me.host_key and not process_alive(n.pid)))
    ]


class Membership:
    """This node's row, lease, leadership and wake-ups."""

    def __init__(
        self,
        store: Store,
        identity: Identity,
        *,
        lease_seconds: float,
        workers: int,
        executor: str,
        on_wake: Callable[[str], None],
    ) -> None:
        self.store = store
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.workers = workers
        self.executor = executor
        self.on_wake = on_wake
        self.draining = False
        self._leader = False  # holds the leader's lock (PostgreSQL)
        self._lock_conn: Any = None
        self._silent_since: float | None = None  # since when no live node says it leads
        self._lease_ends = 0.0  # time.monotonic() when this node's lease, as last renewed, ends
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def is_leader(self) -> bool:
        """Whether this node leads now: it holds the lock, and its own lease has not run out
        (a node paused past its lease may have been unseated meanwhile; it leads again only
        once its heartbeat has checked)."""
        if not self.store.shared:
            return True
        return self._leader and time.monotonic() < self._lease_ends

    def start(self) -> None:
        self._try_lead()
        self.start_row()
        targets: list[tuple[str, Callable[[], None]]] = [("heartbeat", self._beat)]
        if self.store.shared:
            targets.append(("listener", self._listen))
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"batchserve-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.store.remove_node(self.identity.id)
        except Exception:
            log.exception("could not remove this node's row")
        self._release()

    def cluster(self) -> tuple[list[str], list[str]]:
        """The ids of the live nodes and of the dead ones, as of now."""
        nodes = self.store.node_rows()
        dead = {n.id for n in dead_nodes(nodes, self.identity, utcnow())}
        return [n.id for n in nodes if n.id not in dead], sorted(dead)

    # --- the heartbeat and the leader's lock --------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                lease = utcnow() + timedelta(seconds=self.lease_seconds)
                self._try_lead()
                began = time.monotonic()
                renewed = self.store.renew_node(
                    self.identity.id, lease, self.draining, self._leader
                )
                if renewed:
                    self._lease_ends = began + self.lease_seconds
                else:
                    # Found dead while it was away (paused, cut off): its chunks were taken back
                    # and the writes of its old claims are refused. It joins again.
                    log.warning("this node's lease had run out; it joins the cluster again")
                    self.start_row()
            except Exception:
                log.exception("could not renew this node's lease")

    def start_row(self) -> None:
        now = utcnow()
        self._lease_ends = time.monotonic() + self.lease_seconds
        self.store.register_node(
            Node(
                id=self.identity.id,
                role=self.identity.role,
                host=self.identity.host[:255],
                host_key=self.identity.host_key,
                pid=self.identity.pid,
                version=__version__[:50],
                workers=self.workers,
                executor=self.executor[:200],
                started_at=now,
                heartbeat_at=now,
                lease_until=now + timedelta(seconds=self.lease_seconds),
                draining=self.draining,
                leader=self._leader,
            )
        )

    def _try_lead(self) -> None:
        """Take the leader's lock if it is free (one connection kept for it, held while
        leading). A leader that went silent (paused by the OS, cut off) but still holds the
        lock has its lock's connection ended, so that another node can lead."""
        if not self.store.shared:
            return
        try:
            if self._lock_conn is None:
                self._lock_conn = _connect(self.store)
            conn = self._lock_conn
            if self._leader:
                conn.execute("SELECT 1")  # still holding it
                return
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()[0]
            if got:
                self._leader = True
                self._silent_since = None
                log.info("this node leads: it runs the cluster's time-driven duties")
                self.on_wake("lead:")
            else:
                self._unseat_silent_leader(conn)
        except Exception:
            if self._leader:
                log.warning("this node lost its leadership (its connection to the store failed)")
            self._release()

    def _unseat_silent_leader(self, conn: Any) -> None:
        """End the lock's connection of a leader whose lease ran out (or of a holder no live
        node owns up to), once that has lasted a little while: its node is paused or cut off,
        and until it is dead to PostgreSQL too no other node could lead."""
        now, mono = utcnow(), time.monotonic()
        leaders = [n for n in self.store.node_rows() if n.leader and n.id != self.identity.id]
        if any(n.lease_until >= now for n in leaders):
            self._silent_since = None
            return
        if self._silent_since is None:
            self._silent_since = mono
        # A new leader says so in its row within a heartbeat; with no row saying it ever led,
        # the holder is given a whole lease.
        grace = 2 * HEARTBEAT_SECONDS if leaders else self.lease_seconds
        if mono - self._silent_since < grace:
            return
        holder = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
            "AND objid = %s AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            (LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF),
        ).fetchone()
        if holder is not None:
            log.warning("the leader went silent; ending its hold on the leader's lock")
            conn.execute("SELECT pg_terminate_backend(%s)", (holder[0],))
        self._silent_since = None

    def _release(self) -> None:
        self._leader = False
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- wake-ups ---------------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                conn = _connect(self.store)
                try:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.on_wake("listening:")  # anything missed while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.on_wake(note.payload)
                finally:
                    conn.close()
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("lost the store's notifications; listening again in a second")
                self._stop.wait(1.0)


def _connect(store: Store) -> Any:
    """A psycopg connection of its own to the store's PostgreSQL (autocommit)."""
    import psycopg

    url = store.engine.url.set(drivername="postgresql")
    return psycopg.connect(
        url.render_as_string(hide_password=False),
        autocommit=True,
        application_name=store.name[:63],
        options=PG_OPTIONS,
    )
