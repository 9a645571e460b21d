"""Two small programs the host protection test runs in namespaces.

`serve ADDRESS LOG PORT...`: TCP listeners on ADDRESS for each PORT (what a node runs: SSH,
BGP, etcd, DNS) and a UDP listener on 53 that answers and appends each datagram's payload to
LOG. `probe ADDRESS PORT...`: from a pod, which TCP ports answer (open / refused / no answer)
and whether UDP 53 answers, as one JSON line.
"""
from __future__ import annotations

import json
import socket
import sys
import threading


def serve(address: str, log: str, ports: list[int]) -> None:
    def tcp(port: int) -> None:
        s = socket.create_server((address, port), reuse_port=False)
        while True:
            conn, _ = s.accept()
            conn.close()
    for port in ports:
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((address, 53))
    while True:
        data, peer = u.recvfrom(2048)
        with open(log, "a") as f:
            f.write(f"{peer[0]} {data.decode(errors='replace')}\n")
        u.sendto(data, peer)


def _tcp(address: str, port: int, results: dict) -> None:
    try:
        socket.create_connection((address, port), timeout=2).close()
        results[port] = "open"
    except ConnectionRefusedError:
        results[port] = "refused"
    except OSError:
        results[port] = "no answer"


def probe(address: str, ports: list[int]) -> dict:
    results: dict = {}
    threads = [threading.Thread(target=_tcp, args=(address, p, results)) for p in ports]
    for t in threads:
        t.start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    try:
        u.sendto(b"probe", (address, 53))
        results["udp53"] = "open" if u.recv(64) == b"probe" else "wrong answer"
    except OSError:
        results["udp53"] = "no answer"
    for t in threads:
        t.join()
    return {str(k): v for k, v in results.items()}


if __name__ == "__main__":
    cmd, addr, *rest = sys.argv[1:]
    if cmd == "serve":
        serve(addr, rest[0], [int(p) for p in rest[1:]])
    else:
        print(json.dumps(probe(addr, [int(p) for p in rest])))
