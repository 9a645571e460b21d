"""Supervise one ExaBGP process per node and keep its view of BGP in memory.

ExaBGP is a child of the Speaker. Its API process is `bgp/relay.py`, which only copies
lines between ExaBGP and a unix socket the Speaker listens on in its workdir. The Speaker
announces the node's prefixes, tracks what each peer sent, and calls `on_change()` (from
one of its threads) whenever learned paths or peer states change; turning those into
kernel routes is the caller's job (see bgp.routes). If ExaBGP dies it is restarted and
everything is announced again.

ExaBGP runs in its own session, so it outlives a crashed agent and the BGP sessions stay
up. A new Speaker on the same workdir with the same configuration adopts it instead of
restarting it (the relay reconnects by itself), and reads back the neighbour states and
ExaBGP's Adj-RIB-In to rebuild what was learned (`synced()` tells when): peers never see
the agent restart. (A ROUTE-REFRESH would not do: FRR 8.4 does not answer it with updates.)

- `detach()` is how an agent leaves on SIGTERM: ExaBGP, its sessions and the kernel routes
  stay for the next agent to adopt. `stop()` withdraws everything first, then stops ExaBGP.
- `reconfigure(cfg)` applies new peers to the running ExaBGP (SIGUSR1 reload); a session
  ExaBGP re-establishes for new settings keeps its paths (stale) until End-of-RIB.
- Graceful restart: with `graceful_restart` set, ExaBGP advertises the capability, so peers
  keep our routes while a crashed ExaBGP is restarted; on our side the kernel routes stay
  (`synced()` False) until every peer is back and has sent End-of-RIB, or the time is over.
- Route reflection (`cluster_id` set): paths from iBGP peers are re-announced per RFC 4456
  (bgp.reflect), since ExaBGP has no RIB to reflect from.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import PeerConfig, SpeakerConfig, exabgp_env, render_config
from .messages import (Ack, EndOfRib, MessageError, NeighborList, Notification, Other,
                       PeerStateChange, Shutdown, Update, parse_line)
from .model import LearnedPath, PeerState
from .reflect import (Reflected, ReflectPeer, announce_command, reflection_plan,
                      withdraw_command)

__all__ = ["Speaker", "SpeakerConfig", "PeerConfig", "PeerState", "LearnedPath", "SpeakerError"]

log = logging.getLogger("bgp.speaker")

SOCKET_NAME = "relay.sock"
CONFIG_NAME = "exabgp.conf"
PID_NAME = "exabgp.pid"
ENV_NAME = "exabgp.env.json"   # the environment it was started with (adoption compares it)
UNIX_PATH_MAX = 107
STALE_SETTLE = 2.0   # s after a re-established session that its stale paths still count


class SpeakerError(RuntimeError):
    """The Speaker could not start or talk to ExaBGP."""


class Speaker:
    """One ExaBGP process, its relay, and the state learned from it."""

    RIB_DUMP = "show adj-rib in json"

    def __init__(
        self,
        cfg: SpeakerConfig,
        workdir: Path,
        on_change: Callable[[], None] | None = None,
        *,
        exabgp_bin: str | None = None,
        python: str | None = None,
        restart_delay: float = 1.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir).absolute()
        self.on_change = on_change
        self.exabgp_bin = exabgp_bin or _default_exabgp()
        self.python = python or sys.executable
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        self.socket_path = self.workdir / SOCKET_NAME
        self.config_path = self.workdir / CONFIG_NAME
        self.restarts = 0                      # ExaBGP restarts after an unexpected exit
        self.command_errors: deque[str] = deque(maxlen=50)  # commands ExaBGP answered `error`

        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._spawned = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._adopted: int | None = None        # PID of an ExaBGP we did not spawn
        self._refresh: set[str] = set()         # peers whose state we still have to ask
        self._resyncing = False                 # adopted: learned paths not rebuilt yet
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._relay_pid: int | None = None
        self._pending: deque[str] = deque()     # commands awaiting done/error, in order
        self._desired: set[str] = set()
        self._learned: dict[str, dict[str, LearnedPath]] = {}   # peer -> prefix -> path
        self._peers: dict[str, PeerState] = {
            p.address: PeerState(address=p.address, peer_as=p.peer_as, since=time.time())
            for p in cfg.peers}
        self._threads: list[threading.Thread] = []
        self._spawn_error: Exception | None = None
        self._reflected: dict[str, dict[str, Reflected]] = {}   # peer -> prefix -> sent
        self._resync_deadline = 0.0             # restarted ExaBGP: keep routes until then
        self._eor: set[str] = set()             # peers that sent End-of-RIB since (re)start
        self._replacing = False                 # we stop ExaBGP to apply a new config
        self._reload_pending = False            # SIGUSR1 once the relay is connected
        self._restarting: dict[str, float] = {}  # peer -> until when its stale paths count
        self._stale: dict[str, dict[str, LearnedPath]] = {}     # peer -> prefix -> path
        self.reconfigurations = 0

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Write the config, listen for the relay, and spawn ExaBGP (from the supervisor
        thread, which then restarts it whenever it exits unexpectedly)."""
        if self._threads:
            raise SpeakerError("Speaker already started")
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            raise SpeakerError(f"socket path too long for AF_UNIX ({len(str(self.socket_path))} "
                               f"> {UNIX_PATH_MAX}): {self.socket_path}")
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = render_config(self.cfg, self._relay_command())
        self._adopted, same = self._adoptable(text)
        self._resyncing = self._adopted is not None   # until the relay is back and has told us
        if self._adopted is None:
            self._kill_stale()
            self.config_path.write_text(text)
        elif not same:   # the peers changed while no agent ran: reload, keep the sessions
            self.config_path.write_text(text)
            log.info("bgp adopting exabgp pid=%s with a new configuration (reload)", self._adopted)
            try:
                os.kill(self._adopted, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        listener.listen(4)
        listener.settimeout(0.5)
        self._listener = listener
        self._stopping.clear()
        for target, name in ((self._accept_loop, "accept"), (self._supervise, "supervise")):
            t = threading.Thread(target=target, name=f"bgp-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self._spawned.wait(timeout):
            self.stop()
            raise SpeakerError(f"ExaBGP did not start within {timeout}s: {self._spawn_error}")
        log.info("bgp speaker started pid=%s workdir=%s peers=%s", self.exabgp_pid,
                 self.workdir, [p.address for p in self.cfg.peers])

    def stop(self) -> None:
        """Withdraw everything we announce, then stop ExaBGP (SIGTERM; SIGKILL after
        stop_timeout), its relay, and the socket. Learned state is dropped. The explicit
        withdrawal matters with graceful restart: ExaBGP then closes its sessions without a
        NOTIFICATION, and the peers would keep our routes for the restart time."""
        self._withdraw_all()
        self._stopping.set()
        with self._lock:
            proc, adopted = self._proc, self._adopted
        if proc is not None:
            _terminate(proc, self.stop_timeout)
        if adopted is not None:
            _kill_wait(adopted, self.stop_timeout)
        for t in self._threads:
            t.join(timeout=self.stop_timeout + 2)
        self._threads = []
        with self._lock:
            relay_pid, self._relay_pid = self._relay_pid, None
            self._drop_connection()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._proc = None
            self._adopted = None
            self._spawned.clear()
            self._resyncing = False
            changed = self._reset_bgp_state("speaker stopped")
        if relay_pid is not None and _is_relay(relay_pid, self.socket_path):
            _kill_wait(relay_pid, self.stop_timeout)
        self.socket_path.unlink(missing_ok=True)
        (self.workdir / PID_NAME).unlink(missing_ok=True)
        log.info("bgp speaker stopped workdir=%s", self.workdir)
        if changed:
            self._notify()

    def _withdraw_all(self, timeout: float = 1.0) -> None:
        with self._lock:
            if self._conn is None:
                return
            for prefix in sorted(self._desired):
                self._send(f"withdraw route {prefix} next-hop self")
            for peer, routes in self._reflected.items():
                for prefix, r in sorted(routes.items()):
                    self._send(withdraw_command(peer, prefix, r))
            self._reflected = {}
        self._wait_acks(timeout)                  # ExaBGP acknowledges once it has queued them
        time.sleep(0.05)                          # and writes them out right after
        with self._lock:
            # a Cease (administrative shutdown) to every peer: with graceful restart ExaBGP
            # would otherwise just close, and the peers would wait for us to come back
            for addr, st in self._peers.items():
                if st.state == "Established":
                    self._send(f"neighbor {addr} teardown 2")
        self._wait_acks(timeout)
        time.sleep(0.05)

    def _wait_acks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending or self._conn is None:
                    return
            time.sleep(0.01)

    def detach(self) -> None:
        """Stop talking to ExaBGP but leave it running, sessions and routes included, for
        the next Speaker on this workdir to adopt (an agent restart or upgrade: the peers
        never notice). Learned state is kept in memory and nobody is notified."""
        self._stopping.set()
        for t in self._threads:
            if t.name != "bgp-supervise":       # it may sit in proc.wait(): leave it
                t.join(timeout=self.stop_timeout + 2)
        self._threads = []
        with self._lock:
            self._drop_connection()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self.socket_path.unlink(missing_ok=True)
        log.info("bgp speaker detached; exabgp pid=%s keeps running", self.exabgp_pid)

    def reconfigure(self, cfg: SpeakerConfig) -> str:
        """Apply a new configuration to the running ExaBGP: 'unchanged', 'reloaded'
        (SIGUSR1: peers added or removed, changed peers re-established, the others keep
        their sessions) or 'restarted' (our address, port or listening changed: a new
        ExaBGP, with our kernel routes kept until it has re-learned them)."""
        with self._lock:
            if cfg == self.cfg:
                return "unchanged"
            old, self.cfg = self.cfg, cfg
            now = time.time()
            wanted = {p.address: p for p in cfg.peers}
            for addr in list(self._peers):
                if addr not in wanted:
                    del self._peers[addr]
                    self._learned.pop(addr, None)
                    self._reflected.pop(addr, None)
            before = {p.address: p for p in old.peers}
            for p in cfg.peers:
                s = self._peers.get(p.address)
                if s is None:
                    self._peers[p.address] = PeerState(address=p.address, peer_as=p.peer_as,
                                                       since=now)
                elif s.peer_as != p.peer_as:
                    self._peers[p.address] = _replace(s, peer_as=p.peer_as)
                if p.address in before and before[p.address] != p:
                    # ExaBGP re-establishes this session: keep what it sent meanwhile
                    self._restarting[p.address] = time.monotonic() + self._grace(p)
            self.reconfigurations += 1
            if not self._threads:
                return "unchanged"                   # not started: start() writes it
            self.config_path.write_text(render_config(cfg, self._relay_command()))
            pid = self._current_pid()
            restart = (old.local_address, old.listen, old.port) != (
                cfg.local_address, cfg.listen, cfg.port)
            if restart:
                self._replacing = True
                self._keep_routes_while_restarting()
            self._reflect()
            if not restart and self._conn is None:
                # ExaBGP may not have installed its signal handlers yet (SIGUSR1 would kill
                # it): reload once its relay connects
                self._reload_pending = True
                pid = None
        log.info("bgp reconfigure: %s peers=%s", "restart" if restart else "reload",
                 [p.address for p in cfg.peers])
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM if restart else signal.SIGUSR1)
            except ProcessLookupError:
                pass
        self._notify()
        return "restarted" if restart else "reloaded"

    def _relay_command(self) -> list[str]:
        return [self.python, "-I", "-S", str(Path(__file__).with_name("relay.py")),
                str(self.socket_path)]

    @property
    def exabgp_pid(self) -> int | None:
        with self._lock:
            pid = self._current_pid()
        return pid if pid is not None and _alive(pid) else None

    @property
    def adopted(self) -> bool:
        """True while the ExaBGP we talk to was started by an earlier Speaker."""
        with self._lock:
            return self._adopted is not None

    def _current_pid(self) -> int | None:
        if self._adopted is not None:
            return self._adopted
        return self._proc.pid if self._proc is not None else None

    @property
    def relay_pid(self) -> int | None:
        with self._lock:
            return self._relay_pid

    # -- the API the agent uses ------------------------------------------------
    def announce(self, prefixes: Iterable[str]) -> None:
        """Make the set of our own announced prefixes equal `prefixes` (diffed, idempotent)."""
        desired = {str(ipaddress.IPv4Network(p)) for p in prefixes}
        with self._lock:
            added, removed = desired - self._desired, self._desired - desired
            self._desired = desired
            for p in sorted(removed):
                self._send(f"withdraw route {p} next-hop self")
            for p in sorted(added):
                self._send(f"announce route {p} next-hop self")
            changed = bool(added or removed) and any(
                s.state == "Established" for s in self._peers.values())
        if added or removed:
            log.info("bgp announce added=%s withdrawn=%s", sorted(added), sorted(removed))
        if changed:
            self._notify()

    def synced(self) -> bool:
        """False while an adopted ExaBGP's learned paths are being read back: until then
        learned() is incomplete and must not be used to delete kernel routes."""
        with self._lock:
            if self._resyncing and self._resync_deadline and time.monotonic() > self._resync_deadline:
                log.warning("bgp graceful restart: not every peer re-sent its routes in time; "
                            "using what was learned")
                self._resyncing = False
                self._resync_deadline = 0.0
            return not self._resyncing

    def _keep_routes_while_restarting(self) -> None:
        """Our own graceful restart (lock held): ExaBGP is gone and what it learned with it,
        but the kernel routes stay (synced() is False) until every peer is Established again
        and has sent End-of-RIB, or the restart time is over."""
        self._resyncing = True
        self._eor = set()
        self._reflected = {}
        grace = self.cfg.graceful_restart or 10
        self._resync_deadline = time.monotonic() + grace + self.restart_delay

    def _check_resynced(self) -> bool:
        """After a restart: True (and synced) once every peer is back and sent End-of-RIB."""
        if not self._resyncing or not self._resync_deadline:
            return False
        if all(s.state == "Established" and a in self._eor for a, s in self._peers.items()):
            self._resyncing = False
            self._resync_deadline = 0.0
            log.info("bgp graceful restart: every peer re-sent its routes")
            return True
        return False

    def announced(self) -> set[str]:
        with self._lock:
            return set(self._desired)

    def learned(self) -> dict[str, set[LearnedPath]]:
        """prefix -> every path currently learned for it, from any peer."""
        out: dict[str, set[LearnedPath]] = {}
        with self._lock:
            self._expire_stale()
            for peer, paths in self._stale.items():   # a re-establishing session's paths
                fresh = self._learned.get(peer, {})
                for prefix, path in paths.items():
                    if prefix not in fresh:
                        out.setdefault(prefix, set()).add(path)
            for paths in self._learned.values():
                for prefix, path in paths.items():
                    out.setdefault(prefix, set()).add(path)
        return out

    def peers(self) -> list[PeerState]:
        with self._lock:
            out = []
            for p in self.cfg.peers:
                s = self._peers[p.address]
                established = s.state == "Established"
                sent = len(self._desired) + len(self._reflected.get(p.address, {}))
                out.append(PeerState(address=s.address, peer_as=s.peer_as, state=s.state,
                                     since=s.since, received=len(self._learned.get(p.address, {})),
                                     sent=sent if established else 0,
                                     reason=s.reason, description=p.description))
            return out

    # -- ExaBGP supervision ----------------------------------------------------
    def _supervise(self) -> None:
        delay = self.restart_delay
        if self._adopted is not None:
            self._spawned.set()
            log.info("bgp adopted running exabgp pid=%s", self._adopted)
            while _alive(self._adopted) and not self._stopping.wait(0.5):
                pass
            if self._stopping.is_set():
                return
            log.warning("bgp adopted exabgp pid=%s is gone; starting our own", self._adopted)
            with self._lock:
                self._adopted = None
                self._replacing = False
                self._drop_connection()
                changed = self._reset_bgp_state("adopted exabgp exited")
                self._keep_routes_while_restarting()
            if changed:
                self._notify()
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as e:
                self._spawn_error = e
                log.error("bgp cannot start exabgp %s: %s", self.exabgp_bin, e)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._spawned.set()
            code = proc.wait()
            if self._stopping.is_set():
                return
            with self._lock:
                replacing, self._replacing = self._replacing, False
                if not replacing:
                    self.restarts += 1
                log.warning("bgp exabgp pid=%s exited code=%s; %s", proc.pid, code,
                            "starting it with the new configuration" if replacing else
                            f"restarting (restart #{self.restarts})")
                self._drop_connection()
                changed = self._reset_bgp_state(f"exabgp exited with code {code}")
                self._keep_routes_while_restarting()
            if changed:
                self._notify()
            if replacing:
                continue
            if time.monotonic() - started > 60:
                delay = self.restart_delay
            self._stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(exabgp_env(self.cfg, self.workdir))
        with open(self.workdir / "exabgp.out", "ab") as out, self._lock:
            if self._stopping.is_set():
                raise OSError("speaker is stopping")
            proc = subprocess.Popen([self.exabgp_bin, "server", str(self.config_path)],
                                    cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._proc = proc
        (self.workdir / PID_NAME).write_text(f"{proc.pid}\n")
        (self.workdir / ENV_NAME).write_text(self._env_text())
        log.info("bgp exabgp spawned pid=%s", proc.pid)
        return proc

    def _adoptable(self, config_text: str) -> tuple[int | None, bool]:
        """PID of a live ExaBGP started by an earlier Speaker on this workdir with the same
        environment (address, port, listening), and whether its config text is ours too."""
        try:
            pid = int((self.workdir / PID_NAME).read_text().split()[0])
            same = self.config_path.read_text() == config_text
            env_same = (self.workdir / ENV_NAME).read_text() == self._env_text()
        except (OSError, ValueError, IndexError):
            return None, False
        if env_same and _alive(pid) and str(self.config_path) in _cmdline(pid):
            return pid, same
        return None, False

    def _env_text(self) -> str:
        import json
        return json.dumps(exabgp_env(self.cfg, self.workdir), sort_keys=True)

    def _kill_stale(self) -> None:
        """Kill an ExaBGP left by an earlier Speaker on this workdir (recorded PID whose
        command line names our config), so two never fight over the same peers."""
        try:
            pid = int((self.workdir / PID_NAME).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if str(self.config_path) in _cmdline(pid):
            log.warning("bgp killing stale exabgp pid=%s", pid)
            _kill_wait(pid, self.stop_timeout)

    # -- relay connection ------------------------------------------------------
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
            pid = _peer_pid(conn)
            with self._lock:
                exabgp = self._current_pid()
                if exabgp is None or _ppid(pid) != exabgp:
                    log.warning("bgp rejecting relay pid=%s (parent %s, exabgp %s)",
                                pid, _ppid(pid), exabgp)
                    conn.close()
                    continue
                self._drop_connection()
                self._conn, self._relay_pid = conn, pid
                for p in sorted(self._desired):      # ExaBGP may be new: tell it everything
                    self._send(f"announce route {p} next-hop self")
                self._reflected = {}
                self._reflect()
                if self._reload_pending:
                    self._reload_pending = False
                    pending_pid = self._current_pid()
                    if pending_pid is not None:
                        log.info("bgp reloading exabgp pid=%s with the new configuration",
                                 pending_pid)
                        os.kill(pending_pid, signal.SIGUSR1)
                if self._adopted is not None:        # rebuild peer states and learned paths
                    self._refresh = {p.address for p in self.cfg.peers}
                    self._resyncing = True
                self._send("show neighbor json")
            log.info("bgp relay connected pid=%s", pid)
            t = threading.Thread(target=self._read_loop, args=(conn,), name="bgp-read", daemon=True)
            t.start()

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
            with self._lock:
                if conn is not self._conn:
                    return
                for raw in lines:
                    if raw.strip():
                        changed |= self._handle(raw.decode("utf-8", "replace"))
                if changed:
                    self._reflect()
            if changed:
                self._notify()
        with self._lock:
            if conn is self._conn:
                log.warning("bgp relay disconnected")
                self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        self._pending.clear()

    def _send(self, command: str) -> None:
        """Send one command if the relay is connected (else the sync on connect covers it)."""
        if self._conn is None:
            return
        try:
            self._conn.sendall(command.encode() + b"\n")
            self._pending.append(command)
        except OSError as e:
            log.warning("bgp cannot send %r to relay: %s", command, e)
            self._drop_connection()

    # -- state -----------------------------------------------------------------
    def _handle(self, line: str) -> bool:
        """Apply one ExaBGP line to our state (lock held); True if learned/peers changed."""
        try:
            event = parse_line(line)
        except MessageError as e:
            log.warning("bgp %s", e)
            return False
        if isinstance(event, Ack):
            command = self._pending.popleft() if self._pending else "?"
            if not event.ok:
                log.warning("bgp exabgp rejected command %r", command)
                self.command_errors.append(command)
            return False
        if isinstance(event, PeerStateChange):
            return self._peer_state(event)
        if isinstance(event, Update):
            return self._update(event)
        if isinstance(event, EndOfRib):
            self._eor.add(event.peer)
            self._restarting.pop(event.peer, None)
            stale = self._stale.pop(event.peer, None)
            return self._check_resynced() or bool(stale)
        if isinstance(event, Notification):
            log.warning("bgp notification from %s code=%s subcode=%s %s", event.peer,
                        event.code, event.subcode, event.message)
            s = self._peers.get(event.peer)
            if s is not None:
                self._peers[event.peer] = _replace(s, reason=f"notification {event.code}/"
                                                   f"{event.subcode} {event.message}".strip())
            return False
        if isinstance(event, Shutdown):
            if not self._stopping.is_set() and not self._resyncing:
                self._keep_routes_while_restarting()   # not our stop(): it will be back
            return self._reset_bgp_state("exabgp shutting down")
        if isinstance(event, NeighborList):
            return self._neighbor_list(event)
        if isinstance(event, Other) and event.kind == "":
            log.info("bgp unhandled line %s", event.text[:300])
        return False

    def _neighbor_list(self, ev: NeighborList) -> bool:
        changed = False
        for address, up in ev.peers:
            s = self._peers.get(address)
            if s is None:
                continue
            if up and s.state != "Established":
                self._peers[address] = _replace(s, state="Established", since=time.time())
                changed = True
        if self._refresh:
            # first answer after adoption: read ExaBGP's Adj-RIB-In (what the peers sent),
            # then ask for the neighbours again; that second answer marks the end of the dump
            # (acks cannot: the relay may still hold acks for the previous agent's commands)
            self._refresh = set()
            if any(up for _, up in ev.peers):
                self._send(self.RIB_DUMP)
                self._send("show neighbor json")
                return changed
        if self._resyncing and not self._resync_deadline:   # adoption, not a restart
            self._resyncing = False
            changed = True
        return changed

    def _peer_state(self, ev: PeerStateChange) -> bool:
        s = self._peers.get(ev.peer)
        if s is None:
            return False
        state = {"up": "Established", "connected": "Connect"}.get(ev.state, "Idle")
        log.info("bgp peer %s state=%s %s", ev.peer, state, ev.reason)
        changed = s.state != state
        if changed:
            self._peers[ev.peer] = _replace(s, state=state, since=time.time(),
                                            reason=ev.reason if state == "Idle" else s.reason)
        if state == "Established":
            for p in sorted(self._desired):
                self._send(f"neighbor {ev.peer} announce route {p} next-hop self")
            self._reflected.pop(ev.peer, None)
            self._reflect()
            changed |= self._check_resynced()
            if ev.peer in self._restarting:
                # a peer without graceful restart sends no End-of-RIB: its initial updates
                # come right away, so stale paths go after a short settle time anyway
                until = min(self._restarting[ev.peer], time.monotonic() + STALE_SETTLE)
                self._restarting[ev.peer] = until
                timer = threading.Timer(STALE_SETTLE + 0.05, self._expire_and_notify)
                timer.daemon = True
                timer.start()
        else:
            self._reflected.pop(ev.peer, None)
            paths = self._learned.pop(ev.peer, None)
            if ev.peer in self._restarting and state == "Idle":
                # a session we re-establish (new settings): its paths stay as stale ones
                # until the peer has sent them again (End-of-RIB) or the grace time is over
                self._stale[ev.peer] = {**self._stale.get(ev.peer, {}), **(paths or {})}
            elif paths:
                changed = True
        return changed

    def _grace(self, p: PeerConfig) -> float:
        return float(max(self.cfg.graceful_restart, 10) + p.hold_time)

    def _expire_and_notify(self) -> None:
        with self._lock:
            before = len(self._stale)
            self._expire_stale()
            changed = len(self._stale) != before
        if changed:
            self._notify()

    def _expire_stale(self) -> None:
        now = time.monotonic()
        for peer in [a for a, until in self._restarting.items() if until < now]:
            del self._restarting[peer]
            self._stale.pop(peer, None)

    def _reflect(self) -> None:
        """Route reflector (cluster_id set; lock held): make what we re-announce to each
        Established iBGP peer equal bgp.reflect's plan."""
        if not self.cfg.cluster_id:
            return
        established = [a for a, s in self._peers.items() if s.state == "Established"]
        plan = reflection_plan(
            self._learned,
            [ReflectPeer(p.address, p.peer_as, p.route_reflector_client) for p in self.cfg.peers],
            local_as=self.cfg.local_as, router_id=self.cfg.router_id,
            cluster_id=self.cfg.cluster_id, own=self._desired, targets=established)
        for peer in set(self._reflected) | set(plan):
            sent = self._reflected.get(peer, {})
            want = plan.get(peer, {})
            for prefix in sorted(set(sent) - set(want)):
                self._send(withdraw_command(peer, prefix, sent[prefix]))
            for prefix in sorted(want):
                if sent.get(prefix) != want[prefix]:
                    self._send(announce_command(peer, prefix, want[prefix]))
            if want:
                self._reflected[peer] = dict(want)
            else:
                self._reflected.pop(peer, None)

    def _update(self, ev: Update) -> bool:
        if ev.peer not in self._peers:
            return False
        paths = self._learned.setdefault(ev.peer, {})
        stale = self._stale.get(ev.peer, {})
        changed = False
        for prefix in ev.withdrawn:
            changed |= paths.pop(prefix, None) is not None
            changed |= stale.pop(prefix, None) is not None
        for prefix, path in ev.announced:
            if paths.get(prefix) != path:
                paths[prefix] = path
                changed = True
        return changed

    def _reset_bgp_state(self, reason: str) -> bool:
        changed = any(self._learned.values())
        self._learned.clear()
        self._reflected = {}
        now = time.time()
        for addr, s in self._peers.items():
            if s.state != "Idle":
                self._peers[addr] = _replace(s, state="Idle", since=now, reason=reason)
                changed = True
        return changed

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:  # the callback is the agent's; never let it kill our threads
            log.exception("bgp on_change callback failed")


def _replace(s: PeerState, **kw) -> PeerState:
    from dataclasses import replace
    return replace(s, **kw)


def _default_exabgp() -> str:
    candidate = Path(sys.executable).parent / "exabgp"
    return str(candidate) if candidate.exists() else "exabgp"


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_relay(pid: int, socket_path: Path) -> bool:
    cmd = _cmdline(pid)
    return "relay.py" in cmd and str(socket_path) in cmd


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_wait(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if still there after timeout (for processes not our child)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _alive(pid):
            return


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
