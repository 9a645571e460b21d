"""The node's BFD sessions on real sockets: one thread, one selector (bgp.bfd is the logic).

Sockets, as RFC 5881 asks for single-hop BFD:
- one receiving socket on LOCAL:3784 for every session of this address (the peers send
  there from their own source ports), with IP_RECVTTL: a packet whose TTL is not 255 came
  from further than one hop and is dropped;
- one sending socket per session, bound to LOCAL and a source port of 49152-65535 kept for
  the session's life, with TTL 255 (and TOS CS6, network control, as FRR sends).

`on_transition(Transition)` is called from the runner's thread, with no lock held, for
every state change; the Speaker turns an Up -> Down into a BGP teardown.
"""
from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping

from .bfd import (BFD_PORT, SOURCE_PORTS, TTL, BfdConfig, PacketError, Session, SessionStatus,
                  Transition, decode, new_discriminator)

log = logging.getLogger("bgp.bfd")

TOS_CS6 = 0xC0
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)   # linux/in.h (Python lacks these two)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
RETRY_BIND = 2.0   # s between tries to bind LOCAL:3784 (the address may not be up yet)


class BfdRunner:
    """The BFD sessions of one local address, keyed by peer address."""

    def __init__(self, local_address: str, on_transition: Callable[[Transition], None], *,
                 port: int = BFD_PORT) -> None:
        self.local_address = local_address
        self.port = port
        self.on_transition = on_transition
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._tx: dict[str, socket.socket] = {}
        self._rx: socket.socket | None = None
        self._bind_after = 0.0
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.discarded = 0     # packets dropped by the checks (bad TTL, unknown session, ...)

    # -- what the Speaker calls ------------------------------------------------------------
    def update(self, peers: Mapping[str, BfdConfig]) -> None:
        """Make the sessions those of `peers` (new ones start Down, removed ones say AdminDown
        and are closed, changed intervals go through a Poll Sequence)."""
        now = time.monotonic()
        with self._lock:
            for peer in [p for p in self._sessions if p not in peers]:
                s = self._sessions.pop(peer)
                s.admin_down(now, time.time())   # so the peer does not take it for a failure
                s.next_tx = now
                self._send_due(peer, s, now)
                self._tx.pop(peer).close()
                log.info("bfd session %s removed", peer)
            for peer, cfg in peers.items():
                s = self._sessions.get(peer)
                if s is not None:
                    s.reconfigure(cfg, now)
                    continue
                taken = {x.local_discr for x in self._sessions.values()}
                self._tx[peer] = self._tx_socket()
                self._sessions[peer] = Session(peer, new_discriminator(taken), cfg,
                                               since=time.time(), next_tx=now)
                log.info("bfd session %s added interval=%sms multiplier=%s", peer,
                         cfg.interval_ms, cfg.multiplier)
            start = bool(self._sessions) and self._thread is None
            if start:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="bfd", daemon=True)
        if start:
            self._thread.start()
        self._wake()

    def status(self) -> list[SessionStatus]:
        with self._lock:
            return [self._sessions[p].status() for p in sorted(self._sessions)]

    def stop(self, admin_down: bool = True) -> None:
        """Close every session; with admin_down, tell the peers first (AdminDown, RFC 5880
        6.8.16), which they must not take for a path failure (RFC 5882 3.2)."""
        if admin_down:
            now = time.monotonic()
            with self._lock:
                for peer, s in self._sessions.items():
                    s.admin_down(now, time.time())
                    s.next_tx = now
                    self._send_due(peer, s, now)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for sock in self._tx.values():
                sock.close()
            self._tx.clear()
            self._sessions.clear()
            if self._rx is not None:
                self._sel.unregister(self._rx)
                self._rx.close()
                self._rx = None

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:   # never let one bad moment end every session
                log.exception("bfd loop failed; going on")
                self._stop.wait(0.1)

    def _step(self) -> None:
        """Timers, then wait for a packet (or a wake-up) until the next timer."""
        for t in self._timers():
            self._report(t)
        for key, _ in self._sel.select(self._timeout()):
            if key.data == "wake":
                try:
                    self._wake_r.recv(512)
                except BlockingIOError:
                    pass
            elif (t := self._receive()) is not None:
                self._report(t)

    def _timers(self) -> list[Transition]:
        """Detection timeouts, then whatever packets are due; (re)bind the RX socket."""
        now, wall = time.monotonic(), time.time()
        out = []
        with self._lock:
            if self._rx is None and self._sessions and now >= self._bind_after:
                self._bind_rx(now)
            for peer, s in self._sessions.items():
                t = s.tick(now, wall)
                if t is not None:
                    out.append(t)
                self._send_due(peer, s, now)
        return out

    def _timeout(self) -> float:
        with self._lock:
            wake = min((s.wakeup() for s in self._sessions.values()), default=None)
            if self._rx is None and self._sessions:
                wake = min(wake, self._bind_after) if wake is not None else self._bind_after
        if wake is None:
            return 1.0
        return max(0.0, min(1.0, wake - time.monotonic()))

    def _send_due(self, peer: str, s: Session, now: float) -> None:
        pkt = s.due(now)
        if pkt is None:
            return
        try:
            self._tx[peer].sendto(pkt.encode(), (peer, self.port))
        except OSError as e:   # no route yet, link down: the detection timer decides
            log.debug("bfd send to %s: %s", peer, e)

    def _receive(self) -> Transition | None:
        try:
            data, anc, _flags, (src, sport) = self._rx.recvmsg(512, socket.CMSG_SPACE(4))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            log.warning("bfd receive: %s", e)
            return None
        ttl = next((struct.unpack("i", d[:4])[0] if len(d) >= 4 else d[0]
                    for level, kind, d in anc
                    if level == socket.IPPROTO_IP and kind == socket.IP_TTL), None)
        try:
            if ttl != TTL:
                raise PacketError(f"TTL {ttl}, not {TTL} (more than one hop away)")
            if sport not in SOURCE_PORTS:
                raise PacketError(f"source port {sport} outside 49152-65535")
            pkt = decode(data)
        except PacketError as e:
            self.discarded += 1
            log.debug("bfd packet from %s:%s discarded: %s", src, sport, e)
            return None
        with self._lock:
            if pkt.your_discr:
                s = next((x for x in self._sessions.values()
                          if x.local_discr == pkt.your_discr), None)
            else:
                s = self._sessions.get(src)
            if s is None or s.peer != src:
                self.discarded += 1
                return None
            t = s.receive(pkt, time.monotonic(), time.time())
            self._send_due(s.peer, s, time.monotonic())   # a Final, or the Up that follows
        return t

    def _report(self, t: Transition) -> None:
        log.info("bfd session %s %s -> %s (%s)", t.peer, t.old.label, t.new.label, t.diag.text)
        try:
            self.on_transition(t)
        except Exception:   # the Speaker's callback must never stop the sessions
            log.exception("bfd transition callback failed")

    # -- sockets -----------------------------------------------------------------------------
    def _bind_rx(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.bind((self.local_address, self.port))
        except OSError as e:
            sock.close()
            self._bind_after = now + RETRY_BIND
            log.warning("bfd cannot listen on %s:%s: %s", self.local_address, self.port, e)
            return
        sock.setblocking(False)
        self._rx = sock
        self._sel.register(sock, selectors.EVENT_READ, "rx")

    def _tx_socket(self) -> socket.socket:
        """Bound to a source port of 49152-65535 no other socket holds (RFC 5881 4)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
        ports = list(SOURCE_PORTS)
        random.shuffle(ports)
        for port in ports[:200]:
            try:
                sock.bind((self.local_address, port))
                return sock
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:   # our address is not up (yet): any
                    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                elif e.errno != errno.EADDRINUSE:
                    raise
        sock.close()
        raise OSError(errno.EADDRINUSE, "no free BFD source port in 49152-65535")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
