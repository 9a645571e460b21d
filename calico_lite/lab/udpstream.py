"""A stream of numbered UDP probes to a lab pod's echo server, counting what came back.

Run inside a pod's namespace: `python -m calico_lite.lab.udpstream IP PORT INTERVAL STOPFILE
[MAX_SECONDS]`. It sends one probe every INTERVAL seconds until STOPFILE exists (or for
MAX_SECONDS, 120 by default), waits a moment for late echoes, and prints one JSON line: sent,
received, the lost sequence numbers, the longest run of consecutive losses (times INTERVAL:
the longest outage), the runs of losses as [first, last] sequence numbers and the wall-clock
time of probe 0 (`t0`: probe n left at about t0 + n * INTERVAL). Used by the graceful-restart
test, the faults campaign and the convergence bench.
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
    t0 = time.time()
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
    runs: list[list[int]] = []
    for x in lost:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    longest = max((b - a + 1 for a, b in runs), default=0)
    return {"sent": seq, "received": len(got & set(range(seq))), "lost": lost[:200],
            "lost_count": len(lost), "longest_outage_s": round(longest * interval, 3),
            "lost_runs": runs[:100], "t0": round(t0, 3), "interval": interval,
            "duration_s": round(time.monotonic() - start, 2)}


if __name__ == "__main__":
    ip, port, interval, stopfile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    longest = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0   # MAX_SECONDS, optional
    print(json.dumps(run(ip, port, interval, stopfile, longest)), flush=True)
