"""What the node knows about BGP: sessions, learned paths, announced prefixes (pure).

`BgpState` is a state machine with no sockets, processes or sleeps: the Speaker feeds it
events (a parsed ExaBGP line, the relay connecting, ExaBGP exiting, a new configuration,
our own prefixes) and gets back `Changes`: whether learned paths or peer states changed
(the agent must recompute kernel routes), the ExaBGP commands to send, and when to call
`expire()` again. Clocks are passed in, so unit tests drive it with fake time.

Whether learned() can be trusted is one explicit `SyncState`:

- SYNCED: learned() is complete.
- READ_BACK / DUMPING: we adopted an ExaBGP an earlier agent started. We ask for the
  neighbours (READ_BACK); if any is up we ask for ExaBGP's Adj-RIB-In and the neighbours
  again, whose answer marks the end of the dump (DUMPING). Acks cannot mark it: the relay
  may still hold acks for the previous agent's commands.
- RESTARTING: our own graceful restart. ExaBGP is gone or replaced and what it learned
  with it, but kernel routes stay until every peer is back and has sent End-of-RIB, or the
  deadline passes.

A session ExaBGP re-establishes for new settings (a reload) keeps its paths as stale ones
(`StaleSession`) until the peer sends End-of-RIB, or its grace time is over.
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .announcing import Announcing
from .config import PeerConfig, SpeakerConfig
from .export import Attributes, ExportPolicy, route_command
from .messages import (EndOfRib, NeighborList, Notification, Other, PeerStateChange, Shutdown,
                       Update)
from .model import Changes, LearnedPath, PeerState
from .reflect import Reflected

__all__ = ["BgpState", "Changes", "SyncState", "RIB_DUMP", "SHOW_NEIGHBORS", "STALE_SETTLE"]

log = logging.getLogger("bgp.session")

RIB_DUMP = "show adj-rib in json"
SHOW_NEIGHBORS = "show neighbor json"
CEASE_BFD_DOWN = 10  # NOTIFICATION Cease subcode "BFD Down" (RFC 9384)
STALE_SETTLE = 2.0   # s after a re-established session that its stale paths still count
Paths = dict[str, LearnedPath]   # prefix -> path


class SyncState(enum.Enum):
    SYNCED = "synced"
    READ_BACK = "read-back"      # adopted ExaBGP: neighbours asked
    DUMPING = "dumping"          # adopted ExaBGP: Adj-RIB-In asked, then the neighbours again
    RESTARTING = "restarting"    # our graceful restart: waiting for End-of-RIB or deadline


@dataclass
class StaleSession:
    """A session being re-established for new settings: its paths count until `until`
    (monotonic) or its End-of-RIB. `paths` is None while the session has not gone down."""

    until: float
    paths: Paths | None = None


class BgpState(Announcing):
    """Peer sessions, learned and reflected paths, our prefixes, and the sync state."""

    def __init__(self, cfg: SpeakerConfig, *, restart_delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.restart_delay = restart_delay
        self.clock = clock              # deadlines
        self.wall_clock = wall_clock    # PeerState.since, shown to operators
        self.sync = SyncState.SYNCED
        self.deadline = 0.0             # RESTARTING: keep kernel routes until then
        self.closing = False            # our stop()/detach(): ExaBGP's shutdown is expected
        self.desired: set[str] = set()
        self.export = ExportPolicy()    # communities and export filters (bgp.export)
        self.told: dict[str, dict[str, Attributes]] = {}    # peer -> what ExaBGP was told
        self.learned_paths: dict[str, Paths] = {}           # peer -> prefix -> path
        self.reflected: dict[str, dict[str, Reflected]] = {}  # peer -> prefix -> sent
        self.stale: dict[str, StaleSession] = {}            # peer -> stale paths
        self.eor: set[str] = set()                          # End-of-RIB since (re)start
        self.bfd_held: set[str] = set()   # BFD took these down: ignore updates until up
        now = wall_clock()
        self.sessions: dict[str, PeerState] = {
            p.address: PeerState(address=p.address, peer_as=p.peer_as, since=now)
            for p in cfg.peers}
        self._out: list[str] = []

    # -- events from the Speaker ----------------------------------------------
    def start(self, adopted: bool) -> None:
        """A Speaker starts: with an adopted ExaBGP, learned() is empty until read back."""
        self.closing = False
        self.sync = SyncState.READ_BACK if adopted else SyncState.SYNCED
        self.deadline = 0.0

    def connected(self, adopted: bool) -> Changes:
        """The relay connected: ExaBGP may be new, so tell it everything, and ask for the
        neighbours (with an adopted ExaBGP, the start of reading its state back)."""
        # an adopted ExaBGP may hold what an earlier agent announced: re-send all, and
        # withdraw from each peer what its export filters now keep back
        unknown = Attributes(communities=("0:0",), large_communities=("0:0:0",))
        self.told = {a: dict.fromkeys(self.desired, unknown) for a in self._addresses()} \
            if adopted else {}
        self._export()
        self.reflected = {}
        self._reflect()
        if adopted and self.sync is not SyncState.RESTARTING:   # (a restart waits for EoRs)
            self.sync = SyncState.READ_BACK
        self._send(SHOW_NEIGHBORS)
        return self._done(False)

    def exabgp_exited(self, reason: str) -> Changes:
        """ExaBGP is gone (crashed, replaced, or an adopted one died): sessions are down,
        but keep the kernel routes until it has re-learned them (graceful restart)."""
        changed = self._reset(reason)
        self._keep_routes_while_restarting()
        return self._done(changed)

    def stopped(self) -> Changes:
        """The Speaker stopped ExaBGP: everything learned is gone, and final."""
        self.sync = SyncState.SYNCED
        self.deadline = 0.0
        return self._done(self._reset("speaker stopped"))

    def reconfigure(self, cfg: SpeakerConfig) -> str:
        """Adopt new peers: 'unchanged', 'reload' (peers added, removed or changed; a
        changed one's paths stay while ExaBGP re-establishes it) or 'restart' (our
        address, port or listening changed: ExaBGP must be replaced)."""
        if cfg == self.cfg:
            self.cfg = cfg    # what ExaBGP does not see (limits, BFD) may still differ
            return "unchanged"
        old, self.cfg = self.cfg, cfg
        wanted = {p.address for p in cfg.peers}
        for addr in [a for a in self.sessions if a not in wanted]:
            del self.sessions[addr]
            self.told.pop(addr, None)
            self.bfd_held.discard(addr)
            self.learned_paths.pop(addr, None)
            self.reflected.pop(addr, None)
        before = {p.address: p for p in old.peers}
        for p in cfg.peers:
            s = self.sessions.get(p.address)
            if s is None:
                self.sessions[p.address] = PeerState(address=p.address, peer_as=p.peer_as,
                                                     since=self.wall_clock())
            elif s.peer_as != p.peer_as:
                self.sessions[p.address] = replace(s, peer_as=p.peer_as)
            if p.address in before and before[p.address] != p:
                # ExaBGP re-establishes this session: keep what it sent meanwhile
                until = self.clock() + self._grace(p)
                self.stale[p.address] = StaleSession(until, self.stale.get(
                    p.address, StaleSession(until)).paths)
        restart = (old.local_address, old.listen, old.port) != (
            cfg.local_address, cfg.listen, cfg.port)
        return "restart" if restart else "reload"

    def replacing(self) -> Changes:
        """After reconfigure() said 'restart', on a running Speaker: ExaBGP is replaced,
        kernel routes stay; re-plan what we reflect."""
        self._keep_routes_while_restarting()
        return self.reflect()

    def reflect(self) -> Changes:
        self._reflect()
        return self._done(False)

    def bfd_down(self, peer: str, reason: str) -> Changes:
        """BFD declared the peer down: its paths go now, not after the hold time, and ExaBGP
        tears the session down (it reconnects by itself once the peer answers again). Until
        the session is Established again, updates ExaBGP still had queued are ignored."""
        s = self.sessions.get(peer)
        if s is None:
            return self._done(False)
        self.bfd_held.add(peer)
        stale = self.stale.pop(peer, None)
        changed = bool(self.learned_paths.pop(peer, None)) or bool(stale and stale.paths)
        changed |= s.state != "Idle"
        self.reflected.pop(peer, None)
        self.sessions[peer] = replace(s, state="Idle", since=self.wall_clock(),
                                      reason=f"bfd: {reason}")
        self._send(f"neighbor {peer} teardown {CEASE_BFD_DOWN}")
        if changed:
            self._reflect()
        return self._done(changed)

    def expire(self) -> Changes:
        """Drop stale paths whose grace time is over."""
        now = self.clock()
        gone = [a for a, r in self.stale.items() if r.until < now]
        changed = False
        for peer in gone:
            changed |= self.stale.pop(peer).paths is not None
        return self._done(changed)

    # -- ExaBGP events ----------------------------------------------------------
    def handle(self, event) -> Changes:
        """Apply one parsed ExaBGP line (not an Ack: the relay connection pairs those)."""
        changed = False
        if isinstance(event, PeerStateChange):
            changed = self._peer_state(event)
        elif isinstance(event, Update):
            changed = self._update(event)
        elif isinstance(event, EndOfRib):
            self.eor.add(event.peer)
            stale = self.stale.pop(event.peer, None)
            changed = self._check_resynced() or bool(stale and stale.paths)
        elif isinstance(event, Notification):
            self._notification(event)
        elif isinstance(event, Shutdown):
            if not self.closing and self.sync is SyncState.SYNCED:
                self._keep_routes_while_restarting()   # not our stop(): it will be back
            changed = self._reset("exabgp shutting down")
        elif isinstance(event, NeighborList):
            changed = self._neighbor_list(event)
        elif isinstance(event, Other) and event.kind == "":
            log.info("bgp unhandled line %s", event.text[:300])
        if changed:
            self._reflect()
        out = self._done(changed)
        if isinstance(event, PeerStateChange) and event.state == "up" and \
                event.peer in self.sessions and event.peer in self.stale:
            out.expire_in = STALE_SETTLE + 0.05
        return out

    def _notification(self, ev: Notification) -> None:
        log.warning("bgp notification from %s code=%s subcode=%s %s", ev.peer,
                    ev.code, ev.subcode, ev.message)
        s = self.sessions.get(ev.peer)
        if s is not None:
            self.sessions[ev.peer] = replace(
                s, reason=f"notification {ev.code}/{ev.subcode} {ev.message}".strip())

    def _neighbor_list(self, ev: NeighborList) -> bool:
        changed = False
        for address, up in ev.peers:
            s = self.sessions.get(address)
            if s is not None and up and s.state != "Established" and address not in self.bfd_held:
                self.sessions[address] = replace(s, state="Established", since=self.wall_clock())
                changed = True
        if self.sync is SyncState.READ_BACK and any(up for _, up in ev.peers):
            self._send(RIB_DUMP)
            self._send(SHOW_NEIGHBORS)
            self.sync = SyncState.DUMPING
            return changed
        if self.sync in (SyncState.READ_BACK, SyncState.DUMPING):
            self.sync = SyncState.SYNCED
            changed = True
        return changed

    def _peer_state(self, ev: PeerStateChange) -> bool:
        s = self.sessions.get(ev.peer)
        if s is None:
            return False
        state = {"up": "Established", "connected": "Connect"}.get(ev.state, "Idle")
        log.info("bgp peer %s state=%s %s", ev.peer, state, ev.reason)
        changed = s.state != state
        if changed:
            self.sessions[ev.peer] = replace(s, state=state, since=self.wall_clock(),
                                             reason=ev.reason if state == "Idle" else s.reason)
        if state == "Established":
            self.bfd_held.discard(ev.peer)
            routes = self._plan().get(ev.peer, {})
            for p, attrs in routes.items():
                self._send(f"neighbor {ev.peer} {route_command('announce', p, attrs)}")
            self.told[ev.peer] = routes
            self.reflected.pop(ev.peer, None)
            self._reflect()
            changed |= self._check_resynced()
            r = self.stale.get(ev.peer)
            if r is not None:
                # a peer without graceful restart sends no End-of-RIB: its initial updates
                # come right away, so stale paths go after a short settle time anyway
                r.until = min(r.until, self.clock() + STALE_SETTLE)
        else:
            self.reflected.pop(ev.peer, None)
            paths = self.learned_paths.pop(ev.peer, None)
            r = self.stale.get(ev.peer)
            if r is not None and state == "Idle":
                # a session we re-establish (new settings): its paths stay as stale ones
                r.paths = {**(r.paths or {}), **(paths or {})}
            elif paths:
                changed = True
        return changed

    def _update(self, ev: Update) -> bool:
        if ev.peer not in self.sessions or ev.peer in self.bfd_held:
            return False
        paths = self.learned_paths.setdefault(ev.peer, {})
        r = self.stale.get(ev.peer)
        stale = r.paths if r is not None and r.paths is not None else {}
        changed = False
        for prefix in ev.withdrawn:
            changed |= paths.pop(prefix, None) is not None
            changed |= stale.pop(prefix, None) is not None
        for prefix, path in ev.announced:
            if paths.get(prefix) != path:
                paths[prefix] = path
                changed = True
        return changed

    # -- what the agent reads -------------------------------------------------
    def synced(self) -> bool:
        """False while learned() is incomplete and must not be used to delete kernel routes
        (read-back of an adopted ExaBGP, or our graceful restart before its deadline)."""
        if self.sync is SyncState.RESTARTING and self.clock() > self.deadline:
            log.warning("bgp graceful restart: not every peer re-sent its routes in time; "
                        "using what was learned")
            self.sync = SyncState.SYNCED
            self.deadline = 0.0
        return self.sync is SyncState.SYNCED

    def learned(self) -> dict[str, set[LearnedPath]]:
        """prefix -> every path currently learned for it, from any peer (stale included)."""
        self.expire()
        out: dict[str, set[LearnedPath]] = {}
        for peer, r in self.stale.items():   # a re-establishing session's paths
            fresh = self.learned_paths.get(peer, {})
            for prefix, path in (r.paths or {}).items():
                if prefix not in fresh:
                    out.setdefault(prefix, set()).add(path)
        for paths in self.learned_paths.values():
            for prefix, path in paths.items():
                out.setdefault(prefix, set()).add(path)
        return out

    def arrival(self) -> dict[str, tuple[str, ...]]:
        """peer -> its prefixes in the order it sent them (stale ones last): the import
        policy's max-prefix limit keeps the first ones."""
        out = {peer: tuple(paths) for peer, paths in self.learned_paths.items()}
        for peer, r in self.stale.items():
            extra = [p for p in (r.paths or {}) if p not in self.learned_paths.get(peer, {})]
            out[peer] = out.get(peer, ()) + tuple(extra)
        return out

    def peers(self) -> list[PeerState]:
        out = []
        for p in self.cfg.peers:
            s = self.sessions[p.address]
            established = s.state == "Established"
            sent = len(self.told.get(p.address, {})) + len(self.reflected.get(p.address, {}))
            out.append(replace(s, received=len(self.learned_paths.get(p.address, {})),
                               sent=sent if established else 0, description=p.description))
        return out

    # -- internals --------------------------------------------------------------
    def _addresses(self) -> list[str]:
        return [p.address for p in self.cfg.peers]

    def _send(self, command: str) -> None:
        self._out.append(command)

    def _done(self, changed: bool) -> Changes:
        out, self._out = self._out, []
        return Changes(changed=changed, commands=out)

    def _grace(self, p: PeerConfig) -> float:
        return float(max(self.cfg.graceful_restart, 10) + p.hold_time)

    def _keep_routes_while_restarting(self) -> None:
        self.sync = SyncState.RESTARTING
        self.eor = set()
        self.reflected = {}
        self.deadline = self.clock() + (self.cfg.graceful_restart or 10) + self.restart_delay

    def _check_resynced(self) -> bool:
        """RESTARTING: True (and synced) once every peer is back and sent End-of-RIB."""
        if self.sync is not SyncState.RESTARTING:
            return False
        if all(s.state == "Established" and a in self.eor for a, s in self.sessions.items()):
            self.sync = SyncState.SYNCED
            self.deadline = 0.0
            log.info("bgp graceful restart: every peer re-sent its routes")
            return True
        return False

    def _reset(self, reason: str) -> bool:
        changed = any(self.learned_paths.values())
        self.learned_paths.clear()
        self.bfd_held.clear()
        self.reflected = {}
        now = self.wall_clock()
        for addr, s in self.sessions.items():
            if s.state != "Idle":
                self.sessions[addr] = replace(s, state="Idle", since=now, reason=reason)
                changed = True
        return changed
