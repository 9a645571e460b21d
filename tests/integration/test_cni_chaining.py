"""calico-lite as the first plugin of a chain, followed by the reference `bandwidth` and
`portmap` plugins, executed as a runtime would (libcni order, prevResult handed on, DEL in
reverse). Every plugin process runs inside the lab NODE's namespace (`ip netns exec`), the
namespace where calico-lite puts the host veth, so the reference plugins act there and never on
the machine's own namespace.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.e2e.labutil import lab_name, running_lab
from tests.nslib import remove_netns_with_prefix, unique_prefix
from tests.runtime_support import (
    REFERENCE_CNI_DIR, RUNTIME_CNI_VERSION, CniChainError, CniRuntime, cali_links, ipam_used,
    lab_node, plugin_bin_dir,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (REFERENCE_CNI_DIR / "bandwidth").exists(), reason="containernetworking-plugins missing")]

HAVE_IPTABLES = shutil.which("iptables") is not None
RATE, BURST = 1_000_000, 100_000  # bits/s and bits, as the bandwidth plugin takes them
HOST_PORT, CONTAINER_PORT = 18080, 80


@pytest.fixture(scope="module")
def node():
    with running_lab(lab_name("rt"), "--racks", "1", "--nodes-per-rack", "1") as name:
        yield lab_node(name)


@pytest.fixture(scope="module")
def bin_dir(node):
    d = Path(tempfile.mkdtemp(prefix="trt-chain-"))
    try:
        yield plugin_bin_dir(d / "bin", {
            "calico-lite": node.cni_bin_dir / "calico-lite",
            "bandwidth": REFERENCE_CNI_DIR / "bandwidth",
            "portmap": REFERENCE_CNI_DIR / "portmap"})
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pod_netns():
    prefix = unique_prefix("rt")
    name = f"{prefix}-pod"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        remove_netns_with_prefix(prefix)


def chain(node, bin_dir: Path, with_portmap: bool) -> CniRuntime:
    """The node's calico-lite entry, then bandwidth (and portmap). cniVersion 1.0.0: the
    reference plugins (1.1.1) know nothing newer."""
    plugins = [node.conflist["plugins"][0],
               {"type": "bandwidth", "ingressRate": RATE, "ingressBurst": BURST,
                "egressRate": RATE, "egressBurst": BURST}]
    if with_portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    netconf = {"cniVersion": RUNTIME_CNI_VERSION, "name": "k8s-pod-network", "plugins": plugins}
    return CniRuntime(bin_dir, netconf, exec_netns=node.netns)


def qdiscs(netns: str, dev: str) -> list[dict]:
    out = subprocess.run(["ip", "netns", "exec", netns, "tc", "-j", "qdisc", "show", "dev", dev],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


def links(netns: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout or "[]")


def nat_rules(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"],
                          capture_output=True, text=True).stdout


def machine_qdisc_and_nat() -> tuple[str, str]:
    """The machine's own qdiscs and nat rules, to prove the chain never touched them."""
    q = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    n = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return q, "\n".join(line for line in n.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("with_portmap", [
    False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_IPTABLES, reason="no iptables"))],
    ids=["bandwidth", "bandwidth+portmap"])
def test_prev_result_reaches_bandwidth_and_del_runs_through_the_chain(node, bin_dir, pod_netns,
                                                                      with_portmap):
    rt = chain(node, bin_dir, with_portmap)
    machine_before, used_before = machine_qdisc_and_nat(), ipam_used(node.lab)
    cid = uuid.uuid4().hex
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=rt-chain;K8S_POD_NAME=p-{cid[:6]}"
    rc = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT,
                            "protocol": "tcp"}]}
    result = rt.add(cid, pod_netns, args, runtime_config=rc)
    added = True
    try:
        host = [i["name"] for i in result["interfaces"] if i["name"].startswith("cali")]
        assert len(host) == 1, f"final result lost calico-lite's host interface: {result}"
        host_if = host[0]
        assert result["ips"][0]["address"].startswith("10.244."), result
        assert cali_links(node.netns) == [host_if]

        kinds = {q["kind"] for q in qdiscs(node.netns, host_if)}
        assert "tbf" in kinds, f"no tbf on {host_if}: bandwidth did not see prevResult ({kinds})"
        assert "ingress" in kinds, f"no ingress qdisc on {host_if} for egress shaping ({kinds})"
        ifbs = [link["ifname"] for link in links(node.netns) if link["ifname"].startswith("bwp")]
        assert len(ifbs) == 1, f"bandwidth made no ifb device for egress shaping: {ifbs}"
        tbf = next(q for q in qdiscs(node.netns, ifbs[0]) if q["kind"] == "tbf")
        assert tbf["options"]["rate"] in (RATE // 8, RATE), tbf  # bytes/s in tc's JSON

        if with_portmap:
            nat = nat_rules(node.netns)
            assert f"--dport {HOST_PORT}" in nat and "CNI-HOSTPORT-DNAT" in nat, nat
            ip = result["ips"][0]["address"].split("/")[0]
            assert f"{ip}:{CONTAINER_PORT}" in nat, nat

        rt.delete(cid, pod_netns, args, prev=result, runtime_config=rc)
        added = False
        # a second DEL (kubelet retries, the runtime's RemovePodSandbox) also succeeds
        rt.delete(cid, pod_netns, args, prev=result, runtime_config=rc)
    finally:
        if added:
            try:
                rt.delete(cid, pod_netns, args, prev=result, runtime_config=rc)
            except CniChainError:
                pass

    assert cali_links(node.netns) == []
    assert not [link for link in links(node.netns) if link["ifname"].startswith("bwp")]
    if with_portmap:
        assert f"--dport {HOST_PORT}" not in nat_rules(node.netns)
    assert ipam_used(node.lab) == used_before
    assert machine_qdisc_and_nat() == machine_before, "the chain touched the machine's namespace"


FAILING_PLUGIN = """#!/bin/sh
# A chained plugin whose ADD fails (after calico-lite succeeded) and whose DEL succeeds.
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion": "1.0.0", "code": 7, "msg": "injected failure after calico-lite"}'
  exit 1
fi
exit 0
"""


def test_a_failing_chained_plugin_rolls_back_calico_lites_add(node, bin_dir, pod_netns):
    """A plugin after calico-lite fails its ADD: the runtime DELs the chain and calico-lite
    must leave no address or link behind."""
    failing = bin_dir / "trt-fail"
    failing.write_text(FAILING_PLUGIN)
    failing.chmod(0o755)
    rt = chain(node, bin_dir, with_portmap=False)
    rt.netconf["plugins"].append({"type": "trt-fail"})
    used_before = ipam_used(node.lab)
    with pytest.raises(CniChainError, match="injected failure"):
        rt.add(uuid.uuid4().hex, pod_netns, "IgnoreUnknown=1")
    assert cali_links(node.netns) == []
    assert not [link for link in links(node.netns) if link["ifname"].startswith("bwp")]
    assert ipam_used(node.lab) == used_before
