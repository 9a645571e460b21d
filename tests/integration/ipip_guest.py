"""Runs INSIDE the qemu guest (a kernel with ipip): two nodes on different subnets, a router
between them that knows nothing of pods, one pod per node; the nodes' tunl0 and routes come
from bgp.tunnels.IpipTunnel and bgp.routes (desired_routes + RouteApplier), exactly the
code the agent runs. Writes {check: [ok, detail]} as JSON to argv[1]; the host test asserts.

    python -m tests.integration.ipip_guest RESULT.json PREFIX
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import traceback

from bgp.model import LearnedPath, Route
from bgp.routes import RouteApplier, desired_routes
from bgp.tunnels import IpipTunnel
from plugin.netns import run_in_netns

POOL = ("10.250.0.0/16", "ipip", "CrossSubnet")
NODES = {  # name: (address, subnet, gateway, block, tunnel address, pod)
    "n1": ("10.241.1.11", "10.241.1.0/24", "10.241.1.1", "10.250.1.0/26", "10.250.1.1", "10.250.1.5"),
    "n2": ("10.241.2.11", "10.241.2.0/24", "10.241.2.1", "10.250.2.0/26", "10.250.2.1", "10.250.2.5"),
}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p


def ns(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


def build(prefix: str) -> None:
    rt = ns(prefix, "rt")
    for n in ("rt", "n1", "n2", "p1", "p2"):
        sh("ip", "netns", "add", ns(prefix, n))
        sh("ip", "-n", ns(prefix, n), "link", "set", "lo", "up")
    sh("ip", "netns", "exec", rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for i, (name, (addr, subnet, gw, block, tun, pod)) in enumerate(NODES.items(), start=1):
        node, podns = ns(prefix, name), ns(prefix, f"p{i}")
        sh("ip", "link", "add", "eth0", "netns", node, "type", "veth", "peer", f"r{i}", "netns", rt)
        sh("ip", "-n", rt, "addr", "add", f"{gw}/24", "dev", f"r{i}")
        sh("ip", "-n", rt, "link", "set", f"r{i}", "up")
        sh("ip", "-n", node, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", node, "link", "set", "eth0", "up")
        sh("ip", "-n", node, "route", "add", "default", "via", gw)
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # the pod, wired Calico-style (a /32, gateway 169.254.1.1) with the IPIP pod MTU
        sh("ip", "link", "add", "eth0", "netns", podns, "mtu", "1480", "type", "veth",
           "peer", "cali1", "netns", node)
        sh("ip", "-n", podns, "addr", "add", f"{pod}/32", "dev", "eth0")
        sh("ip", "-n", podns, "link", "set", "eth0", "up")
        sh("ip", "-n", podns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        sh("ip", "-n", podns, "route", "add", "default", "via", "169.254.1.1")
        sh("ip", "-n", node, "addr", "add", "169.254.1.1/32", "dev", "cali1")
        sh("ip", "-n", node, "link", "set", "cali1", "up")
        sh("ip", "-n", node, "route", "add", f"{pod}/32", "dev", "cali1", "scope", "link")


def node_agent(name: str) -> dict:
    """What the routing controller does on this node, in the node's namespace (a thread)."""
    addr, subnet, _, block, tun, _ = NODES[name]
    peer = next(n for n in NODES if n != name)
    paddr, _, _, pblock, _, _ = NODES[peer]
    ipip = IpipTunnel()
    supported = ("none", "ipip") if ipip.available() else ("none",)
    tunnel = ipip.ensure(tun)
    again = ipip.ensure(tun)
    plan = desired_routes({pblock: {LearnedPath(paddr, paddr, (64512,))}}, own_prefixes={block},
                          local_subnets=[subnet], local_addresses=[addr], pools=[POOL],
                          supported_encaps=supported)
    applier = RouteApplier()
    first, second = applier.apply(plan.routes), applier.apply(plan.routes)
    return {"supported": supported, "tunnel_changes": tunnel.added, "tunnel_again": again.changed,
            "plan": [r.__dict__ for r in plan.routes], "skipped": [s.__dict__ for s in plan.skipped],
            "added": first.added, "errors": first.errors + second.errors,
            "second_changed": second.changed,
            "current": {p: r.__dict__ for p, r in applier.current_routes().items()},
            "expected": Route(pblock, (paddr,), "ipip").__dict__}


def ping(netns: str, dst: str, *args: str) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", netns, "ping", "-n", "-W", "2", *args, dst, check=False)


def tx_packets(netns: str, dev: str) -> int:
    link = json.loads(sh("ip", "-n", netns, "-j", "-s", "link", "show", "dev", dev).stdout)[0]
    return link["stats64"]["tx"]["packets"]


