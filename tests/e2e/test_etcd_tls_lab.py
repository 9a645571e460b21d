"""The lab's etcd by default: https only, a client certificate required, etcd's RBAC keeping
each user (its certificate's CN) to its own prefix; and no private key ever shows up in a
log, in `node status`, in a node's /metrics or in an error, even after TLS errors.
`lab up --insecure-etcd` keeps plain http."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from calico_lite.health import get_in_netns
from calico_lite.lab import fabric
from calico_lite.lab.lab import Lab
from tests.conftest import lab_cli
from tests.e2e.labutil import run_dir, running_lab, status

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NODES = ("r1n1", "r1n2")
ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


@pytest.fixture(scope="module")
def lab():
    with running_lab(f"tls{uuid.uuid4().hex[:5]}", "--racks", "1", "--nodes-per-rack", "2") as name:
        for i, node in enumerate(NODES * 2):
            lab_cli("lab", "pod", "add", f"default/p{i}", "--node", node, "--name", name)
        lab_cli("lab", "wait", "--name", name)
        yield name


def etcdctl(lab: str, *args: str, user: str | None = "root", endpoint: str | None = None
            ) -> subprocess.CompletedProcess:
    """etcdctl in the lab's control-plane namespace as `user` (None: no certificate at all)."""
    plan = Lab(lab).plan
    if user:
        argv = fabric.etcdctl_argv(plan, user)
    else:
        argv = ["ip", "netns", "exec", plan.cp_netns, "etcdctl", "--endpoints", plan.etcd_local_endpoint,
                "--cacert", str(fabric.etcd_files(plan).ca)]
    if endpoint:
        argv[argv.index("--endpoints") + 1] = endpoint
    return subprocess.run([*argv, "--dial-timeout", "2s", "--command-timeout", "3s", *args],
                          capture_output=True, text=True, env=ENV)


def cli_in_cp(lab: str, *args: str) -> subprocess.CompletedProcess:
    """calico-lite inside the lab's control-plane namespace, without any lab or etcd setting
    from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "CALICO_LITE_LAB"))}
    return subprocess.run(["ip", "netns", "exec", f"{lab}-cp", str(REPO / ".venv" / "bin" / "calico-lite"),
                           *args], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(REPO)})


def secrets(lab: str) -> list[str]:
    """Every private key of the lab (etcd's and Kubernetes'): its PEM body and each base64
    line of it."""
    found = []
    for key in run_dir(lab).rglob("*.key"):
        text = key.read_text()
        found.append(text.strip())
        found += [line for line in text.splitlines() if line and not line.startswith("-----")]
    return found


def test_etcd_wants_https_and_a_client_certificate(lab):
    plan = Lab(lab).plan
    assert plan.etcd_endpoint == "https://10.97.0.10:2379"
    assert etcdctl(lab, "get", "x", endpoint="http://127.0.0.1:2379").returncode != 0
    assert etcdctl(lab, "get", "x", user=None).returncode != 0
    assert etcdctl(lab, "get", "x").returncode == 0


def test_each_etcd_user_is_kept_to_its_own_prefix(lab):
    nodes = etcdctl(lab, "get", "--prefix", "/calico-lite/nodes/", "--keys-only", user="calico-lite")
    assert nodes.returncode == 0 and len(nodes.stdout.split()) == len(NODES), nodes.stderr
    denied = etcdctl(lab, "get", "--prefix", "/registry/", "--keys-only", user="calico-lite")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    denied = etcdctl(lab, "put", "/calico-lite/x", "1", user="kube-apiserver")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    pods = etcdctl(lab, "get", "--prefix", "/registry/pods/default/", "--keys-only", user="kube-apiserver")
    assert pods.returncode == 0 and len(pods.stdout.split()) == 2 * len(NODES), pods.stderr


def test_no_private_key_in_logs_status_metrics_or_errors(lab):
    files = fabric.etcd_files(Lab(lab).plan)
    client = files.client("calico-lite")
    base = ["--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-ca-file", str(files.ca),
            "--etcd-cert-file", str(client.cert)]
    wrong_key = cli_in_cp(lab, "pool", "list", *base, "--etcd-key-file", str(files.client("root").key))
    assert wrong_key.returncode == 1 and "does not match the certificate" in wrong_key.stderr
    kube_ca = run_dir(lab) / "kube" / "pki" / "ca.crt"   # a CA that did not sign etcd's certificate
    wrong_ca = cli_in_cp(lab, "pool", "list", "--etcd-endpoints", "https://127.0.0.1:2379",
                         "--etcd-ca-file", str(kube_ca), "--etcd-cert-file", str(client.cert),
                         "--etcd-key-file", str(client.key))
    assert wrong_ca.returncode == 1 and "TLS handshake failed" in wrong_ca.stderr
    assert cli_in_cp(lab, "pool", "list", *base, "--etcd-key-file", str(client.key)).returncode == 0

    texts = {"wrong key": wrong_key.stdout + wrong_key.stderr, "wrong CA": wrong_ca.stdout + wrong_ca.stderr,
             "node status": lab_cli("node", "status", "--lab", lab, "--json").stdout,
             "lab status": json.dumps(status(lab))}
    for node in NODES:
        code, text = get_in_netns(f"{lab}-{node}", "/metrics")
        assert code == 200 and "calico_lite_" in text
        texts[f"{node} /metrics"] = text
    logs = sorted(run_dir(lab).rglob("*.log"))
    assert any(p.name == "agent.log" for p in logs) and any(p.name == "kube-sync.log" for p in logs)
    texts.update({str(p): p.read_text(errors="replace") for p in logs})
    keys = secrets(lab)
    assert len(keys) > 20
    leaks = [(where, k[:12]) for where, text in texts.items() for k in keys if k in text]
    assert leaks == []


def test_an_insecure_etcd_lab_stays_on_plain_http():
    with running_lab(f"tlsi{uuid.uuid4().hex[:5]}", "--racks", "1", "--nodes-per-rack", "1", "--insecure-etcd") as name:
        plan = Lab(name).plan
        assert not plan.etcd_tls and plan.etcd_endpoint == "http://10.97.0.10:2379"
        p = subprocess.run(fabric.etcdctl_argv(plan) + ["get", "--prefix", "/calico-lite/nodes/",
                                                        "--keys-only"],
                           capture_output=True, text=True, env=ENV)
        assert p.returncode == 0 and p.stdout.split() == ["/calico-lite/nodes/r1n1"], p.stderr
        assert status(name)["etcd"] == "healthy"
        assert not fabric.etcd_files(plan).dir.exists()
