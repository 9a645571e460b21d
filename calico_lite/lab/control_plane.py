"""The lab's Kubernetes control plane: the real kube-apiserver, kube-controller-manager and
kube-scheduler (built from the k8s.io/kubernetes Go module by `make`, into build/kube/), run in
the lab's control-plane namespace against the lab's etcd (key prefix /registry).

Certificates and the service-account key pair are made at `lab up` (lab.pki); every
component authenticates with its own certificate, as kubeadm sets a cluster up. The API is
served on ETCD_IP:6443 inside the lab only: kubectl reaches it through `lab kubectl`, which
runs in that namespace, so the machine's own namespace never gets a lab address or route.
"""
from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from calico_lite.etcd_tls import EtcdTls
from calico_lite.lab import plumbing as pl
from calico_lite.lab.pki import LabCA, make_key_pair
from calico_lite.lab.plan import API_PORT, ETCD_IP, SERVICE_CIDR, SERVICE_IP

REPO = Path(__file__).resolve().parents[2]
KUBE_BIN = Path(os.environ.get("CALICO_LITE_KUBE_BIN", REPO / "build" / "kube"))
KUBE_VERSION = "v1.34.4"   # deploy/kube/go.mod pins the same release
KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")   # the machine image's kubectl.1.NN
API_URL = f"https://{ETCD_IP}:{API_PORT}"
READY_TIMEOUT = 120.0


class ControlPlaneError(RuntimeError):
    pass


@dataclass(frozen=True)
class KubePaths:
    """Where a lab keeps its cluster's credentials and logs (under the lab's run folder)."""
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def kubeconfig(self, who: str) -> Path:
        return self.root / f"{who}.kubeconfig"

    def log(self, component: str) -> Path:
        return self.root / f"{component}.log"

    @property
    def sa_dir(self) -> Path:
        """In-cluster credentials (token, ca.crt, namespace) for a kube-sync run outside a pod
        (tests/kube_cluster.py)."""
        return self.root / "serviceaccount"


def binaries_present() -> list[str]:
    """The control-plane binaries that are missing (empty: all built)."""
    return [b for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
            if not (KUBE_BIN / b).is_file()]


def render_kubeconfig(ca: Path, cert: Path, key: Path, user: str, server: str = API_URL) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server,
                                                 "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert),
                                          "client-key": str(key)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}]})


