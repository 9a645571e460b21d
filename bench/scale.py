"""A big lab on one machine: 5 racks x 10 nodes by default; printed, never asserted.

Prints how long `lab up` takes (fabric, control plane, `kubectl apply -f deploy/` until the
DaemonSet has rolled out on every node and every BGP session is up), how long until one pod per
node exists and every node routes every pod block, and memory per node: the agent, its ExaBGP
and the lab's node component (RSS from /proc). Usage (root):
    .venv/bin/python bench/scale.py [--racks 5] [--nodes-per-rack 10] [--keep]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calico_lite.lab.lab import Lab  # noqa: E402
from tests.e2e.labutil import lab_name  # noqa: E402


def rss_mib(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--racks", type=int, default=5)
    ap.add_argument("--nodes-per-rack", type=int, default=10)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    lab = Lab(lab_name("sc"))
    try:
        t0 = time.monotonic()
        plan = lab.up(args.racks, args.nodes_per_rack, log=lambda m: print(f"  {m}", flush=True))
        up_s = time.monotonic() - t0
        state = lab.store.load().pids
        per_node = [(rss_mib(lab.agent_pid(n.name)), rss_mib(lab.exabgp_pid(n.name)),
                     rss_mib(state.get(f"kubelet:{n.name}"))) for n in plan.nodes]
        agent, exabgp, kubelet = (list(x) for x in zip(*per_node))
        print(f"lab of {len(plan.nodes)} nodes ({args.racks} racks x {args.nodes_per_rack}):")
        print(f"  lab up (DaemonSet rolled out, every BGP session up): {up_s:.1f} s")
        for what, xs in (("agent", agent), ("ExaBGP", exabgp), ("lab node component", kubelet)):
            print(f"  {what:<19} RSS per node: median {statistics.median(xs):.0f} MiB, max {max(xs):.0f} MiB")
        print(f"  calico-lite per node (agent + ExaBGP): median "
              f"{statistics.median(a + e for a, e in zip(agent, exabgp)):.0f} MiB", flush=True)
        t1 = time.monotonic()
        lab.ns_add("scale", {})
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: lab.pod_add("scale", f"p-{n.name}", n.name, {}, [], []), plan.nodes))
        pods_s = time.monotonic() - t1
        lab.wait_converged(timeout=600)
        print(f"  {len(plan.nodes)} pods, one per node, through the API: {pods_s:.1f} s; every node "
              f"routes every pod block {time.monotonic() - t1:.1f} s after the first pod was asked for")
    finally:
        if not args.keep:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
