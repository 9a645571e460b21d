"""NetworkPolicy enforcement with real nftables, veths and namespaces (run as root).

Topology (all under one unique prefix): a node namespace with ip_forward, four pods wired the
Calico way (pod eth0 IP/32 + 169.254.1.1 gateway, host cali* with proxy ARP and a /32 route),
and an "uplink" stub namespace that is the node's default route (so proxy ARP answers for
169.254.1.1) and plays an outside host with two addresses for ipBlock tests. Each pod runs a
small TCP/UDP server that logs who reached it; probes run under `ip netns exec` with a 1 s
timeout. The applier runs in a worker thread that has entered the node namespace.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy.applier import RulesetApplier
from policy.compiler import compile_ruleset
from policy.manifests import parse_manifests
from policy.model import ContainerPort, Namespace, Pod
from policy.nft import NftError
from policy.ruleset import Chain, Rule
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables")

PY = "/usr/bin/python3"
TCP_PORTS = [80, 8080, 7000, 7001, 7002, 9100]
UDP_PORTS = [5353]
NODE_IP = "10.241.0.1"
STUB_IP = "10.241.0.2"
OUTSIDE_OK, OUTSIDE_EXCEPT = "10.242.0.10", "10.242.0.20"
SPOOF_IP = "10.240.200.1"

SERVER = r'''
import socket, sys, threading
name, log, tcp, udp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lock = threading.Lock()
def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")
def tcp_loop(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, addr = s.accept()
        note(f"tcp {port} {addr[0]}")
        try: c.sendall(name.encode())
        finally: c.close()
def udp_loop(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(2048)
        note(f"udp {port} {addr[0]} {data.decode(errors='replace')}")
        s.sendto(name.encode(), addr)
ts = [threading.Thread(target=tcp_loop, args=(int(p),), daemon=True) for p in tcp.split(",") if p]
ts += [threading.Thread(target=udp_loop, args=(int(p),), daemon=True) for p in udp.split(",") if p]
for t in ts: t.start()
note("ready")
for t in ts: t.join()
'''

PROBE = r'''
import socket, sys
proto, dst, port, src, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    if proto == "tcp":
        s = socket.create_connection((dst, port), timeout=1, source_address=(src, 0) if src != "-" else None)
        data = s.recv(100)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        if src != "-": s.bind((src, 0))
        s.sendto(payload.encode(), (dst, port))
        if payload.startswith("noreply"): sys.exit(0)
        data, _ = s.recvfrom(100)
    print(data.decode()); sys.exit(0 if data else 1)
except OSError as e:
    print(e); sys.exit(1)
'''


@dataclass
class PodNs:
    pod: Pod
    netns: str


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, this thread only
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class Lab:
    """The node, its pods and the uplink stub; `apply` compiles and syncs/updates in the node."""

    def __init__(self, prefix: str, tmp: Path):
        self.prefix, self.tmp = prefix, tmp
        self.node, self.stub = f"{prefix}node", f"{prefix}up"
        self.pods: dict[str, PodNs] = {}
        self.namespaces = [Namespace("a", {"team": "alpha"}), Namespace("b", {"team": "beta"})]
        self.remote = [Pod("b", "remote", "10.240.3.1", {"app": "client"}, [], None, "other-node")]
        (tmp / "server.py").write_text(SERVER)
        (tmp / "probe.py").write_text(PROBE)
        self.worker = ThreadPoolExecutor(1, initializer=_setns, initargs=(f"/var/run/netns/{self.node}",))
        self.applier: RulesetApplier | None = None

    # -- building
    def build(self) -> None:
        for ns in (self.node, self.stub):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
           "net.ipv4.conf.default.rp_filter=0", netns=self.node)
        sh("ip", "link", "add", "uplink", "netns", self.node, "type", "veth", "peer", "name", "eth0",
           "netns", self.stub)
        sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", "uplink", netns=self.node)
        sh("ip", "link", "set", "uplink", "up", netns=self.node)
        sh("ip", "route", "add", "default", "via", STUB_IP, netns=self.node)
        sh("ip", "route", "add", "10.242.0.0/24", "via", STUB_IP, netns=self.node)
        sh("ip", "addr", "add", f"{STUB_IP}/24", "dev", "eth0", netns=self.stub)
        for ip in (OUTSIDE_OK, OUTSIDE_EXCEPT):
            sh("ip", "addr", "add", f"{ip}/32", "dev", "lo", netns=self.stub)
        sh("ip", "link", "set", "eth0", "up", netns=self.stub)
        sh("ip", "route", "add", "10.240.0.0/16", "via", NODE_IP, netns=self.stub)
        self.start_server("stub", self.stub)
        self.start_server("node", self.node)
        for name, ns, ip, labels, ports in (
            ("a1", "a", "10.240.1.1", {"app": "web"}, [ContainerPort("http", "TCP", 8080)]),
            ("a2", "a", "10.240.1.2", {"app": "client"}, []),
            ("b1", "b", "10.240.2.1", {"app": "client"}, []),
            ("b2", "b", "10.240.2.2", {"app": "db"}, [ContainerPort("metrics", "TCP", 9100)]),
        ):
            self.add_pod(name, ns, ip, labels, ports)

    def add_pod(self, name: str, namespace: str, ip: str, labels: dict[str, str],
                ports: list[ContainerPort] | None = None) -> PodNs:
        netns, host_if = f"{self.prefix}{name}", f"cali{self.prefix[-4:]}{name}"
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "set", "lo", "up", netns=netns)
        sh("ip", "link", "add", host_if, "netns", self.node, "address", "ee:ee:ee:ee:ee:ee", "type", "veth",
           "peer", "name", "eth0", "netns", netns)
        sh("ip", "addr", "add", f"{ip}/32", "dev", "eth0", netns=netns)
        sh("ip", "link", "set", "eth0", "up", netns=netns)
        sh("ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link", netns=netns)
        sh("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", netns=netns)
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1", f"net.ipv4.neigh.{host_if}.proxy_delay=0",
           f"net.ipv4.conf.{host_if}.rp_filter=0", netns=self.node)
        sh("ip", "link", "set", host_if, "up", netns=self.node)
        sh("ip", "route", "add", f"{ip}/32", "dev", host_if, "scope", "link", netns=self.node)
        p = PodNs(Pod(namespace, name, ip, labels, ports or [], host_if, "node1"), netns)
        self.pods[name] = p
        self.start_server(name, netns)
        return p

    def remove_pod(self, name: str) -> None:
        p = self.pods.pop(name)
        remove_netns_with_prefix(p.netns)  # kills the server; the veth goes with the netns
        sh("ip", "route", "del", f"{p.pod.ip}/32", netns=self.node, check=False)

    def start_server(self, name: str, netns: str) -> None:
        log = self.tmp / f"{name}.log"
        log.write_text("")
        subprocess.Popen(["ip", "netns", "exec", netns, PY, "-I", "-S", str(self.tmp / "server.py"), name,
                          str(log), ",".join(map(str, TCP_PORTS)), ",".join(map(str, UDP_PORTS))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait_log(name, "ready")

    def wait_log(self, name: str, needle: str, limit: float = 10.0) -> bool:
        """Bounded wait for a line in a server log (a readiness/ordering barrier, not a timing check)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if needle in self.log(name):
                return True
            time.sleep(0.02)
        return False

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    # -- policy
    def ruleset(self, manifests: str):
        policies = parse_manifests(manifests, "test") if manifests.strip() else []
        pods = [p.pod for p in self.pods.values()] + self.remote
        return compile_ruleset(policies, pods, self.namespaces, [NODE_IP])

    def call(self, fn, *args):
        return self.worker.submit(fn, *args).result()

    def sync(self, manifests: str = ""):
        if self.applier is None:
            self.applier = self.call(RulesetApplier)
        return self.call(self.applier.sync, self.ruleset(manifests))

    def update(self, manifests: str = ""):
        return self.call(self.applier.update, self.ruleset(manifests))

    def nft_list(self) -> str:
        return sh("nft", "list", "ruleset", netns=self.node).stdout

    # -- probes
    def ip(self, name: str) -> str:
        return {"node": NODE_IP, "stub": STUB_IP}.get(name) or self.pods[name].pod.ip

    def ns(self, name: str) -> str:
        return {"node": self.node, "stub": self.stub}.get(name) or self.pods[name].netns

    def can(self, src: str, dst: str, port: int = 8080, proto: str = "tcp", src_ip: str = "-",
            payload: str = "probe") -> bool:
        r = sh(PY, "-I", "-S", str(self.tmp / "probe.py"), proto, self.ip(dst), str(port), src_ip, payload,
               netns=self.ns(src), check=False)
        return r.returncode == 0

    def close(self) -> None:
        self.worker.shutdown(wait=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    prefix = unique_prefix("pol")
    lab = Lab(prefix, tmp_path_factory.mktemp("pol"))
    try:
        lab.build()
        yield lab
    finally:
        try:
            if lab.applier is not None:
                lab.call(lab.applier.remove)
        finally:
            lab.close()
            remove_netns_with_prefix(prefix)


@pytest.fixture
def fresh(lab):
    """Every test starts from an empty table (all pods open)."""
    lab.sync("")
    return lab


def np(ns: str, name: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


DENY_A = np("a", "deny-all", "podSelector: {}\npolicyTypes: [Ingress]")


# ------------------------------------------------------------------ tests

def test_open_without_policies(fresh):
    assert fresh.can("a2", "a1") and fresh.can("b1", "a1") and fresh.can("a1", "b2", 9100)
    assert fresh.can("a1", "b1", 5353, "udp")
    assert fresh.can("stub", "a1", src_ip=OUTSIDE_EXCEPT)


def test_default_deny_ingress(fresh):
    assert fresh.can("a2", "a1")
    fresh.sync(DENY_A)
    assert not fresh.can("a2", "a1")
    assert not fresh.can("b1", "a2", 80)
    assert not fresh.can("b1", "a1", 5353, "udp")
    assert fresh.can("a1", "b1"), "egress stays open, and b is not selected"
    assert fresh.can("node", "a1"), "node -> pod stays allowed"
    assert fresh.can("a1", "node"), "pod -> node stays allowed"


def test_allow_from_pod_selector(fresh):
    fresh.sync(DENY_A + np("a", "web", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]"""))
    assert fresh.can("a2", "a1")
    assert not fresh.can("b1", "a1"), "podSelector alone means the policy's namespace"
    assert not fresh.can("a1", "a2"), "a2 is still default deny"


def test_allow_from_namespace_selector(fresh):
    fresh.sync(DENY_A + np("a", "from-beta", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{namespaceSelector: {matchLabels: {team: beta}}}]}]"""))
    assert fresh.can("b1", "a1") and fresh.can("b2", "a1")
    assert not fresh.can("a2", "a1")


def test_allow_from_namespace_and_pod_selector(fresh):
    fresh.sync(DENY_A + np("a", "beta-clients", """
podSelector: {matchLabels: {app: web}}
ingress:
- from:
  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [b]}]}
    podSelector: {matchLabels: {app: client}}"""))
    assert fresh.can("b1", "a1")
    assert not fresh.can("b2", "a1")
    assert not fresh.can("a2", "a1")


def test_ip_block_with_except(fresh):
    assert fresh.can("stub", "a1", src_ip=OUTSIDE_EXCEPT)
    fresh.sync(np("a", "outside", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{ipBlock: {cidr: 10.242.0.0/24, except: [10.242.0.16/28]}}]}]"""))
    assert fresh.can("stub", "a1", src_ip=OUTSIDE_OK)
    assert not fresh.can("stub", "a1", src_ip=OUTSIDE_EXCEPT)
    assert not fresh.can("a2", "a1")


def test_named_port(fresh):
    fresh.sync(np("a", "http-only", """
