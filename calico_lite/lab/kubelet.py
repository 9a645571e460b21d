"""The lab's node component: its one stand-in, for the kubelet (no kubelet can run pods here).

One process per lab node, in the node's network namespace, with the node's own identity
(`system:node:NAME`, so the Node authorizer confines it to its pods as it would a kubelet):
- registers the `Node` (InternalIP, rack as `topology.kubernetes.io/zone`, Ready) and renews
  its Lease in `kube-node-lease`, so the node lifecycle controller never taints it;
- watches the pods bound to its node and, for each, makes the sandbox the way a container
  runtime does: a network namespace, then the node's CNI (the conflist and shim in the node's
  `cni/` folder); serves every declared containerPort (TCP and UDP) with a small echo server
  whatever the image says; writes podIP(s), hostIP, phase and the Ready condition;
- on deletion, stops the servers, calls CNI DEL, removes the namespace and finalises the pod.
What it made is recorded in the lab's state (lab.state) before or right after it is made, so
`lab down` removes it after any crash; a restarted node component adopts the sandboxes it finds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from calico_lite.lab import plumbing as pl
from calico_lite.lab import runtime
from calico_lite.lab.hostpods import HostPods, NodeSide
from calico_lite.lab.node_api import node_manifest, now, running_status, served_ports, service_env
from calico_lite.lab.podspec import host_path
from calico_lite.lab.control_plane import KubePaths
from calico_lite.lab.plan import SERVICE_IP
from calico_lite.lab.probe import probe_from
from calico_lite.lab.state import StateStore, run_dir

log = logging.getLogger("calico-lite.lab.kubelet")
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
SERVE_TIMEOUT = 10.0
RETRY_AFTER = 2.0
REPO = Path(__file__).resolve().parents[2]


def api_reason(e: ApiException) -> str:
    return f"{e.status} {e.reason}"


@dataclass
class Sandbox:
    """A pod's sandbox on this node, as recorded on disk (the runtime's own state)."""
    namespace: str
    name: str
    uid: str
    container_id: str
    netns: str
    ip: str = ""


class NodeComponent:
    def __init__(self, lab: str, node: str):
        from calico_lite.lab.plan import make_plan
        self.lab, self.node = lab, node
        self.store = StateStore(lab)
        params = self.store.load().params
        self.plan = make_plan(lab, **params)
        self.node_plan = self.plan.node(node)
        self.root = run_dir(lab) / "nodes" / node
        self.sandboxes = self.root / "sandboxes"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        kube = KubePaths(run_dir(lab) / "kube")
        self.api_client = config.new_client_from_config(str(kube.kubeconfig(f"node-{node}")))
        self.core = client.CoreV1Api(self.api_client)
        self.coord = client.CoordinationV1Api(self.api_client)
        self.lock = threading.Lock()
        self.bin_dir = host_path(self.root, "/opt/cni/bin")
        self.conf_dir = host_path(self.root, "/etc/cni/net.d")
        self.host_pods = HostPods(NodeSide(node, self.node_plan.address, self.root, self.store,
                                           self.core, service_env(SERVICE_IP)))
        self.network_ready = False

    # --- the Node and its Lease ----------------------------------------------------------
    def cni_installed(self) -> bool:
        """The kubelet's network readiness: a CNI config in the node's conf dir."""
        return any(self.conf_dir.glob("*.conflist"))

    def register(self) -> None:
        self.network_ready = self.cni_installed()
        body = node_manifest(self.node_plan, self.network_ready)
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node_status(self.node, {"status": body["status"]})

    def renew_lease(self) -> None:
        t = datetime.datetime.now(datetime.timezone.utc)
        body = {"metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def lease_loop(self) -> None:
        """Renew the Lease every RENEW_EVERY seconds; post the Node's status whenever network
        readiness changes (checked every few tenths of a second, so a node turns Ready as
        soon as install-cni has written the conflist)."""
        renewed = 0.0
        while True:
            try:
                if self.cni_installed() != self.network_ready:
                    self.network_ready = not self.network_ready
                    self.core.patch_node_status(self.node, {"status": node_manifest(self.node_plan, self.network_ready)["status"]})
                if time.monotonic() - renewed > RENEW_EVERY:
                    self.renew_lease()
                    renewed = time.monotonic()
            except Exception as e:  # the API may be restarting: keep trying, say so
                log.warning(json.dumps({"event": "lease-renew-failed", "error": str(e)}))
                self.network_ready = not self.cni_installed()   # post again next round
            time.sleep(0.3)

    # --- sandboxes -----------------------------------------------------------------------
    def _record(self, sb: Sandbox) -> Path:
        return self.sandboxes / f"{sb.uid}.json"

    def local_sandboxes(self) -> dict[str, Sandbox]:
        out = {}
        for f in self.sandboxes.glob("*.json"):
            sb = Sandbox(**json.loads(f.read_text()))
            out[sb.uid] = sb
        return out

    def run_pod(self, pod: dict) -> None:
        """Sandbox, CNI ADD, servers, then Running status; undone on any failure."""
        meta = pod["metadata"]
        if pod["spec"].get("hostNetwork"):
            self.host_pods.run(pod)
            return
        sb = Sandbox(meta["namespace"], meta["name"], meta["uid"], uuid.uuid4().hex,
                     self.plan.pod_netns(meta["namespace"], meta["name"]))
        self.store.add_netns(sb.netns)
        self._record(sb).write_text(json.dumps(asdict(sb)))
        try:
            pl.add_netns(sb.netns)
            netconf = runtime.load_conflist(self.conf_dir)
            result = runtime.add(self.bin_dir, netconf, sb.container_id,
                                 f"/var/run/netns/{sb.netns}",
                                 runtime.k8s_args(sb.namespace, sb.name, sb.container_id, sb.uid))
            sb.ip = result["ips"][0]["address"].split("/")[0]
            self._record(sb).write_text(json.dumps(asdict(sb)))
            self._serve(sb, served_ports(pod))
            self._write_status(pod, sb.ip, sb.container_id)
        except BaseException:
            self.teardown(sb)
            raise
        log.info(json.dumps({"event": "pod-running", "pod": f"{sb.namespace}/{sb.name}", "ip": sb.ip}))

    def _serve(self, sb: Sandbox, ports: list[str]) -> None:
        if not ports:
            return
        argv = [sys.executable, "-m", "calico_lite.lab.serve", ",".join(ports)]
        pid = pl.spawn(sb.netns, argv, self.root / "pods" / f"{sb.namespace}.{sb.name}.log",
                       env={"PYTHONPATH": str(REPO)})
        self.store.add_pid(f"pod:{sb.namespace}/{sb.name}:serve", pid)
        deadline = time.monotonic() + SERVE_TIMEOUT
        for spec in ports:
            proto, port = spec.split(":")
            while not probe_from(f"/var/run/netns/{sb.netns}", "127.0.0.1", int(port), proto):
                if time.monotonic() > deadline or not pl.pid_alive(pid):
                    raise RuntimeError(f"echo server of {sb.namespace}/{sb.name} did not start")
                time.sleep(0.02)

    def _write_status(self, pod: dict, ip: str, container_id: str) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"],
            running_status(pod, ip, self.node_plan.address, container_id))

    def teardown(self, sb: Sandbox) -> None:
        """Servers, CNI DEL, namespace, record: each step safe to repeat."""
        pl.kill_pids(list(self.store.pop_pids(f"pod:{sb.namespace}/{sb.name}:").values()))
        try:
            runtime.delete(self.bin_dir, runtime.load_conflist(self.conf_dir),
                           sb.container_id, f"/var/run/netns/{sb.netns}",
                           runtime.k8s_args(sb.namespace, sb.name, sb.container_id, sb.uid))
        except (runtime.CniCallError, FileNotFoundError) as e:
            log.warning(json.dumps({"event": "cni-del-failed", "pod": f"{sb.namespace}/{sb.name}",
                                    "error": str(e)}))
            raise
        if pl.netns_exists(sb.netns):
            pl.delete_netns(sb.netns)
        self.store.remove_netns(sb.netns)
        self._record(sb).unlink(missing_ok=True)
        log.info(json.dumps({"event": "pod-removed", "pod": f"{sb.namespace}/{sb.name}"}))

    def finalise(self, pod: dict) -> None:
        """Terminating pod: tear its sandbox down, then let the API forget it (grace 0, as a
        kubelet does once the containers have stopped)."""
        meta = pod["metadata"]
        sb = self.local_sandboxes().get(meta["uid"])  # under handle()'s lock
        if sb is not None:
            self.teardown(sb)
        self.host_pods.stop(meta["uid"])
        try:
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=meta["uid"])))
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # --- the pod loop --------------------------------------------------------------------
    def handle(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        with self.lock:   # the watch and retry timers both come here: one decision at a time
            have = self.local_sandboxes()
            if kind == "DELETED":
                if meta["uid"] in have:
                    self.teardown(have[meta["uid"]])
                self.host_pods.stop(meta["uid"])
            elif meta.get("deletionTimestamp"):
                self.finalise(pod)
            elif meta["uid"] not in have and meta["uid"] not in self.host_pods \
                    and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                self.run_pod(pod)

    def resync(self) -> str:
        """List this node's pods; remove sandboxes whose pod is gone, run pods without one.
        Returns the list's resourceVersion to watch from."""
        listing = self.api_client.sanitize_for_serialization(
            self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}"))
        pods = {p["metadata"]["uid"]: p for p in listing.get("items", [])}
        with self.lock:
            for uid, sb in self.local_sandboxes().items():
                if uid not in pods:
                    self.teardown(sb)
            for uid, record in self.host_pods.recorded().items():
                if uid not in pods:
                    self.host_pods.stop(uid) or self.host_pods.stop_recorded(record)
        for pod in pods.values():
            self._safely(self.handle, "ADDED", pod)
        return listing["metadata"]["resourceVersion"]

    def _safely(self, fn, kind: str, pod: dict) -> None:
        """One pod's failure must not stop the others: it is logged, reported as an Event on
        the pod (what `kubectl describe pod` shows, as a kubelet's FailedCreatePodSandBox),
        and retried after RETRY_AFTER seconds from a fresh read of the pod."""
        try:
            fn(kind, pod)
        except Exception as e:
            meta = pod["metadata"]
            log.error(json.dumps({"event": "pod-failed", "pod": f"{meta['namespace']}/"
                                  f"{meta['name']}", "error": str(e)}))
            self._event(pod, "FailedCreatePodSandBox", str(e))
            t = threading.Timer(RETRY_AFTER, self._retry, args=(meta["namespace"], meta["name"], meta["uid"]))
            t.daemon = True
            t.start()

    def _retry(self, namespace: str, name: str, uid: str) -> None:
        try:
            pod = self.api_client.sanitize_for_serialization(self.core.read_namespaced_pod(name, namespace))
        except ApiException:
            return  # gone: the watch or the next resync tears down whatever is left
        if pod["metadata"]["uid"] == uid:
            self._safely(self.handle, "MODIFIED", pod)

    def _event(self, pod: dict, reason: str, message: str) -> None:
        meta = pod["metadata"]
        try:
            self.core.create_namespaced_event(meta["namespace"], {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta["uid"], "apiVersion": "v1"},
                "reason": reason, "message": message[:1000], "type": "Warning",
                "source": {"component": "calico-lite-lab-node", "host": self.node},
                "firstTimestamp": now(), "lastTimestamp": now(), "count": 1})
        except ApiException as e:
            log.warning(json.dumps({"event": "event-write-failed", "error": api_reason(e)}))

    def pod_loop(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 Gone or any error
        (a relist also retries pods whose sandbox failed)."""
        while True:
            try:
                rv = self.resync()
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces,
                                   field_selector=f"spec.nodeName={self.node}",
                                   resource_version=rv, timeout_seconds=60,
                                   allow_watch_bookmarks=True, _request_timeout=90):
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        pod = self.api_client.sanitize_for_serialization(ev["object"])
                        self._safely(self.handle, ev["type"], pod)
            except ApiException as e:
                log.warning(json.dumps({"event": "watch-restart", "status": e.status,
                                        "reason": e.reason}))
                time.sleep(0.5)
            except Exception as e:
                log.warning(json.dumps({"event": "watch-restart", "error": str(e)}))
                time.sleep(1.0)

    def run(self) -> None:
        while True:
            try:
                self.register()
                break
            except Exception as e:
                log.warning(json.dumps({"event": "register-failed", "error": str(e)}))
                time.sleep(1.0)
        threading.Thread(target=self.lease_loop, daemon=True, name="lease").start()
        threading.Thread(target=self.host_pods.supervise, daemon=True, name="host-pods").start()
        self.pod_loop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True)
    ap.add_argument("--node", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    NodeComponent(args.lab, args.node).run()


if __name__ == "__main__":
    main()
