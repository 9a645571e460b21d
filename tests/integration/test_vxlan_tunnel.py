"""bgp.tunnels and encapsulated routes on the real kernel, in namespaces of our own.

Two "nodes" on one veth; each runs the appliers in its namespace through a child process
(the appliers work on the CURRENT namespace, as the agent does).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.nslib import remove_netns_with_prefix, sh, unique_prefix

CHILD = r'''
import json, sys
from bgp.model import RemoteNode, Route
from bgp.routes import RouteApplier
from bgp.tunnels import EncapUnavailable, IpipTunnel, VxlanTunnel
op, args = sys.argv[1], json.loads(sys.argv[2])
v = VxlanTunnel()
out = {}
if op == "ensure":
    out["mac"] = v.ensure(args["local"], args["vtep"], args.get("mac"))
elif op == "peers":
    r = v.sync_peers([RemoteNode(**p) for p in args["remotes"]])
    out = {"added": r.added, "removed": r.removed, "errors": r.errors, "now": v.peers()}
elif op == "routes":
    r = RouteApplier().apply([Route(p, tuple(h), e) for p, h, e in args["routes"]])
    out = {"added": r.added, "replaced": r.replaced, "deleted": r.deleted, "errors": r.errors,
           "current": {p: [list(x.next_hops), x.encap] for p, x in RouteApplier().current_routes().items()}}
elif op == "ipip":
    try:
        IpipTunnel().ensure("10.250.0.1")
        out["error"] = ""
    except EncapUnavailable as e:
        out["error"] = str(e)
    out["available"] = IpipTunnel().available()
elif op == "remove":
    out["removed"] = v.remove()
print(json.dumps(out))
'''


@pytest.fixture
def nodes():
    prefix = unique_prefix("enc")
    a, b = f"{prefix}a", f"{prefix}b"
    try:
        for n in (a, b):
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "eth0", "netns", b)
        for n, addr in ((a, "10.241.0.1"), (b, "10.241.0.2")):
            sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", "eth0", "up")
        yield a, b
    finally:
        remove_netns_with_prefix(prefix)


def run(netns: str, op: str, **args) -> dict:
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, op, json.dumps(args)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def link(netns: str, dev: str) -> dict:
    return json.loads(sh("ip", "-n", netns, "-j", "-d", "link", "show", "dev", dev).stdout)[0]


def test_vxlan_tunnel_carries_pod_traffic_and_every_sync_is_a_diff(nodes):
    a, b = nodes
    mac_a = run(a, "ensure", local="10.241.0.1", vtep="10.250.1.0", mac="66:00:00:00:00:0a")["mac"]
    mac_b = run(b, "ensure", local="10.241.0.2", vtep="10.250.2.0")["mac"]
    assert mac_a == "66:00:00:00:00:0a"
    idx = link(a, "vxlan.calico")["ifindex"]
    assert run(a, "ensure", local="10.241.0.1", vtep="10.250.1.0", mac=mac_a)["mac"] == mac_a
    assert link(a, "vxlan.calico")["ifindex"] == idx, "an unchanged device must not be rebuilt"

    # a foreign neighbour entry on eth0 must survive every sync
    sh("ip", "-n", a, "neigh", "add", "10.241.0.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0",
       "nud", "permanent")
    r = run(a, "peers", remotes=[{"address": "10.241.0.2", "vtep_ip": "10.250.2.0", "vtep_mac": mac_b}])
    assert r["errors"] == [] and len(r["added"]) == 2
    assert r["now"] == [{"10.250.2.0": mac_b}, {mac_b: "10.241.0.2"}]
    assert run(a, "peers", remotes=[{"address": "10.241.0.2", "vtep_ip": "10.250.2.0",
                                     "vtep_mac": mac_b}])["added"] == []
    run(b, "peers", remotes=[{"address": "10.241.0.1", "vtep_ip": "10.250.1.0", "vtep_mac": mac_a}])

    for ns, block, vtep in ((a, "10.250.2.0/26", "10.250.2.0"), (b, "10.250.1.0/26", "10.250.1.0")):
        r = run(ns, "routes", routes=[[block, [vtep], "vxlan"]])
        assert r["added"] == [block] and r["current"] == {block: [[vtep], "vxlan"]}
    route = json.loads(sh("ip", "-n", a, "-j", "route", "show", "proto", "88").stdout)[0]
    assert (route["dev"], route["gateway"], "onlink" in route["flags"]) == ("vxlan.calico", "10.250.2.0", True)

    # traffic from a's tunnel address to b's crosses the tunnel (b answers via its vxlan route)
    tx = lambda: json.loads(sh("ip", "-n", a, "-j", "-s", "link", "show", "dev", "vxlan.calico")  # noqa: E731
                            .stdout)[0]["stats64"]["tx"]["packets"]
    before = tx()
    p = sh("ip", "netns", "exec", a, "ping", "-c", "3", "-i", "0.05", "-W", "2", "10.250.2.0", check=False)
    assert p.returncode == 0, p.stdout
    assert tx() - before >= 3

    # a node that changed its MAC is replaced; a node that left is removed; eth0 untouched
    r = run(a, "peers", remotes=[{"address": "10.241.0.2", "vtep_ip": "10.250.2.0",
                                  "vtep_mac": "66:00:00:00:00:0b"}])
    assert r["now"] == [{"10.250.2.0": "66:00:00:00:00:0b"}, {"66:00:00:00:00:0b": "10.241.0.2"}]
    r = run(a, "peers", remotes=[])
    assert r["now"] == [{}, {}] and r["errors"] == []
    assert "10.241.0.9" in sh("ip", "-n", a, "neigh", "show", "dev", "eth0").stdout

    # plain -> vxlan -> plain for one prefix is a replace each time
    r = run(a, "routes", routes=[["10.250.2.0/26", ["10.241.0.2"], "none"]])
    assert r["replaced"] == ["10.250.2.0/26"] and r["current"] == {"10.250.2.0/26": [["10.241.0.2"], "none"]}
    assert run(a, "remove")["removed"] is True
    assert "vxlan.calico" not in sh("ip", "-n", a, "link").stdout


def test_route_via_a_missing_tunnel_device_is_an_error_not_a_plain_route(nodes):
    a, _ = nodes
    r = run(a, "routes", routes=[["10.250.2.0/26", ["10.250.2.0"], "vxlan"]])
    assert r["added"] == [] and "vxlan.calico does not exist" in r["errors"][0]
    assert r["current"] == {}


def test_ipip_on_this_kernel_is_reported_unavailable(nodes):
    a, _ = nodes
    if "tunl0" in sh("ip", "-n", a, "link").stdout:
        pytest.skip("this kernel has ipip (the qemu test covers it either way)")
    r = run(a, "ipip")
    assert r["available"] is False
    assert r["error"].startswith("IPIP unavailable: this kernel has no ipip support")
