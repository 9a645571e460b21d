"""IPIP for real: this machine's kernel has no ipip, so the test boots Debian's kernel under
qemu (TCG) and runs tests/integration/ipip_guest.py inside it with the host's Python over 9p.

The guest builds two node namespaces on different subnets with a router between them that
has no pod routes, sets up tunl0 and the routes with bgp.tunnels / bgp.routes, and checks
pod-to-pod ping and TCP through the tunnel. All namespaces live and die inside the guest.
"""
from __future__ import annotations

import json
import sys

import pytest

from tests.integration.qemu_vm import run_in_guest
from tests.nslib import unique_prefix

pytestmark = pytest.mark.slow

EXPECTED = {
    "control: no route before the applier runs",
    "n1: kernel has ipip", "n2: kernel has ipip",
    "n1: plan is one ipip route via the peer node", "n2: plan is one ipip route via the peer node",
    "n1: applied once, then nothing to do", "n2: applied once, then nothing to do",
    "n1: kernel route dev tunl0 onlink proto 88", "n2: kernel route dev tunl0 onlink proto 88",
    "n1: tunl0 up, mtu 1480, tunnel address", "n2: tunl0 up, mtu 1480, tunnel address",
    "router knows no pod route (only the tunnel can carry pod traffic)",
    "pod 1 pings pod 2 across subnets", "the pings left node 1 through tunl0", "pod 2 pings pod 1",
    "node 1 (from its tunnel address) pings pod 2",
    "a full-MTU (1480) packet with DF crosses the tunnel", "one byte more fails at the sender, visibly",
    "TCP: 4 MiB pod to pod arrive intact",
}


@pytest.fixture(scope="module")
def guest_result(tmp_path_factory):
    work = tmp_path_factory.mktemp("tenc-qemu")
    result = work / "result.json"
    console = run_in_guest([sys.executable, "-m", "tests.integration.ipip_guest", str(result),
                            unique_prefix("enc")], work, timeout=150)
    log = (work / "guest.log").read_text() if (work / "guest.log").exists() else ""
    assert result.exists(), f"the guest wrote no result\nconsole:\n{console[-3000:]}\nlog:\n{log}"
    return json.loads(result.read_text()), console, log


def test_every_ipip_check_in_the_guest_passed(guest_result):
    checks, console, log = guest_result
    failed = {name: detail for name, (ok, detail) in checks.items() if not ok}
    assert not failed, json.dumps(failed, indent=1) + "\n" + log[-2000:]
    assert EXPECTED <= set(checks), f"missing checks: {EXPECTED - set(checks)}"
