"""The agent's own inputs from the kernel changed behind its back, under a real agent (its own
etcd, ExaBGP, real routes and three pods wired by the CNI shim):

- routes added by hand with the agent's protocol number (88): one for a block nobody owns, one
  for the node's own block, one for a pod's address (a worse metric than the pod's route).
  The agent removes all three at its next route resync; the pods' own routes are never
  touched, and pod-to-pod traffic keeps working;
- a pod's host interface deleted: the kernel takes its route; the agent reports the pod
  (log line, `calico_lite_workload_interfaces_missing`) and `ipam check` names it
  (missing-interface), while the other pods keep their routes and traffic;
- a pod's host interface renamed: the agent reports it missing the same way.
"""
from __future__ import annotations

import re

from tests.faults.agent_node import AgentNode, agent_node, wait_until
from tests.nslib import sh

PROTO = "88"


def proto88(node: AgentNode) -> dict[str, list[str]]:
    return node.routes("proto", PROTO)


def pod_routes(node: AgentNode) -> dict[str, str]:
    """Pod address -> device, from the routes the CNI made (proto static)."""
    out = sh("ip", "route", "show", "proto", "static", netns=node.netns).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S+) dev (\S+)", out, re.M)}


def reaches(node: AgentNode, src: str, ip: str) -> bool:
    return sh("ping", "-c", "1", "-W", "1", ip, netns=f"{node.prefix}{src}", check=False).returncode == 0


def missing_gauge(node: AgentNode) -> float:
    m = re.search(r"^calico_lite_workload_interfaces_missing (\S+)$", node.metrics(), re.M)
    return float(m.group(1)) if m else -1


def test_hand_made_proto_88_routes_are_removed_and_missing_pod_interfaces_are_reported():
    with agent_node("pb") as node:
        sh("ip", "route", "add", "default", "via", "10.99.1.1", netns=node.netns)   # proxy ARP needs one
        node.start_agent()
        wait_until(lambda: (node.root / "cni.sock").exists(), "the agent's CNI socket")
        ips = {pod: node.add_pod(pod) for pod in ("t", "c", "o")}
        devices = pod_routes(node)
        assert set(devices) == set(ips.values()), devices
        assert reaches(node, "c", ips["o"]) and reaches(node, "t", ips["c"])
        wait_until(lambda: node.cli("ipam", "check", check=False).returncode == 0, "ipam check clean")

        # 1. routes in our protocol that the agent did not make
        own_block = ips["t"].rsplit(".", 1)[0] + ".0/26"
        for route in (["10.250.0.0/26", "via", "10.99.1.1"], [own_block, "via", "10.99.1.1"],
                      [f"{ips['o']}/32", "via", "10.99.1.1", "metric", "5"]):
            sh("ip", "route", "add", *route, "proto", PROTO, netns=node.netns)
        assert len(proto88(node)) == 3
        wait_until(lambda: not proto88(node), "the hand-made proto 88 routes removed")
        assert pod_routes(node) == devices
        assert reaches(node, "c", ips["o"]) and reaches(node, "t", ips["c"])

        # 2. a pod's host interface deleted
        sh("ip", "link", "del", devices[ips["o"]], netns=node.netns)
        wait_until(lambda: f'"host_ifname": "{devices[ips["o"]]}"' in node.log_text()
                   and "workload-interface-missing" in node.log_text(), "the agent reporting it")
        wait_until(lambda: missing_gauge(node) == 1, "the gauge at 1")
        check = node.cli("ipam", "check", check=False)
        assert check.returncode == 3 and "missing-interface" in check.stdout and ips["o"] in check.stdout, check.stdout
        assert ips["o"] not in pod_routes(node) and not proto88(node)
        assert reaches(node, "c", ips["t"]) and reaches(node, "t", ips["c"])

        # 3. a pod's host interface renamed
        dev = devices[ips["c"]]
        sh("ip", "link", "set", dev, "down", netns=node.netns)
        sh("ip", "link", "set", dev, "name", "pbrenamed", netns=node.netns)
        wait_until(lambda: missing_gauge(node) == 2, "the renamed interface reported")
        assert f'"host_ifname": "{dev}"' in node.log_text()
        assert node.agent_alive() and "Traceback" not in node.log_text()
