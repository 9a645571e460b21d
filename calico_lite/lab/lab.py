"""`calico-lite lab`: a whole multi-rack cluster on one machine, out of network namespaces.

Nothing is configured in the machine's own namespace: every link, address and route is
created with `ip -n <lab namespace>`, and the lab's etcd is reached by entering the lab's
control-plane namespace, so no lab address is routable from the host.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calico_lite import keys
from calico_lite.datastore import Datastore
from calico_lite.etcd_tls import EtcdTls
from calico_lite.install import install_cni
from calico_lite.health import readyz
from calico_lite.lab import control_plane as cp
from calico_lite.lab import fabric
from calico_lite.lab import plumbing as pl
from calico_lite.lab.plan import LabPlan, PlanError, make_plan
from calico_lite.lab.probe import Endpoint, probe_all
from calico_lite.lab.serve import parse as parse_serve
from calico_lite.lab.state import StateStore
from plugin.netns import enter, setns

if TYPE_CHECKING:  # the kubernetes client costs ~1 s to import: only where it is used
    from calico_lite.lab.cluster import LabApi

READY_TIMEOUT = 90.0
REPO = Path(__file__).resolve().parents[2]


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodePaths:
    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "cni" / "bin"

    @property
    def conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def socket(self) -> Path:
        return self.root / "cni.sock"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    @property
    def cni_log(self) -> Path:
        return self.root / "cni.log"


class Lab:
    def __init__(self, name: str = "lab"):
        self.name = name
        self.store = StateStore(name)
        self._ds: Datastore | None = None
        self._api = None   # cluster.LabApi, made on first use
        self._home: int | None = None

    # --- plan and paths ------------------------------------------------------------------
    @property
    def plan(self) -> LabPlan:
        st = self.store.load()
        if not st.params:
            raise LabError(f"lab {self.name} is not up (run `calico-lite lab up --name {self.name}`)")
        return make_plan(self.name, **st.params)

    def node_paths(self, node: str) -> NodePaths:
        return NodePaths(self.store.dir / "nodes" / node)

    @property
    def kube(self) -> cp.KubePaths:
        return cp.KubePaths(self.store.dir / "kube")

    def _enter_cp(self) -> None:
        """Move the calling process into the lab's control-plane namespace, where etcd and the
        API server are reached (before any client starts a thread), so it must come after any
        work that needs the machine's own namespace."""
        if self._home is None:
            self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            enter(f"/var/run/netns/{self.plan.cp_netns}")

    @property
    def etcd_tls(self) -> EtcdTls | None:
        """The TLS files calico-lite's components use for the lab's etcd (its CA, the
        `calico-lite` client certificate and key); None for `lab up --insecure-etcd`."""
        return fabric.etcd_tls(self.plan, "calico-lite")

    def datastore(self) -> Datastore:
        """The lab's etcd, from inside its control-plane namespace."""
        if self._ds is None:
            plan, tls = self.plan, self.etcd_tls
            self._enter_cp()
            self._ds = Datastore([plan.etcd_local_endpoint], tls=tls)
        return self._ds

    def api(self) -> LabApi:
        """The lab's Kubernetes API as its admin, from inside its control-plane namespace."""
        if self._api is None:
            from calico_lite.lab.cluster import LabApi  # the client costs ~1 s to import
            self._enter_cp()
            self._api = LabApi(str(self.kube.admin_kubeconfig))
        return self._api

    def _leave_datastore(self) -> None:
        """Back to the namespace we came from, so removing the lab's cannot take us with it."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        self._api = None
        if self._home is not None:
            setns(self._home, "the original network namespace")
            os.close(self._home)
            self._home = None

    # --- up ------------------------------------------------------------------------------
    def up(self, racks: int = 2, nodes_per_rack: int = 2, bgp: str = "tor",
           log=print, encap: str = "none", etcd_tls: bool = True) -> LabPlan:
        plan = make_plan(self.name, racks, nodes_per_rack, bgp, encap, etcd_tls)
        if self.store.exists():
            raise LabError(f"lab {self.name} already exists; `calico-lite lab down --name "
                           f"{self.name}` first")
        taken = [n for n in plan.infra_netns() if pl.netns_exists(n)]
        if taken:
            raise LabError(f"namespaces already exist: {', '.join(taken)} (another lab?)")
        with self.store.edit() as st:
            st.params = {"racks": racks, "nodes_per_rack": nodes_per_rack, "bgp": bgp,
                         "encap": encap, "etcd_tls": etcd_tls}
        try:
            t0 = time.monotonic()
            for ns in plan.infra_netns():
                self._netns(ns)
            fabric.build(plan)
            fabric.start_etcd(plan, self.store)
            fabric.write_default_pool(plan)
            fabric.write_bgp_records(plan)
            fabric.start_routers(plan, self.store)
            log(f"fabric and etcd up in {time.monotonic() - t0:.1f}s; starting "
                f"{len(plan.nodes)} node agents")
            for node in plan.nodes:
                self._start_agent(plan, node)
            self._start_control_plane(plan)
            self._wait_ready(plan)
            self._start_kube_sync(plan)
            for node in plan.nodes:
                self._start_node_component(node)
            self._wait_nodes(plan)
            log(f"lab {self.name} up in {time.monotonic() - t0:.1f}s; kubectl: "
                f"calico-lite lab kubectl --name {self.name} -- get nodes")
        except BaseException:
            self.down()
            raise
        return plan

    def _netns(self, name: str) -> None:
        self.store.add_netns(name)  # recorded first: a crash right after still gets cleaned
        pl.add_netns(name)

    def _start_agent(self, plan: LabPlan, node) -> None:
        paths = self.node_paths(node.name)
        install_cni(paths.bin_dir, paths.conf_dir, agent_socket=str(paths.socket),
                    log_file=str(paths.cni_log))
        loopback = Path("/usr/lib/cni/loopback")  # containerd's CRI wants it beside ours
        if loopback.exists():
            shutil.copy2(loopback, paths.bin_dir / "loopback")
        argv = [sys.executable, "-m", "calico_lite.cli", "node", "run",
                "--name", node.name, "--etcd-endpoints", plan.etcd_endpoint,
                *(self.etcd_tls.argv() if self.etcd_tls else []),
                "--cni-socket", str(paths.socket), "--run-dir", str(paths.root),
                "--address", node.address, "--subnet", node.subnet, "--as", str(node.asn),
                "--rack", f"rack{node.rack}", "--label", f"rack=rack{node.rack}"]
        # BGP peers come from the datastore (_write_bgp_records); the argv is kept so that
        # `lab node restart` starts the agent again exactly as before
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / "agent.argv").write_text(json.dumps(argv))
        self._spawn_agent(node.name)

    # --- Kubernetes: control plane, kube-sync, node components ---------------------------
    def _start_control_plane(self, plan: LabPlan) -> None:
        self.kube.root.mkdir(parents=True, exist_ok=True)
        cp.make_credentials(self.kube, [n.name for n in plan.nodes])
        cp.start(self.kube, plan.cp_netns, lambda label, pid: self.store.add_pid(f"kube:{label}", pid),
                 etcd=cp.EtcdClient(plan.etcd_local_endpoint, fabric.etcd_tls(plan, "kube-apiserver")))

    def _start_kube_sync(self, plan: LabPlan) -> None:
        cp.start_kube_sync(self.kube, plan.cp_netns, lambda pid: self.store.add_pid("kube-sync", pid),
                           etcd=cp.EtcdClient(plan.etcd_local_endpoint, self.etcd_tls))


    def stop_kube_sync(self) -> None:
        """For benches that write the datastore directly (etcd mode): kube-sync's resync would
        delete records that have no object in the API."""
        pl.kill_pids(list(self.store.pop_pids("kube-sync").values()))

    def _start_node_component(self, node) -> int:
        argv = [sys.executable, "-m", "calico_lite.lab.kubelet", "--lab", self.name, "--node", node.name]
        pid = pl.spawn(node.netns, argv, self.node_paths(node.name).root / "kubelet.log",
                       env={"PYTHONPATH": str(REPO)})
        self.store.add_pid(f"kubelet:{node.name}", pid)
        return pid

    def _wait_nodes(self, plan: LabPlan, timeout: float = READY_TIMEOUT) -> None:
        """Every lab node registered and Ready in the API (its node component is up)."""
        deadline = time.monotonic() + timeout
        while missing := sorted({n.name for n in plan.nodes} - self.api().ready_nodes()):
            dead = [k for k, pid in self.store.load().pids.items()
                    if k.startswith(("kubelet:", "kube:")) and not pl.pid_alive(pid)]
            if dead or time.monotonic() > deadline:
                raise LabError(f"nodes not Ready in the API: {', '.join(missing)}"
                               + (f"; exited: {', '.join(dead)}" if dead else "")
                               + f" (see {self.store.dir}/nodes/NODE/kubelet.log, {self.kube.root})")
            time.sleep(0.2)

    def kubectl_argv(self, args: list[str]) -> list[str]:
        self.plan  # noqa: B018 - raises LabError if the lab is not up
        return cp.kubectl_argv(self.kube, self.plan.cp_netns, args)

    def shell_argv(self) -> list[str]:
        return cp.shell_argv(self.kube, self.plan.cp_netns, self.name)

    def _spawn_agent(self, name: str) -> int:
        node, paths = self.plan.node(name), self.node_paths(name)
        argv = json.loads((paths.root / "agent.argv").read_text())
        pid = pl.spawn(node.netns, argv, paths.agent_log, env={"PYTHONPATH": str(REPO)})
        self.store.add_pid(f"agent:{name}", pid)
        return pid

    # --- node agents: restart, stop, start (graceful restart and failure tests) ----------
    def exabgp_pid(self, name: str) -> int | None:
        try:
            pid = int((self.node_paths(name).root / "bgp" / "exabgp.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pl.pid_alive(pid) else None

    def node_stop(self, name: str, how: str = "detach", timeout: float = 15.0) -> None:
        """Stop a node's agent. detach: SIGTERM, ExaBGP and routes stay (an upgrade);
        withdraw: SIGUSR2, the agent withdraws its routes and stops ExaBGP (a clean
        shutdown); kill: SIGKILL agent and ExaBGP (a crashed node)."""
        self.plan.node(name)
        pid = self.store.load().pids.get(f"agent:{name}")
        exabgp = self.exabgp_pid(name)
        sig = {"kill": 9, "withdraw": 12}.get(how, 15)
        for p in (pid, exabgp if how == "kill" else None):
            if p and pl.pid_alive(p):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while pid and pl.pid_alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"agent of {name} (pid {pid}) did not exit in {timeout:.0f}s")
            time.sleep(0.02)
        if how == "withdraw" and exabgp:
            pl.kill_pids([exabgp], grace=5.0)   # normally gone already with the agent

    def node_start(self, name: str, component: str = "agent") -> int:
        """Start a node's agent, or its node component (`kubelet`), if it is not running."""
        node = self.plan.node(name)
        pid = self.store.load().pids.get(f"{component}:{name}")
        if pid and pl.pid_alive(pid):
            raise LabError(f"{component} of {name} is running (pid {pid})")
        if component == "kubelet":
            return self._start_node_component(node)
        return self._spawn_agent(name)

    def node_restart(self, name: str) -> int:
        """SIGTERM the agent and start it again with the same argv: the new agent adopts
        the running ExaBGP, so neither peers nor pods notice (graceful restart)."""
        self.node_stop(name, "detach")
        return self._spawn_agent(name)

    def _wait_ready(self, plan: LabPlan) -> None:
        """Every agent serves its CNI socket and has all its BGP sessions Established."""
        ds = self.datastore()
        deadline = time.monotonic() + READY_TIMEOUT
        pending = [n.name for n in plan.nodes]
        while pending:
            for name in list(pending):
                status = (ds.get(keys.status(name)) or None)
                peers = status.value.get("peers", []) if status else []
                if (self.node_paths(name).socket.exists() and peers
                        and all(p["state"] == "Established" for p in peers)):
                    pending.remove(name)
            dead = [n for n, pid in self.store.load().pids.items()
                    if n.startswith("agent:") and not pl.pid_alive(pid)]
            if dead:
                raise LabError(f"agent(s) exited: {', '.join(dead)}; see "
                               f"{self.store.dir}/nodes/*/agent.log")
            if time.monotonic() > deadline:
                raise LabError(f"nodes not ready after {READY_TIMEOUT:.0f}s: {', '.join(pending)} "
                               f"(see {self.store.dir}/nodes/NODE/agent.log)")
            time.sleep(0.2)

    def converged(self) -> list[str]:
        """Nodes whose routing does not yet know every block in the datastore (empty: done)."""
        ds = self.datastore()
        wanted = {keys.block_cidr(e.key) for e in ds.list(keys.AFFINITIES)}
        lagging = []
        for n in self.plan.nodes:
            e = ds.get(keys.status(n.name))
            s = e.value if e else {}
            known = (set(s.get("blocks", [])) | {r["prefix"] for r in s.get("routes", [])}
                     | {r["prefix"] for r in s.get("skipped", [])})
            if not wanted <= known:
                lagging.append(n.name)
        return lagging

    def wait_converged(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while lagging := self.converged():
            if time.monotonic() > deadline:
                raise LabError(f"routes not converged after {timeout:.0f}s on {', '.join(lagging)}")
            time.sleep(0.1)

    def wait_mirrored(self, timeout: float = 30.0) -> None:
        """Until kube-sync has brought the API's namespaces, pods and policies as of now into
        the datastore: the records it should have written (its own pure transforms of a fresh
        listing) are the ones there."""
        from calico_lite.kube_sync import mirror_difference
        deadline = time.monotonic() + timeout
        while diff := mirror_difference(self.api().listing(), self.datastore()):
            if time.monotonic() > deadline:
                raise LabError(f"kube-sync has not mirrored the API after {timeout:.0f}s: {diff} "
                               f"(see {self.kube.log('kube-sync')})")
            time.sleep(0.05)

    def wait_policy(self, timeout: float = 30.0) -> float:
        """Until every agent has enforced everything in the API as of now; returns the seconds
        it took. First kube-sync must have mirrored the API into the datastore; then a barrier
        write makes each agent's policy controller run once more, and its published revision
        tells when it has."""
        start = time.monotonic()
        self.wait_mirrored(timeout)
        ds = self.datastore()
        barrier = ds.put(keys.BARRIER, {"at": time.time()})
        pending = {n.name for n in self.plan.nodes}
        while pending:
            for name in list(pending):
                e = ds.get(keys.policy_status(name))
                if e and e.value.get("revision", 0) >= barrier:
                    if e.value.get("error"):
                        raise LabError(f"policy on {name} not applied: {e.value['error']}")
                    pending.discard(name)
            if pending and time.monotonic() - start > timeout:
                raise LabError(f"policy not enforced after {timeout:.0f}s on {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.02)
        return time.monotonic() - start

    # --- down ----------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove every process, namespace and file of the lab; safe after any crash."""
        self._leave_datastore()
        st = self.store.load()
        pl.kill_pids(list(st.pids.values()), grace=3.0)
        removed = []
        names = set(st.netns)
        if st.params:
            names |= set(make_plan(self.name, **st.params).infra_netns())
        for ns in sorted(names):
            if pl.netns_exists(ns):
                pl.delete_netns(ns)
                removed.append(ns)
        shutil.rmtree(self.store.dir, ignore_errors=True)
        return removed

    # --- namespaces and pods: through the lab's API server --------------------------------
    def ns_add(self, namespace: str, labels: dict[str, str]) -> None:
        self.api().ns_add(namespace, labels)

    def ns_label(self, namespace: str, changes: dict[str, str | None]) -> dict:
        return self.api().ns_label(namespace, changes)

    def pod_add(self, namespace: str, pod: str, node: str, labels: dict[str, str],
                serve: list[str], ports: list[dict]) -> str:
        """A Pod bound to node whose containerPorts are the served and the named ports; its
        node component makes it (CNI ADD, echo servers) and reports it Ready."""
        from calico_lite.lab.cluster import container_ports
        self.plan.node(node)
        declared = container_ports(parse_serve(serve), ports)
        return self.api().pod_add(namespace, pod, node, labels, declared)

    def pod_del(self, namespace: str, pod: str) -> None:
        self.api().pod_del(namespace, pod)

    def pod_label(self, namespace: str, pod: str, changes: dict[str, str | None]) -> dict:
        return self.api().pod_label(namespace, pod, changes)

    def pods(self) -> list[dict]:
        return sorted(({"namespace": w["namespace"], "name": w["pod"], "node": w["node"],
                        "ip": w["ip"], "netns": w["netns"]}
                       for w in (e.value for e in self.datastore().list(keys.WORKLOADS))),
                      key=lambda p: (p["namespace"], p["name"]))

    def exec(self, namespace: str, pod: str, argv: list[str]) -> int:
        netns = self.plan.pod_netns(namespace, pod)
        if not pl.netns_exists(netns):
            raise LabError(f"pod {namespace}/{pod} does not exist in lab {self.name}")
        return subprocess.call(["ip", "netns", "exec", netns, *argv])

    def probe(self, port: int = 80, protocol: str = "tcp") -> list[dict]:
        eps = [Endpoint(p["namespace"], p["name"], p["ip"], p["netns"]) for p in self.pods()]
        return probe_all(eps, port, protocol)

    # --- status --------------------------------------------------------------------------
    def status(self) -> dict:
        plan = self.plan
        st = self.store.load()
        ds = self.datastore()
        etcd = "healthy" if ds.healthy() else "unreachable"

        def running(label: str) -> str:
            pid = st.pids.get(label)
            return "running" if pid and pl.pid_alive(pid) else "stopped"
        nodes = []
        for n in plan.nodes:
            s = ds.get(keys.status(n.name)) if etcd == "healthy" else None
            ready = readyz(n.netns, timeout=2.0)
            paths = self.node_paths(n.name)
            nodes.append({
                "name": n.name, "rack": f"rack{n.rack}", "address": n.address, "netns": n.netns,
                "agent": running(f"agent:{n.name}"), "kubelet": running(f"kubelet:{n.name}"),
                "ready": ready["ready"],
                "unready": {k: v for k, v in ready["checks"].items() if v != "ok"},
                "cni_bin_dir": str(paths.bin_dir), "cni_conf_dir": str(paths.conf_dir),
                "bgp": [{"peer": p["address"], "state": p["state"]}
                        for p in (s.value.get("peers", []) if s else [])],
                "notes": s.value.get("notes", []) if s else []})
        pods = [{k: p[k] for k in ("namespace", "name", "node", "ip")}
                for p in (self.pods() if etcd == "healthy" else [])]
        kubernetes = {"version": cp.KUBE_VERSION, "kubeconfig": str(self.kube.admin_kubeconfig),
                      "apiserver": running("kube:kube-apiserver"),
                      "controller_manager": running("kube:kube-controller-manager"),
                      "scheduler": running("kube:kube-scheduler"), "kube_sync": running("kube-sync"),
                      "kubectl": cp.find_kubectl()}
        return {"name": self.name, "bgp_mode": plan.bgp, "encap": plan.encap, "nodes": nodes,
                "etcd": etcd, "kubernetes": kubernetes, "pods": pods}


__all__ = ["Lab", "LabError", "PlanError"]
