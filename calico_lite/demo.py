"""`make demo`: bring up the lab (a Kubernetes cluster in network namespaces), put one pod on
each node through the API server, show that they all connect.

It leaves the lab running and says how to look around, how to try a NetworkPolicy with
kubectl, and how to take it down.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from calico_lite.cli.lab import format_lab_status, format_probe
from calico_lite.lab.lab import Lab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="calico-lite-demo")
    ap.add_argument("--name", default="lab")
    ap.add_argument("--racks", type=int, default=2)
    ap.add_argument("--nodes-per-rack", type=int, default=2)
    ap.add_argument("--bgp", default="tor")
    args = ap.parse_args(argv)
    lab = Lab(args.name)
    print(f"== bringing up lab {args.name!r}: {args.racks} racks x {args.nodes_per_rack} nodes, "
          f"ToR routers (FRR), etcd, one calico-lite agent + ExaBGP per node, Kubernetes "
          f"(kube-apiserver, controller-manager, scheduler, kube-sync, a node component per node)")
    plan = lab.up(args.racks, args.nodes_per_rack, args.bgp, log=lambda m: print("   " + m))
    print("== one pod per node: created through the API server, wired by the CNI plugin (shim -> agent)")
    for node in plan.nodes:
        t = time.monotonic()
        ip = lab.pod_add("demo", f"pod-{node.name}", node.name, {"app": "demo", "node": node.name},
                         ["tcp:80,udp:80"], [])
        print(f"   demo/pod-{node.name:<6} on {node.name}: {ip}  ({(time.monotonic() - t) * 1000:.0f} ms)")
    t = time.monotonic()
    lab.wait_converged()
    print(f"   every node has a route to every pod block after {(time.monotonic() - t) * 1000:.0f} ms")
    print()
    print(format_lab_status(lab.status()))
    for what in (["get", "nodes", "-o", "wide"], ["get", "ds,deploy", "-n", "kube-system"],
                 ["get", "pods", "-A", "-o", "wide"]):
        print(f"\n$ calico-lite lab kubectl -- {' '.join(what)}", flush=True)
        subprocess.run(lab.kubectl_argv(what), check=True)
    print("\n== pod-to-pod TCP port 80, every pair")
    rows = lab.probe(80, "tcp")
    print(format_probe(rows))
    ok = all(r["connected"] for r in rows)
    first, second = plan.nodes[0].name, plan.nodes[-1].name
    target = next(r["to"] for r in rows if r["to"].endswith(second))
    ip = next(p["ip"] for p in lab.pods() if f"{p['namespace']}/{p['name']}" == target)
    cli = ".venv/bin/calico-lite"
    print(f"\nLab left running. Look around: `{cli} lab status`, `{cli} node status --lab {args.name}`, "
          f"`{cli} lab exec demo/pod-{first} -- ping -c1 {ip}`, `{cli} lab kubectl -- get pods -A` "
          f"(or `{cli} lab shell` for a shell where plain kubectl works).\n"
          f"Try a policy: `{cli} lab kubectl -- apply -f docs/examples/demo-policy.yaml`, then "
          f"`{cli} lab wait --policy` and `{cli} lab probe`: only {first} still reaches {second}.\n"
          f"Take it down: `make lab-down`")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
