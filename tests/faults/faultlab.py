"""Helpers of the faults campaign (tests/faults/test_lab_faults.py, test_load.py,
test_cni_fuzz.py): a lab named `fl…`, the short or long form, etcd stopped and started again,
the node's CNI called directly, and the "nothing lost" audits (IPAM, veths, routes, nftables).

Everything here drives the lab from outside, as an operator would: the CLI, etcdctl and `ip`
inside the lab's namespaces; the test process itself never enters a lab namespace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from calico_lite import keys
from calico_lite.lab import fabric
from calico_lite.lab import plumbing as pl
from calico_lite.lab.lab import Lab
from tests.conftest import REPO, lab_cli
from tests.e2e.labutil import UdpStream
from tests.nslib import remove_netns_with_prefix, wait_for

# `make soak` sets CALICO_LITE_SOAK=1: longer outages, more waves, more restarts
SOAK = os.environ.get("CALICO_LITE_SOAK", "") not in ("", "0")


def form(short, soak):
    """The short (CI) or the long (`make soak`) value of a campaign parameter."""
    return soak if SOAK else short


def fault_lab_name(tag: str) -> str:
    """`fl` + tag + 4 hex digits: the faults campaign's labs, unique per run."""
    return f"fl{tag}{uuid.uuid4().hex[:4]}"


@contextmanager
def fault_lab(tag: str, *up_args: str) -> Iterator[str]:
    """labutil.running_lab with room for a busy machine (`lab up` may take minutes when the
    two cores are shared): the lab and everything it made are removed afterwards, also when
    the test or `lab up` fails."""
    name = fault_lab_name(tag)
    try:
        lab_cli("lab", "up", "--name", name, *up_args, timeout=900)
        yield name
    finally:
        lab_cli("lab", "down", "--name", name, check=False, timeout=300)
        remove_netns_with_prefix(f"{name}-")


@contextmanager
def serving_fault_lab(tag: str, *up_args: str) -> Iterator[str]:
    """fault_lab with a UDP echo pod on r1n1 and r2n1 (`default/p-NODE`), routed everywhere;
    the sandboxes a test makes under `NAME-s-` are removed with it."""
    with fault_lab(tag, *up_args) as name:
        try:
            for node in ("r1n1", "r2n1"):
                lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                        "--serve", "udp:80")
            lab_cli("lab", "wait", "--name", name)
            yield name
        finally:
            remove_netns_with_prefix(f"{name}-s-")


