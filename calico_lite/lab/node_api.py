"""What the lab's node component writes to the API: the Node, the status of a pod it runs,
and the `kubernetes` Service variables every container gets (pure)."""
from __future__ import annotations

import datetime

from calico_lite.lab.control_plane import KUBE_VERSION
from calico_lite.lab.plan import NodePlan


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_env(service_ip: str, port: int = 443) -> dict[str, str]:
    """The `kubernetes` Service's variables a kubelet gives every container."""
    url = f"tcp://{service_ip}:{port}"
    return {"KUBERNETES_SERVICE_HOST": service_ip, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": url,
            f"KUBERNETES_PORT_{port}_TCP": url, f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
            f"KUBERNETES_PORT_{port}_TCP_ADDR": service_ip}


def served_ports(pod: dict) -> list[str]:
    """Every declared containerPort as the echo server's `proto:port` (pure). SCTP cannot be
    served on this kernel; it is declared (for named-port policies) but left unserved."""
    out = []
    for c in pod["spec"].get("containers", []):
        for p in c.get("ports") or []:
            proto = (p.get("protocol") or "TCP").lower()
            if proto in ("tcp", "udp") and f"{proto}:{p['containerPort']}" not in out:
                out.append(f"{proto}:{p['containerPort']}")
    return out


def running_status(pod: dict, ip: str, host_ip: str, container_id: str) -> dict:
    """The status a kubelet writes once the pod's containers run (pure)."""
    t = now()
    conditions = [{"type": k, "status": "True", "lastTransitionTime": t}
                  for k in ("PodReadyToStartContainers", "Initialized", "ContainersReady",
                            "Ready", "PodScheduled")]
    containers = [{"name": c["name"], "image": c.get("image", ""), "imageID": "",
                   "containerID": f"lab://{container_id}", "ready": True, "started": True,
                   "restartCount": 0, "state": {"running": {"startedAt": t}}}
                  for c in pod["spec"].get("containers", [])]
    return {"status": {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                       "podIP": ip, "podIPs": [{"ip": ip}], "startTime": t,
                       "conditions": conditions, "containerStatuses": containers}}


def node_manifest(n: NodePlan, network_ready: bool) -> dict:
    """The Node a kubelet registers, Ready once the node's CNI is installed (pure)."""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "calico-lite lab node component is posting ready status",
             "lastHeartbeatTime": now(), "lastTransitionTime": now()}
    if not network_ready:   # as a kubelet says until the CNI plugin is installed
        ready.update(status="False", reason="KubeletNotReady",
                     message="container runtime network not ready: NetworkReady=false "
                             "reason:NetworkPluginNotReady message:Network plugin returns "
                             "error: cni plugin not initialized")
    resources = {"cpu": "2", "memory": "4Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {
                "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": f"rack{n.rack}",
                "rack": f"rack{n.rack}"}},
            "status": {"addresses": [{"type": "InternalIP", "address": n.address},
                                     {"type": "Hostname", "address": n.name}],
                       "conditions": [ready], "capacity": resources,
                       "allocatable": resources,
                       "nodeInfo": {"kubeletVersion": KUBE_VERSION, "operatingSystem": "linux",
                                    "architecture": "amd64", "osImage": "calico-lite lab",
                                    "containerRuntimeVersion": "calico-lite-lab://1",
                                    "kernelVersion": "", "machineID": "", "systemUUID": "",
                                    "bootID": "", "kubeProxyVersion": ""}}}
