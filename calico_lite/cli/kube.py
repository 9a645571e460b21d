"""`calico-lite kube-sync` and `calico-lite install-cni`: what a Kubernetes cluster deploys
(the one kube-sync mirror of the API server; each node's CNI install, the DaemonSet's init step)."""
from __future__ import annotations

from pathlib import Path

from calico_lite.cli.common import ETCD_OPTIONS, Group, arg, etcd_endpoints, etcd_tls, log_to_stderr

COMMANDS = Group()


@COMMANDS.command(
    "kube-sync",
    # also global options (`calico-lite --etcd-endpoints URL kube-sync`): no parser default
    *ETCD_OPTIONS,
    arg("--kubeconfig", help="credentials from this kubeconfig (default: in-cluster)"),
    arg("--service-account-dir", help="in-cluster token, ca.crt, namespace "
                                      "(default /var/run/secrets/kubernetes.io/serviceaccount)"),
    arg("--api-server", help="API server URL (default https://$KUBERNETES_SERVICE_HOST:PORT)"),
    arg("--resync-seconds", type=float, default=300.0,
        help="how often each kind is compared with the datastore"),
    arg("--health-listen", default="off", metavar="HOST:PORT|off",
        help="node-local address of /healthz, /readyz and /metrics (the Deployment uses "
             "127.0.0.1:9098)"),
    help="mirror Kubernetes namespaces, pods, policies, nodes into etcd")
def cmd_kube_sync(args) -> int:  # pragma: no cover - a long-running process (tests/integration/test_kube_sync.py)
    from calico_lite.kube_sync import run
    log_to_stderr()
    run(etcd_endpoints(args), kubeconfig=args.kubeconfig,
        service_account_dir=args.service_account_dir, api_server=args.api_server,
        resync_seconds=args.resync_seconds, etcd_tls=etcd_tls(args),
        health_listen=args.health_listen)
    return 0


@COMMANDS.command(
    "install-cni",
    arg("--bin-dir", default="/opt/cni/bin"),
    arg("--conf-dir", default="/etc/cni/net.d"),
    arg("--agent-socket", default="/var/run/calico-lite/cni.sock"),
    arg("--mtu", type=int, default=0),
    arg("--log-file", default="/var/log/calico-lite/cni.log"),
    arg("--cni-version", default="1.0.0", choices=["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        help="the conflist's cniVersion (1.0.0: what containerd 1.6 and podman 4 accept)"),
    help="install the CNI shim and conflist")
def cmd_install_cni(args) -> int:
    from calico_lite.install import install_cni
    binary, conf = install_cni(Path(args.bin_dir), Path(args.conf_dir), args.agent_socket,
                               mtu=args.mtu, log_file=args.log_file, cni_version=args.cni_version)
    print(f"installed {binary} and {conf}")
    return 0
