"""A host-network pod's volumes, made on the node as a kubelet makes them.

hostPath volumes are the node's folders (podspec.host_path), created when missing; secret,
configMap, projected (service-account token, configMap, downwardAPI) and emptyDir volumes are
files written under the pod's folder. Reads of Secrets and ConfigMaps and token requests go
through the node's own identity, so the Node authorizer allows exactly what a kubelet may:
objects that a pod bound to this node references.
"""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from calico_lite.lab.podspec import PodContext, PodSpecError, field_value, volume_folders

TOKEN_REFRESH = 0.8   # a projected token is renewed after 80 % of its lifetime, as the kubelet does


class ApiObjects:
    """ConfigMap and Secret data through the node's client (None when absent)."""

    def __init__(self, core: client.CoreV1Api):
        self.core = core

    def config_map(self, namespace: str, name: str) -> dict | None:
        try:
            return self.core.read_namespaced_config_map(name, namespace).data or {}
        except ApiException as e:
            if e.status in (403, 404):   # the Node authorizer answers 403 for what does not exist
                return None
            raise

    def secret(self, namespace: str, name: str) -> dict | None:
        try:
            data = self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as e:
            if e.status in (403, 404):
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _write(folder: Path, rel: str, data: str | bytes, mode: int) -> None:
    dest = folder / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def _items(data: dict, items: list | None, what: str, optional: bool) -> dict[str, str]:
    """Keys -> file names, as `items` selects them (all keys without it)."""
    if data is None:
        if optional:
            return {}
        raise PodSpecError("ContainerCreating", f"{what} not found")
    if not items:
        return dict(data)
    out = {}
    for it in items:
        if it["key"] not in data:
            raise PodSpecError("ContainerCreating", f"{what}: no key {it['key']!r}")
        out[it["path"]] = data[it["key"]]
    return out


def _token(core: client.CoreV1Api, pod: dict, source: dict) -> str:
    meta = pod["metadata"]
    body = {"spec": {"audiences": [source["audience"]] if source.get("audience") else None,
                     "expirationSeconds": source.get("expirationSeconds", 3607),
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                        "uid": meta["uid"]}}}
    sa = pod["spec"].get("serviceAccountName", "default")
    return core.create_namespaced_service_account_token(sa, meta["namespace"], body).status.token


def _projected(core, pod: dict, vol: dict, folder: Path, ctx: PodContext, objs: ApiObjects) -> None:
    mode = vol["projected"].get("defaultMode", 0o644)
    ns = pod["metadata"]["namespace"]
    for src in vol["projected"].get("sources") or []:
        if "serviceAccountToken" in src:
            s = src["serviceAccountToken"]
            _write(folder, s["path"], _token(core, pod, s), 0o600)
        elif "configMap" in src:
            s = src["configMap"]
            for path, value in _items(objs.config_map(ns, s["name"]), s.get("items"),
                                      f"configMap {s['name']}", s.get("optional", False)).items():
                _write(folder, path, value, mode)
        elif "secret" in src:
            s = src["secret"]
            for path, value in _items(objs.secret(ns, s["name"]), s.get("items"),
                                      f"secret {s['name']}", s.get("optional", False)).items():
                _write(folder, path, value, 0o600)
        elif "downwardAPI" in src:
            for it in src["downwardAPI"].get("items") or []:
                _write(folder, it["path"], field_value(pod, it["fieldRef"]["fieldPath"], ctx), mode)


def make_volumes(core: client.CoreV1Api, pod: dict, ctx: PodContext) -> None:
    """Every volume of the pod, ready before its first container starts."""
    objs = ApiObjects(core)
    folders = volume_folders(pod, ctx)
    ns = pod["metadata"]["namespace"]
    for vol in pod["spec"].get("volumes") or []:
        folder = folders[vol["name"]]
        if "hostPath" in vol:
            if vol["hostPath"].get("type", "") in ("", "DirectoryOrCreate", "Directory"):
                folder.mkdir(parents=True, exist_ok=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if "projected" in vol:
            _projected(core, pod, vol, folder, ctx, objs)
        elif "secret" in vol:
            s = vol["secret"]
            for path, value in _items(objs.secret(ns, s["secretName"]), s.get("items"),
                                      f"secret {s['secretName']}", s.get("optional", False)).items():
                _write(folder, path, value, s.get("defaultMode", 0o600))
        elif "configMap" in vol:
            s = vol["configMap"]
            for path, value in _items(objs.config_map(ns, s["name"]), s.get("items"),
                                      f"configMap {s['name']}", s.get("optional", False)).items():
                _write(folder, path, value, s.get("defaultMode", 0o644))
        elif "emptyDir" not in vol:
            raise PodSpecError("ContainerCreating", f"volume {vol['name']}: kind not supported by the lab")


def token_refresh_due(pod: dict, made_at: float, now: float | None = None) -> bool:
    """True when a projected token of this pod has lived 80 % of its shortest lifetime."""
    lifetimes = [src["serviceAccountToken"].get("expirationSeconds", 3607)
                 for v in pod["spec"].get("volumes") or [] if "projected" in v
                 for src in v["projected"].get("sources") or [] if "serviceAccountToken" in src]
    return bool(lifetimes) and (now or time.time()) - made_at > TOKEN_REFRESH * min(lifetimes)
