"""Tiny servers a lab pod runs for probes: TCP accepts (and closes), UDP echoes.

Run as `python -m calico_lite.lab.serve tcp:80 udp:80` inside the pod's namespace.
"""
from __future__ import annotations

import selectors
import socket
import sys


def parse(specs: list[str]) -> list[tuple[str, int]]:
    out = []
    for spec in specs:
        for item in filter(None, spec.split(",")):
            proto, _, port = item.partition(":")
            if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"--serve {item!r}: expected tcp:PORT or udp:PORT")
            out.append((proto, int(port)))
    return out


def main(argv: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for proto, port in parse(argv):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        if proto == "tcp":
            s.listen(512)
        sel.register(s, selectors.EVENT_READ, proto)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == "tcp":
                    conn, _ = s.accept()
                    conn.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)
            except OSError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
