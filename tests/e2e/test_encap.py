"""Cross-subnet encapsulation end to end: `lab up --bgp mesh --encap vxlan` across two racks.

With a node mesh the routers know nothing of pods, so every cross-rack packet can only
travel inside VXLAN; same-rack traffic stays plain. IPIP cannot run on this kernel (built
without it): a pool asking for it must be reported, not pretended (the real IPIP test runs
under qemu: tests/integration/test_ipip_qemu.py).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from calico_lite.lab import fabric
from calico_lite.lab.lab import Lab
from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, probe, running_lab, status

pytestmark = pytest.mark.slow

NODES = ("r1n1", "r1n2", "r2n1", "r2n2")


def ip_json(netns: str, *args: str):
    return json.loads(subprocess.run(["ip", "-n", netns, "-j", *args], check=True,
                                     capture_output=True, text=True).stdout or "[]")


def node_records(lab: str) -> dict[str, dict]:
    """The node records as etcd holds them, read with etcdctl and the lab's etcd certificates."""
    argv = fabric.etcdctl_argv(Lab(lab).plan, user="calico-lite")
    out = subprocess.run([*argv, "get", "--prefix", "/calico-lite/nodes/", "--print-value-only"],
                         check=True, capture_output=True, text=True,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}).stdout
    return {r["name"]: r for r in (json.loads(line) for line in out.splitlines() if line.strip())}


def node_status(lab: str) -> dict[str, dict]:
    return {n["node"]: n for n in json.loads(lab_cli("node", "status", "--lab", lab, "--json").stdout)}


def pod_ip(lab: str, pod: str) -> str:
    return next(p["ip"] for p in status(lab)["pods"] if p["name"] == pod)


def ping(lab: str, pod: str, dst: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-pod-default-{pod}", "ping", "-n",
                           "-W", "2", *args, dst], capture_output=True, text=True)


def vxlan_tx_packets(netns: str) -> int:
    link = ip_json(netns, "-s", "link", "show", "dev", "vxlan.calico")[0]
    return link["stats64"]["tx"]["packets"]


@pytest.fixture(scope="module")
def lab():
    with running_lab(lab_name("enc"), "--bgp", "mesh", "--encap", "vxlan") as name:
        for node in NODES:
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                    "--serve", "tcp:80,udp:80")
        lab_cli("lab", "wait", "--name", name)
        yield name


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_every_pod_reaches_every_other_across_racks(lab, protocol):
    rows = probe(lab, "--protocol", protocol)
    assert len(rows) == 12
    assert not [(r["from"], r["to"]) for r in rows if not r["connected"]]


def test_status_shows_no_skipped_routes_and_the_encapsulation_of_each(lab):
    s = status(lab)
    assert s["encap"] == "vxlan"
    assert {n["name"]: n["notes"] for n in s["nodes"]} == {n: [] for n in NODES}
    records = node_records(lab)
    statuses = node_status(lab)
    owners = {b: n for n, st in statuses.items() for b in st["blocks"]}
    for name, st in statuses.items():
        assert st["skipped"] == []
        rack = name[:2]
        for route in st["routes"]:
            owner = owners[route["prefix"]]
            if owner[:2] == rack:
                assert route == {"prefix": route["prefix"], "via": [records[owner]["address"]],
                                 "encap": "none"}
            else:
                assert route == {"prefix": route["prefix"],
                                 "via": [records[owner]["vxlanTunnelAddress"]], "encap": "vxlan"}
        assert len(st["routes"]) == 3


def test_kernel_same_rack_routes_plain_cross_rack_via_vxlan_onlink(lab):
    records = node_records(lab)
    blocks = {n: st["blocks"] for n, st in node_status(lab).items()}
    for name in NODES:
        routes = {r["dst"]: r for r in ip_json(f"{lab}-{name}", "route", "show", "proto", "88")}
        assert len(routes) == 3
        for other in (n for n in NODES if n != name):
            (block,) = blocks[other]
            r = routes[block]
            if other[:2] == name[:2]:
                assert (r["dev"], r["gateway"]) == ("eth0", records[other]["address"])
                assert "onlink" not in r.get("flags", [])
            else:
                assert (r["dev"], r["gateway"]) == ("vxlan.calico", records[other]["vxlanTunnelAddress"])
                assert "onlink" in r["flags"]


def test_vxlan_device_and_one_neighbour_and_fdb_entry_per_remote_node(lab):
    records = node_records(lab)
    for name in NODES:
        ns = f"{lab}-{name}"
        link = ip_json(ns, "-d", "link", "show", "dev", "vxlan.calico")[0]
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local"]) == (4096, 4789, records[name]["address"])
        assert not data.get("learning", False)
        assert link["mtu"] == 1450 and link["address"] == records[name]["vxlanTunnelMac"]
        addrs = [a["local"] for a in ip_json(ns, "-4", "addr", "show", "dev", "vxlan.calico")[0]["addr_info"]]
        assert addrs == [records[name]["vxlanTunnelAddress"]]
        others = [records[n] for n in NODES if n != name]
        neigh = {n["dst"]: n["lladdr"] for n in ip_json(ns, "neigh", "show", "dev", "vxlan.calico")
                 if "PERMANENT" in n.get("state", [])}
        assert neigh == {o["vxlanTunnelAddress"]: o["vxlanTunnelMac"] for o in others}
        fdb = json.loads(subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", "vxlan.calico"],
                                        check=True, capture_output=True, text=True).stdout)
        assert {f["mac"]: f["dst"] for f in fdb if f.get("dst")} == \
            {o["vxlanTunnelMac"]: o["address"] for o in others}


