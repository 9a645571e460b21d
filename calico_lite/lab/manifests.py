"""calico-lite installed into a lab the way an operator installs it: `kubectl apply` of the
manifests in deploy/, with the few values an operator sets filled in for the lab.

`render` (pure) takes deploy/'s documents and sets what deploy/README.md tells an operator
to set: the ConfigMap's etcd endpoints and AS number, the etcd client Secret, the image tag;
it adds the `kubernetes-services-endpoint` ConfigMap (the API server's real address for
host-network pods on a cluster without kube-proxy, as Calico's operator documents it).
Everything else is applied as written, so a mistake in deploy/ breaks the lab and its tests.
"""
from __future__ import annotations

import base64
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO / "deploy"
NAMESPACE = "kube-system"
NODE_DS = "calico-lite-node"
KUBE_SYNC = "calico-lite-kube-sync"
CONFIG = "calico-lite"
ETCD_SECRET = "calico-lite-etcd"
SERVICES_ENDPOINT = "kubernetes-services-endpoint"


class ManifestError(ValueError):
    pass


def load(folder: Path = DEPLOY_DIR) -> list[dict]:
    """Every document of every *.yaml in the folder, as `kubectl apply -f folder` reads them."""
    docs = []
    for f in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise ManifestError(f"deploy/ has no {kind} {name!r}")


def pod_templates(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"] for d in docs if d.get("kind") in ("DaemonSet", "Deployment")]


def secret_mount(template: dict) -> str:
    """Where the agent container mounts the etcd client Secret."""
    vol = next(v["name"] for v in template["spec"]["volumes"]
               if v.get("secret", {}).get("secretName") == ETCD_SECRET)
    return next(m["mountPath"] for c in template["spec"]["containers"]
                for m in c.get("volumeMounts", []) if m["name"] == vol)


def set_image_tag(docs: list[dict], tag: str) -> None:
    for tpl in pod_templates(docs):
        for c in tpl["spec"].get("initContainers", []) + tpl["spec"]["containers"]:
            repo = c["image"].rsplit(":", 1)[0]
            c["image"] = f"{repo}:{tag}"


def render(docs: list[dict], etcd_endpoints: str, as_number: int, api_host: str, api_port: int,
           etcd_files: dict[str, bytes] | None = None, image_tag: str | None = None) -> list[dict]:
    """deploy/'s documents with the operator's values set (a new list; docs is unchanged).
    etcd_files: ca.crt, tls.crt, tls.key for the etcd client Secret (None: plain http)."""
    out = [yaml.safe_load(yaml.safe_dump(d)) for d in docs]   # a deep copy
    cm = find(out, "ConfigMap", CONFIG)
    cm["data"].update({"etcd_endpoints": etcd_endpoints, "as_number": str(as_number)})
    secret = find(out, "Secret", ETCD_SECRET)
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in (etcd_files or {}).items()}
    if etcd_files:   # the files as the agent sees them: under its mount of the Secret
        mount = secret_mount(find(out, "DaemonSet", NODE_DS)["spec"]["template"])
        cm["data"].update({"etcd_ca": f"{mount}/ca.crt", "etcd_cert": f"{mount}/tls.crt",
                           "etcd_key": f"{mount}/tls.key"})
    if image_tag:
        set_image_tag(out, image_tag)
    out.append({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": SERVICES_ENDPOINT, "namespace": NAMESPACE},
                "data": {"KUBERNETES_SERVICE_HOST": api_host, "KUBERNETES_SERVICE_PORT": str(api_port)}})
    return out


def write(docs: list[dict], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    dest.chmod(0o600)   # it holds the etcd client key
    return dest


def workload_ready(obj: dict) -> str:
    """'' when a DaemonSet or Deployment has rolled out completely and every pod is ready
    (what `kubectl rollout status` waits for), otherwise what is missing (pure)."""
    kind, st, meta = obj["kind"], obj.get("status", {}), obj["metadata"]
    if st.get("observedGeneration", 0) < meta.get("generation", 1):
        return f"{kind} {meta['name']}: spec not yet observed"
    if kind == "DaemonSet":
        want = st.get("desiredNumberScheduled", 0)
        have = (st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0), st.get("numberReady", 0))
        if want == 0 or min(have) < want or st.get("numberUnavailable", 0):
            return (f"DaemonSet {meta['name']}: {st.get('numberReady', 0)}/{want} ready, "
                    f"{st.get('updatedNumberScheduled', 0)} updated")
        return ""
    want = obj["spec"].get("replicas", 1)
    if st.get("updatedReplicas", 0) < want or st.get("availableReplicas", 0) < want \
            or st.get("replicas", 0) > want:
        return (f"Deployment {meta['name']}: {st.get('availableReplicas', 0)}/{want} available, "
                f"{st.get('updatedReplicas', 0)} updated")
    return ""


def wait_rolled_out(read, names: list[tuple[str, str]], timeout: float, alive=lambda: "") -> None:
    """Until every (kind, name) is rolled out; read(kind, name) -> the object as a dict.
    alive() returns what has died (a process the rollout needs), to stop waiting early."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [m for m in (workload_ready(read(k, n)) for k, n in names) if m]
        if not missing:
            return
        dead = alive()
        if dead or time.monotonic() > deadline:
            raise ManifestError(f"calico-lite not rolled out after {timeout:.0f}s: "
                                + "; ".join(missing) + (f"; exited: {dead}" if dead else ""))
        time.sleep(0.2)
