"""kube-sync: mirrors Kubernetes Namespaces, Pods, NetworkPolicies, Nodes, Services and
EndpointSlices into the datastore.

One process (the Deployment in deploy/, one replica) runs one informer per kind
(calico_lite.kube_informer) on the official `kubernetes` client, with in-cluster
service-account credentials or a kubeconfig. It is the only way policies, namespace labels
and pod labels reach the records the agents' policy controllers read. A deleted Node's IPAM
(its workloads' addresses and its blocks) is released, as Calico's kube-controllers do.
The transforms below are pure and unit-tested.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from urllib.parse import urlparse

import kubernetes.client
import kubernetes.config
from kubernetes.config.incluster_config import (SERVICE_HOST_ENV_NAME, SERVICE_PORT_ENV_NAME,
                                                InClusterConfigLoader)

from calico_lite import keys
from calico_lite.datastore import Datastore
from calico_lite.etcd_tls import EtcdTls
from calico_lite.ipam import release_node
from calico_lite.kube_informer import Informer, Kind, reconcile_plan
from policy.manifests import policy_from_dict, policy_to_dict

__all__ = ["namespace_record", "pod_record", "policy_record", "node_record", "service_record",
           "endpointslice_record", "reconcile_plan", "KINDS", "api_client", "run"]
log = logging.getLogger("calico-lite.kube-sync")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
RESYNC_SECONDS = 300.0


def namespace_record(obj: dict) -> tuple[str, dict]:
    name = obj["metadata"]["name"]
    return keys.k8s_namespace(name), {"name": name, "labels": obj["metadata"].get("labels") or {}}


def pod_record(obj: dict) -> tuple[str, dict] | None:
    """Host-network pods are not ours to police or address: skipped."""
    meta, spec = obj["metadata"], obj.get("spec", {})
    if spec.get("hostNetwork"):
        return None
    ports = [{"name": p.get("name"), "protocol": p.get("protocol", "TCP"), "port": p["containerPort"]}
             for c in spec.get("containers", []) for p in c.get("ports", []) or []]
    return keys.k8s_pod(meta["namespace"], meta["name"]), {
        "namespace": meta["namespace"], "name": meta["name"], "node": spec.get("nodeName", ""),
        "labels": meta.get("labels") or {}, "ports": ports,
        "ip": obj.get("status", {}).get("podIP", "")}


def policy_record(obj: dict) -> tuple[str, dict]:
    obj = {**obj, "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}
    meta = obj["metadata"]
    obj["metadata"] = {"name": meta["name"], "namespace": meta["namespace"]}
    obj.pop("status", None)
    p = policy_from_dict(obj)
    return keys.k8s_policy(p.namespace, p.name), policy_to_dict(p)


def node_record(obj: dict) -> tuple[str, dict]:
    """A Node's labels, which BGP peer selectors match (bgpconfig.merge_nodes); the record is
    also kube-sync's memory of the Nodes it has seen, so a Node deleted while kube-sync was
    down shows up at the next list as a key the API no longer has, and its IPAM is released."""
    name = obj["metadata"]["name"]
    return keys.k8s_node(name), {"name": name, "labels": obj["metadata"].get("labels") or {}}


def service_record(obj: dict) -> tuple[str, dict]:
    """What service advertisement needs of a Service (calico_lite.services): its addresses
    (cluster IPs, external IPs, LoadBalancer ingress IPs), ports and traffic policies."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    cluster = spec.get("clusterIPs") or [spec.get("clusterIP") or ""]
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return keys.k8s_service(meta["namespace"], meta["name"]), {
        "namespace": meta["namespace"], "name": meta["name"], "type": spec.get("type", "ClusterIP"),
        "clusterIPs": [ip for ip in cluster if ip and ip != "None"],
        "externalIPs": list(spec.get("externalIPs") or []),
        "loadBalancerIPs": [i["ip"] for i in ingress if i.get("ip")],
        "ports": [{"name": p.get("name"), "protocol": p.get("protocol", "TCP"), "port": p["port"]}
                  for p in spec.get("ports") or []],
        "externalTrafficPolicy": spec.get("externalTrafficPolicy") or "Cluster",
        "internalTrafficPolicy": spec.get("internalTrafficPolicy") or "Cluster"}


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def endpointslice_record(obj: dict) -> tuple[str, dict] | None:
    """A slice's service and, per endpoint, its node and readiness (a nil `ready` counts as
    ready, as the API says consumers should). A slice of no Service is skipped."""
    meta = obj["metadata"]
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    return keys.k8s_endpointslice(meta["namespace"], meta["name"]), {
        "namespace": meta["namespace"], "service": service,
        "endpoints": [{"node": ep.get("nodeName") or "",
                       "ready": (ep.get("conditions") or {}).get("ready") is not False}
                      for ep in obj.get("endpoints") or []]}


