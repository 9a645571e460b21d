"""kube-sync: mirrors Kubernetes namespaces, pods and NetworkPolicies into the datastore.

In a cluster, one replica (a Deployment) lists and watches the API server and writes the
records the agents' policy controllers read; in the lab, `calico-lite lab` writes the same
records itself. The transforms and the reconcile plan are pure and unit-tested; the HTTP
client is the thin part (standard library only, in-cluster service-account credentials).
"""
from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Iterator

from bgp.process import Backoff
from calico_lite import keys
from calico_lite.datastore import Datastore, DatastoreUnavailable
from policy.manifests import policy_from_dict, policy_to_dict

log = logging.getLogger("calico-lite.kube-sync")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


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


@dataclass(frozen=True)
class Kind:
    path: str       # API list path
    prefix: str     # datastore prefix
    transform: object


KINDS = (Kind("/api/v1/namespaces", keys.K8S_NAMESPACES, namespace_record),
         Kind("/api/v1/pods", keys.K8S_PODS, pod_record),
         Kind("/apis/networking.k8s.io/v1/networkpolicies", keys.K8S_POLICIES, policy_record))


def reconcile_plan(current: dict[str, dict], listed: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """After a (re)list: what to write and what to delete so the datastore equals the API (pure)."""
    puts = {k: v for k, v in listed.items() if current.get(k) != v}
    deletes = sorted(k for k in current if k not in listed)
    return puts, deletes


class ApiClient:
    def __init__(self, server: str | None = None, token: str | None = None, ca: str | None = None):
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        self.server = server or f"https://{host}:{port}"
        self.token = token or open(f"{SA_DIR}/token").read().strip()
        self.ctx = ssl.create_default_context(cafile=ca or f"{SA_DIR}/ca.crt")

    def _open(self, path: str, timeout: float):
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        return urllib.request.urlopen(req, context=self.ctx, timeout=timeout)

    def list(self, path: str) -> dict:
        with self._open(path, 30) as r:
            return json.load(r)

    def watch(self, path: str, rv: str) -> Iterator[dict]:
        with self._open(f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=300", 330) as r:
            for line in r:
                yield json.loads(line)


def sync_kind(api: ApiClient, ds: Datastore, kind: Kind) -> None:
    """List, reconcile, then apply watch events until the watch ends (the caller loops)."""
    listing = api.list(kind.path)
    listed = dict(filter(None, (kind.transform(o) for o in listing.get("items", []))))  # type: ignore[operator]
    current = {e.key: e.value for e in ds.list(kind.prefix)}
    puts, deletes = reconcile_plan(current, listed)
    for k, v in puts.items():
        ds.put(k, v)
    for k in deletes:
        ds.delete(k)
    log.info(json.dumps({"event": "kube-sync-list", "kind": kind.path, "objects": len(listed),
                         "written": len(puts), "deleted": len(deletes)}))
    for ev in api.watch(kind.path, listing["metadata"]["resourceVersion"]):
        rec = kind.transform(ev["object"])  # type: ignore[operator]
        if ev["type"] == "DELETED" and rec:
            ds.delete(rec[0])
        elif ev["type"] in ("ADDED", "MODIFIED") and rec:
            ds.put(*rec)


def run(ds: Datastore, api: ApiClient) -> None:  # pragma: no cover - needs an API server
    import threading

    def loop(kind: Kind) -> None:
        retry = Backoff(2.0)   # a relist after 2 s, every time
        while True:
            try:
                sync_kind(api, ds, kind)
            except (OSError, ValueError, DatastoreUnavailable) as e:
                log.warning("kube-sync %s: %s; relisting", kind.path, e)
                retry.wait()
    for kind in KINDS:
        threading.Thread(target=loop, args=(kind,), daemon=True, name=kind.path).start()
    threading.Event().wait()
