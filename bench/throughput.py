"""Pod-to-pod TCP across racks vs a direct veth pair, in the same run; printed, never asserted.

    pods      iperf3 from a pod on r1n1 to a pod on r2n1 of a lab (--encap none: routed by
              the fabric; --encap vxlan: the mesh lab's VXLAN tunnel): pod veth, node, ToR
              bridge, ToR, spine, ToR, node, pod veth
    same node iperf3 between two pods on r1n1: pod veth, the node's routing and policy, pod
              veth (the part of the path that is calico-lite's on any fabric)
    baseline  iperf3 between two namespaces joined by one veth pair (the fastest path the
              kernel offers between two namespaces), made by this bench and removed after

Both run with the same iperf3 options, one after the other, `--repeat` times alternately; the
median of each is printed with the ratio (target: >= 90 %). Usage (root):
    .venv/bin/python bench/throughput.py [--seconds 5] [--repeat 3] [--encap none|vxlan]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import lab_cli  # noqa: E402
from tests.e2e.labutil import lab_name  # noqa: E402
from tests.nslib import remove_netns_with_prefix, unique_prefix  # noqa: E402


def iperf(server_ns: str, client_ns: str, server_ip: str, seconds: int) -> float:
    """Gbit/s received, one TCP stream, server and client each in its namespace."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", "5201",
                              "-t", str(seconds), "-J"], capture_output=True, text=True, check=True).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def veth_pair(prefix: str) -> tuple[str, str]:
    a, b = f"{prefix}a", f"{prefix}b"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                    "netns", b], check=True)
    for ns, ip in ((a, "10.251.0.1"), (b, "10.251.0.2")):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    return a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--encap", choices=["none", "vxlan"], default="none")
    args = ap.parse_args()
    lab, prefix = lab_name("tp"), unique_prefix("tp")
    bgp = ["--bgp", "mesh", "--encap", "vxlan"] if args.encap == "vxlan" else []
    try:
        lab_cli("lab", "up", "--name", lab, "--racks", "2", "--nodes-per-rack", "1", *bgp, timeout=300)
        for pod, node in (("tp-r1n1", "r1n1"), ("tp-r2n1", "r2n1"), ("tq-r1n1", "r1n1")):
            lab_cli("lab", "pod", "add", f"default/{pod}", "--node", node, "--name", lab)
        status = json.loads(lab_cli("lab", "status", "--name", lab, "--json").stdout)
        ip = {p["name"]: p["ip"] for p in status["pods"]}
        ns = {name: f"{lab}-pod-default-{name}" for name in ip}
        a, b = veth_pair(prefix)
        runs: dict[str, list[float]] = {"cross": [], "same": [], "veth": []}
        for _ in range(args.repeat):   # alternating, so drift on a shared machine hits all three
            runs["cross"].append(iperf(ns["tp-r2n1"], ns["tp-r1n1"], ip["tp-r2n1"], args.seconds))
            runs["same"].append(iperf(ns["tq-r1n1"], ns["tp-r1n1"], ip["tq-r1n1"], args.seconds))
            runs["veth"].append(iperf(b, a, "10.251.0.2", args.seconds))
        med = {k: statistics.median(v) for k, v in runs.items()}
        mode = "VXLAN" if args.encap == "vxlan" else "routed"
        for key, what in (("cross", f"pod-to-pod across racks ({mode})"), ("same", "pod-to-pod, same node"),
                          ("veth", "direct veth pair (baseline)")):
            print(f"{what:<36} {med[key]:6.2f} Gbit/s  runs: {', '.join(f'{x:.2f}' for x in runs[key])}"
                  + (f"  = {med[key] / med['veth'] * 100:.0f} % of the veth pair" if key != "veth" else ""))
        print("target: across racks >= 90 % of the veth pair")
    finally:
        lab_cli("lab", "down", "--name", lab, check=False)
        remove_netns_with_prefix(prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
