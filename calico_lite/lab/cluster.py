"""The lab's Kubernetes side, as a user sees it: namespaces, pods, labels and policies written
through the lab's API server (the admin's credentials), never into etcd directly.

So `lab ns ...`, `lab pod ...` and `policy apply --lab` are thin clients of the same API that
`lab kubectl` drives: the node components (lab.kubelet) make the pods, kube-sync mirrors
namespaces, pods and policies into the datastore, and the agents enforce them. The caller must
already be inside the lab's control-plane namespace (Lab.api() sees to it).
"""
from __future__ import annotations

import time

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

POD_READY_TIMEOUT = 60.0
POD_GONE_TIMEOUT = 60.0
IMAGE = "calico-lite/echo"   # never pulled: the node component serves the declared ports


class ClusterError(RuntimeError):
    pass


def api_error(e: ApiException) -> str:
    """The API server's own message (its Status object), not the client's HTTP dump."""
    import json
    try:
        return json.loads(e.body).get("message") or str(e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


def container_ports(served: list[tuple[str, int]], named: list[dict]) -> list[dict]:
    """--serve tcp:80 and --port http:tcp:80 as one containerPorts list (pure): a named port
    names the unnamed entry of the same protocol and number, or is declared on its own."""
    ports = [{"containerPort": num, "protocol": proto.upper()}
             for proto, num in dict.fromkeys((p.upper(), n) for p, n in served)]
    for p in named:
        proto, num = p["protocol"].upper(), int(p["port"])
        unnamed = next((e for e in ports if (e["protocol"], e["containerPort"]) == (proto, num)
                        and "name" not in e), None)
        if unnamed is None:
            ports.append({"name": p["name"], "containerPort": num, "protocol": proto})
        else:
            unnamed["name"] = p["name"]
    return ports


def pod_manifest(namespace: str, name: str, node: str, labels: dict[str, str],
                 ports: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": IMAGE, "ports": ports}]}}


def label_patch(changes: dict[str, str | None]) -> dict:
    """A merge patch: k=v sets, k- (None) removes."""
    return {"metadata": {"labels": dict(changes)}}


class LabApi:
    def __init__(self, kubeconfig: str):
        self.api_client = config.new_client_from_config(kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.net = client.NetworkingV1Api(self.api_client)

    def as_dict(self, obj) -> dict:
        return self.api_client.sanitize_for_serialization(obj)

    # --- calico-lite's own workloads (lab.manifests) ---------------------------------------
    def workload(self, kind: str, namespace: str, name: str) -> dict:
        """A DaemonSet or Deployment as a dict ({} with no status while it does not exist)."""
        apps = client.AppsV1Api(self.api_client)
        read = apps.read_namespaced_daemon_set if kind == "DaemonSet" else apps.read_namespaced_deployment
        try:
            return {"kind": kind, **self.as_dict(read(name, namespace))}
        except ApiException as e:
            if e.status != 404:
                raise ClusterError(f"{kind} {namespace}/{name}: {api_error(e)}") from None
            return {"kind": kind, "metadata": {"name": name, "generation": 1}, "spec": {}, "status": {}}

    def pods_of(self, namespace: str, selector: str) -> list[dict]:
        return self.as_dict(self.core.list_namespaced_pod(namespace, label_selector=selector))["items"]

    # --- namespaces ----------------------------------------------------------------------
    def ns_add(self, namespace: str, labels: dict[str, str], exist_ok: bool = False) -> None:
        try:
            self.core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
        except ApiException as e:
            if not (exist_ok and e.status == 409):
                raise ClusterError(f"namespace {namespace}: {api_error(e)}") from None

    def ns_label(self, namespace: str, changes: dict[str, str | None]) -> dict:
        try:
            ns = self.core.patch_namespace(namespace, label_patch(changes))
        except ApiException as e:
            raise ClusterError(f"namespace {namespace}: {api_error(e)}") from None
        return ns.metadata.labels or {}

    # --- pods ----------------------------------------------------------------------------
    def pod_add(self, namespace: str, name: str, node: str, labels: dict[str, str],
                ports: list[dict]) -> str:
        """Create the pod bound to node, then wait until its node component reports it Ready;
        returns its address."""
        self.ns_add(namespace, {}, exist_ok=True)
        try:
            self.core.create_namespaced_pod(namespace, pod_manifest(namespace, name, node,
                                                                    labels, ports))
        except ApiException as e:
            raise ClusterError(f"pod {namespace}/{name}: {api_error(e)}") from None
        return self.wait_pod_ready(namespace, name)

    def wait_pod_ready(self, namespace: str, name: str, timeout: float = POD_READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            pod = self.core.read_namespaced_pod(name, namespace)
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in (pod.status.conditions or []))
            if ready and pod.status.pod_ip:
                return pod.status.pod_ip
            if time.monotonic() > deadline:
                raise ClusterError(f"pod {namespace}/{name} not Ready after {timeout:.0f}s on "
                                   f"node {pod.spec.node_name} (phase {pod.status.phase}); see the "
                                   "node's kubelet.log in the lab's run folder")
            time.sleep(0.05)

    def pod_del(self, namespace: str, name: str, timeout: float = POD_GONE_TIMEOUT) -> None:
        """Delete and wait until the node component has torn the sandbox down (CNI DEL) and
        finalised the pod."""
        try:
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as e:
            raise ClusterError(f"pod {namespace}/{name}: {api_error(e)}") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.core.read_namespaced_pod(name, namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise ClusterError(f"pod {namespace}/{name} still there {timeout:.0f}s after delete")
            time.sleep(0.05)

    def pod_label(self, namespace: str, name: str, changes: dict[str, str | None]) -> dict:
        try:
            pod = self.core.patch_namespaced_pod(name, namespace, label_patch(changes))
        except ApiException as e:
            raise ClusterError(f"pod {namespace}/{name}: {api_error(e)}") from None
        return pod.metadata.labels or {}

    # --- policies ------------------------------------------------------------------------
    def policy_apply(self, docs: list[dict]) -> list[str]:
        """Create or replace each NetworkPolicy, as `kubectl apply` does for whole objects;
        the API server validates each and answers with its own error."""
        done = []
        for d in docs:
            meta = d["metadata"]
            ns, name = meta.get("namespace", "default"), meta["name"]
            body = {**d, "metadata": {**meta, "namespace": ns}}
            try:
                try:
                    cur = self.net.read_namespaced_network_policy(name, ns)
                    body["metadata"]["resourceVersion"] = cur.metadata.resource_version
                    self.net.replace_namespaced_network_policy(name, ns, body)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self.ns_add(ns, {}, exist_ok=True)
                    self.net.create_namespaced_network_policy(ns, body)
            except ApiException as e:
                raise ClusterError(f"networkpolicy {ns}/{name}: {api_error(e)}") from None
            done.append(f"{ns}/{name}")
        return done

    def policy_delete(self, namespace: str, name: str) -> None:
        try:
            self.net.delete_namespaced_network_policy(name, namespace)
        except ApiException as e:
            raise ClusterError(f"networkpolicy {namespace}/{name}: {api_error(e)}") from None

    def ready_nodes(self) -> set[str]:
        """Nodes that are Ready and schedulable: the admission plugin taints a new Node
        not-ready until the node lifecycle controller has seen its Ready condition."""
        return {n.metadata.name for n in self.core.list_node().items
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                and not any(t.key == "node.kubernetes.io/not-ready" for t in n.spec.taints or [])}

    # --- what kube-sync should have mirrored --------------------------------------------
    def listing(self) -> dict[str, list[dict]]:
        """Namespaces, pods and NetworkPolicies as plain dicts (for the mirror check)."""
        return {"namespaces": self.as_dict(self.core.list_namespace())["items"],
                "pods": self.as_dict(self.core.list_pod_for_all_namespaces())["items"],
                "networkpolicies": self.as_dict(
                    self.net.list_network_policy_for_all_namespaces())["items"]}
