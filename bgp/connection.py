"""The Speaker's end of the relay: a unix socket, line framing, and command acks.

ExaBGP's API process (`bgp/relay.py`) connects to the socket we listen on. We accept only a
relay whose parent is the ExaBGP we supervise (SO_PEERCRED), keep one connection at a time,
split what it sends into lines, pair each `done` / `error` with the command it answers,
and hand every other line, parsed, to `on_events`. Commands sent while no relay is
connected are dropped: `on_connect` (the sync on connect) covers them.

All callbacks run in our threads while holding `lock` (the Speaker's), so the Speaker's
state and what we send stay in one order.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from plugin.server import bind_unix, peer_pid

from .messages import Ack, MessageError, parse_line

__all__ = ["RelayConnection", "UNIX_PATH_MAX"]

log = logging.getLogger("bgp.connection")

UNIX_PATH_MAX = 107


class RelayConnection:
    """Listener, the current relay connection, and the commands awaiting an ack."""

    def __init__(self, socket_path: Path, lock: threading.RLock, *,
                 parent_pid: Callable[[], int | None],
                 on_connect: Callable[[], None],
                 on_events: Callable[[list], bool],
                 notify: Callable[[], None]) -> None:
        self.socket_path = socket_path
        self.lock = lock
        self.parent_pid = parent_pid      # the relay must be this process's child
        self.on_connect = on_connect      # lock held; may send()
        self.on_events = on_events        # lock held; parsed lines but acks; True: notify
        self.notify = notify              # lock not held, after on_events returned True
        self.command_errors: deque[str] = deque(maxlen=50)  # commands ExaBGP answered `error`
        self.relay_pid: int | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._pending: deque[str] = deque()     # commands awaiting done/error, in order
        self._stopping = threading.Event()
        self._accepter: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def listen(self) -> None:
        """Bind the socket (owner only) and accept relays from a thread."""
        self.socket_path.unlink(missing_ok=True)
        listener = bind_unix(self.socket_path, 0o177)
        listener.listen(4)
        listener.settimeout(0.5)
        self._listener = listener
        self._stopping.clear()
        self._accepter = threading.Thread(target=self._accept_loop, name="bgp-accept",
                                          daemon=True)
        self._accepter.start()

    def close(self, timeout: float) -> int | None:
        """Stop accepting, drop the connection, remove the socket; the relay's PID."""
        self._stopping.set()
        if self._accepter is not None:
            self._accepter.join(timeout=timeout)
            self._accepter = None
        with self.lock:
            relay_pid, self.relay_pid = self.relay_pid, None
            self.drop()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.socket_path.unlink(missing_ok=True)
        return relay_pid

    def send(self, commands: list[str]) -> None:
        """Send commands (lock held) if a relay is connected."""
        for command in commands:
            if self._conn is None:
                return
            try:
                self._conn.sendall(command.encode() + b"\n")
                self._pending.append(command)
            except OSError as e:
                log.warning("bgp cannot send %r to relay: %s", command, e)
                self.drop()

    def wait_acks(self, timeout: float) -> None:
        """Until ExaBGP has answered every command sent (or timeout, or disconnected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self._pending or self._conn is None:
                    return
            time.sleep(0.01)

    def drop(self) -> None:
        """Close the connection (lock held); unanswered commands are forgotten."""
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        self._pending.clear()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            pid = peer_pid(conn)
            with self.lock:
                parent = self.parent_pid()
                if parent is None or _ppid(pid) != parent:
                    log.warning("bgp rejecting relay pid=%s (parent %s, exabgp %s)",
                                pid, _ppid(pid), parent)
                    conn.close()
                    continue
                self.drop()
                self._conn, self.relay_pid = conn, pid
                self.on_connect()
            log.info("bgp relay connected pid=%s", pid)
            threading.Thread(target=self._read_loop, args=(conn,), name="bgp-read",
                             daemon=True).start()

    def _read_loop(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            changed = False
            with self.lock:
                if conn is not self._conn:
                    return
                events = [e for raw in lines if raw.strip()
                          if (e := self._parse(raw.decode("utf-8", "replace"))) is not None]
                if events:
                    changed = self.on_events(events)
            if changed:
                self.notify()
        with self.lock:
            if conn is self._conn:
                log.warning("bgp relay disconnected")
                self.drop()

    def _parse(self, line: str):
        """The line's event, or None for an ack (paired here) or a malformed line."""
        try:
            event = parse_line(line)
        except MessageError as e:
            log.warning("bgp %s", e)
            return None
        if isinstance(event, Ack):
            command = self._pending.popleft() if self._pending else "?"
            if not event.ok:
                log.warning("bgp exabgp rejected command %r", command)
                self.command_errors.append(command)
            return None
        return event


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