class Stream(UdpStream):
    """labutil.UdpStream for as long as a soak lasts (udpstream's MAX_SECONDS: 1 hour)."""

    def __init__(self, lab: str, src_pod: str, dst_ip: str, interval: float = 0.01):
        self.stop_file = Path(tempfile.mktemp(prefix="flstream-"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{lab}-pod-{src_pod.replace('/', '-')}", sys.executable, "-m",
             "calico_lite.lab.udpstream", dst_ip, "80", str(interval), str(self.stop_file), "3600"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def info(line: str) -> None:
    """A measured figure, printed for the README's reliability table (pytest -s shows it)."""
    print(f"\n[faults] {line}", flush=True)


# --- etcd: stopped and started again with the same command line -----------------------------
@dataclass
class EtcdProcess:
    """The lab's etcd as `lab up` started it: stopping keeps its argv to start it again."""
    lab: str
    argv: list[str] | None = None

    def stop(self) -> None:
        store = Lab(self.lab).store
        pid = store.load().pids["etcd"]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            self.argv = f.read().decode().split("\0")[:-1]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pl.pid_alive(pid), "etcd gone", timeout=15)

    def running(self) -> bool:
        pid = Lab(self.lab).store.load().pids.get("etcd")
        return bool(pid and pl.pid_alive(pid))

    def start(self) -> None:
        assert self.argv, "etcd was not stopped by this helper"
        lab = Lab(self.lab)
        plan = lab.plan
        pid = pl.spawn(plan.cp_netns, self.argv, lab.store.dir / "etcd" / "etcd.log")
        lab.store.add_pid("etcd", pid)
        wait_for(lambda: fabric.etcd_healthy(plan), "etcd healthy again", timeout=30, interval=0.2)


def etcd_get_prefix(lab: str, prefix: str) -> dict[str, object]:
    """key -> JSON value under prefix, read with etcdctl as the lab's admin."""
    plan = Lab(lab).plan
    p = subprocess.run([*fabric.etcdctl_argv(plan), "get", "--prefix", prefix, "-w", "json"],
                       capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"})
    import base64
    out = {}
    for kv in json.loads(p.stdout).get("kvs", []):
        out[base64.b64decode(kv["key"]).decode()] = json.loads(base64.b64decode(kv["value"]))
    return out


def etcdctl(lab: str, *args: str) -> str:
    plan = Lab(lab).plan
    return subprocess.run([*fabric.etcdctl_argv(plan), *args], capture_output=True, text=True,
                          check=True, env={**os.environ, "ETCDCTL_API": "3"}).stdout


def agents_synced(lab: str, timeout: float = 120.0) -> float:
    """Seconds until every agent's policy controller has seen a barrier written now (its watch
    and its writes work again). Straight to etcd: the API server is not on this path."""
    t0 = time.monotonic()
    out = json.loads(etcdctl(lab, "put", keys.BARRIER, json.dumps({"at": time.time()}), "-w", "json"))
    barrier = int(out["header"]["revision"])
    nodes = [n.name for n in Lab(lab).plan.nodes]

    def synced() -> bool:
        done = etcd_get_prefix(lab, keys.POLICY_STATUS)
        return all(done.get(keys.policy_status(n), {}).get("revision", 0) >= barrier for n in nodes)
    wait_for(synced, "every agent past the barrier", timeout=timeout, interval=0.1)
    return time.monotonic() - t0


def workloads(lab: str) -> list[dict]:
    return list(etcd_get_prefix(lab, keys.WORKLOADS).values())


# --- the node's CNI, called as a runtime calls it --------------------------------------------
class CniNode:
    """A lab node's shim and conflist (as install-cni wrote them), called with a sandbox of
    our own: what a runtime does, without the API server in the way."""

    def __init__(self, lab: str, info: dict):
        self.lab, self.name, self.netns = lab, info["name"], info["netns"]
        self.binary = os.path.join(info["cni_bin_dir"], "calico-lite")
        conflist = json.load(open(os.path.join(info["cni_conf_dir"], "10-calico-lite.conflist")))
        self.plugin = {**conflist["plugins"][0], "cniVersion": "1.1.0", "name": conflist["name"]}
        self.conf = json.dumps(self.plugin)

    def call(self, verb: str, cid: str, netns: str, stdin: str | None = None,
             env: dict | None = None, timeout: float = 120) -> tuple[int, dict, float]:
        """(exit code, parsed stdout, seconds taken)."""
        base = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": f"K8S_POD_NAMESPACE=faults;K8S_POD_NAME={cid[:8]}"}
        t0 = time.monotonic()
        p = subprocess.run([self.binary], input=self.conf if stdin is None else stdin,
                           env=base if env is None else env, capture_output=True, text=True,
                           timeout=timeout)
        took = time.monotonic() - t0
        return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), took

    def sandbox(self) -> tuple[str, str]:
        """A new pod network namespace (container id, netns path), as a runtime makes one."""
        cid = uuid.uuid4().hex
        name = f"{self.lab}-s-{cid[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        return cid, f"/var/run/netns/{name}"


def cni_nodes(lab: str) -> list[CniNode]:
    status = json.loads(lab_cli("lab", "status", "--name", lab, "--json").stdout)
    return [CniNode(lab, n) for n in status["nodes"]]


def drop_sandbox(netns: str) -> None:
    subprocess.run(["ip", "netns", "delete", os.path.basename(netns)], capture_output=True)


# --- audits: what was lost or left behind ----------------------------------------------------
def ipam_check(lab: str, grace: float = 0) -> dict:
    p = lab_cli("ipam", "check", "--lab", lab, "--json", "--grace", str(grace), check=False)
    return json.loads(p.stdout)


def ipam_gc(lab: str) -> str:
    return lab_cli("ipam", "gc", "--lab", lab, "--grace", "0").stdout


def duplicates(addresses: list[str]) -> list[str]:
    seen, dup = set(), []
    for a in addresses:
        if a in seen:
            dup.append(a)
        seen.add(a)
    return dup


def _ip_json(netns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def node_leftovers(lab: str, node: str, netns: str, live: list[dict]) -> list[str]:
    """What the node's kernel holds for no live workload: a `cali…` veth, a /32 host route on
    one, an address or interface in the policy table's sets and maps (or the ARP table's). `live` are the
    cluster's workload records."""
    mine = {w["host_ifname"]: w["ip"] for w in live if w.get("node") == node}
    ips = {w["ip"] for w in live}
    left = [f"veth {link['ifname']}" for link in _ip_json(netns, "link")
            if link["ifname"].startswith("cali") and link["ifname"] not in mine]
    for r in _ip_json(netns, "route"):
        dev = r.get("dev", "")
        if dev.startswith("cali") and mine.get(dev) != r["dst"]:
            left.append(f"route {r['dst']} dev {dev}")
    table = "".join(subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", family, "calico-lite"],
                                   capture_output=True, text=True).stdout for family in ("inet", "arp"))
    for name in sorted(set(re.findall(r"\bcali[0-9a-f]{11}\b", table)) - set(mine)):
        left.append(f"nft element {name}")
    pods_net = re.compile(r"\b10\.244\.\d+\.\d+\b(?!/)")
    for ip in sorted(set(pods_net.findall(table)) - ips):
        left.append(f"nft element {ip}")
    return left


def all_leftovers(lab: str) -> dict[str, list[str]]:
    live = workloads(lab)
    return {n.name: left for n in cni_nodes(lab)
            if (left := node_leftovers(lab, n.name, n.netns, live))}


def agent_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else 0.0
