"""BFD (RFC 5880 asynchronous mode, single hop per RFC 5881): control packets and the
session state machine, pure (no sockets, no threads, clocks passed in).

ExaBGP has no BFD, so the node runs it itself (`bgp.bfd_runner` holds the sockets). A BFD
session declares a silent neighbour down after `remote multiplier x agreed interval`
(300 ms x 3 by default, as FRR's), where BGP would wait for its hold time (9 s here, 90-180 s
on many routers): the Speaker then tears the BGP session down and drops its paths at once.

What the RFC asks and this module does:
- three-way handshake Down -> Init -> Up (6.2), AdminDown from either side (6.8.6, 6.8.16);
- while not Up, transmit no faster than once a second (6.8.3); on Up, a Poll Sequence
  announces the faster interval, and the peer's P bit is answered with F (6.5, 6.8.6);
- transmit interval max(our desired TX, the peer's required RX), less 0-25 % jitter
  (6.8.7); detection time = the peer's multiplier x max(our required RX, the peer's
  desired TX) (6.8.4);
- every reception check of 6.8.6 (version, length, multiplier, M bit, discriminators, auth
  we do not do), and RFC 5881's: TTL 255 received (the runner checks it), destination port
  3784, source port 49152-65535.
"""
from __future__ import annotations

import enum
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

BFD_PORT = 3784                 # RFC 5881: single-hop control packets
SOURCE_PORTS = range(49152, 65536)
TTL = 255                       # sent, and required on receipt (GTSM, RFC 5881 section 5)
SLOW_TX_US = 1_000_000          # while not Up (RFC 5880 6.8.3)
HEADER = struct.Struct("!BBBBIIIII")   # the 24-byte mandatory section
VERSION = 1


