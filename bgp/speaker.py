"""The node's BGP speaker: one ExaBGP, its relay, and what it learned, behind one API.

The Speaker wires three parts, each holding one kind of state:

- `bgp.exabgp.ExaBGP`: the process (start or adopt, supervise and restart, reload,
  replace, stop, detach);
- `bgp.connection.RelayConnection`: the unix socket ExaBGP's API process (`bgp/relay.py`)
  connects to, line framing and command acks;
- `bgp.session.BgpState`: the pure state machine of peer sessions, learned paths, our
  prefixes and graceful restart (its `SyncState`), which turns events into changes and
  ExaBGP commands.

It announces the node's prefixes and calls `on_change()` (from one of its threads)
whenever learned paths or peer states change; turning those into kernel routes is the
caller's job (see bgp.routes). If ExaBGP dies it is restarted and everything is announced
again.

- `detach()` is how an agent leaves on SIGTERM: ExaBGP, its sessions and the kernel routes
  stay for the next agent to adopt. `stop()` withdraws everything first, then stops ExaBGP.
- `reconfigure(cfg)` applies new peers to the running ExaBGP (SIGUSR1 reload); a session
  ExaBGP re-establishes for new settings keeps its paths (stale) until End-of-RIB.
- Adoption and graceful restart: `synced()` is False while learned() is incomplete (an
  adopted ExaBGP's state being read back, or our restarted ExaBGP's peers not back yet);
  with `graceful_restart` set, ExaBGP advertises the capability, so peers keep our routes.
  (A ROUTE-REFRESH would not do for adoption: FRR 8.4 does not answer it with updates.)
- BFD (`PeerConfig.bfd`, bgp.bfd_runner): when a peer's BFD session goes from Up to Down
  its paths are dropped at once and ExaBGP tears the BGP session down (Cease, BFD Down);
  ExaBGP reconnects by itself when the peer answers again.
- Route reflection (`cluster_id` set): paths from iBGP peers are re-announced per RFC 4456
  (bgp.reflect), since ExaBGP has no RIB to reflect from.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from .bfd import SessionStatus, Transition
from .bfd_runner import BfdRunner
from .config import PeerConfig, SpeakerConfig, bfd_peers
from .connection import UNIX_PATH_MAX, RelayConnection
from .exabgp import ExaBGP, is_relay, kill_wait
from .export import ExportPolicy
from .messages import NeighborList, PeerStateChange
from .model import LearnedPath, PeerState
from .session import BgpState, Changes

__all__ = ["Speaker", "SpeakerConfig", "PeerConfig", "PeerState", "LearnedPath", "SpeakerError"]

log = logging.getLogger("bgp.speaker")

SOCKET_NAME = "relay.sock"


class SpeakerError(RuntimeError):
    """The Speaker could not start or talk to ExaBGP."""


class Speaker:
    """One ExaBGP process, its relay, and the state learned from it."""

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
        self.workdir = Path(workdir).absolute()
        self.on_change = on_change
        self.stop_timeout = stop_timeout
        self.socket_path = self.workdir / SOCKET_NAME
        self._lock = threading.RLock()
        self._state = BgpState(cfg, restart_delay=restart_delay)
        self._process = ExaBGP(self.workdir, self.socket_path, self._lock,
                               on_exit=self._exabgp_exited, exabgp_bin=exabgp_bin,
                               python=python, restart_delay=restart_delay,
                               stop_timeout=stop_timeout)
        self._relay = RelayConnection(self.socket_path, self._lock,
                                      parent_pid=lambda: self._process.pid,
                                      on_connect=self._relay_connected,
                                      on_events=self._events, notify=self._notify)
        self.config_path = self._process.config_path
        self._bfd = BfdRunner(cfg.local_address, self._bfd_transition)
        self.bfd_downs: dict[str, int] = {}   # peer -> BGP sessions BFD took down
        self._bfd_started: set[str] = set()   # peers whose BGP session was Established
        self._bfd_off = False                 # stopping or detached: no session restarts

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Write the config, listen for the relay, and adopt or spawn ExaBGP."""
        if self._process.running:
            raise SpeakerError("Speaker already started")
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            raise SpeakerError(f"socket path too long for AF_UNIX ({len(str(self.socket_path))} "
                               f"> {UNIX_PATH_MAX}): {self.socket_path}")
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._bfd_off = False
            adopted = self._process.prepare(self._state.cfg)
            self._state.start(adopted)   # not synced until the relay is back and told us
        self._relay.listen()
        try:
            self._process.supervise(timeout)
        except TimeoutError as e:
            self.stop()
            raise SpeakerError(str(e)) from None
        self._update_bfd(self.cfg)
        log.info("bgp speaker started pid=%s workdir=%s peers=%s", self.exabgp_pid,
                 self.workdir, [p.address for p in self.cfg.peers])

    def stop(self) -> None:
        """Withdraw everything we announce, then stop ExaBGP (SIGTERM; SIGKILL after
        stop_timeout), its relay, and the socket. Learned state is dropped. The explicit
        withdrawal matters with graceful restart: ExaBGP then closes its sessions without a
        NOTIFICATION, and the peers would keep our routes for the restart time."""
        with self._lock:
            self._bfd_off = True
        self._bfd.stop()
        self._withdraw_all()
        with self._lock:
            self._state.closing = True
        self._process.stop()
        relay_pid = self._relay.close(self.stop_timeout + 2)
        with self._lock:
            changes = self._state.stopped()
        if relay_pid is not None and is_relay(relay_pid, self.socket_path):
            kill_wait(relay_pid, self.stop_timeout)
        log.info("bgp speaker stopped workdir=%s", self.workdir)
        if changes.changed:
            self._notify()

    def detach(self) -> None:
        """Stop talking to ExaBGP but leave it running, sessions and routes included, for
        the next Speaker on this workdir to adopt (an agent restart or upgrade: the peers
        never notice). Learned state is kept in memory and nobody is notified."""
        with self._lock:
            self._state.closing = True
            self._bfd_off = True
        self._bfd.stop()   # AdminDown: the peers' BFD must not take our restart for a failure
        self._process.detach()
        self._relay.close(self.stop_timeout + 2)
        log.info("bgp speaker detached; exabgp pid=%s keeps running", self.exabgp_pid)

    def reconfigure(self, cfg: SpeakerConfig) -> str:
        """Apply a new configuration to the running ExaBGP: 'unchanged', 'reloaded'
        (SIGUSR1: peers added or removed, changed peers re-established, the others keep
        their sessions) or 'restarted' (our address, port or listening changed: a new
        ExaBGP, with our kernel routes kept until it has re-learned them)."""
        if self._process.running:
            self._update_bfd(cfg)
        with self._lock:
            how = self._state.reconfigure(cfg)
            if how == "unchanged" or not self._process.running:
                return "unchanged"                   # not started: start() writes it
            restart = how == "restart"
            changes = self._state.replacing() if restart else self._state.reflect()
            self._relay.send(changes.commands)
            pid = self._process.reconfigure(cfg, restart, self._relay.connected)
        log.info("bgp reconfigure: %s peers=%s", how, [p.address for p in cfg.peers])
        self._process.signal_reconfigured(pid, restart)
        self._notify()
        return "restarted" if restart else "reloaded"

    # -- the API the agent uses ----------------------------------------------------
    def announce(self, prefixes: Iterable[str], export: ExportPolicy | None = None) -> None:
        """Make the set of our own announced prefixes equal `prefixes` (diffed, idempotent),
        per peer as `export` (communities, export filters; None: as before) says."""
        with self._lock:
            changes, added, removed = self._state.announce(prefixes, export)
            self._relay.send(changes.commands)
        if added or removed:
            log.info("bgp announce added=%s withdrawn=%s", sorted(added), sorted(removed))
        if changes.changed:
            self._notify()

    def synced(self) -> bool:
        """False while learned() is incomplete and must not be used to delete kernel
        routes (an adopted ExaBGP being read back, or our graceful restart)."""
        with self._lock:
            return self._state.synced()

    def announced(self) -> set[str]:
        with self._lock:
            return set(self._state.desired)

    def learned(self) -> dict[str, set[LearnedPath]]:
        """prefix -> every path currently learned for it, from any peer."""
        with self._lock:
            return self._state.learned()

    def arrival(self) -> dict[str, tuple[str, ...]]:
        """peer -> its prefixes in the order it sent them (bgp.imports' max-prefix limit)."""
        with self._lock:
            return self._state.arrival()

    def peers(self) -> list[PeerState]:
        with self._lock:
            return self._state.peers()

    def bfd_status(self) -> list[SessionStatus]:
        """Each BFD session (state, discriminators, intervals, last down reason, flaps)."""
        return self._bfd.status()

    @property
    def cfg(self) -> SpeakerConfig:
        return self._state.cfg

    @property
    def exabgp_pid(self) -> int | None:
        return self._process.live_pid

    @property
    def adopted(self) -> bool:
        """True while the ExaBGP we talk to was started by an earlier Speaker."""
        return self._process.adopted

    @property
    def restarts(self) -> int:
        """ExaBGP restarts after an unexpected exit."""
        return self._process.restarts

    @property
    def relay_pid(self) -> int | None:
        with self._lock:
            return self._relay.relay_pid

    @property
    def command_errors(self) -> deque[str]:
        """The last commands ExaBGP answered with `error`."""
        return self._relay.command_errors

    # -- wiring (callbacks from the parts' threads) ------------------------------------
    def _relay_connected(self) -> None:
        self._relay.send(self._state.connected(self._process.adopted).commands)
        self._process.relay_connected()

    def _events(self, events: list) -> bool:
        changed = False
        for event in events:
            changed |= self._apply(self._state.handle(event))
        if any(isinstance(e, (PeerStateChange, NeighborList)) for e in events):
            self._update_bfd(self.cfg)
        return changed

    def _apply(self, changes: Changes) -> bool:
        """Send what the state machine asks for (lock held); True if callers must hear."""
        self._relay.send(changes.commands)
        if changes.expire_in is not None:
            timer = threading.Timer(changes.expire_in, self._expire)
            timer.daemon = True
            timer.start()
        return changes.changed

    def _expire(self) -> None:
        with self._lock:
            changed = self._state.expire().changed
        if changed:
            self._notify()

    def _exabgp_exited(self, reason: str) -> None:
        with self._lock:
            self._relay.drop()
            changed = self._state.exabgp_exited(reason).changed
        if changed:
            self._notify()

    def _update_bfd(self, cfg: SpeakerConfig) -> None:
        """BFD runs with the peers that have it, from their first Established BGP session
        on, as FRR's bgpd registers its own: FRR resets a BFD session that was Up before
        BGP came up, and takes BGP down with it. Once started it stays while configured."""
        wanted = bfd_peers(cfg)
        with self._lock:
            if self._bfd_off:   # stop()/detach(): the sessions said AdminDown
                return
            up = {p.address for p in self._state.peers() if p.state == "Established"}
        if self._process.adopted:   # an agent restart: those sessions were up before
            up |= set(wanted)
        self._bfd_started = (self._bfd_started | up) & set(wanted)
        if cfg.local_address != self._bfd.local_address:
            self._bfd.stop()
            self._bfd = BfdRunner(cfg.local_address, self._bfd_transition)
        self._bfd.update({a: c for a, c in wanted.items() if a in self._bfd_started})

    def _bfd_transition(self, t: Transition) -> None:
        """From the BFD thread: an Up -> Down is a failure of the path to that peer."""
        if not t.failure:
            return
        with self._lock:
            changes = self._state.bfd_down(t.peer, t.diag.text)
            self._relay.send(changes.commands)
            self.bfd_downs[t.peer] = self.bfd_downs.get(t.peer, 0) + 1
        log.warning("bgp peer %s down by bfd (%s): session torn down, its routes withdrawn",
                    t.peer, t.diag.text)
        if changes.changed:
            self._notify()

    def _withdraw_all(self, timeout: float = 1.0) -> None:
        for step, commands in (("withdraw", self._state.withdraw_all),
                               ("teardown", self._state.teardown)):
            with self._lock:
                if not self._relay.connected:
                    return
                sent = commands()
                self._relay.send(sent)
            t0 = time.monotonic()
            self._relay.wait_acks(timeout)   # ExaBGP acknowledges once it has queued them
            # (the timestamped line is bench/bgp_convergence.py --trace's first mark)
            log.info("bgp stop: %s, %d commands acknowledged by exabgp in %.1f ms", step,
                     len(sent), (time.monotonic() - t0) * 1000)
            time.sleep(0.05)                 # and writes them out right after

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:  # the callback is the agent's; never let it kill our threads
            log.exception("bgp on_change callback failed")
