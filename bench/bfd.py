"""A silent ToR-facing failure, with BFD 100 ms x 3 and with the BGP hold time alone (3 s),
in the same lab run; printed, never asserted.

The target node's uplink falls silent: nftables in its namespace drops everything in and out
of eth0, the link stays up (a dead NIC queue, a wedged node, a one-way fibre: nothing a
kernel sees). Measured from the moment the drop rules are in:

    fabric    the target's block gone from every other node's kernel (its ToR withdrew it:
              the ToR's bfdd, or its hold timer)
    target    the routes the target learned from its ToR gone from its own kernel (our BFD
              runner tearing the session down, or ExaBGP's hold timer)

projectcalico/calico#4607 is the first case with default timers: routers kept a dead node's
routes for minutes. Lab: `lab up --bfd --no-kubernetes` (ToRs with a bfdd profile of
100 ms x 3, the nodes' ToR peers with BFD on), 2 racks x 2 nodes, hold time set to 3 s; the
second round switches BFD off on the target's peer (`bgp peer set tor-rack1 --bfd off`).

    .venv/bin/python bench/bfd.py [--name bfdbench] [--rounds 3] [--keep]

Each node's namespace gets bench/bgp_convergence.py's route watcher (netlink every 2 ms).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bgp_convergence as conv  # noqa: E402

SILENT = "bfdbench"


def silence(netns: str, on: bool) -> None:
    """Everything in and out of eth0 dropped (the link stays up), or not any more."""
    if not on:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", SILENT],
                       check=True, capture_output=True)
        return
    rules = "".join(f" chain {hook} {{ type filter hook {hook} priority -300; {drops} }}\n"
                    for hook, drops in (("input", "iifname eth0 drop;"),
                                        ("output", "oifname eth0 drop;"),
                                        ("forward", "iifname eth0 drop; oifname eth0 drop;")))
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], check=True,
                   capture_output=True, text=True, input=f"table inet {SILENT} {{\n{rules}}}\n")


def status(lab: str, node: str) -> dict:
    return json.loads(conv.cli("node", "status", node, "--lab", lab, "--json"))[0]


def wait(check, what: str, timeout: float = 60.0) -> None:
    if conv.poll_until(check, timeout) is None:
        raise RuntimeError(f"not reached in {timeout} s: {what}")


def one_round(lab: str, target, observers, own: conv.Watcher, block: str, other_block: str,
              bfd: bool) -> tuple[float | None, float | None]:
    """Silence the target; (fabric, target) seconds until the routes are gone; restore."""
    watchers = observers + [own]
    assert all(t is not None for t in conv.all_of(observers, "present", block, 60)), "not routed"
    own.ask("present", other_block, 60)
    assert own.answer() is not None, "the target lacks the ToR's routes"
    if bfd:
        wait(lambda: all(b["state"] == "Up" for b in status(lab, target.name)["bfd"]),
             "BFD Up on the target")
    for w in observers:
        w.ask("absent", block, 60)
    own.ask("absent", other_block, 60)
    t0 = time.monotonic()
    silence(target.netns, True)
    times = [w.answer() for w in watchers]
    silence(target.netns, False)
    fabric = None if None in times[:-1] else max(times[:-1]) - t0
    mine = None if times[-1] is None else times[-1] - t0
    for w in watchers:   # back before the next round
        w.ask("present", other_block if w is own else block, 60)
    assert all(w.answer() is not None for w in watchers), "routes not back after the silence"
    return fabric, mine


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="bfdbench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = ap.parse_args()
    from calico_lite.lab.plan import make_plan
    plan = make_plan(args.name, 2, 2, "tor", bfd=True)
    target, other = plan.nodes[0], plan.nodes[-1]        # r1n1 (rack 1), r2n2 (rack 2)
    conv.cli("lab", "down", "--name", args.name)
    conv.cli("lab", "up", "--name", args.name, "--racks", "2", "--nodes-per-rack", "2", "--bfd",
             "--no-kubernetes", "--insecure-etcd")
    watchers: list[conv.Watcher] = []
    results: dict[str, list] = {}
    try:
        for node in (target, other):
            conv.cli("lab", "pod", "add", f"default/bench-{node.name}", "--node", node.name,
                     "--name", args.name, "--serve", "udp:80")
        block, other_block = (status(args.name, n.name)["blocks"][0] for n in (target, other))
        conv.cli("bgp", "config", "set", "--hold-time", "3", "--lab", args.name)
        from calico_lite.lab.lab import Lab
        conv._wait_hold(Lab(args.name), "tor1", target.address, 3)
        observers = [conv.Watcher(n.netns) for n in plan.nodes if n is not target]
        own = conv.Watcher(target.netns)
        watchers = observers + [own]
        print(f"lab {args.name}: target {target.name} ({block}); it learns {other_block} "
              f"from tor1; BGP hold time 3 s")
        for bfd in (True, False):
            if not bfd:
                conv.cli("bgp", "peer", "set", "tor-rack1", "--bfd", "off", "--lab", args.name)
                wait(lambda: not status(args.name, target.name)["bfd"], "BFD off on the target")
            label = "BFD 100 ms x 3" if bfd else "hold time 3 s, no BFD"
            for _ in range(args.rounds):
                fabric, mine = one_round(args.name, target, observers, own, block, other_block,
                                         bfd)
                results.setdefault(f"{label}: target's block gone from every other node",
                                   []).append(fabric)
                results.setdefault(f"{label}: ToR's routes gone from the target", []).append(mine)
        width = max(len(k) for k in results)
        print(f"{'silent uplink (link up), measured from the drop':<{width}}  median   runs (s)")
        for k, v in results.items():
            ok = [x for x in v if x is not None]
            med = f"{statistics.median(ok):.3f}" if ok else "-"
            runs = ", ".join("NOT REACHED" if x is None else f"{x:.3f}" for x in v)
            print(f"{k:<{width}}  {med:>6}   {runs}")
    finally:
        for w in watchers:
            w.close()
        if not args.keep:
            conv.cli("lab", "down", "--name", args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
