"""Hand-made Ethernet frames sent from inside a namespace (what a hostile pod can send with
CAP_NET_RAW): UDP with any source address and MAC, ARP with any sender, an ICMPv6 router
advertisement. Run as `python -m tests.faults.frames KIND ...` inside the namespace.
"""
from __future__ import annotations

import socket
import struct
import sys


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload   # no UDP checksum (IPv4)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    head = head[:10] + struct.pack("!H", _sum16(head)) + head[12:]
    return _mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + head + udp


def arp_frame(src_mac: str, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request: 'who has target_ip? tell sender_ip at src_mac'."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, _mac(src_mac),
                       socket.inet_aton(sender_ip), b"\0" * 6, socket.inet_aton(target_ip))
    return b"\xff" * 6 + _mac(src_mac) + b"\x08\x06" + body


def ra_frame(src_mac: str, src_ll: str = "fe80::bad:1") -> bytes:
    """A router advertisement to all nodes: lifetime 1800 s (a default route), no prefix."""
    src, dst = socket.inet_pton(socket.AF_INET6, src_ll), socket.inet_pton(socket.AF_INET6, "ff02::1")
    icmp = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    icmp += struct.pack("!BB6s", 1, 1, _mac(src_mac))   # source link-layer address option
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _sum16(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, src, dst)
    return b"\x33\x33\x00\x00\x00\x01" + _mac(src_mac) + b"\x86\xdd" + ip6 + icmp


def send(ifname: str, frame: bytes, count: int = 3) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for _ in range(count):
            s.send(frame)


def main(argv: list[str]) -> None:
    kind, ifname, *rest = argv
    if kind == "udp":
        src_mac, dst_mac, src, dst, dport, payload = rest
        send(ifname, udp_frame(src_mac, dst_mac, src, dst, int(dport), payload.encode()))
    elif kind == "arp":
        send(ifname, arp_frame(*rest))
    elif kind == "ra":
        send(ifname, ra_frame(*rest))
    else:
        raise SystemExit(f"unknown frame kind {kind}")


if __name__ == "__main__":
    main(sys.argv[1:])