podSelector: {matchLabels: {app: web}}
ingress: [{ports: [{port: http}]}]"""))
    assert fresh.can("a2", "a1", 8080)
    assert not fresh.can("a2", "a1", 80)


def test_port_range_and_udp(fresh):
    fresh.sync(np("a", "range", """
podSelector: {matchLabels: {app: web}}
ingress:
- ports:
  - {port: 7000, endPort: 7001}
  - {protocol: UDP, port: 5353}"""))
    assert fresh.can("a2", "a1", 7000) and fresh.can("a2", "a1", 7001)
    assert not fresh.can("a2", "a1", 7002)
    assert fresh.can("a2", "a1", 5353, "udp")
    assert not fresh.can("a2", "a1", 8080)


def test_egress_deny_and_named_egress_port(fresh):
    fresh.sync(np("a", "web-egress", """
podSelector: {matchLabels: {app: web}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]
  ports: [{port: metrics}]"""))
    assert not fresh.can("a1", "b1")
    assert not fresh.can("a1", "stub", 80)
    assert not fresh.can("a1", "b2", 80)
    assert fresh.can("a1", "b2", 9100), "named port resolved on the peer pod"
    assert fresh.can("a2", "b1"), "a2 is not selected"
    assert fresh.can("b1", "a1"), "ingress is not restricted by an Egress-only policy"
    assert fresh.can("a1", "node", 80), "pod -> node stays allowed under egress deny"
    fresh.sync(np("a", "egress-deny", "podSelector: {}\npolicyTypes: [Egress]"))
    assert not fresh.can("a1", "b2", 9100) and not fresh.can("a2", "b1")


def test_anti_spoofing(fresh):
    for name in ("a2",):
        sh("ip", "addr", "add", f"{SPOOF_IP}/32", "dev", "eth0", netns=fresh.ns(name), check=False)
    fresh.sync("")  # no policy at all: anti-spoofing still applies
    fresh.call(fresh.applier.remove)  # control: without our table a spoofed packet gets through
    assert fresh.can("a2", "b1", 5353, "udp", SPOOF_IP, "noreply-control")
    assert fresh.wait_log("b1", f"{SPOOF_IP} noreply-control")
    fresh.sync("")
    fresh.can("a2", "b1", 5353, "udp", SPOOF_IP, "noreply-spoofed")
    fresh.can("a2", "b1", 5353, "udp", "-", "noreply-marker")  # same path, sent after the spoofed one
    assert fresh.wait_log("b1", "noreply-marker")
    assert "noreply-spoofed" not in fresh.log("b1")
    assert fresh.can("a2", "b1"), "the pod's own address still works"


def test_return_traffic_passes(fresh):
    fresh.sync(np("a", "web-closed", "podSelector: {matchLabels: {app: web}}\npolicyTypes: [Ingress]")
               + np("b", "b1-no-egress", "podSelector: {matchLabels: {app: client}}\npolicyTypes: [Egress]"))
    assert fresh.can("a1", "b1"), "SYN-ACK back into a1 and out of b1 ride on conntrack"
    assert fresh.can("a1", "b1", 5353, "udp")
    assert not fresh.can("b1", "a1")
    assert not fresh.can("a2", "a1")


def test_several_policies_add_up(fresh):
    fresh.sync(np("a", "from-a2", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]""")
               + np("a", "from-beta", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{namespaceSelector: {matchLabels: {team: beta}}}], ports: [{port: 80}]}]"""))
    assert fresh.can("a2", "a1", 8080) and not fresh.can("a2", "a1", 80)
    assert fresh.can("b1", "a1", 80) and not fresh.can("b1", "a1", 8080)


def test_incremental_pod_add_label_change_remove(fresh):
    web = DENY_A + np("a", "web", """
