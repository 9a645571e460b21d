"""A UDP probe that counts what got through, per destination port, for the policy burst test.

`python -m tests.faults.udpcount recv STATE STOP PORT...` (in the receiving pod) counts the
datagrams arriving on each port and rewrites STATE (JSON: port -> count, and `arrivals`: when
the first 20 on the first port arrived and were sent) after each one.
`python -m tests.faults.udpcount send IP STATE STOP INTERVAL PORT...` (in the sending pod) sends one
datagram to each port every INTERVAL seconds, each from a NEW socket (a new source port, so a
new conntrack flow: an accepted earlier flow can never carry a later probe), until STOP exists;
it rewrites STATE with how many it sent per port before each round, and at the end.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time


def recv(state: str, stop: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    counts: dict = {p: 0 for p in ports}
    first = ports[0]
    counts["arrivals"] = []   # (arrival time, send time) of the first port's first 20
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", p))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, p)
    _write(state, counts)
    while not os.path.exists(stop):
        for key, _ in sel.select(0.2):
            while True:
                try:
                    data = key.fileobj.recv(64)
                except BlockingIOError:
                    break
                counts[key.data] += 1
                if key.data == first and len(counts["arrivals"]) < 20:
                    counts["arrivals"].append((time.time(), data.decode(errors="replace")))
            _write(state, counts)


def _write(path: str, counts: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(path + ".tmp", path)


def send(ip: str, state: str, stop: str, interval: float, ports: list[int]) -> None:
    sent = {p: 0 for p in ports}
    while not os.path.exists(stop):
        _write(state, sent)
        for p in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(f"{time.time():.6f}".encode(), (ip, p))
                    sent[p] += 1
                except OSError:
                    pass
        time.sleep(interval)
    _write(state, sent)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "recv":
        recv(rest[0], rest[1], [int(p) for p in rest[2:]])
    else:
        send(rest[0], rest[1], rest[2], float(rest[3]), [int(p) for p in rest[4:]])
