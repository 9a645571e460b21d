"""A real Kubernetes control plane for tests, alone in one scratch network namespace.

The namespace (unique prefix, tests/nslib.py) gets the lab's API address 10.97.0.10/32 on
its own `lo` and nothing else: no veth, no address in the machine's namespace. etcd listens
on 127.0.0.1 inside it; kube-apiserver, controller-manager and scheduler are started by
calico_lite.lab.control_plane; kube-sync runs as a process inside it with in-cluster style
credentials (a service-account token made with `kubectl create token`). The test reaches
the API with kubectl and etcd with the project's Datastore, both run inside the namespace.
`close()` kills every process and removes the namespace and files, also after a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from calico_lite.lab import control_plane as cp
from calico_lite.lab import plumbing as pl
from calico_lite.lab.plan import ETCD_IP
from tests.nslib import remove_netns_with_prefix, unique_prefix, wait_for

REPO = Path(__file__).resolve().parent.parent
KUBECTL = os.environ.get("CALICO_LITE_KUBECTL", "/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
ETCD = "http://127.0.0.1:2379"
SA_NAMESPACE = "kube-system"


class KubeCluster:
    def __init__(self) -> None:
        self.prefix = unique_prefix("ks")
        self.ns = f"{self.prefix}cp"
        self.root = Path(tempfile.mkdtemp(prefix=f"calico-lite-{self.prefix}-"))
        self.paths = cp.KubePaths(self.root / "kube")
        self.pids: dict[str, int] = {}
        self._ds: subprocess.Popen | None = None

    # --- up and down ---------------------------------------------------------------------
    def up(self) -> "KubeCluster":
        pl.add_netns(self.ns)
        pl.ip(self.ns, "addr", "add", f"{ETCD_IP}/32", "dev", "lo")
        self.pids["etcd"] = pl.spawn(self.ns, [
            "etcd", "--name", "k", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD,
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "k=http://127.0.0.1:2380", "--log-level", "warn"],
            self.root / "etcd.log")
        wait_for(lambda: self.etcdctl("endpoint", "health", check=False).returncode == 0,
                 "etcd healthy", timeout=30, interval=0.2)
        self.paths.root.mkdir(parents=True)
        cp.make_credentials(self.paths, [])
        cp.start(self.paths, self.ns, self.pids.__setitem__)
        self._ds = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.ns}", "--", sys.executable, "-m",
             "tests.ds_helper", ETCD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.make_service_account()
        return self

    def close(self) -> None:
        if self._ds:
            self._ds.kill()
            self._ds.wait()
        pl.kill_pids(list(self.pids.values()), grace=1.0)
        remove_netns_with_prefix(self.prefix)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- the API ---------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["ip", "netns", "exec", self.ns, KUBECTL,
                            f"--kubeconfig={self.paths.admin_kubeconfig}", *args],
                           input=input, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def apply(self, *docs: dict) -> None:
        """kubectl apply, retried while the API refuses for a reason that passes (a new
        namespace whose default ServiceAccount the controller manager has not made yet)."""
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
        last: list[str] = []

        def attempt() -> bool:
            p = self.kubectl("apply", "-f", "-", input=text, check=False)
            last[:] = [p.stderr.strip()]
            return p.returncode == 0
        try:
            wait_for(attempt, "kubectl apply", timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"kubectl apply of {[d['metadata']['name'] for d in docs]}: "
                                 f"{last[0]}") from None

    def make_service_account(self) -> None:
        """kube-sync's in-cluster credentials: deploy/calico-lite.yaml's ServiceAccount and
        RBAC, a token for it, the CA, the namespace: the files a pod finds mounted."""
        docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "calico-lite.yaml").read_text())
                if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
        self.apply(*docs)
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]
        token = self.kubectl("create", "token", sa["name"], "-n", sa["namespace"],
                             "--duration=4h").stdout.strip()
        d = self.paths.sa_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "token").write_text(token)
        shutil.copy(self.paths.pki / "ca.crt", d / "ca.crt")
        (d / "namespace").write_text(sa["namespace"])

    def _api_port_free(self) -> bool:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hltn", "sport", "=", ":6443"],
                             capture_output=True, text=True).stdout
        return not out.strip()

    def restart_apiserver(self, between=lambda: None) -> None:
        """Kill the API server, call between(), start it again; returns once it is ready."""
        pl.kill_pids([self.pids["kube-apiserver"]], grace=0.0)
        wait_for(lambda: not pl.pid_alive(self.pids["kube-apiserver"]), "kube-apiserver gone")
        wait_for(self._api_port_free, "port 6443 released")  # else the new one cannot bind
        between()
        pid = pl.spawn(self.ns, cp.apiserver_argv(self.paths), self.paths.log("kube-apiserver"))
        self.pids["kube-apiserver"] = pid
        cp.wait_ready(self.paths, self.ns, pid)

    # --- etcd ----------------------------------------------------------------------------
    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["ip", "netns", "exec", self.ns, "etcdctl", "--endpoints", ETCD,
                            "--dial-timeout", "2s", *args], capture_output=True, text=True,
                           env={**os.environ, "ETCDCTL_API": "3"})
        if check and p.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def ds(self, op: str, **kw):
        """One Datastore call, made inside the namespace (tests/ds_helper.py)."""
        assert self._ds and self._ds.stdin and self._ds.stdout
        self._ds.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self._ds.stdin.flush()
        answer = json.loads(self._ds.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"datastore {op}: {answer['error']}")
        return answer["ok"]

    def get(self, key: str):
        got = self.ds("get", key=key)
        return None if got is None else got[0]

    def items(self, prefix: str) -> dict:
        return {k: v for k, v, _ in self.ds("list", prefix=prefix)}

    # --- kube-sync -----------------------------------------------------------------------
    def start_kube_sync(self, resync_seconds: float = 300.0) -> int:
        pid = pl.spawn(self.ns, [
            str(REPO / ".venv" / "bin" / "calico-lite"), "kube-sync", "--etcd-endpoints", ETCD,
            "--service-account-dir", str(self.paths.sa_dir), "--api-server", cp.API_URL,
            "--resync-seconds", str(resync_seconds)],
            self.root / "kube-sync.log", env={"PYTHONPATH": str(REPO)})
        self.pids["kube-sync"] = pid
        return pid

    def stop_kube_sync(self) -> None:
        pid = self.pids.pop("kube-sync")
        pl.kill_pids([pid], grace=0.0)
        wait_for(lambda: not pl.pid_alive(pid), "kube-sync gone")

    def signal_kube_sync(self, sig: signal.Signals) -> None:
        os.kill(self.pids["kube-sync"], sig)

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text() if p.exists() else ""


