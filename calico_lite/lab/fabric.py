"""The lab's fabric, made at `lab up`: veths, addresses and static routes between the
control plane, the spine, the ToRs and the nodes; etcd; the default pool and BGP records; the
FRR routers. Every command names its namespace (`ip -n NS`), so nothing lands in the
machine's own namespace; every process is recorded in the lab's state as it starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import replace

from calico_lite import keys
from calico_lite.etcd_tls import EtcdTls
from calico_lite.ipam import DEFAULT_POOL
from calico_lite.lab import plumbing as pl
from calico_lite.lab.bgp_records import LAB_BFD
from calico_lite.lab.frr import FrrRouter, render_frr_config
from calico_lite.lab.pki import EtcdFiles
from calico_lite.lab.plan import (ETCD_IP, OUTSIDE_IP, SPINE_AS, SPINE_CP_IP,
                                  SPINE_OUTSIDE_IP, LabPlan)
from calico_lite.lab.state import StateStore, run_dir


class FabricError(RuntimeError):
    pass


def build(plan: LabPlan) -> None:
    """Links, addresses and static routes of the fabric, in the lab's namespaces (made by
    the caller, who records them first)."""
    cp, spine = plan.cp_netns, plan.spine_netns
    pl.veth(cp, "eth0", spine, "cp")
    pl.ip(cp, "addr", "add", f"{ETCD_IP}/24", "dev", "eth0")
    pl.ip(spine, "addr", "add", f"{SPINE_CP_IP}/24", "dev", "cp")
    pl.ip(cp, "route", "add", "default", "via", SPINE_CP_IP)
    pl.sysctl(spine, "net.ipv4.ip_forward", "1")
    build_outside(plan)
    for tor in plan.tors:
        pl.veth(spine, tor.name, tor.netns, "uplink")
        pl.ip(spine, "addr", "add", f"{tor.spine_ip}/24", "dev", tor.name)
        pl.ip(tor.netns, "addr", "add", f"{tor.uplink_ip}/24", "dev", "uplink")
        pl.ip(spine, "route", "add", tor.subnet, "via", tor.uplink_ip)
        pl.ip(tor.netns, "route", "add", "default", "via", tor.spine_ip)
        pl.ip(tor.netns, "link", "add", "br0", "type", "bridge")
        pl.ip(tor.netns, "link", "set", "br0", "up")
        pl.ip(tor.netns, "addr", "add", f"{tor.segment_ip}/24", "dev", "br0")
        pl.sysctl(tor.netns, "net.ipv4.ip_forward", "1")
    for node in plan.nodes:
        tor = plan.tors[node.rack - 1]
        pl.veth(node.netns, "eth0", tor.netns, node.name)
        pl.ip(tor.netns, "link", "set", node.name, "master", "br0")
        pl.ip(node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        # the default route also lets the node answer proxy ARP for 169.254.1.1
        pl.ip(node.netns, "route", "add", "default", "via", node.gateway)
        pl.sysctl(node.netns, "net.ipv4.ip_forward", "1")


def build_outside(plan: LabPlan) -> None:
    """A host beyond the cluster behind the spine: the spine routes to it (connected), it
    routes back through the spine, and in ToR mode the spine knows the pod blocks from BGP.
    Its subnet is outside every pool and node subnet, so NAT outgoing applies to it."""
    out, spine = plan.outside_netns, plan.spine_netns
    pl.veth(out, "eth0", spine, "outside")
    pl.ip(out, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
    pl.ip(spine, "addr", "add", f"{SPINE_OUTSIDE_IP}/24", "dev", "outside")
    pl.ip(out, "route", "add", "default", "via", SPINE_OUTSIDE_IP)


def etcd_files(plan: LabPlan) -> EtcdFiles:
    """Where the lab's etcd CA and certificates are (made by start_etcd)."""
    return EtcdFiles(run_dir(plan.name) / "etcd-pki")


def etcd_tls(plan: LabPlan, user: str) -> EtcdTls | None:
    """The datastore TLS settings of etcd user `user`; None for a lab with plain http."""
    return etcd_files(plan).tls(user) if plan.etcd_tls else None


def etcd_tls_argv(plan: LabPlan) -> list[str]:
    """etcd's own flags for https clients that must show a certificate of the lab's etcd CA."""
    if not plan.etcd_tls:
        return []
    files = etcd_files(plan)
    files.create((ETCD_IP, "127.0.0.1"))
    return ["--client-cert-auth", "--trusted-ca-file", str(files.ca),
            "--cert-file", str(files.server.cert), "--key-file", str(files.server.key)]


