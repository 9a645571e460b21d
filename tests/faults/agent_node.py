"""A real node agent in a namespace of its own, with its own etcd, for the fault tests.

The node namespace sits on a segment (a bridge in another namespace) where routers
(GoBGP, FRR) can be added. etcd runs inside the node namespace on its loopback, so the
agent reaches it and nothing outside the namespace can; the test reaches both through
`ip netns exec` (the CLI, tests/ds_helper.py for raw writes, the agent's /metrics).
Everything (namespaces, processes) is removed afterwards, also on failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from calico_lite import keys
from tests.conftest import CLI, REPO, SHIM
from tests.nft_node import normalized
from tests.nslib import attach_to_segment, remove_netns_with_prefix, sh, unique_prefix, wait_for

ETCD = "http://127.0.0.1:2379"
SUBNET = "10.99.1.0/24"
GOBGP = "10.99.1.1"


@dataclass
class AgentNode:
    prefix: str
    root: Path
    name: str = "n1"
    address: str = "10.99.1.11"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _ds: subprocess.Popen | None = None

    @property
    def seg(self) -> str:
        return f"{self.prefix}seg"

    @property
    def netns(self) -> str:
        return f"{self.prefix}{self.name}"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    def attach(self, name: str, address: str) -> str:
        """A namespace on the segment with `address`/24 on its eth0."""
        return attach_to_segment(self.seg, self.prefix, name, address)

    def spawn(self, key: str, netns: str, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=open(log, "a"),
                             stderr=subprocess.STDOUT, cwd=REPO, **kw)
        self.procs[key] = p
        return p

    def start_etcd(self) -> None:
        data = self.root / "etcd"
        self.spawn("etcd", self.netns, [
            "etcd", "--name", "n", "--data-dir", str(data),
            "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD,
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "n=http://127.0.0.1:2380",
            "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"],
            self.root / "etcd.log")
        wait_for(lambda: self.cli("pool", "list", check=False).returncode == 0, "etcd up", 30, 0.2)

    def start_agent(self, *extra: str) -> subprocess.Popen:
        """`calico-lite node run` in the node namespace (this worktree's code)."""
        self.procs.pop("agent", None)
        return self.spawn("agent", self.netns, [
            *CLI, "--etcd-endpoints", ETCD, "node", "run", "--name", self.name,
            "--address", self.address, "--subnet", SUBNET, "--as", "64601",
            "--cni-socket", str(self.root / "cni.sock"), "--run-dir", str(self.root / "run"),
            "--health-listen", "127.0.0.1:9099", *extra], self.log,
            env=_env())

    def stop_agent(self) -> None:
        p = self.procs.pop("agent", None)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def agent_alive(self) -> bool:
        p = self.procs.get("agent")
        return p is not None and p.poll() is None

    def start_gobgp(self, address: str = GOBGP, asn: int = 65001) -> str:
        """GoBGP on the segment, peering with this node (AS 64601); its namespace."""
        ns = self.attach("gobgp", address)
        conf = self.root / "gobgpd.toml"
        conf.write_text("\n".join([
            "[global.config]", f"  as = {asn}", f'  router-id = "{address}"',
            f'  local-address-list = ["{address}"]', "[[neighbors]]", "  [neighbors.config]",
            f'    neighbor-address = "{self.address}"', "    peer-as = 64601",
            "  [neighbors.timers.config]", "    hold-time = 9", "    keepalive-interval = 3"]) + "\n")
        self.spawn("gobgpd", ns, ["gobgpd", "-f", str(conf), "-p", "--api-hosts",
                                  "127.0.0.1:50051", "--pprof-disable"], self.root / "gobgpd.log")
        return ns

    def announce(self, prefix: str, next_hop: str = GOBGP, withdraw: bool = False) -> None:
        """GoBGP announces (or withdraws) prefix."""
        sh("ip", "netns", "exec", f"{self.prefix}gobgp", "gobgp", "global", "rib",
           "del" if withdraw else "add", "-a", "ipv4", prefix,
           *(() if withdraw else ("nexthop", next_hop)))

    def established(self) -> bool:
        return any(p["state"] == "Established" for p in self.status().get("peers", []))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = sh("ip", "netns", "exec", self.netns, *CLI, "--etcd-endpoints", ETCD, *args,
               check=False, env=_env(), timeout=60)
        if check and p.returncode:
            raise AssertionError(f"calico-lite {' '.join(args)}: {p.stdout}{p.stderr}")
        return p

    def cni(self, command: str, container: str, netns: str, pod: str,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """One CNI call through the real shim to this node's agent (pod a/POD, eth0)."""
        conf = {"cniVersion": "1.0.0", "name": "k8s", "type": "calico-lite",
                "agent_socket": str(self.root / "cni.sock")}
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME={pod}"}
        return sh(str(SHIM), input=json.dumps(conf), env=env, check=False, timeout=timeout)

    def cni_add(self, container: str, netns: str, pod: str) -> dict:
        """A successful ADD's result."""
        p = self.cni("ADD", container, netns, pod)
        assert p.returncode == 0, (p.stdout, p.stderr)
        return json.loads(p.stdout)

    def add_pod(self, pod: str) -> str:
        """The pod a/POD in a namespace of its own (PREFIX+POD), wired by ADD; its address."""
        netns = f"{self.prefix}{pod}"
        sh("ip", "netns", "add", netns)
        return self.cni_add(f"ctr-{pod}", netns, pod)["ips"][0]["address"].split("/")[0]

    def ds(self, op: str, **kw):
        """One raw datastore call (tests/ds_helper.py in the node namespace)."""
        if self._ds is None:
            self._ds = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "tests.ds_helper", ETCD],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=_env())
        self._ds.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self._ds.stdin.flush()
        out = json.loads(self._ds.stdout.readline())
        assert "error" not in out, out
        return out["ok"]

    def put_pod_records(self) -> None:
        """Namespace a, pod a/pod1 (app=x) and its workload record on this node (cali1,
        10.244.0.5): a local pod for policy tests that need no real interface."""
        self.ds("put", key=keys.k8s_namespace("a"), value={"name": "a", "labels": {}})
        self.ds("put", key=keys.k8s_pod("a", "pod1"),
                value={"namespace": "a", "name": "pod1", "labels": {"app": "x"}, "ports": []})
        self.ds("put", key=keys.workload(self.name, "h1"),
                value={"namespace": "a", "pod": "pod1", "ip": "10.244.0.5", "node": self.name,
                       "host_ifname": "cali1"})

    def put_raw(self, key: str, raw: bytes) -> None:
        """A value that is not JSON (or not what the key should hold), as a broken writer
        would leave it: etcdctl puts the bytes as they are."""
        subprocess.run(["ip", "netns", "exec", self.netns, "etcdctl", "--endpoints", ETCD, "put",
                        key], input=raw, check=True, capture_output=True,
                       env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def status(self) -> dict:
        """The node's status record ({} until the agent published one)."""
        p = self.cli("node", "status", self.name, "--json", check=False)
        return json.loads(p.stdout)[0] if p.returncode == 0 else {}

    def metrics(self) -> str:
        return sh("ip", "netns", "exec", self.netns, "curl", "-s",
                  "http://127.0.0.1:9099/metrics").stdout

    def filtered_counts(self) -> dict[tuple[str, str], float]:
        """calico_lite_bgp_prefixes_filtered_total by (peer, reason), from /metrics."""
        rows = re.findall(r'^calico_lite_bgp_prefixes_filtered_total\{peer="([^"]+)",'
                          r'reason="([^"]+)"\} (\S+)', self.metrics(), re.M)
        return {(peer, reason): float(v) for peer, reason, v in rows}

    def kernel_table(self) -> dict | None:
        """Our `inet calico-lite` table in the node, normalized (None: no table)."""
        p = sh("nft", "-j", "list", "table", "inet", "calico-lite", netns=self.netns, check=False)
        return normalized(p.stdout) if p.returncode == 0 else None

    def routes(self, *selector: str) -> dict[str, list[str]]:
        """Kernel routes of the node (all, or those `selector` picks): prefix -> gateways."""
        out = sh("ip", "-j", "route", "show", *selector, netns=self.netns).stdout
        rows = {}
        for r in json.loads(out or "[]"):
            hops = [r["gateway"]] if "gateway" in r else [h.get("gateway") for h in r.get("nexthops", [])]
            dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"]
            rows[dst if "/" in dst else f"{dst}/32"] = hops
        return rows

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self._ds is not None:
            self._ds.stdin.close()
            self._ds.wait(10)
        for key in list(self.procs):
            p = self.procs.pop(key)
            if p.poll() is None:
                p.kill()
                p.wait()


def _env() -> dict[str, str]:
    import os
    return {**os.environ, "PYTHONPATH": str(REPO), "CALICO_LITE_LAB": ""}


@contextlib.contextmanager
def agent_node(tag: str = "bs") -> Iterator[AgentNode]:
    """A segment, a node namespace on it with etcd running; the agent is the test's to start."""
    prefix = unique_prefix(tag)
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    root.chmod(0o755)   # FRR drops to user frr
    node = AgentNode(prefix, root)
    try:
        sh("ip", "netns", "add", node.seg)
        sh("ip", "-n", node.seg, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", node.seg, "link", "set", "br0", "up")
        node.attach(node.name, node.address)
        node.start_etcd()
        yield node
    except BaseException:
        for log in sorted(root.glob("*.log")):   # what the processes said, for the failure
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        node.close()
        remove_netns_with_prefix(prefix)
        shutil.rmtree(root, ignore_errors=True)
        left = [l for l in sh("ip", "netns", "list").stdout.splitlines() if l.startswith(prefix)]
        assert not left, f"namespaces left behind: {left}"


def wait_until(check, what: str, timeout: float = 60.0):
    """Eventual state, polled (never a timing assertion)."""
    return wait_for(check, what, timeout, 0.2)
