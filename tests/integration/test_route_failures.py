"""A route or tunnel the kernel refuses reaches `node status` with the kernel's reason.

One namespace of our own; the routing sync's kernel half (tunnels, plan, routes) runs in it
through a child process, as the agent runs it in the node's namespace.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.nslib import remove_netns_with_prefix, sh, unique_prefix

CHILD = r'''
import json
from bgp.model import LearnedPath, PoolEncap
from bgp.routes import RouteApplier
from calico_lite.cli.node import format_node_status
from calico_lite.routing import RoutingInputs, program_kernel, route_status
from calico_lite.tunnels import TunnelInputs, TunnelSync
# 10.99.5.0/24 is configured as the node's subnet but no interface has it: the kernel refuses
# a gateway there (unreachable). A VTEP MAC that is multicast cannot be a device's address.
inputs = RoutingInputs(
    own=frozenset({"10.244.0.0/26"}),
    learned=frozenset({("10.244.1.0/26", frozenset({LearnedPath("10.99.5.12", "10.99.5.12")}))}),
    tunnels=TunnelInputs(pools=(PoolEncap("10.245.0.0/16", "vxlan", "Always"),), any_pool=True,
                         vxlan_address="10.245.0.1", vxlan_mac="01:00:5e:00:00:01"),
    synced=True)
tun, plan, failed = program_kernel(inputs, TunnelSync("n1", "10.241.0.1"), RouteApplier(),
                                   subnet="10.99.5.0/24", address="10.241.0.1", local_as=64512)
record = {"node": "n1", **route_status(inputs.own, plan, tun, failed)}
print(json.dumps({"record": record, "text": format_node_status(record)}))
'''


@pytest.fixture
def node():
    prefix = unique_prefix("rtf")
    name = f"{prefix}a"
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        sh("ip", "-n", name, "link", "set", "eth1", "up")
        sh("ip", "-n", name, "addr", "add", "10.241.0.1/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        yield name
    finally:
        remove_netns_with_prefix(prefix)


def test_unreachable_next_hop_and_unbuildable_vxlan_device_are_in_node_status(node):
    p = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-c", CHILD],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    failures = {f["what"]: f["reason"] for f in out["record"]["failures"]}
    route = "replace 10.244.1.0/26 via 10.99.5.12 (encap none)"
    assert "unreachable" in failures[route].lower(), failures
    assert failures["vxlan.calico"], failures
    assert f"note: not programmed: {route}: {failures[route]}" in out["text"]
    assert f"note: vxlan: vxlan.calico: {failures['vxlan.calico']}" in out["text"]
    # nothing half-made was left behind
    assert sh("ip", "-n", node, "route", "show", "proto", "88").stdout.strip() == ""
    assert "vxlan.calico" not in sh("ip", "-n", node, "link").stdout
