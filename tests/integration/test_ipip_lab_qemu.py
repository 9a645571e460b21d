"""IPIP end to end: a whole lab (etcd with TLS, FRR routers, the agents with ExaBGP in a mesh)
with an IPIP CrossSubnet pool, inside a qemu guest whose kernel has ipip (this machine's has
none; see qemu_vm). tests/integration/ipip_lab_guest.py runs `lab up --bgp mesh --encap ipip
--racks 2 --nodes-per-rack 2 --no-kubernetes` in the guest and probes every pod pair: across
racks through tunl0 (counters on both ends, routes via tunl0 onlink), within a rack plainly.

One boot per run (TCG emulates the CPU: the lab takes a few minutes); the durations of its
phases are printed.
"""
from __future__ import annotations

import json
import sys
import time

import pytest

from tests.integration.qemu_vm import MODULES, run_in_guest
from tests.nslib import unique_prefix

pytestmark = pytest.mark.slow

# what the lab needs beyond the IPIP stack: the ToRs' bridge, nftables for the agents'
# policy and NAT tables (the Debian kernel has them as modules; this machine's has them built
# in). crc32c_generic first: libcrc32c (nf_tables needs it) names it only as a soft dependency
LAB_MODULES = (*MODULES, "bridge", "crc32c_generic", "nf_tables", "nf_conntrack",
               "nf_conntrack_netlink", "nf_nat", "nft_ct", "nft_chain_nat", "nft_nat", "nft_masq", "nft_reject", "nft_reject_inet",
               "nft_reject_ipv4", "nft_fib", "nft_fib_inet", "nft_fib_ipv4", "nft_limit",
               "nft_log", "nf_log_syslog")
NODES = ("r1n1", "r1n2", "r2n1", "r2n2")


def expected_checks() -> set[str]:
    out = {f"every pod pair connects on tcp:80 ({len(NODES) * (len(NODES) - 1)} pairs)",
           "lab down removed every namespace"}
    for a in NODES:
        out |= {f"{a}: kernel has ipip (tunl0 present)", f"{a}: tunl0 up"}
        for b in NODES:
            if a == b:
                continue
            cross = a[:2] != b[:2]
            out.add(f"{a} -> pod on {b}: route " + ("via tunl0 onlink (across racks)" if cross
                                                    else "via eth0 (same rack)"))
            out.add(f"pod {a} pings pod {b}")
            out.add(f"pod {a} -> pod {b} " + (
                "through the tunnel (tunl0 tx on the sender, rx on the receiver)" if cross
                else "routed plainly (tunl0 counters unchanged)"))
    return out


@pytest.fixture(scope="module")
def guest_result(tmp_path_factory):
    work = tmp_path_factory.mktemp("tipiplab-qemu")
    result = work / "result.json"
    t0 = time.monotonic()
    console = run_in_guest([sys.executable, "-m", "tests.integration.ipip_lab_guest", str(result),
                            unique_prefix("ipl")], work, timeout=1500, memory_mb=3072, cpus=2,
                           modules=LAB_MODULES)
    took = time.monotonic() - t0
    log = (work / "guest.log").read_text() if (work / "guest.log").exists() else ""
    assert result.exists(), f"the guest wrote no result\nconsole:\n{console[-3000:]}\nlog:\n{log}"
    data = json.loads(result.read_text())
    print(f"\nIPIP lab in qemu: {took:.0f}s in all (boot to power-off); in the guest: "
          + ", ".join(f"{k} {v}s" for k, v in data["timings"].items()))
    return data["checks"], log


def test_ipip_lab_carries_cross_rack_pod_traffic_through_the_tunnel(guest_result):
    checks, log = guest_result
    failed = {name: detail for name, (ok, detail) in checks.items() if not ok}
    logs = checks.get("logs of the lab (for the failure above)", [True, {}])[1]
    assert not failed, (json.dumps(failed, indent=1, default=str) + "\n" + log[-3000:] + "\n"
                        + "\n".join(f"--- {k}\n{v}" for k, v in logs.items()))
    assert expected_checks() <= set(checks), f"missing checks: {expected_checks() - set(checks)}"