podSelector: {matchLabels: {app: web}}
ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]""")
    fresh.sync(web)
    before = fresh.nft_list()
    a3 = fresh.add_pod("a3", "a", "10.240.1.3", {"app": "client"})
    try:
        r = fresh.update(web)
        assert r.mode == "update", r
        assert "10.240.1.3" in fresh.nft_list() and "10.240.1.3" not in before
        assert fresh.can("a3", "a1")
        assert not fresh.can("a2", "a3"), "the new pod is selected by deny-all: it got a chain"
        a3.pod.labels = {"app": "other"}
        r = fresh.update(web)
        assert r.mode == "update" and "elem-" in r.summary, r
        assert not fresh.can("a3", "a1")
        a3.pod.labels = {"app": "client"}
        assert fresh.update(web).mode == "update"
        assert fresh.can("a3", "a1")
    finally:
        fresh.remove_pod("a3")
    r = fresh.update(web)
    assert r.mode == "update" and "chain-" in r.summary, r
    listing = fresh.nft_list()
    assert "10.240.1.3" not in listing and "a3" not in listing
    assert fresh.can("a2", "a1")
    # a policy change (sets and chains come and go) is incremental too, and enforced at once
    assert fresh.update(DENY_A).mode == "update"
    assert not fresh.can("a2", "a1")


def test_failed_sync_keeps_old_rules(fresh):
    fresh.sync(DENY_A)
    before = fresh.nft_list()
    bad = fresh.ruleset(DENY_A + np("a", "web", "podSelector: {}\ningress: [{}]"))
    broken = next(n for n, c in bad.chains.items() if n.startswith("ing_"))
    bad.chains[broken] = Chain(broken, (Rule(("ip saddr @no_such_set",), "accept"),) + bad.chains[broken].rules)
    with pytest.raises(NftError) as e:
        fresh.call(fresh.applier.sync, bad)
    assert "no_such_set" in str(e.value) or "No such file" in str(e.value)
    assert fresh.nft_list() == before
    assert not fresh.can("a2", "a1"), "old deny-all still enforced"
    with pytest.raises(NftError):  # an update that cannot be applied incrementally nor synced
        fresh.call(fresh.applier.update, bad)
    assert fresh.nft_list() == before


def test_sctp_rules_load(fresh):
    fresh.sync(np("a", "diameter", """
podSelector: {matchLabels: {app: web}}
ingress: [{ports: [{protocol: SCTP, port: 3868}, {protocol: SCTP, port: 2905, endPort: 2910}]}]
egress: [{ports: [{protocol: SCTP}]}]"""))
    listing = fresh.nft_list()
    assert "sctp . 2905-2910" in listing and "sctp . 3868" in listing
    assert "meta l4proto sctp" in listing
    assert not fresh.can("a2", "a1", 8080)


def test_other_tables_untouched(fresh):
    sh("nft", "add table inet someone-else", netns=fresh.node)
    sh("nft", "add chain inet someone-else c", netns=fresh.node)
    try:
        fresh.sync(DENY_A)
        fresh.call(fresh.applier.remove)
        listing = fresh.nft_list()
        assert "someone-else" in listing and "calico-lite" not in listing
        fresh.sync(DENY_A)
        assert "someone-else" in fresh.nft_list()
    finally:
        sh("nft", "delete table inet someone-else", netns=fresh.node, check=False)
