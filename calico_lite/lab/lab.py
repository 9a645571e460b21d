"""`calico-lite lab`: a whole multi-rack cluster on one machine, out of network namespaces.

Nothing is configured in the machine's own namespace: every link, address and route is
created with `ip -n <lab namespace>`, and the lab's etcd is reached by entering the lab's
control-plane namespace, so no lab address is routable from the host.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from calico_lite import keys
from calico_lite.datastore import Datastore
from calico_lite.etcd_tls import EtcdTls
from calico_lite.health import readyz
from calico_lite.lab import agents
from calico_lite.lab import control_plane as cp
from calico_lite.lab import fabric, manifests, nokube
from calico_lite.lab import plumbing as pl
from calico_lite.lab.nodepaths import NodePaths
from calico_lite.lab.plan import API_PORT, ETCD_IP, MESH_AS, LabPlan, PlanError, make_plan
from calico_lite.lab.probe import Endpoint, probe_all
from calico_lite.lab.serve import parse as parse_serve
from calico_lite.lab.state import LabError, StateStore
from calico_lite.lab.waits import LabWaits, ready_timeout
from plugin.netns import enter, setns

if TYPE_CHECKING:  # the kubernetes client costs ~1 s to import: only where it is used
    from calico_lite.lab.cluster import LabApi

REPO = Path(__file__).resolve().parents[2]


class Lab(LabWaits):
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
        if not self.plan.kubernetes:
            raise LabError(f"lab {self.name} runs without Kubernetes (lab up --no-kubernetes)")
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
           log=print, encap: str = "none", etcd_tls: bool = True,
           kubernetes: bool = True, bfd: bool = False) -> LabPlan:
        """kubernetes=False: no control plane, agents and pods made by the lab (lab.nokube).
        bfd: the ToRs run BFD with their nodes, and the nodes' ToR peers have it on."""
        plan = make_plan(self.name, racks, nodes_per_rack, bgp, encap, etcd_tls, kubernetes, bfd)
        if self.store.exists():
            raise LabError(f"lab {self.name} already exists; `calico-lite lab down --name "
                           f"{self.name}` first")
        taken = [n for n in plan.infra_netns() if pl.netns_exists(n)]
        if taken:
            raise LabError(f"namespaces already exist: {', '.join(taken)} (another lab?)")
        with self.store.edit() as st:
            st.params = {"racks": racks, "nodes_per_rack": nodes_per_rack, "bgp": bgp,
                         "encap": encap, "etcd_tls": etcd_tls, "kubernetes": kubernetes,
                         **({"bfd": True} if bfd else {})}
        try:
            t0 = time.monotonic()
            for ns in plan.infra_netns():
                self._netns(ns)
            fabric.build(plan)
            fabric.start_etcd(plan, self.store)
            fabric.write_default_pool(plan)
            fabric.write_bgp_records(plan)
            fabric.start_routers(plan, self.store)
            for node in plan.nodes:
                self._provision(node)
            if not kubernetes:
                return nokube.up(self, log, t0)
            log(f"fabric and etcd up in {time.monotonic() - t0:.1f}s; starting Kubernetes")
            self._start_control_plane(plan)
            for node in plan.nodes:
                self._start_node_component(node)
            log(f"control plane up in {time.monotonic() - t0:.1f}s; kubectl apply -f deploy/")
            self.install()
            self._wait_ready(plan)
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

    def _provision(self, node) -> None:
        """What a node's OS brings before calico-lite is installed: the CNI folders, with the
        reference loopback plugin (containerd's CRI wants it beside ours)."""
        paths = self.node_paths(node.name)
        for d in (paths.bin_dir, paths.conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        loopback = Path("/usr/lib/cni/loopback")
        if loopback.exists():
            shutil.copy2(loopback, paths.bin_dir / "loopback")

    # --- calico-lite itself: deploy/ applied with kubectl --------------------------------
    def rendered_manifests(self, image_tag: str | None = None) -> Path:
        """deploy/ with the lab's values set (manifests.render), written beside the lab's
        kubeconfigs: what `install` applies and `kubectl delete -f` removes."""
        tls = self.etcd_tls
        files = ({"ca.crt": Path(tls.ca_file).read_bytes(), "tls.crt": Path(tls.cert_file).read_bytes(),
                  "tls.key": Path(tls.key_file).read_bytes()} if tls else None)
        docs = manifests.render(manifests.load(), self.plan.etcd_endpoint, MESH_AS, ETCD_IP,
                                API_PORT, etcd_files=files, image_tag=image_tag)
        return manifests.write(docs, self.kube.root / "calico-lite.yaml")

    def install(self) -> None:
        """`kubectl apply -f` the rendered deploy/, then wait until the DaemonSet and the
        kube-sync Deployment have rolled out (every pod Ready by its readiness probe)."""
        self.kubectl("apply", "-f", str(self.rendered_manifests()))
        self.wait_rolled_out(ready_timeout(self.plan))

    def wait_rolled_out(self, timeout: float) -> None:
        def dead() -> str:
            return ", ".join(k for k, pid in self.store.load().pids.items()
                             if k.startswith(("kubelet:", "kube:")) and not pl.pid_alive(pid))
        manifests.wait_rolled_out(
            lambda kind, name: self.api().workload(kind, manifests.NAMESPACE, name),
            [("DaemonSet", manifests.NODE_DS), ("Deployment", manifests.KUBE_SYNC)], timeout, dead)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return cp.kubectl(self.kube, self.plan.cp_netns, *args, input=input).stdout

    # --- Kubernetes: control plane, kube-sync, node components ---------------------------
    def _start_control_plane(self, plan: LabPlan) -> None:
        self.kube.root.mkdir(parents=True, exist_ok=True)
        cp.make_credentials(self.kube, [n.name for n in plan.nodes])
        cp.start(self.kube, plan.cp_netns, lambda label, pid: self.store.add_pid(f"kube:{label}", pid),
                 etcd=cp.EtcdClient(plan.etcd_local_endpoint, fabric.etcd_tls(plan, "kube-apiserver")))

    def stop_kube_sync(self, timeout: float = 30.0) -> None:
        """For benches that write the datastore directly (etcd mode): kube-sync's resync would
        delete records that have no object in the API. Scaled to 0, as an operator would."""
        self.kubectl("scale", "-n", manifests.NAMESPACE, f"deployment/{manifests.KUBE_SYNC}",
                     "--replicas=0")
        deadline = time.monotonic() + timeout
        while any(k.startswith("kube-sync:") and pl.pid_alive(p) for k, p in self.store.load().pids.items()):
            if time.monotonic() > deadline:
                raise LabError(f"kube-sync still running {timeout:.0f}s after scaling it to 0")
            time.sleep(0.1)

    def _start_node_component(self, node) -> int:
        argv = [sys.executable, "-m", "calico_lite.lab.kubelet", "--lab", self.name, "--node", node.name]
        pid = pl.spawn(node.netns, argv, self.node_paths(node.name).root / "kubelet.log",
                       env={"PYTHONPATH": str(REPO)})
        self.store.add_pid(f"kubelet:{node.name}", pid)
        return pid

    def kubectl_argv(self, args: list[str]) -> list[str]:
        self.plan  # noqa: B018 - raises LabError if the lab is not up
        return cp.kubectl_argv(self.kube, self.plan.cp_netns, args)

    def shell_argv(self) -> list[str]:
        return cp.shell_argv(self.kube, self.plan.cp_netns, self.name)

    # --- node agents: restart, stop, start (graceful restart and failure tests) ----------
    def exabgp_pid(self, name: str) -> int | None:
        return agents.exabgp_pid(self.node_paths(name).run_dir)

    def agent_pid(self, name: str) -> int | None:
        self.plan.node(name)
        return agents.agent_pid(self.store, name)

    def node_stop(self, name: str, how: str = "detach", timeout: float = 15.0) -> None:
        """Stop a node's agent and keep it stopped (agents.stop says how)."""
        self.plan.node(name)
        try:
            agents.stop(self.store, name, self.node_paths(name).root,
                        self.node_paths(name).run_dir, how, timeout)
        except agents.AgentError as e:
            raise LabError(str(e)) from None

    def node_start(self, name: str, component: str = "agent") -> int:
        """Start a node's agent (lift `node_stop`'s hold), or its node component (`kubelet`)."""
        node = self.plan.node(name)
        try:
            if component != "kubelet":
                return agents.start(self.store, name, self.node_paths(name).root,
                                    self._respawn(name))
        except agents.AgentError as e:
            raise LabError(str(e)) from None
        if not self.plan.kubernetes:
            raise LabError(f"lab {self.name} runs without Kubernetes: no node component")
        pid = self.store.load().pids.get(f"kubelet:{name}")
        if pid and pl.pid_alive(pid):
            raise LabError(f"kubelet of {name} is running (pid {pid})")
        return self._start_node_component(node)

    def node_restart(self, name: str) -> int:
        """The agent restarted in place; the new one adopts ExaBGP (agents.restart)."""
        self.plan.node(name)
        try:
            return agents.restart(self.store, name, spawn=self._respawn(name))
        except agents.AgentError as e:
            raise LabError(str(e)) from None

    def _respawn(self, name: str):
        """Without Kubernetes no node component restarts an agent: the lab does (nokube)."""
        return None if self.plan.kubernetes else lambda: nokube.spawn_agent(self, name)

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
        self.plan.node(node)
        if not self.plan.kubernetes:
            return nokube.pod_add(self, namespace, pod, node, serve)
        from calico_lite.lab.cluster import container_ports   # the kubernetes client: ~1 s
        declared = container_ports(parse_serve(serve), ports)
        return self.api().pod_add(namespace, pod, node, labels, declared)

    def pod_del(self, namespace: str, pod: str) -> None:
        if not self.plan.kubernetes:
            return nokube.pod_del(self, namespace, pod)
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
    def _agent_pods(self) -> dict[str, str]:
        """node -> the name of the DaemonSet pod that runs its agent ('' when the API is away)."""
        try:
            pods = self.api().pods_of(manifests.NAMESPACE, f"k8s-app={manifests.NODE_DS}")
        except Exception:   # status must answer even with the API server stopped
            return {}
        return {p["spec"].get("nodeName", ""): p["metadata"]["name"] for p in pods
                if not p["metadata"].get("deletionTimestamp")}

    def status(self) -> dict:
        plan = self.plan
        st = self.store.load()
        ds = self.datastore()
        etcd = "healthy" if ds.healthy() else "unreachable"

        def running(label: str) -> str:
            pid = st.pids.get(label)
            return "running" if pid and pl.pid_alive(pid) else "stopped"
        nodes = []
        agent_pods = self._agent_pods()
        for n in plan.nodes:
            s = ds.get(keys.status(n.name)) if etcd == "healthy" else None
            ready = readyz(n.netns, timeout=2.0)
            paths = self.node_paths(n.name)
            nodes.append({
                "name": n.name, "rack": f"rack{n.rack}", "address": n.address, "netns": n.netns,
                "agent": running(f"agent:{n.name}"), "agent_pod": agent_pods.get(n.name, ""),
                "kubelet": running(f"kubelet:{n.name}"),
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
                      "scheduler": running("kube:kube-scheduler"),
                      "kube_sync": "running" if any(k.startswith("kube-sync:") and pl.pid_alive(p)
                                                    for k, p in st.pids.items()) else "stopped",
                      "kubectl": cp.find_kubectl()}
        return {"name": self.name, "bgp_mode": plan.bgp, "encap": plan.encap, "nodes": nodes,
                "etcd": etcd, "kubernetes": kubernetes, "pods": pods}


__all__ = ["Lab", "LabError", "PlanError"]