def node_deleted(ds: Datastore, key: str) -> None:
    """What a Node leaving the cluster frees: its addresses and blocks, and the agent's
    records about it (as Calico's node controller deletes the Calico Node)."""
    name = key[len(keys.K8S_NODES):]
    released = release_node(ds, name)
    for k in (keys.node(name), keys.status(name), keys.policy_status(name)):
        ds.delete(k)
    log.info(json.dumps({"event": "kube-sync-node-released", "node": name,
                         "handles": len(released.handles), "blocks_deleted": released.blocks_deleted,
                         "blocks_unaffined": released.blocks_unaffined}))


def _namespaced(prefix_key):
    return lambda meta: prefix_key(meta["namespace"], meta["name"])


KINDS = (
    (Kind("namespaces", keys.K8S_NAMESPACES, lambda m: keys.k8s_namespace(m["name"]), namespace_record),
     "CoreV1Api", "list_namespace"),
    (Kind("pods", keys.K8S_PODS, _namespaced(keys.k8s_pod), pod_record),
     "CoreV1Api", "list_pod_for_all_namespaces"),
    (Kind("networkpolicies", keys.K8S_POLICIES, _namespaced(keys.k8s_policy), policy_record),
     "NetworkingV1Api", "list_network_policy_for_all_namespaces"),
    (Kind("nodes", keys.K8S_NODES, lambda m: keys.k8s_node(m["name"]), node_record, node_deleted),
     "CoreV1Api", "list_node"),
    (Kind("services", keys.K8S_SERVICES, _namespaced(keys.k8s_service), service_record),
     "CoreV1Api", "list_service_for_all_namespaces"),
    (Kind("endpointslices", keys.K8S_ENDPOINTSLICES, _namespaced(keys.k8s_endpointslice),
          endpointslice_record),
     "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
)


def api_client(kubeconfig: str | None = None, service_account_dir: str | None = None,
               api_server: str | None = None) -> kubernetes.client.ApiClient:
    """A kubeconfig when given; otherwise in-cluster credentials (token, ca.crt) from the
    service-account directory, the server from api_server or KUBERNETES_SERVICE_HOST/PORT.
    The token file is re-read every minute (bound tokens rotate)."""
    cfg = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        sa = Path(service_account_dir or SA_DIR)
        environ: dict = dict(os.environ)
        if api_server:
            url = urlparse(api_server)
            environ = {SERVICE_HOST_ENV_NAME: url.hostname or "", SERVICE_PORT_ENV_NAME: str(url.port or 443)}
        InClusterConfigLoader(token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt"),
                              environ=environ).load_and_set(cfg)
    if api_server:
        cfg.host = api_server.rstrip("/")
    cfg.connection_pool_maxsize = 2 * len(KINDS)  # one watch per kind, plus a list each
    return kubernetes.client.ApiClient(cfg)


class InformerCollector:
    """kube-sync's metrics, read from its informers' own status when scraped (nothing kept
    twice): objects mirrored, lists, 410 relists, resyncs and errors per kind."""

    def __init__(self, informers: list[Informer]):
        self.informers = informers

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        objects = GaugeMetricFamily("calico_lite_kube_sync_objects", "objects mirrored", labels=["kind"])
        synced = GaugeMetricFamily("calico_lite_kube_sync_synced", "1 when the kind is listed and "
                                   "watched without error", labels=["kind"])
        counters = {f: CounterMetricFamily(f"calico_lite_kube_sync_{f}", f"{f} per kind", labels=["kind"])
                    for f in ("lists", "gone", "resyncs", "errors")}
        for inf in self.informers:
            st = inf.status
            objects.add_metric([st.kind], st.objects)
            synced.add_metric([st.kind], 1 if st.synced else 0)
            for f, fam in counters.items():
                fam.add_metric([st.kind], getattr(st, f))
        yield from (objects, synced, *counters.values())


def serve_kube_sync_health(listen: str, informers: list[Informer], ds: Datastore,
                           liveness_timeout: float):
    """/healthz: every informer went round within liveness_timeout (a watch ends, at the
    latest, after the resync period); /readyz: every kind listed and etcd reachable;
    /metrics: InformerCollector."""
    from prometheus_client import CollectorRegistry
    from calico_lite.health import Check, Heartbeats, serve_health
    beats = Heartbeats(liveness_timeout)
    for inf in informers:
        inf.beat = beats.beater(inf.kind.name)
        inf.beat()
    registry = CollectorRegistry()
    registry.register(InformerCollector(informers))
    checks = [Check(inf.kind.name, lambda s=inf.status: "" if s.synced else (s.error or "not listed yet"))
              for inf in informers]
    checks.append(Check("datastore", lambda: "" if ds.healthy() else "etcd unreachable"))
    return serve_health(listen, registry, checks, beats)


def run(etcd_endpoints: list[str], kubeconfig: str | None = None,
        service_account_dir: str | None = None, api_server: str | None = None,
        resync_seconds: float = RESYNC_SECONDS, stop: threading.Event | None = None,
        etcd_tls: EtcdTls | None = None, health_listen: str = "off") -> None:
    """kube-sync's process: one informer thread per kind until stop is set (or SIGTERM)."""
    from calico_lite.health import parse_listen
    ds = Datastore(etcd_endpoints, tls=etcd_tls)   # a TLS mistake stops it first, named
    client = api_client(kubeconfig, service_account_dir, api_server)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info(json.dumps({"event": "kube-sync-start", "server": client.configuration.host,
                         "etcd": etcd_endpoints}))
    informers = [Informer(kind, getattr(getattr(kubernetes.client, api)(client), method), ds, stop,
                          resync_seconds) for kind, api, method in KINDS]
    health = (serve_kube_sync_health(health_listen, informers, ds, max(90.0, resync_seconds + 60))
              if parse_listen(health_listen) else None)
    for informer in informers:
        threading.Thread(target=informer.run, daemon=True, name=f"kube-sync-{informer.kind.name}").start()
    stop.wait()
    if health:
        health.close()
    ds.close()


def mirror_difference(listing: dict[str, list[dict]], ds: Datastore) -> str:
    """'' when the datastore holds exactly the records kube-sync makes of a listing of
    namespaces, pods and networkpolicies (so it has caught up with the API); otherwise the
    first kind and keys that differ. The lab waits on it before it waits on the agents."""
    kinds = (("namespaces", keys.K8S_NAMESPACES, namespace_record),
             ("pods", keys.K8S_PODS, pod_record),
             ("networkpolicies", keys.K8S_POLICIES, policy_record))
    for kind, prefix, transform in kinds:
        want = dict(filter(None, (transform(o) for o in listing[kind])))
        have = {e.key: e.value for e in ds.list(prefix)}
        if want != have:
            wrong = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            return f"{kind} {', '.join(wrong[:5])}"
    return ""
