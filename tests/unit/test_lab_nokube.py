"""lab.nokube's pure side: the agent's process comes from deploy/'s DaemonSet as rendered for
the lab, with the ConfigMap and Secret read from the rendered documents."""
from __future__ import annotations

import sys

from calico_lite.lab import manifests, nokube
from calico_lite.lab.plan import make_plan
from calico_lite.lab.podspec import PodContext, container_process


def rendered(tls: bool) -> list[dict]:
    files = {"ca.crt": b"CA", "tls.crt": b"CERT", "tls.key": b"KEY"} if tls else None
    return manifests.render(manifests.load(), "https://10.97.0.10:2379" if tls else
                            "http://10.97.0.10:2379", 64512, "10.97.0.10", 6443, etcd_files=files)


def context(docs: list[dict], root, address: str) -> PodContext:
    cms, secrets = nokube._objects(docs, "ConfigMap"), nokube._objects(docs, "Secret")
    return PodContext(root, root / "pods" / "agent", address, address, {},
                      lambda ns, n: cms.get((ns, n)), lambda ns, n: secrets.get((ns, n)))


def test_agent_process_is_the_daemonsets_for_the_node(tmp_path):
    docs = rendered(tls=True)
    pod = nokube.agent_pod(docs, "r1n2")
    ctx = context(docs, tmp_path, "10.99.1.12")
    proc = container_process(pod, next(c for c in pod["spec"]["containers"]
                                       if c["name"] == "agent"), ctx)
    assert proc.argv[:3] == [sys.executable, "-m", "calico_lite.cli"]
    assert proc.argv[3:11] == ["node", "run", "--name", "r1n2", "--address", "10.99.1.12",
                               "--as", "64512"]
    assert proc.argv[proc.argv.index("--etcd-endpoints") + 1] == "https://10.97.0.10:2379"
    sock = proc.argv[proc.argv.index("--cni-socket") + 1]
    assert sock == str(tmp_path / "host/var/run/calico-lite/cni.sock")
    assert proc.env["ETCD_CA_CERT_FILE"] == str(tmp_path / "pods/agent/volumes/etcd-certs/ca.crt")


def test_volumes_hold_the_secret_from_the_rendered_docs(tmp_path):
    docs = rendered(tls=True)
    pod = nokube.agent_pod(docs, "r1n1")
    nokube.make_volumes(pod, context(docs, tmp_path, "10.99.1.11"), docs)
    certs = tmp_path / "pods/agent/volumes/etcd-certs"
    assert {f.name: f.read_text() for f in certs.iterdir()} == {
        "ca.crt": "CA", "tls.crt": "CERT", "tls.key": "KEY"}
    assert (certs / "tls.key").stat().st_mode & 0o777 == 0o400
    assert (tmp_path / "host/opt/cni/bin").is_dir() and (tmp_path / "host/etc/cni/net.d").is_dir()


def test_plan_says_whether_the_lab_has_kubernetes():
    assert make_plan("lab").kubernetes
    assert not make_plan("lab", kubernetes=False).kubernetes