def tcp_transfer(prefix: str, size: int) -> tuple[str, str]:
    """Send size bytes from pod 1 to pod 2 over TCP; (sha256 sent, sha256 received)."""
    payload = bytes(range(256)) * (size // 256)
    ready, got = threading.Event(), {}

    def serve() -> None:
        s = socket.socket()
        s.bind((NODES["n2"][5], 9000))
        s.listen()
        ready.set()
        s.settimeout(20)
        c, _ = s.accept()
        h = hashlib.sha256()
        while data := c.recv(65536):
            h.update(data)
        got["digest"] = h.hexdigest()
        c.close()
        s.close()

    def send() -> None:
        ready.wait(10)
        with socket.create_connection((NODES["n2"][5], 9000), timeout=20) as c:
            c.sendall(payload)

    server = threading.Thread(target=lambda: run_in_netns(f"/run/netns/{prefix}p2", serve))
    server.start()
    run_in_netns(f"/run/netns/{prefix}p1", send)
    server.join(30)
    return hashlib.sha256(payload).hexdigest(), got.get("digest", "")


def main(result_path: str, prefix: str) -> None:
    checks: dict[str, list] = {}

    def check(name: str, ok: bool, detail=None) -> None:
        checks[name] = [bool(ok), detail]

    try:
        build(prefix)
        p1, p2 = ns(prefix, "p1"), ns(prefix, "p2")
        pod2 = NODES["n2"][5]
        before = ping(p1, pod2, "-c", "1")
        check("control: no route before the applier runs", before.returncode != 0, before.stdout)
        agents = {n: run_in_netns(f"/run/netns/{ns(prefix, n)}", lambda n=n: node_agent(n))
                  for n in NODES}
        for n, a in agents.items():
            check(f"{n}: kernel has ipip", a["supported"] == ["none", "ipip"] or
                  a["supported"] == ("none", "ipip"), a["supported"])
            check(f"{n}: plan is one ipip route via the peer node", a["plan"] == [a["expected"]], a)
            check(f"{n}: applied once, then nothing to do", len(a["added"]) == 1
                  and not a["second_changed"] and not a["errors"] and not a["tunnel_again"], a)
            check(f"{n}: current routes read back as ipip", list(a["current"].values()) == [a["expected"]],
                  a["current"])
            node = ns(prefix, n)
            link = json.loads(sh("ip", "-n", node, "-j", "-d", "link", "show", "dev", "tunl0").stdout)[0]
            addrs = json.loads(sh("ip", "-n", node, "-j", "-4", "addr", "show", "dev", "tunl0").stdout)[0]
            check(f"{n}: tunl0 up, mtu 1480, tunnel address",
                  "UP" in link["flags"] and link["mtu"] == 1480
                  and [x["local"] + "/" + str(x["prefixlen"]) for x in addrs["addr_info"]]
                  == [NODES[n][4] + "/32"], {"link": link, "addr": addrs})
            check(f"{n}: tunl0 pmtudisc (info)", True,
                  "nopmtudisc" if link["linkinfo"]["info_data"].get("pmtudisc") is False else
                  sh("ip", "-n", node, "-d", "link", "show", "tunl0").stdout)
            routes = json.loads(sh("ip", "-n", node, "-j", "route", "show", "proto", "88").stdout)
            check(f"{n}: kernel route dev tunl0 onlink proto 88",
                  len(routes) == 1 and routes[0]["dev"] == "tunl0" and "onlink" in routes[0]["flags"],
                  routes)
        rt_routes = sh("ip", "-n", ns(prefix, "rt"), "route").stdout
        check("router knows no pod route (only the tunnel can carry pod traffic)",
              "10.250." not in rt_routes, rt_routes)
        n1 = ns(prefix, "n1")
        tx0 = tx_packets(n1, "tunl0")
        pings = ping(p1, pod2, "-c", "5", "-i", "0.2")
        check("pod 1 pings pod 2 across subnets", pings.returncode == 0, pings.stdout)
        tx = tx_packets(n1, "tunl0") - tx0
        check("the pings left node 1 through tunl0", tx >= 5, tx)
        back = ping(p2, NODES["n1"][5], "-c", "2", "-i", "0.2")
        check("pod 2 pings pod 1", back.returncode == 0, back.stdout)
        node_to_pod = ping(n1, pod2, "-c", "2", "-i", "0.2")
        check("node 1 (from its tunnel address) pings pod 2", node_to_pod.returncode == 0,
              node_to_pod.stdout)
        full = ping(p1, pod2, "-c", "2", "-i", "0.2", "-M", "do", "-s", "1452")
        check("a full-MTU (1480) packet with DF crosses the tunnel", full.returncode == 0,
              full.stdout + full.stderr)
        over = ping(p1, pod2, "-c", "1", "-M", "do", "-s", "1453")
        check("one byte more fails at the sender, visibly",
              over.returncode != 0 and re.search(r"message too long, mtu=1480", over.stdout + over.stderr),
              over.stdout + over.stderr)
        sent, received = tcp_transfer(prefix, 4 << 20)
        check("TCP: 4 MiB pod to pod arrive intact", sent == received, [sent, received])
    except Exception:
        check("guest script ran to the end", False, traceback.format_exc())
    with open(result_path, "w") as f:
        json.dump(checks, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
