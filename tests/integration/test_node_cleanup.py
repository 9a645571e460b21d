"""`calico-lite node cleanup` in a namespace made to look like a node calico-lite ran on (a
VXLAN device, our nftables tables (inet and arp), routes of proto 88, conflist and shim, a run folder, an
ExaBGP stand-in holding the pid file): everything of ours goes, nothing else is touched; the
check mode lists what is left and fails while anything is. The lab's uninstall test runs the
same command through deploy/cleanup/ on real nodes."""
from __future__ import annotations

import subprocess

import pytest

from calico_lite.install import install_cni
from tests.conftest import CLI
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix


@pytest.fixture
def node(tmp_path):
    prefix = unique_prefix("ncl")
    ns = f"{prefix}n"
    sh("ip", "netns", "add", ns)
    sleeper = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", "10.250.0.1/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096",
           "dstport", "4789", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "10.244.1.0/26", "via", "10.250.0.2", "proto", "88")
        sh("ip", "-n", ns, "route", "add", "10.9.0.0/24", "via", "10.250.0.2")   # not ours
        sh("nft", "add table inet calico-lite", netns=ns)
        sh("nft", "add table inet someone-else", netns=ns)
        sh("nft", "add table arp calico-lite", netns=ns)   # pods' ARP anti-spoofing
        sh("nft", "add table arp someone-else", netns=ns)
        run, bin_dir, conf = tmp_path / "run", tmp_path / "bin", tmp_path / "conf"
        install_cni(bin_dir, conf, agent_socket=str(run / "cni.sock"))
        (bin_dir / "loopback").write_text("not ours")
        (run / "bgp").mkdir(parents=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
        (run / "bgp" / "exabgp.pid").write_text(f"{sleeper.pid}\n")
        yield ns, run, bin_dir, conf, sleeper
    finally:
        if sleeper:
            sleeper.kill()
        remove_netns_with_prefix(prefix)


def cleanup(ns: str, run, bin_dir, conf, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *CLI, "node", "cleanup", "--run-dir", str(run),
                           "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf), *extra],
                          capture_output=True, text=True, timeout=60)


def test_cleanup_removes_ours_and_only_ours(node):
    ns, run, bin_dir, conf, sleeper = node
    check = cleanup(ns, run, bin_dir, conf, "--check")
    assert check.returncode == 1
    for item in ("calico-lite.conflist", "/calico-lite", "ExaBGP", "inet calico-lite", "arp calico-lite",
                 "10.244.1.0/26", "vxlan.calico", "run folder"):
        assert item in check.stdout, (item, check.stdout)
    done = cleanup(ns, run, bin_dir, conf)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("node clean"), done.stdout + done.stderr
    assert sleeper.wait(timeout=10) is not None            # "ExaBGP" was stopped
    assert cleanup(ns, run, bin_dir, conf, "--check").returncode == 0
    tables = sh("nft", "list tables", netns=ns).stdout
    assert "inet someone-else" in tables and "arp someone-else" in tables, tables
    assert "calico-lite" not in tables, tables
    routes = sh("ip", "-n", ns, "route").stdout
    assert "10.9.0.0/24" in routes and "10.244.1.0/26" not in routes
    assert (bin_dir / "loopback").exists() and not (bin_dir / "calico-lite").exists()
    assert "vxlan.calico" not in sh("ip", "-n", ns, "link").stdout
