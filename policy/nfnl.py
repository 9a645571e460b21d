"""A small nf_tables netlink batch writer: set and map elements, chain and set deletion.

Why not libnftables for these: every libnftables transaction that names a set first reads the
whole table's chains and sets from the kernel into its cache (nftables 1.0.6 `cache.c`: adding
elements or rules needs NFT_CACHE_TABLE|CHAIN|SET|OBJECT), which on a 1,000-pod table is
~1,000 chains and ~300 sets per transaction, whatever its size (profiled: see README). A pod
relabel only moves a few set elements, which the kernel itself applies in microseconds.

Why not pyroute2's NFTSocket (0.9.7): it has the message classes, but the key bytes from nft's
element literals, refused messages mapped back to commands, and dumped rules copied byte for
byte (policy.rule_templates) would still be ours; it would save only the attribute packing.

One `Batch` is one BEGIN..END nfnetlink batch: the kernel applies all of it or, if it refuses
any message, none of it (and answers each refused message with its errno). Only elements
`encode_key` understands go this way (non-interval sets whose types are listed in _WIDTH);
new sets and interval sets stay with libnftables, and rules come from policy.rule_templates.
"""
from __future__ import annotations

import functools
import os
import socket
import struct
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSET = 5, 8, 11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
NFT_JUMP, NFT_GOTO = -3, -4
IFNAMSIZ = 16
ELEMENTS_PER_MESSAGE = 500   # an element is at most ~100 bytes here (a map entry with its chain)
MAX_BATCH_BYTES = 1 << 20    # larger updates go through libnftables (the socket's send buffer)
NETLINK_CAP_ACK = 10
# the key width (bytes) of each type whose literals encode_key can write
_WIDTH = {"ipv4_addr": 4, "ifname": IFNAMSIZ, "inet_proto": 1, "inet_service": 2}
_PROTO = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}


class BatchError(RuntimeError):
    """The kernel refused the batch (nothing of it applied); `reason` names the messages and errnos."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def supported(set_type: str, interval: bool) -> bool:
    """Whether elements of a set of this type can go through a netlink batch."""
    return not interval and all(t in _WIDTH for t in set_type.split(" . "))


def _component(kind: str, literal: str) -> bytes:
    if kind == "ipv4_addr":  # inet_aton also takes "10.1" or "010.0.0.1": only the canonical form
        try:
            raw = socket.inet_aton(literal)
        except OSError:
            raw = b""
        if socket.inet_ntoa(raw.ljust(4, b"\0")) != literal:
            raise ValueError(f"not an IPv4 address: {literal!r}")
        return raw
    if kind == "ifname":
        name = literal[1:-1] if literal.startswith('"') else literal
        raw = name.encode()
        if len(raw) >= IFNAMSIZ:
            raise ValueError(f"interface name too long: {name}")
        return raw.ljust(IFNAMSIZ, b"\0")
    if kind == "inet_proto":
        return bytes([_PROTO[literal] if literal in _PROTO else int(literal)])
    if kind == "inet_service":
        return struct.pack(">H", int(literal))
    raise ValueError(f"no netlink encoding for type {kind}")


@functools.lru_cache(maxsize=1 << 16)
def encode_key(set_type: str, literal: str) -> bytes:
    """An element literal as nft writes it (`10.0.0.1 . udp . 53`) as the kernel's key bytes:
    each field of a concatenation padded to 4 bytes, as nft does."""
    kinds, parts = set_type.split(" . "), literal.split(" . ")
    if len(kinds) != len(parts):
        raise ValueError(f"element {literal!r} does not fit type {set_type}")
    if len(kinds) == 1:
        return _component(kinds[0], parts[0])
    return b"".join(_pad(_component(k, p)) for k, p in zip(kinds, parts))


def _pad(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return _pad(head + payload)


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _element(key: bytes, jump: str | None) -> bytes:
    body = _attr(1, _attr(1, key), nested=True)  # NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
    if jump is not None:  # NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE, CHAIN } }
        verdict = _attr(1, struct.pack(">i", NFT_JUMP)) + _str(2, jump)
        body += _attr(2, _attr(2, verdict, nested=True), nested=True)
    return _attr(1, body, nested=True)  # NFTA_LIST_ELEM


@dataclass
class Batch:
    """nf_tables messages for one table, in the order the kernel is to apply them."""

    family: str
    table: str
    messages: list[tuple[int, int, bytes, str]] = field(default_factory=list)  # type, flags, attrs, what
    next_id: int = 0   # the last id given to a set created in this batch

    def elements(self, add: bool, set_name: str, set_type: str, elements: list[str],
                 jumps: dict[str, str] | None = None) -> None:
        """Add or delete elements of a set, or of a verdict map (`jumps`: key -> chain); in
        messages of at most ELEMENTS_PER_MESSAGE (an attribute's length is 16 bits)."""
        kind = NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM
        for i in range(0, len(elements), ELEMENTS_PER_MESSAGE):
            part = elements[i:i + ELEMENTS_PER_MESSAGE]
            items = b"".join(_element(encode_key(set_type, e), (jumps or {}).get(e) if add else None)
                             for e in part)
            attrs = _str(1, self.table) + _str(2, set_name) + _attr(3, items, nested=True)
            what = f"{'add' if add else 'delete'} element {self.family} {self.table} {set_name} {{ {', '.join(part)} }}"
            self.messages.append((kind, NLM_F_CREATE if add else 0, attrs, what))

    def size(self) -> int:
        """Bytes on the wire (BEGIN, END and each message's headers included)."""
        return 40 + sum(20 + len(attrs) for _, _, attrs, _ in self.messages)

    def add(self, kind: int, flags: int, attrs: bytes, what: str) -> None:
        """Any nf_tables message (policy.rule_templates writes chains and rules with it)."""
        self.messages.append((kind, flags, attrs, what))

    def delete_chain(self, chain: str) -> None:
        """Flush the chain's rules, then delete it (as `flush chain` + `delete chain`)."""
        rule = _str(1, self.table) + _str(2, chain)  # NFTA_RULE_TABLE, NFTA_RULE_CHAIN
        self.messages.append((NFT_MSG_DELRULE, 0, rule, f"flush chain {self.family} {self.table} {chain}"))
        named = _str(1, self.table) + _str(3, chain)  # NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
        self.messages.append((NFT_MSG_DELCHAIN, 0, named, f"delete chain {self.family} {self.table} {chain}"))

    def delete_set(self, name: str) -> None:
        attrs = _str(1, self.table) + _str(2, name)  # NFTA_SET_TABLE, NFTA_SET_NAME
        self.messages.append((NFT_MSG_DELSET, 0, attrs, f"delete set {self.family} {self.table} {name}"))

    def encode(self, seq: int) -> tuple[bytes, dict[int, str]]:
        """The whole BEGIN..END batch, and which command each sequence number carries."""
        def msg(kind: int, flags: int, family: int, res_id: int, attrs: bytes, n: int) -> bytes:
            body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
            return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, n, 0) + body
        out = [msg(NFNL_MSG_BATCH_BEGIN, 0, 0, NFNL_SUBSYS_NFTABLES, b"", seq)]
        whats = {}
        for i, (kind, flags, attrs, what) in enumerate(self.messages, start=1):
            whats[seq + i] = what
            out.append(msg(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | NLM_F_ACK, NFPROTO[self.family], 0,
                           attrs, seq + i))
        out.append(msg(NFNL_MSG_BATCH_END, 0, 0, NFNL_SUBSYS_NFTABLES, b"", seq + len(self.messages) + 1))
        return b"".join(out), whats


