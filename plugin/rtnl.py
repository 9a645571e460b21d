"""A small rtnetlink client for the hot ADD/DEL steps: a handful of fixed messages, packed with
`struct` and sent in one datagram, their acknowledgements read back in one go.

Why not pyroute2 here: every pyroute2 call runs an asyncio loop and encodes through generic
NLA descriptors, about 1-1.5 ms of interpreter time per request; an ADD makes about ten. The
messages an ADD and a DEL need are few and fixed (veth with its peer born in the pod
namespace, address, routes, link up, link delete, link by name), so they are packed here; every
other netlink use (CHECK, GC, the routing controller) stays on pyroute2. Errors are pyroute2's
`NetlinkError`, so callers handle both the same way.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE = 20, 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_REPLACE = 1, 4, 0x200, 0x400, 0x100
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFF_UP = 1
RT_TABLE_MAIN, RTN_UNICAST = 254, 1
RTPROT_BOOT, RTPROT_STATIC = 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
NLA_F_NESTED = 0x8000
_HDR = struct.Struct("=IHHII")        # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")    # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")     # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, proto,
#                                       scope, type, flags


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def name_attr(kind: int, name: str) -> bytes:
    return attr(kind, name.encode() + b"\0")


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


def veth_request(host: str, peer: str, peer_netns_fd: int, mtu: int, host_mac: str,
                 peer_mac: str) -> tuple[int, int, bytes]:
    """RTM_NEWLINK: host<->peer, the peer born inside the pod namespace, the host end up (the
    peer cannot be: veth opens a peer only once both ends are linked, ENOTCONN before)."""
    peer_info = (ifinfo() + name_attr(IFLA_IFNAME, peer) + attr(IFLA_MTU, struct.pack("=I", mtu))
                 + attr(IFLA_ADDRESS, mac_bytes(peer_mac))
                 + attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)))
    linkinfo = (name_attr(IFLA_INFO_KIND, "veth")
                + attr(IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER, peer_info)))
    body = (ifinfo(up=True) + name_attr(IFLA_IFNAME, host) + attr(IFLA_MTU, struct.pack("=I", mtu))
            + attr(IFLA_ADDRESS, mac_bytes(host_mac)) + attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo))
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body


def link_up_request(index: int) -> tuple[int, int, bytes]:
    return RTM_NEWLINK, 0, ifinfo(index, up=True)


def delete_link_request(name: str) -> tuple[int, int, bytes]:
    return RTM_DELLINK, 0, ifinfo() + name_attr(IFLA_IFNAME, name)


def get_link_request(name: str) -> tuple[int, int, bytes]:
    return RTM_GETLINK, 0, ifinfo() + name_attr(IFLA_IFNAME, name)


def address_request(index: int, ip: str, prefixlen: int = 32) -> tuple[int, int, bytes]:
    raw = socket.inet_aton(ip)
    body = (_IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw))
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body


def route_request(index: int, dst: str, dst_len: int, gateway: str | None = None,
                  scope: int = RT_SCOPE_UNIVERSE, proto: int = RTPROT_BOOT,
                  replace: bool = False) -> tuple[int, int, bytes]:
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, proto, scope, RTN_UNICAST, 0)
    if dst_len:
        body += attr(RTA_DST, socket.inet_aton(dst))
    if gateway:
        body += attr(RTA_GATEWAY, socket.inet_aton(gateway))
    body += attr(RTA_OIF, struct.pack("=i", index))
    return RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL), body


@dataclass(frozen=True)
class Reply:
    """What a request got back: its link index (RTM_GETLINK) or just the acknowledgement."""
    index: int = 0


class Rtnl:
    """A route netlink socket in the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, *requests: tuple[int, int, bytes]) -> list[Reply]:
        """Send the requests in one datagram; the kernel runs them in order. Raises
        NetlinkError for the first that failed (those before it are done)."""
        first = self.seq + 1
        out = []
        for kind, flags, body in requests:
            self.seq += 1
            out.append(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                                 self.seq, 0) + body)
        self.sock.send(b"".join(out))
        replies: dict[int, Reply] = {}
        error: NetlinkError | None = None
        while len(replies) < len(requests):
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                if first <= seq <= self.seq:
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                        if code and error is None:
                            error = NetlinkError(code, os.strerror(code))
                        replies.setdefault(seq, Reply())
                    elif kind == RTM_NEWLINK:   # the answer to RTM_GETLINK, then its ack
                        index = _IFINFO.unpack_from(data, offset + _HDR.size)[2]
                        replies[seq] = Reply(index)
                offset += (length + 3) & ~3
        if error is not None:
            raise error
        return [replies.get(s, Reply()) for s in range(first, self.seq + 1)]

    def link_index(self, name: str) -> int | None:
        """The index of a link by name; None if there is none."""
        try:
            return self.call(get_link_request(name))[0].index
        except NetlinkError as e:
            if e.code == 19:  # ENODEV
                return None
            raise