def test_the_fabric_has_no_pod_routes_so_cross_rack_can_only_be_tunnelled(lab):
    for ns in (f"{lab}-spine", f"{lab}-tor1", f"{lab}-tor2"):
        assert not [r for r in ip_json(ns, "route") if r["dst"].startswith("10.244.")]


def test_cross_rack_pings_go_through_vxlan_and_same_rack_ones_do_not(lab):
    node = f"{lab}-r1n1"
    before = vxlan_tx_packets(node)
    assert ping(lab, "p-r1n1", pod_ip(lab, "p-r2n2"), "-c", "20", "-i", "0.01").returncode == 0
    cross = vxlan_tx_packets(node) - before
    assert cross >= 20
    before = vxlan_tx_packets(node)
    assert ping(lab, "p-r1n1", pod_ip(lab, "p-r1n2"), "-c", "20", "-i", "0.01").returncode == 0
    assert vxlan_tx_packets(node) - before < 20


def test_pod_mtu_leaves_room_for_vxlan_and_full_size_packets_pass(lab):
    for node in NODES:
        (eth0,) = json.loads(lab_cli("lab", "exec", f"default/p-{node}", "--name", lab, "--",
                                     "ip", "-j", "link", "show", "eth0").stdout)
        assert eth0["mtu"] == 1450
    dst = pod_ip(lab, "p-r2n1")
    # 1422 + 8 (ICMP) + 20 (IP) = 1450: the largest packet fits the tunnel with DF set ...
    full = ping(lab, "p-r1n1", dst, "-c", "2", "-M", "do", "-s", "1422")
    assert full.returncode == 0, full.stdout + full.stderr
    # ... and one byte more fails at the sender, visibly, instead of vanishing on the way
    over = ping(lab, "p-r1n1", dst, "-c", "1", "-M", "do", "-s", "1423")
    assert over.returncode != 0 and "message too long, mtu=1450" in over.stdout + over.stderr


def test_tcp_bulk_transfer_across_racks(lab):
    """A TCP stream far above the MTU (segments at full MSS) arrives intact through VXLAN."""
    dst = pod_ip(lab, "p-r2n2")
    server = subprocess.Popen(["ip", "netns", "exec", f"{lab}-pod-default-p-r2n2", "python3", "-c",
                               "import socket,hashlib;s=socket.socket();"
                               "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                               "s.bind(('0.0.0.0',9000));s.listen();c,_=s.accept();h=hashlib.sha256()\n"
                               "while (b:=c.recv(65536)): h.update(b)\n"
                               "print(h.hexdigest())"], stdout=subprocess.PIPE, text=True)
    try:
        payload = bytes(range(256)) * 16384  # 4 MiB
        client = ("import socket,time,sys\n"
                  "for _ in range(100):\n"
                  "    try: s=socket.create_connection((sys.argv[1],9000),timeout=5); break\n"
                  "    except OSError: time.sleep(0.05)\n"
                  "s.sendall(bytes(range(256))*16384); s.close()")
        subprocess.run(["ip", "netns", "exec", f"{lab}-pod-default-p-r1n1", "python3", "-c",
                        client, dst], check=True, timeout=60)
        out, _ = server.communicate(timeout=60)
        import hashlib
        assert out.strip() == hashlib.sha256(payload).hexdigest()
    finally:
        server.kill()
        server.wait()


def test_ipip_pool_on_a_kernel_without_ipip_is_reported_not_pretended():
    with running_lab(lab_name("enc"), "--bgp", "mesh", "--encap", "ipip",
                     "--nodes-per-rack", "1") as name:
        for node in ("r1n1", "r2n1"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name)
        lab_cli("lab", "wait", "--name", name)
        s = status(name)
        for n in s["nodes"]:
            assert any(note.startswith("IPIP unavailable: this kernel has no ipip support")
                       for note in n["notes"]), n["notes"]
        for name_, st in node_status(name).items():
            assert st["routes"] == []
            assert [sk["reason"] for sk in st["skipped"]] == \
                ["IPIP unavailable: this kernel has no ipip support"]
        assert not ip_json(f"{name}-r1n1", "route", "show", "proto", "88")
        assert "tunl0" not in [link["ifname"] for link in ip_json(f"{name}-r1n1", "link", "show")]
        log = Lab(name).node_paths("r1n1").agent_log.read_text()
        assert "ipip-unavailable" in log


def _run_dir(name: str) -> str:
    from tests.e2e.labutil import run_dir
    return str(run_dir(name))
