"""`bench/bgp_convergence.py --trace`: where a withdrawal's time goes, hop by hop.

FRR's own debug log (`debug bgp updates`, `log timestamp precision 6`) on the target's ToR,
the spine and the other ToRs gives each router's "rcvd UPDATE about P -- withdrawn" and
"send UPDATE P -- unreachable"; the withdrawing agent's log gives SIGUSR2 handled and its
withdraw commands acknowledged by ExaBGP (bgp.speaker logs how long that took); the bench's
watchers give each other node's kernel route removal. Wall clock throughout (FRR and the
agent log local time with microseconds / milliseconds; the watchers' CLOCK_MONOTONIC is
converted with the bench's own offset).
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

LOG = "trace.log"


def vtysh(lab, router: str, *commands: str) -> None:
    argv = ["ip", "netns", "exec", f"{lab.name}-{router}", "vtysh", "--vty_socket",
            str(lab.store.dir / "frr" / router)]
    for c in commands:
        argv += ["-c", c]
    subprocess.run(argv, check=True, capture_output=True)


def debug_on(lab, routers: list[str]) -> None:
    """Every router logs its updates, with microseconds, to trace.log in its run folder."""
    for r in routers:
        path = lab.store.dir / "frr" / r / LOG
        vtysh(lab, r, "conf t", f"log file {path} debugging", "log timestamp precision 6", "end",
              "debug bgp updates")


def debug_off(lab, routers: list[str]) -> None:
    for r in routers:
        vtysh(lab, r, "no debug bgp updates", "conf t", "no log file", "end")


def _frr_time(line: str) -> float | None:
    m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+)", line)
    return datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S.%f").timestamp() if m else None


def router_marks(lab, router: str, prefix: str, since: float) -> dict[str, float]:
    """The router's first 'rcvd ... withdrawn' and its first and last 'send ... unreachable'
    for prefix after `since` (wall clock)."""
    path = lab.store.dir / "frr" / router / LOG
    marks: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        t = _frr_time(line)
        if t is None or t < since or prefix not in line:
            continue
        if "rcvd UPDATE" in line and "withdrawn" in line:
            marks.setdefault("rcvd", t)
        elif "send UPDATE" in line and "unreachable" in line:
            marks.setdefault("sent first", t)
            marks["sent last"] = t
    return marks


def agent_marks(log_path: Path, since: float) -> dict[str, float]:
    """SIGUSR2 handled, and the withdraw commands sent (the acknowledgement line's time less
    the wait it reports), from the stopping agent's log."""
    marks: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if t < since - 0.01:   # the log has milliseconds only
            continue
        if "agent-leaving" in line:
            marks.setdefault("SIGUSR2 handled", t)
        ack = re.search(r"bgp stop: withdraw, \d+ commands acknowledged by exabgp in ([\d.]+) ms", line)
        if ack:
            marks.setdefault("withdraw sent to exabgp", t - float(ack.group(1)) / 1000)
            marks.setdefault("exabgp acknowledged", t)
    return marks


def report(t0: float, rows: list[tuple[str, float | None]]) -> str:
    """Lines 'mark  +N ms' (from t0, wall clock), in time order; missing marks last."""
    got = sorted((t, name) for name, t in rows if t is not None)
    out = [f"    {name:<52} +{(t - t0) * 1000:7.1f} ms" for t, name in got]
    out += [f"    {name:<52}   (not seen)" for name, t in rows if t is None]
    return "\n".join(out)


def kernel_rows(label: str, wall: list[float | None]) -> list[tuple[str, float | None]]:
    seen = sorted(t for t in wall if t is not None)
    if not seen:
        return [(f"{label}: route gone", None)]
    return [(f"{label}: route gone, first of {len(wall)}", seen[0]),
            (f"{label}: route gone, median", seen[len(seen) // 2]),
            (f"{label}: route gone, last", seen[-1])]


def mono_to_wall(times: list[float | None]) -> list[float | None]:
    offset = time.time() - time.monotonic()
    return [None if t is None else t + offset for t in times]


def cpu_by_kind(namespaces: list[str]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the processes in these namespaces, by
    kind: ExaBGP, its API relay, the agent, the lab's node component, the bench's watchers."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kind = ("relay" if "relay" in cmd else "exabgp" if "exabgp" in cmd else
                    "watcher" if "--watch" in cmd else "node component" if "kubelet" in cmd else
                    "agent" if "calico" in cmd else "other")
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return out


def cpu_report(before: dict[str, float], after: dict[str, float], nodes: int) -> str:
    kinds = sorted(set(before) | set(after))
    parts = [f"{k} {(after.get(k, 0) - before.get(k, 0)) * 1000 / nodes:.0f} ms" for k in kinds
             if after.get(k, 0) - before.get(k, 0) > 0]
    return (f"    CPU per other node during the measurement (until the last kernel), by process: "
            f"{', '.join(parts) or 'none measurable'} (clock ticks of 10 ms)")
