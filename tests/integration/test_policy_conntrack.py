"""policy.conntrack against the real conntrack table of a namespace made for the test."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.nslib import remove_netns_with_prefix, unique_prefix

SCRIPT = r"""
import socket, sys
sys.path.insert(0, %(repo)r)
from pyroute2 import Conntrack
from policy.conntrack import forget_udp_flows
for dst in ("10.250.0.2", "10.250.0.3"):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (dst, 9999))
def flows():
    with Conntrack() as ct:
        return sorted((e.tuple_orig.proto, e.tuple_orig.daddr) for e in ct.dump_entries())
before = flows()
n = forget_udp_flows({"10.250.0.2"})
print(repr((before, n, flows())))
"""


@pytest.fixture
def netns():
    prefix = unique_prefix("ctk")
    name = f"{prefix}n"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", "10.250.0.1/24", "dev", "lo"], check=True)
        rules = ("table inet t {\n chain o {\n type filter hook output priority 0;\n"
                 " ct state established accept\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=rules, text=True,
                       check=True)
        yield name
    finally:
        remove_netns_with_prefix(prefix)


def test_only_udp_flows_of_the_given_pods_are_forgotten(netns):
    import pathlib
    repo = str(pathlib.Path(__file__).resolve().parents[2])
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT % {"repo": repo}],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    before, n, after = eval(p.stdout)  # noqa: S307 - our own script's repr output
    assert (17, "10.250.0.2") in before and (17, "10.250.0.3") in before
    assert n == 1
    assert (17, "10.250.0.2") not in after and (17, "10.250.0.3") in after
