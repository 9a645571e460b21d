"""A stream of numbered UDP probes to a lab pod's echo server, counting what came back.

Run inside a pod's namespace: `python -m calico_lite.lab.udpstream IP PORT INTERVAL STOPFILE`.
It sends one probe every INTERVAL seconds until STOPFILE exists, waits a moment for late
echoes, and prints one JSON line: sent, received, the lost sequence numbers and the longest
run of consecutive losses (times INTERVAL: the longest outage). Used by the graceful-restart
test and the convergence bench.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time


def run(ip: str, port: int, interval: float, stopfile: str, max_seconds: float = 120.0) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    got: set[int] = set()
    seq = 0
    start = time.monotonic()
    next_at = start

    def drain() -> None:
        while True:
            try:
                data = s.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:   # ICMP unreachable surfaces here: that probe is lost anyway
                continue
            if data.isdigit():
                got.add(int(data))

    while not os.path.exists(stopfile) and time.monotonic() - start < max_seconds:
        try:
            s.sendto(str(seq).encode(), (ip, port))
        except OSError:
            pass   # no route right now: a lost probe
        seq += 1
        next_at += interval
        while (now := time.monotonic()) < next_at:
            drain()
            time.sleep(min(0.002, max(0.0, next_at - now)))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    lost = sorted(set(range(seq)) - got)
    longest, run_len, prev = 0, 0, None
    for x in lost:
        run_len = run_len + 1 if prev is not None and x == prev + 1 else 1
        longest = max(longest, run_len)
        prev = x
    return {"sent": seq, "received": len(got & set(range(seq))), "lost": lost[:200],
            "lost_count": len(lost), "longest_outage_s": round(longest * interval, 3),
            "duration_s": round(time.monotonic() - start, 2)}


if __name__ == "__main__":
    ip, port, interval, stopfile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    print(json.dumps(run(ip, port, interval, stopfile)), flush=True)