class State(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return {0: "AdminDown", 1: "Down", 2: "Init", 3: "Up"}[self.value]


class Diag(enum.IntEnum):
    NONE = 0
    DETECTION_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCAT_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCAT_PATH_DOWN = 8

    @property
    def text(self) -> str:
        return {0: "no diagnostic", 1: "control detection time expired",
                2: "echo function failed", 3: "neighbor signaled session down",
                4: "forwarding plane reset", 5: "path down", 6: "concatenated path down",
                7: "administratively down", 8: "reverse concatenated path down"}[self.value]


class PacketError(ValueError):
    """A control packet that RFC 5880 6.8.6 says to discard."""


@dataclass(frozen=True)
class ControlPacket:
    """The mandatory section of a BFD control packet; intervals in microseconds."""

    state: State
    my_discr: int
    your_discr: int = 0
    diag: Diag = Diag.NONE
    detect_mult: int = 3
    desired_min_tx: int = SLOW_TX_US
    required_min_rx: int = SLOW_TX_US
    required_min_echo_rx: int = 0
    poll: bool = False
    final: bool = False

    def encode(self) -> bytes:
        flags = (self.state << 6) | (0x20 if self.poll else 0) | (0x10 if self.final else 0)
        return HEADER.pack((VERSION << 5) | self.diag, flags, self.detect_mult, HEADER.size,
                           self.my_discr, self.your_discr, self.desired_min_tx,
                           self.required_min_rx, self.required_min_echo_rx)


def decode(data: bytes) -> ControlPacket:
    """Parse and check a control packet (RFC 5880 6.8.6, the checks before session lookup);
    PacketError says why it is discarded."""
    if len(data) < HEADER.size:
        raise PacketError(f"{len(data)} bytes, shorter than a control packet")
    vd, flags, mult, length, my, your, tx, rx, echo = HEADER.unpack_from(data)
    if vd >> 5 != VERSION:
        raise PacketError(f"version {vd >> 5}")
    if flags & 0x04:
        raise PacketError("authentication present, none configured")
    if length < HEADER.size or length > len(data):
        raise PacketError(f"length field {length} with {len(data)} bytes received")
    if mult == 0:
        raise PacketError("detect multiplier 0")
    if flags & 0x01:
        raise PacketError("multipoint bit set")
    if my == 0:
        raise PacketError("my discriminator 0")
    state = State(flags >> 6)
    if your == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
        raise PacketError(f"your discriminator 0 in state {state.label}")
    diag = vd & 0x1F
    return ControlPacket(state=state, my_discr=my, your_discr=your,
                         diag=Diag(diag) if diag <= 8 else Diag.NONE, detect_mult=mult,
                         desired_min_tx=tx, required_min_rx=rx, required_min_echo_rx=echo,
                         poll=bool(flags & 0x20), final=bool(flags & 0x10))


def check_ports(source_port: int, dest_port: int) -> None:
    """RFC 5881 section 4: control packets go to 3784 from 49152-65535."""
    if dest_port != BFD_PORT:
        raise PacketError(f"destination port {dest_port}, not {BFD_PORT}")
    if source_port not in SOURCE_PORTS:
        raise PacketError(f"source port {source_port} outside 49152-65535")


@dataclass(frozen=True)
class BfdConfig:
    """Per peer: our desired TX and required RX interval (ms), and detect multiplier."""

    interval_ms: int = 300
    multiplier: int = 3

    def __post_init__(self) -> None:
        if not 10 <= self.interval_ms <= 60_000:
            raise ValueError(f"BFD interval {self.interval_ms} ms: must be 10..60000")
        if not 2 <= self.multiplier <= 255:
            raise ValueError(f"BFD multiplier {self.multiplier}: must be 2..255")


@dataclass(frozen=True)
class Transition:
    """A session state change, for the Speaker (BGP teardown) and the operator."""

    peer: str
    old: State
    new: State
    diag: Diag
    remote_admin_down: bool = False   # the peer said AdminDown: not a path failure (RFC 5882)

    @property
    def failure(self) -> bool:
        """Up -> Down that a client must act on (RFC 5882 3.2: not a peer's AdminDown)."""
        return self.old is State.UP and self.new is State.DOWN and not self.remote_admin_down


@dataclass(frozen=True)
class SessionStatus:
    """What `node status` shows of one BFD session."""

    peer: str
    state: str
    local_discr: int
    remote_discr: int
    tx_ms: float            # the interval we transmit at now
    rx_ms: float            # the detection interval (detection time / the peer's multiplier)
    multiplier: int
    remote_multiplier: int
    last_down: str = ""     # diagnostic of the last Up -> Down
    flaps: int = 0          # Up -> Down transitions
    since: float = 0.0      # wall clock of the last state change


@dataclass
class Session:
    """One RFC 5880 session (section 6.8.1's variables), driven by receive() and tick()."""

    peer: str
    local_discr: int
    cfg: BfdConfig = field(default_factory=BfdConfig)
    rng: Callable[[], float] = random.random
    state: State = State.DOWN
    remote_state: State = State.DOWN
    remote_discr: int = 0
    diag: Diag = Diag.NONE
    remote_min_rx: int = 1          # us, the peer's Required Min RX (6.8.1: initially 1)
    remote_desired_tx: int = 0      # us, the peer's last Desired Min TX
    remote_mult: int = 0
    polling: bool = False           # our Poll Sequence is on (P set until F comes back)
    send_final: bool = False        # answer a P bit at once
    detect_deadline: float | None = None
    next_tx: float = 0.0
    last_down: str = ""
    flaps: int = 0
    since: float = 0.0

    @property
    def desired_min_tx(self) -> int:
        return self.cfg.interval_ms * 1000 if self.state is State.UP else max(
            SLOW_TX_US, self.cfg.interval_ms * 1000)

    @property
    def required_min_rx(self) -> int:
        return self.cfg.interval_ms * 1000

    def tx_interval(self) -> float:
        """Seconds between packets, before jitter (6.8.7)."""
        return max(self.desired_min_tx, self.remote_min_rx) / 1e6

    def detection_time(self) -> float:
        """Seconds without a packet before the peer is declared down (6.8.4)."""
        return self.remote_mult * max(self.required_min_rx, self.remote_desired_tx) / 1e6

    # -- events --------------------------------------------------------------------------
    def receive(self, pkt: ControlPacket, now: float, wall: float = 0.0) -> Transition | None:
        """A packet that passed decode() and was matched to this session (6.8.6)."""
        self.remote_discr = pkt.my_discr
        self.remote_state = pkt.state
        self.remote_min_rx = pkt.required_min_rx
        self.remote_desired_tx = pkt.desired_min_tx
        self.remote_mult = pkt.detect_mult
        if pkt.final:
            self.polling = False
        if pkt.poll:
            self.send_final = True
            self.next_tx = now            # answer at once, whatever the rate (6.8.6)
        if self.state is State.ADMIN_DOWN:
            return None
        self.detect_deadline = now + self.detection_time()
        old = self.state
        if pkt.state is State.ADMIN_DOWN:
            if self.state is not State.DOWN:
                self._set(State.DOWN, Diag.NEIGHBOR_DOWN, now, wall)
                return self._transition(old, remote_admin_down=True)
            return None
        if self.state is State.DOWN:
            if pkt.state is State.DOWN:
                self._set(State.INIT, Diag.NONE, now, wall)
            elif pkt.state is State.INIT:
                self._set(State.UP, Diag.NONE, now, wall)
        elif self.state is State.INIT:
            if pkt.state in (State.INIT, State.UP):
                self._set(State.UP, Diag.NONE, now, wall)
        elif pkt.state is State.DOWN:
            self._set(State.DOWN, Diag.NEIGHBOR_DOWN, now, wall)
        return self._transition(old) if self.state is not old else None

    def tick(self, now: float, wall: float = 0.0) -> Transition | None:
        """Detection time over without a packet (6.8.4): Init or Up goes Down."""
        if self.detect_deadline is None or now < self.detect_deadline:
            return None
        self.detect_deadline = None
        self.remote_discr = 0          # 6.8.1: zero once a detection time passes in silence
        if self.state not in (State.INIT, State.UP):
            return None
        old = self.state
        self._set(State.DOWN, Diag.DETECTION_EXPIRED, now, wall)
        return self._transition(old)

    def admin_down(self, now: float, wall: float = 0.0) -> None:
        """We stop the session on purpose (the agent leaves): the peer gets AdminDown."""
        self._set(State.ADMIN_DOWN, Diag.ADMIN_DOWN, now, wall)

    def due(self, now: float) -> ControlPacket | None:
        """The packet to send now if one is due (then schedules the next, jittered)."""
        if now < self.next_tx:
            return None
        interval = self.tx_interval()
        low = 0.75
        high = 0.9 if self.cfg.multiplier == 1 else 1.0
        self.next_tx = now + interval * (low + (high - low) * self.rng())
        pkt = ControlPacket(state=self.state, my_discr=self.local_discr,
                            your_discr=self.remote_discr, diag=self.diag,
                            detect_mult=self.cfg.multiplier, desired_min_tx=self.desired_min_tx,
                            required_min_rx=self.required_min_rx,
                            poll=self.polling and not self.send_final, final=self.send_final)
        self.send_final = False
        return pkt

    def wakeup(self) -> float:
        """The next time (monotonic) tick() or due() has something to do."""
        return min(self.next_tx, self.detect_deadline if self.detect_deadline is not None
                   else self.next_tx)

    def status(self) -> SessionStatus:
        return SessionStatus(peer=self.peer, state=self.state.label, local_discr=self.local_discr,
                             remote_discr=self.remote_discr, tx_ms=self.tx_interval() * 1000,
                             rx_ms=max(self.required_min_rx, self.remote_desired_tx) / 1000,
                             multiplier=self.cfg.multiplier, remote_multiplier=self.remote_mult,
                             last_down=self.last_down, flaps=self.flaps, since=self.since)

    def reconfigure(self, cfg: BfdConfig, now: float) -> None:
        """New intervals: announced with a Poll Sequence (6.8.3)."""
        if cfg != self.cfg:
            self.cfg = cfg
            self.polling = self.state is State.UP
            self.next_tx = min(self.next_tx, now)

    # -- internals ---------------------------------------------------------------------
    def _set(self, state: State, diag: Diag, now: float, wall: float) -> None:
        was_up = self.state is State.UP
        self.state, self.diag, self.since = state, diag, wall
        if state is State.UP:
            # the interval changes from 1 s to the configured one: a Poll Sequence (6.8.3)
            self.polling = self.cfg.interval_ms * 1000 != SLOW_TX_US
            self.next_tx = now
        elif was_up:
            self.flaps += 1
            self.last_down = diag.text
            self.polling = False
        if state is not State.UP and state is not State.INIT:
            self.detect_deadline = None

    def _transition(self, old: State, remote_admin_down: bool = False) -> Transition:
        return Transition(self.peer, old, self.state, self.diag, remote_admin_down)


def new_discriminator(taken: set[int], rng: Callable[[int], int] | None = None) -> int:
    """A non-zero local discriminator no other session of ours uses (6.8.1)."""
    pick = rng or (lambda n: random.getrandbits(n))
    while True:
        d = pick(32)
        if d and d not in taken:
            return d


__all__ = ["BFD_PORT", "SOURCE_PORTS", "TTL", "BfdConfig", "ControlPacket", "Diag",
           "PacketError", "Session", "SessionStatus", "State", "Transition", "check_ports",
           "decode", "new_discriminator"]