def _answers(reply: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno) of each NLMSG_ERROR message (errno 0: an acknowledgement)."""
    out, offset = [], 0
    while offset + 20 <= len(reply):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", reply, offset)
        if kind == NLMSG_ERROR:
            out.append((seq, -struct.unpack_from("=i", reply, offset + 16)[0]))
        offset += max(length + (-length % 4), 16)
    return out


class NfnlSocket:
    """A NETLINK_NETFILTER socket. Like an nft context it acts on the network namespace of the
    thread that created it, so create it where the applier lives."""

    def __init__(self, timeout: float = 30.0):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:  # a batch is one sendmsg: room for MAX_BATCH_BYTES (root may exceed wmem_max)
            self._sock.setsockopt(socket.SOL_SOCKET, 32, 2 * MAX_BATCH_BYTES)   # SO_SNDBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_BATCH_BYTES)
        self._sock.setsockopt(270, NETLINK_CAP_ACK, 1)   # SOL_NETLINK: errors without the echoed message
        self._sock.bind((0, 0))
        self._sock.settimeout(timeout)
        self._seq = int.from_bytes(os.urandom(2), "big") << 8

    def send(self, batch: Batch) -> None:
        """Send one batch and wait for the kernel's answer to each message; raise BatchError
        with every refused command and its errno (then the kernel applied nothing)."""
        if not batch.messages:
            return
        data, whats = batch.encode(self._seq)
        self._seq += len(batch.messages) + 2
        try:
            self._sock.send(data)
        except OSError as e:  # e.g. EMSGSIZE: the kernel saw nothing of it
            raise BatchError(f"nf_tables batch of {len(data)} bytes not sent: {e}") from e
        pending, refused = set(whats), []
        while pending:
            try:  # the kernel answers while processing the send, so after the first refusal
                reply = self._sock.recv(1 << 20, socket.MSG_DONTWAIT if refused else 0)
            except BlockingIOError:  # every answer it had is read
                break
            except socket.timeout:
                raise BatchError(f"no answer from nf_tables for {len(pending)} of {len(whats)} messages")
            for seq, errno in _answers(reply):
                if seq in pending:
                    pending.discard(seq)
                    if errno:
                        refused.append(f"{whats[seq]}: {os.strerror(errno)} (errno {errno})")
                elif errno:  # the batch itself (its BEGIN or END) was refused
                    refused.append(f"nf_tables batch: {os.strerror(errno)} (errno {errno})")
        if refused:
            raise BatchError("; ".join(refused))

    def query(self, kind: int, attrs: bytes, family: str = "inet", dump: bool = True) -> list[bytes]:
        """A GET request (a dump, or one object); the attributes of every answer message."""
        seq, self._seq = self._seq, self._seq + 1
        body = struct.pack("=BBH", NFPROTO[family], 0, 0) + attrs
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        self._sock.send(struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seq, 0) + body)
        out: list[bytes] = []
        while True:
            reply = self._sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(reply):
                length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", reply, offset)
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        errno = -struct.unpack_from("=i", reply, offset + 16)[0]
                        if errno:
                            raise BatchError(f"nf_tables query {kind}: {os.strerror(errno)} (errno {errno})")
                        return out
                    out.append(reply[offset + 20:offset + length])
                offset += max(length + (-length % 4), 16)

    def close(self) -> None:
        self._sock.close()