def make_credentials(paths: KubePaths, node_names: list[str]) -> None:
    """The CA, the API server's serving certificate, one client identity per component and
    per node, their kubeconfigs, and the service-account key pair."""
    ca = LabCA(paths.pki)
    ca.create("calico-lite-lab-ca")
    ca.issue("apiserver", "kube-apiserver", server=True,
             ips=(ETCD_IP, "127.0.0.1", SERVICE_IP),
             dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local", "localhost"))
    identities = {"admin": ("kubernetes-admin", ("system:masters",)),
                  "controller-manager": ("system:kube-controller-manager", ()),
                  "scheduler": ("system:kube-scheduler", ())}
    identities.update({f"node-{n}": (f"system:node:{n}", ("system:nodes",)) for n in node_names})
    for who, (cn, orgs) in identities.items():
        files = ca.issue(who, cn, orgs)
        paths.kubeconfig(who).write_text(render_kubeconfig(ca.cert_path, files.cert, files.key, cn))
    make_key_pair(paths.pki / "sa.key", paths.pki / "sa.pub")


@dataclass(frozen=True)
class EtcdClient:
    """How a control-plane component reaches the lab's etcd: the URL, and the TLS files of
    its own etcd user (None: plain http)."""
    endpoint: str = "http://127.0.0.1:2379"
    tls: EtcdTls | None = None


def etcd_flags(etcd: EtcdClient) -> list[str]:
    """kube-apiserver's etcd flags."""
    flags = [f"--etcd-servers={etcd.endpoint}"]
    if etcd.tls:
        flags += [f"--etcd-cafile={etcd.tls.ca_file}", f"--etcd-certfile={etcd.tls.cert_file}",
                  f"--etcd-keyfile={etcd.tls.key_file}"]
    return flags


def apiserver_argv(paths: KubePaths, etcd: EtcdClient = EtcdClient()) -> list[str]:
    pki = paths.pki
    return [str(KUBE_BIN / "kube-apiserver"),
            *etcd_flags(etcd), "--etcd-prefix=/registry",
            f"--advertise-address={ETCD_IP}", "--bind-address=0.0.0.0",
            f"--secure-port={API_PORT}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--v=0",
            f"--cert-dir={paths.root / 'apiserver-certs'}"]


def controller_manager_argv(paths: KubePaths) -> list[str]:
    kc = paths.kubeconfig("controller-manager")
    return [str(KUBE_BIN / "kube-controller-manager"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={paths.pki / 'sa.key'}",
            f"--root-ca-file={paths.pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--node-monitor-period=1s",   # untaints a new Ready node within a second
            "--bind-address=127.0.0.1", "--profiling=false", "--v=0"]


def scheduler_argv(paths: KubePaths) -> list[str]:
    kc = paths.kubeconfig("scheduler")
    return [str(KUBE_BIN / "kube-scheduler"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false", "--v=0"]


def start(paths: KubePaths, cp_netns: str, record_pid, etcd: EtcdClient = EtcdClient()) -> None:
    """Start the three components in the control-plane namespace; returns once the API server
    answers /readyz. record_pid(label, pid) is called right after each start, so `lab down`
    finds them after any crash."""
    missing = binaries_present()
    if missing:
        raise ControlPlaneError(f"Kubernetes binaries missing in {KUBE_BIN}: {', '.join(missing)} "
                                "(run `make build`: it builds them from deploy/kube/go.mod)")
    pid = pl.spawn(cp_netns, apiserver_argv(paths, etcd), paths.log("kube-apiserver"))
    record_pid("kube-apiserver", pid)
    wait_ready(paths, cp_netns, pid)
    for name, argv in (("kube-controller-manager", controller_manager_argv(paths)),
                       ("kube-scheduler", scheduler_argv(paths))):
        record_pid(name, pl.spawn(cp_netns, argv, paths.log(name)))


def api_ready(paths: KubePaths, cp_netns: str) -> bool:
    """GET /readyz as the admin, from inside the control-plane namespace (curl: this process
    stays where it is)."""
    pki = paths.pki
    p = subprocess.run(["ip", "netns", "exec", cp_netns, "curl", "-sf", "-m", "2",
                        "--cacert", str(pki / "ca.crt"), "--cert", str(pki / "admin.crt"),
                        "--key", str(pki / "admin.key"), f"{API_URL}/readyz"],
                       capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip() == "ok"


def wait_ready(paths: KubePaths, cp_netns: str, pid: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not api_ready(paths, cp_netns):
        if not pl.pid_alive(pid):
            raise ControlPlaneError(f"kube-apiserver exited; see {paths.log('kube-apiserver')}")
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f}s; see "
                                    f"{paths.log('kube-apiserver')}")
        time.sleep(0.2)


def find_kubectl(server: str = KUBE_VERSION) -> str:
    """The kubectl to use with a server of this version: $CALICO_LITE_KUBECTL, else the
    machine's newest bundled `kubectl.1.NN` within kubectl's supported skew (one minor) of the
    server. /usr/bin/kubectl is a dispatcher that picks by the server's minor and falls back to
    1.32 for a 1.34 server, outside the skew, so it is the last resort."""
    if os.environ.get("CALICO_LITE_KUBECTL"):
        return os.environ["CALICO_LITE_KUBECTL"]
    minor = int(server.lstrip("v").split(".")[1])
    bundled = {int(p.name.rsplit(".", 1)[1]): p for p in KUBECTL_DIR.glob("kubectl.1.*")
               if p.name.rsplit(".", 1)[1].isdigit()}
    within = [m for m in bundled if abs(m - minor) <= 1]
    return str(bundled[max(within)]) if within else "/usr/bin/kubectl"


def kubectl_argv(paths: KubePaths, cp_netns: str, args: list[str]) -> list[str]:
    """kubectl as the lab's admin, inside the control-plane namespace."""
    return ["ip", "netns", "exec", cp_netns, find_kubectl(),
            f"--kubeconfig={paths.admin_kubeconfig}", *args]


def kubectl(paths: KubePaths, cp_netns: str, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(kubectl_argv(paths, cp_netns, list(args)), input=input,
                       capture_output=True, text=True)
    if check and p.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args[:3])} failed: "
                                f"{p.stderr.strip() or p.stdout.strip()}")
    return p


def shell_argv(paths: KubePaths, cp_netns: str, lab: str) -> list[str]:
    """An interactive shell in the control-plane namespace with KUBECONFIG set and the right
    kubectl (find_kubectl) first on PATH."""
    bin_dir = paths.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "kubectl"
    link.unlink(missing_ok=True)
    link.symlink_to(find_kubectl())
    env = [f"KUBECONFIG={paths.admin_kubeconfig}", f"PATH={bin_dir}:{os.environ.get('PATH', '')}",
           f"PS1=[lab {lab}] \\w# "]
    return ["ip", "netns", "exec", cp_netns, "env", *env, os.environ.get("SHELL", "/bin/bash"),
            "--norc", "-i"]


def ssl_context(paths: KubePaths, who: str = "admin") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / f"{who}.crt"), str(paths.pki / f"{who}.key"))
    return ctx


def server_version(paths: KubePaths) -> str:
    """The API server's gitVersion (the caller must be in the control-plane namespace)."""
    import json
    with urllib.request.urlopen(f"{API_URL}/version", context=ssl_context(paths), timeout=5) as r:
        return json.load(r)["gitVersion"]