def start_etcd(plan: LabPlan, store: StateStore) -> None:
    """etcd in the control-plane namespace; with TLS (the default) it serves https only,
    to clients with a certificate, and its RBAC is on before anything else connects."""
    d = store.dir / "etcd"
    shutil.rmtree(d, ignore_errors=True)
    local = plan.etcd_local_endpoint
    argv = ["etcd", "--name", plan.name, "--data-dir", str(d / "data"),
            "--listen-client-urls", f"{plan.etcd_endpoint},{local}",
            "--advertise-client-urls", plan.etcd_endpoint, *etcd_tls_argv(plan),
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", f"{plan.name}=http://127.0.0.1:2380",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--max-txn-ops", "10000", "--log-level", "warn"]
    pid = pl.spawn(plan.cp_netns, argv, d / "etcd.log")
    store.add_pid("etcd", pid)
    deadline = time.monotonic() + 120   # seconds usually; minutes under emulation (qemu)
    while not etcd_healthy(plan):
        if time.monotonic() > deadline or not pl.pid_alive(pid):
            raise FabricError(f"etcd did not become healthy; see {d / 'etcd.log'}")
        time.sleep(0.1)
    if plan.etcd_tls:
        enable_etcd_auth(plan)


# etcd's RBAC: each user (its certificate's CN) reads and writes its own prefix only. The API
# server also keeps its compaction marker outside its prefix (`compact_rev_key`).
ETCD_ROLES = {"calico-lite": ("/calico-lite/",),
              "kube-apiserver": ("/registry/", "compact_rev_key")}


def enable_etcd_auth(plan: LabPlan) -> None:
    """Users without passwords (a certificate's CN names them), a role per user, then auth
    on: from now on only `root` may touch anything outside its prefix."""
    etcdctl(plan, "user", "add", "root", "--no-password")
    etcdctl(plan, "user", "grant-role", "root", "root")
    for user, keys_ in ETCD_ROLES.items():
        etcdctl(plan, "role", "add", user)
        for key in keys_:
            prefix = ["--prefix=true"] if key.endswith("/") else []
            etcdctl(plan, "role", "grant-permission", user, *prefix, "readwrite", key)
        etcdctl(plan, "user", "add", user, "--no-password")
        etcdctl(plan, "user", "grant-role", user, user)
    etcdctl(plan, "auth", "enable")

def write_default_pool(plan: LabPlan) -> None:
    """With --encap, the default pool is written before any agent starts (mode
    CrossSubnet: plain within a rack, encapsulated across racks)."""
    if plan.encap == "none":
        return  # the agents create the plain default pool themselves
    pool = replace(DEFAULT_POOL, encapsulation=plan.encap, encap_mode="CrossSubnet")
    etcdctl(plan, "put", keys.pool(pool.name), json.dumps(pool.to_dict(), sort_keys=True))

def write_bgp_records(plan: LabPlan) -> None:
    """Global BGP settings, peers and node ASNs, as `calico-lite bgp ...` would write them:
    the agents take their peers from the datastore (lab.bgp_records says what per mode)."""
    from calico_lite.lab.bgp_records import bgp_records
    for key, value in bgp_records(plan).items():
        etcdctl(plan, "put", key, json.dumps(value, sort_keys=True))

def start_routers(plan: LabPlan, store: StateStore) -> None:
    spine_conf = render_frr_config(
        "spine", SPINE_AS, SPINE_CP_IP,
        neighbors=[(t.uplink_ip, t.asn) for t in plan.tors], hold_time=9, keepalive=3)
    routers = [("spine", plan.spine_netns, spine_conf)]
    for t in plan.tors:
        listen = [(t.subnet, "external")] if plan.bgp == "tor" else []
        nodes: list[tuple[str, int]] = []
        bfd = (LAB_BFD.interval_ms, LAB_BFD.multiplier) if plan.bfd and listen else None
        if bfd:
            # FRR 8.4 does not give a dynamic (listen range) neighbour its BFD session back
            # once BFD took it down and it returned: with BFD, the rack's nodes are explicit
            nodes = [(n.address, n.asn) for n in plan.nodes if n.rack == t.rack]
            listen = []
        routers.append((t.name, t.netns, render_frr_config(
            t.name, t.asn, t.uplink_ip, neighbors=[(t.spine_ip, SPINE_AS), *nodes],
            listen_ranges=listen, hold_time=9, keepalive=3,
            bfd_neighbors=[a for a, _ in nodes], bfd=bfd)))
    for name, ns, conf in routers:
        r = FrrRouter(ns, store.dir / "frr" / name, conf)
        r.start()
        for daemon, pid in r.pids().items():
            store.add_pid(f"frr:{name}:{daemon}", pid)


def etcdctl_argv(plan: LabPlan, user: str = "root") -> list[str]:
    """etcdctl against the lab's etcd, run inside its control-plane namespace, as `user`
    (with TLS; the lab's admin by default)."""
    argv = ["ip", "netns", "exec", plan.cp_netns, "etcdctl",
            "--endpoints", plan.etcd_local_endpoint]
    if plan.etcd_tls:
        files = etcd_files(plan)
        client = files.client(user)
        argv += ["--cacert", str(files.ca), "--cert", str(client.cert), "--key", str(client.key)]
    return argv


def etcdctl(plan: LabPlan, *args: str) -> str:
    p = subprocess.run([*etcdctl_argv(plan), *args],
                       capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
    if p.returncode != 0:
        raise FabricError(f"etcdctl {' '.join(args[:2])} failed: {p.stderr.strip()}")
    return p.stdout


def etcd_healthy(plan: LabPlan) -> bool:
    p = subprocess.run([*etcdctl_argv(plan), "--dial-timeout", "1s", "endpoint", "health"],
                       capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
    return p.returncode == 0
