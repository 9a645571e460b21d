"""From a pod's spec to the lab's processes (lab.podspec), and deploy/ rendered for a lab
(lab.manifests): pure functions, checked against deploy/calico-lite.yaml itself."""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from calico_lite.lab import manifests, podspec
from calico_lite.lab.podspec import PodContext, PodSpecError

ROOT = Path("/run/labs/x/nodes/r1n1")
CONFIG = {"calico-lite": {"etcd_endpoints": "https://10.97.0.10:2379", "as_number": "64512",
                          "etcd_ca": "/etc/calico-lite/etcd/ca.crt", "etcd_cert": "", "etcd_key": ""}}


def ctx(config=CONFIG, secrets=None) -> PodContext:
    return PodContext(ROOT, ROOT / "pods" / "u1", "10.99.1.11", "10.99.1.11",
                      {"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                      lambda ns, name: config.get(name), lambda ns, name: (secrets or {}).get(name))


def pod_of(template: dict) -> dict:
    return {"metadata": {"name": "calico-lite-node-abcde", "namespace": "kube-system", "uid": "u1"},
            "spec": {**template["spec"], "nodeName": "r1n1"}}


def node_template() -> dict:
    docs = manifests.load()
    return manifests.find(docs, "DaemonSet", manifests.NODE_DS)["spec"]["template"]


def test_host_paths_are_the_nodes_copies_except_what_the_kernel_shares():
    assert podspec.host_path(ROOT, "/opt/cni/bin") == ROOT / "host/opt/cni/bin"
    assert podspec.host_path(ROOT, "/var/run/netns") == Path("/var/run/netns")
    assert podspec.host_path(ROOT, "/lib/modules/6.1") == Path("/lib/modules/6.1")
    assert podspec.host_path(ROOT, "/lib/modulesx") == ROOT / "host/lib/modulesx"


def test_translate_takes_the_longest_mount_and_flag_values():
    m = [("/var/run", "/n/run"), ("/var/run/calico-lite", "/n/cl")]
    assert podspec.translate("/var/run/calico-lite/cni.sock", m) == "/n/cl/cni.sock"
    assert podspec.translate("/var/run/x", m) == "/n/run/x"
    assert podspec.translate("/var/running", m) == "/var/running"
    assert podspec.translate("--sock=/var/run/calico-lite/s", m) == "--sock=/n/cl/s"
    assert podspec.translate("10.0.0.1", m) == "10.0.0.1"


def test_expand_follows_kubernetes_rules():
    env = {"A": "1", "B": "x"}
    assert podspec.expand("$(A)-$(B)", env) == "1-x"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(A)", env) == "$(A)"


def test_the_agent_container_resolves_from_the_real_manifest():
    tpl = node_template()
    pod = pod_of(tpl)
    agent = next(c for c in tpl["spec"]["containers"] if c["name"] == "agent")
    proc = podspec.container_process(pod, agent, ctx())
    argv = proc.argv
    assert argv[:3] == [sys.executable, "-m", "calico_lite.cli"]
    assert argv[argv.index("--name") + 1] == "r1n1"
    assert argv[argv.index("--address") + 1] == "10.99.1.11"
    assert argv[argv.index("--etcd-endpoints") + 1] == "https://10.97.0.10:2379"
    assert argv[argv.index("--cni-socket") + 1] == str(ROOT / "host/var/run/calico-lite/cni.sock")
    # an env value from the ConfigMap under a mountPath: the Secret volume's folder
    assert proc.env["ETCD_CA_CERT_FILE"] == str(ROOT / "pods/u1/volumes/etcd-certs/ca.crt")
    assert proc.env["ETCD_CERT_FILE"] == ""
    assert proc.env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_install_cni_writes_host_paths_the_shim_can_use():
    tpl = node_template()
    init = tpl["spec"]["initContainers"][0]
    argv = podspec.container_process(pod_of(tpl), init, ctx()).argv
    assert argv[argv.index("--agent-socket") + 1] == str(ROOT / "host/var/run/calico-lite/cni.sock")
    assert argv[argv.index("--bin-dir") + 1] == str(ROOT / "host/opt/cni/bin")


def test_missing_config_and_unknown_images_are_clear_errors():
    tpl = node_template()
    agent = next(c for c in tpl["spec"]["containers"] if c["name"] == "agent")
    with pytest.raises(PodSpecError, match="configMap 'calico-lite' not found") as e:
        podspec.container_process(pod_of(tpl), agent, ctx(config={}))
    assert e.value.reason == "CreateContainerConfigError"
    with pytest.raises(PodSpecError, match="not in the lab's image store") as e:
        podspec.container_process(pod_of(tpl), {**agent, "image": "busybox:1.36"}, ctx())
    assert e.value.reason == "ErrImagePull"
    bad = {**agent, "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}
    with pytest.raises(PodSpecError, match="names no volume"):
        podspec.container_process(pod_of(tpl), bad, ctx())


def test_env_from_an_optional_config_map_and_explicit_env_wins():
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {"volumes": []}}
    c = {"name": "c", "image": "calico-lite:1", "envFrom": [
        {"configMapRef": {"name": "kubernetes-services-endpoint", "optional": True}}],
        "env": [{"name": "X", "value": "$(KUBERNETES_SERVICE_HOST):1"}]}
    assert podspec.resolve_env(pod, c, ctx())["X"] == "10.96.0.1:1"
    cfg = {**CONFIG, "kubernetes-services-endpoint": {"KUBERNETES_SERVICE_HOST": "10.97.0.10"}}
    env = podspec.resolve_env(pod, c, ctx(config=cfg))
    assert env["KUBERNETES_SERVICE_HOST"] == "10.97.0.10" and env["X"] == "10.97.0.10:1"


def test_render_sets_only_what_an_operator_sets():
    docs = manifests.load()
    files = {"ca.crt": b"CA", "tls.crt": b"CERT", "tls.key": b"KEY"}
    out = manifests.render(docs, "https://10.97.0.10:2379", 64512, "10.97.0.10", 6443,
                           etcd_files=files, image_tag="9.9")
    cm = manifests.find(out, "ConfigMap", manifests.CONFIG)["data"]
    assert cm["etcd_endpoints"] == "https://10.97.0.10:2379"
    assert cm["etcd_ca"] == "/etc/calico-lite/etcd/ca.crt"   # the Secret's mountPath in deploy/
    secret = manifests.find(out, "Secret", manifests.ETCD_SECRET)["data"]
    assert base64.b64decode(secret["tls.key"]) == b"KEY"
    images = {c["image"] for t in manifests.pod_templates(out)
              for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]}
    assert images == {"calico-lite:9.9"}
    assert manifests.find(out, "ConfigMap", manifests.SERVICES_ENDPOINT)["data"] == {
        "KUBERNETES_SERVICE_HOST": "10.97.0.10", "KUBERNETES_SERVICE_PORT": "6443"}
    # deploy/ itself is untouched and holds no address or key
    assert manifests.find(docs, "ConfigMap", manifests.CONFIG)["data"]["etcd_endpoints"] == ""
    assert not manifests.find(docs, "Secret", manifests.ETCD_SECRET).get("data")


def test_rollout_state_reads_like_kubectl_rollout_status():
    ds = {"kind": "DaemonSet", "metadata": {"name": "d", "generation": 2},
          "status": {"observedGeneration": 2, "desiredNumberScheduled": 2, "updatedNumberScheduled": 1,
                     "numberAvailable": 2, "numberReady": 2}}
    assert "1 updated" in manifests.workload_ready(ds)
    ds["status"]["updatedNumberScheduled"] = 2
    assert manifests.workload_ready(ds) == ""
    ds["status"]["observedGeneration"] = 1
    assert "not yet observed" in manifests.workload_ready(ds)
