"""The `calico-lite` command: node agent, CNI install, IPAM, pools, the lab.

Errors reach the user as one line naming what is wrong; exit status 1 (2 for usage).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from calico_lite import keys


def _ds(args):
    """The datastore this command talks to: a lab's etcd (--lab / $CALICO_LITE_LAB) or
    --etcd-endpoints / $ETCD_ENDPOINTS."""
    from calico_lite.datastore import Datastore
    lab = getattr(args, "lab", None) or os.environ.get("CALICO_LITE_LAB")
    if lab:
        from calico_lite.lab.lab import Lab
        return Lab(lab).datastore()
    eps = args.etcd_endpoints or os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379")
    return Datastore(eps.split(","))


def _datastore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lab", help="reach the etcd of the lab NAME (default $CALICO_LITE_LAB)")
    p.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (default $ETCD_ENDPOINTS)")


def _print(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


# --- node ------------------------------------------------------------------------------
def cmd_node_run(args) -> int:
    from calico_lite.agent import AgentConfig, NodeAgent
    from calico_lite.routing import BgpSettings
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    peers = []
    for item in args.peer:
        addr, _, asn = item.rpartition(":")
        if not addr or not asn.isdigit():
            raise ValueError(f"--peer {item!r}: expected ADDRESS:AS")
        peers.append((addr, int(asn)))
    labels = dict(item.split("=", 1) for item in args.label)
    if not args.subnet:
        args.subnet = detect_subnet(args.address)
    cfg = AgentConfig(
        node=args.name, etcd_endpoints=args.etcd_endpoints.split(","),
        cni_socket=Path(args.cni_socket), run_dir=Path(args.run_dir), address=args.address,
        subnet=args.subnet, rack=args.rack, labels=labels,
        block_release_grace=args.block_release_grace,
        health_listen=args.health_listen, liveness_timeout=args.liveness_timeout,
        bgp=BgpSettings(router_id=args.router_id or args.address, local_address=args.address,
                        local_as=args.asn, subnet=args.subnet, peers=tuple(peers),
                        listen=args.bgp_listen, hold_time=args.hold_time,
                        on_exit=args.on_exit))
    NodeAgent(cfg).run_forever()
    return 0


def detect_subnet(address: str) -> str:
    import ipaddress
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == address:
                return str(ipaddress.ip_network(f"{address}/{a['prefixlen']}", strict=False))
    raise ValueError(f"--address {address} is not configured on any interface here; "
                     "give --subnet, or the node's own address")


def format_node_status(s: dict) -> str:
    lines = [f"node {s['node']}", "  BGP peers:"]
    for p in s.get("peers", []):
        lines.append(f"    {p['address']:<15} AS {p['peer_as']:<6} {p['state']:<12} "
                     f"received {p['received']} sent {p['sent']}")
    lines.append(f"  blocks: {', '.join(s.get('blocks', [])) or '-'}")
    lines.append("  routes:")
    for r in s.get("routes", []):
        lines.append(f"    {r['prefix']:<18} via {', '.join(r['via'])} ({r['encap']})")
    for n in s.get("notes", []):
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def cmd_node_status(args) -> int:
    ds = _ds(args)
    rows = [e.value for e in ds.list(keys.STATUS)
            if not args.node or e.value.get("node") == args.node]
    if args.node and not rows:
        raise LookupError(f"no status for node {args.node}: is its agent running?")
    from calico_lite.bgp_cli import format_node_status as calicoctl_style
    _print(rows, args.json, "\n\n".join(calicoctl_style(r) for r in rows))
    return 0


def cmd_kube_sync(args) -> int:  # pragma: no cover - a long-running process (tests/integration/test_kube_sync.py)
    from calico_lite.kube_sync import run
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    eps = args.etcd_endpoints or os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379")
    run(eps.split(","), kubeconfig=args.kubeconfig, service_account_dir=args.service_account_dir,
        api_server=args.api_server, resync_seconds=args.resync_seconds)
    return 0


# --- install-cni -----------------------------------------------------------------------
def cmd_install_cni(args) -> int:
    from calico_lite.install import install_cni
    binary, conf = install_cni(Path(args.bin_dir), Path(args.conf_dir), args.agent_socket,
                               mtu=args.mtu, log_file=args.log_file, cni_version=args.cni_version)
    print(f"installed {binary} and {conf}")
    return 0


# --- pools and IPAM --------------------------------------------------------------------
def cmd_pool_add(args) -> int:
    from calico_lite.blocks import Pool
    mode = args.encap_mode or ("Never" if args.encapsulation == "none" else "Always")
    pool = Pool(name=args.name, cidr=args.cidr, block_size=args.block_size,
                encapsulation=args.encapsulation, encap_mode=mode,
                nat_outgoing=args.nat_outgoing, disabled=args.disabled)
    if not _ds(args).create(keys.pool(pool.name), pool.to_dict()):
        raise ValueError(f"pool {pool.name} already exists")
    print(f"pool {pool.name} {pool.cidr} added")
    return 0


def cmd_pool_list(args) -> int:
    from calico_lite.ipam import list_pools
    pools = [p.to_dict() for p in list_pools(_ds(args))]
    _print(pools, args.json, "\n".join(
        f"{p['name']:<24} {p['cidr']:<18} /{p['blockSize']} {p['encapsulation']}/{p['encapMode']}"
        f"{' disabled' if p['disabled'] else ''}" for p in pools))
    return 0


def cmd_pool_delete(args) -> int:
    ds = _ds(args)
    if not ds.delete(keys.pool(args.name)):
        raise LookupError(f"pool {args.name} does not exist")
    print(f"pool {args.name} deleted")
    return 0


def cmd_ipam_show(args) -> int:
    from calico_lite.blocks import Block
    from calico_lite.ipam import list_pools
    ds = _ds(args)
    blocks = [Block.from_dict(e.value) for e in ds.list(keys.BLOCKS)]
    out = {"pools": [p.to_dict() for p in list_pools(ds)],
           "blocks": [{"cidr": b.cidr, "node": b.affinity, "used": len(b.allocations),
                       "size": b.size} for b in blocks]}
    text = "\n".join([f"pool {p['name']} {p['cidr']}" for p in out["pools"]] +
                     [f"block {b['cidr']:<18} node {b['node'] or '-':<10} {b['used']}/{b['size']} used"
                      for b in out["blocks"]])
    _print(out, args.json, text)
    return 0


def cmd_ipam_release(args) -> int:
    from calico_lite.ipam import Ipam
    a = Ipam(_ds(args), node="").release_ip(args.ip)
    if a is None:
        raise LookupError(f"{args.ip} is not assigned")
    print(f"released {a.ip} (handle {a.handle})")
    return 0


def cmd_ipam_check(args) -> int:
    from dataclasses import asdict
    from calico_lite.ipam_check import load_and_check
    r = load_and_check(_ds(args), args.grace)
    out = {"handles": r.handles, "in_use": r.in_use, "findings": [asdict(f) for f in r.findings]}
    text = "\n".join([f"{r.handles} handles, {r.in_use} in use by existing pods"] +
                     [f"{f.kind:<18} {f.ip:<15} {f.handle}: {f.detail}" for f in r.findings] +
                     ["ok: nothing leaked, no conflicts" if r.ok else
                      f"{len(r.findings)} problem(s); `calico-lite ipam gc` releases leaks"])
    _print(out, args.json, text)
    return 0 if r.ok else 3


def cmd_ipam_gc(args) -> int:
    from calico_lite.ipam_check import gc
    done = gc(_ds(args), args.grace)
    for f in done:
        print(f"released {f.ip} ({f.kind}, handle {f.handle})")
    print(f"{len(done)} released")
    return 0


# --- policy ----------------------------------------------------------------------------
def cmd_policy_apply(args) -> int:
    from calico_lite.datastore import Op
    from policy.manifests import parse_manifests, policy_to_dict
    source = "<stdin>" if args.filename == "-" else args.filename
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    policies = parse_manifests(text, source)  # all or nothing: a bad document applies none
    ds = _ds(args)
    ds.txn([], [Op.put(keys.k8s_policy(p.namespace, p.name), policy_to_dict(p)) for p in policies])
    for p in policies:
        print(f"networkpolicy.networking.k8s.io/{p.name} configured (namespace {p.namespace})")
    return 0


def _stored_policies(args) -> list[dict]:
    prefix = keys.K8S_POLICIES + (f"{args.namespace}/" if args.namespace else "")
    return [e.value for e in _ds(args).list(prefix)]


def cmd_policy_get(args) -> int:
    docs = _stored_policies(args)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
    elif args.output == "yaml":
        import yaml
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    else:
        print(f"{'NAMESPACE':<16} {'NAME':<28} POD-SELECTOR")
        for d in docs:
            sel = d["spec"].get("podSelector") or {}
            print(f"{d['metadata']['namespace']:<16} {d['metadata']['name']:<28} "
                  f"{json.dumps(sel.get('matchLabels', sel)) if sel else '<all>'}")
    return 0


def cmd_policy_delete(args) -> int:
    ns, name = _split_ref(args.policy)
    if not _ds(args).delete(keys.k8s_policy(ns, name)):
        raise LookupError(f"networkpolicy {ns}/{name} not found")
    print(f"networkpolicy.networking.k8s.io/{name} deleted (namespace {ns})")
    return 0


def cmd_policy_explain(args) -> int:
    from calico_lite.policy_inputs import inputs_from
    from policy.explain import explain, format_explanation
    ns, name = _split_ref(args.pod)
    ds = _ds(args)
    policies, pods, namespaces = inputs_from(lambda prefix: {e.key: e.value for e in ds.list(prefix)}, None)
    pod = next((p for p in pods if p.namespace == ns and p.name == name), None)
    if pod is None:
        raise LookupError(f"pod {ns}/{name} not found (no workload with that name)")
    e = explain(pod, policies, pods, namespaces)
    _print(e, args.json, format_explanation(e))
    return 0


# --- lab -------------------------------------------------------------------------------
def _lab(args):
    from calico_lite.lab.lab import Lab
    return Lab(args.name)


def cmd_lab_up(args) -> int:
    lab = _lab(args)
    lab.up(args.racks, args.nodes_per_rack, args.bgp, log=lambda m: print(m, file=sys.stderr),
           encap=args.encap)
    print(format_lab_status(lab.status()))
    return 0


def cmd_lab_down(args) -> int:
    removed = _lab(args).down()
    print(f"lab {args.name} down ({len(removed)} namespaces removed)")
    return 0


def format_lab_status(s: dict) -> str:
    lines = [f"lab {s['name']} (bgp {s['bgp_mode']}), etcd {s['etcd']}", "",
             f"{'NODE':<8} {'RACK':<6} {'ADDRESS':<12} {'AGENT':<8} BGP"]
    for n in s["nodes"]:
        bgp = ", ".join(f"{b['peer']} {b['state']}" for b in n["bgp"]) or "-"
        lines.append(f"{n['name']:<8} {n['rack']:<6} {n['address']:<12} {n['agent']:<8} {bgp}")
        lines += [f"         note: {note}" for note in n.get("notes", [])]
    lines += ["", f"{'POD':<24} {'NODE':<8} IP"]
    lines += [f"{p['namespace'] + '/' + p['name']:<24} {p['node']:<8} {p['ip']}" for p in s["pods"]]
    return "\n".join(lines)


def cmd_lab_status(args) -> int:
    s = _lab(args).status()
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(format_lab_status(s))
    return 0


def cmd_lab_ns_add(args) -> int:
    from calico_lite.lab.lab import parse_label_args
    _lab(args).ns_add(args.namespace, parse_label_args(args.label))  # type: ignore[arg-type]
    print(f"namespace {args.namespace} added")
    return 0


def cmd_lab_ns_label(args) -> int:
    from calico_lite.lab.lab import parse_label_args
    labels = _lab(args).ns_label(args.namespace, parse_label_args(args.labels, allow_remove=True))
    print(f"namespace {args.namespace} labels: {json.dumps(labels, sort_keys=True)}")
    return 0


def _split_ref(ref: str) -> tuple[str, str]:
    ns, _, pod = ref.partition("/")
    if not ns or not pod:
        raise ValueError(f"{ref!r}: expected NAMESPACE/POD")
    return ns, pod


def cmd_lab_pod_add(args) -> int:
    from calico_lite.lab.lab import parse_label_args, parse_ports
    ns, pod = _split_ref(args.pod)
    ip = _lab(args).pod_add(ns, pod, args.node, parse_label_args(args.label),  # type: ignore[arg-type]
                            args.serve, parse_ports(args.port))
    print(ip)
    return 0


def cmd_lab_pod_del(args) -> int:
    ns, pod = _split_ref(args.pod)
    _lab(args).pod_del(ns, pod)
    print(f"pod {args.pod} deleted")
    return 0


def cmd_lab_pod_label(args) -> int:
    from calico_lite.lab.lab import parse_label_args
    ns, pod = _split_ref(args.pod)
    labels = _lab(args).pod_label(ns, pod, parse_label_args(args.labels, allow_remove=True))
    print(f"pod {args.pod} labels: {json.dumps(labels, sort_keys=True)}")
    return 0


def cmd_lab_exec(args) -> int:
    ns, pod = _split_ref(args.pod)
    argv = args.argv
    if not argv:
        raise ValueError("lab exec: give a command after --")
    return _lab(args).exec(ns, pod, argv)


def cmd_lab_kubectl(args) -> int:
    """kubectl against the lab, inside its control-plane namespace; output and exit code
    passed through."""
    return subprocess.call(_lab(args).kubectl_argv(args.argv))


def cmd_lab_shell(args) -> int:
    """A shell in the lab's control-plane namespace where plain `kubectl` talks to the lab."""
    return subprocess.call(_lab(args).shell_argv())


def cmd_lab_wait(args) -> int:
    lab = _lab(args)
    lab.wait_converged(args.timeout)
    print("converged: every node routes every pod block")
    if args.policy:
        took = lab.wait_policy(args.timeout)
        print(f"policy enforced on every node ({took * 1000:.0f} ms)")
    return 0


def format_probe(rows: list[dict]) -> str:
    pods = sorted({r["from"] for r in rows} | {r["to"] for r in rows})
    ok = {(r["from"], r["to"]): r["connected"] for r in rows}
    w = max([len(p) for p in pods] + [4])
    lines = [" " * w + "  " + " ".join(f"{i:>3}" for i in range(len(pods)))]
    for i, a in enumerate(pods):
        cells = ["  -" if a == b else ("  ." if ok.get((a, b)) else "  X") for b in pods]
        lines.append(f"{a:<{w}}{i:>2} " + " ".join(cells))
    n_ok = sum(ok.values())
    lines.append(f"\n{n_ok}/{len(rows)} connected ('.' connected, 'X' blocked; rows: from, columns: to)")
    return "\n".join(lines)


def cmd_lab_probe(args) -> int:
    rows = _lab(args).probe(args.port, args.protocol)
    print(json.dumps(rows, indent=1) if args.json else format_probe(rows))
    return 0


# --- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calico-lite", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    node = sub.add_parser("node", help="the node agent").add_subparsers(dest="sub", required=True)
    run = node.add_parser("run", help="run the node agent (one per node)")
    run.add_argument("--name", required=True)
    run.add_argument("--etcd-endpoints", default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    run.add_argument("--cni-socket", default="/var/run/calico-lite/cni.sock")
    run.add_argument("--run-dir", default="/var/run/calico-lite")
    run.add_argument("--address", required=True, help="the node's address on its subnet")
    run.add_argument("--subnet", help="the node's subnet, e.g. 10.99.1.0/24 (default: the prefix "
                     "of the interface holding --address)")
    run.add_argument("--as", dest="asn", type=int, default=64512)
    run.add_argument("--router-id")
    run.add_argument("--peer", action="append", default=[], help="BGP peer ADDRESS:AS (repeat)")
    run.add_argument("--bgp-listen", action="store_true", help="accept BGP sessions (mesh)")
    run.add_argument("--hold-time", type=int, default=9)
    run.add_argument("--on-exit", choices=["detach", "stop"], default="detach",
                     help="on SIGTERM: leave ExaBGP, routes and rules for the next agent (detach, "
                          "graceful restart) or stop ExaBGP so peers withdraw at once (stop)")
    run.add_argument("--rack", default="")
    run.add_argument("--label", action="append", default=[])
    run.add_argument("--block-release-grace", type=float, default=300.0,
                     help="seconds a block stays empty before the node gives it back")
    run.add_argument("--health-listen", default="127.0.0.1:9099", metavar="HOST:PORT|off",
                     help="node-local address of /healthz, /readyz and /metrics ('off': none)")
    run.add_argument("--liveness-timeout", type=float, default=90.0, metavar="SECONDS",
                     help="/healthz fails when a loop has not gone round for this long")
    run.set_defaults(fn=cmd_node_run)
    st = node.add_parser("status", help="BGP peers, blocks and routes of nodes")
    st.add_argument("node", nargs="?")
    st.add_argument("--json", action="store_true")
    _datastore_args(st)
    st.set_defaults(fn=cmd_node_status)
    from calico_lite.bgp_cli import add_bgp_commands
    add_bgp_commands(sub, node, _datastore_args)

    ks = sub.add_parser("kube-sync", help="mirror Kubernetes namespaces, pods, policies, nodes into etcd")
    ks.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (default $ETCD_ENDPOINTS)")
    ks.add_argument("--kubeconfig", help="credentials from this kubeconfig (default: in-cluster)")
    ks.add_argument("--service-account-dir", help="in-cluster token, ca.crt, namespace "
                    "(default /var/run/secrets/kubernetes.io/serviceaccount)")
    ks.add_argument("--api-server", help="API server URL (default https://$KUBERNETES_SERVICE_HOST:PORT)")
    ks.add_argument("--resync-seconds", type=float, default=300.0,
                    help="how often each kind is compared with the datastore")
    ks.set_defaults(fn=cmd_kube_sync)

    inst = sub.add_parser("install-cni", help="install the CNI shim and conflist")
    inst.add_argument("--bin-dir", default="/opt/cni/bin")
    inst.add_argument("--conf-dir", default="/etc/cni/net.d")
    inst.add_argument("--agent-socket", default="/var/run/calico-lite/cni.sock")
    inst.add_argument("--mtu", type=int, default=0)
    inst.add_argument("--log-file", default="/var/log/calico-lite/cni.log")
    inst.add_argument("--cni-version", default="1.0.0", choices=["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                      help="the conflist's cniVersion (1.0.0: what containerd 1.6 and podman 4 accept)")
    inst.set_defaults(fn=cmd_install_cni)

    pool = sub.add_parser("pool", help="IP pools").add_subparsers(dest="sub", required=True)
    pa = pool.add_parser("add")
    pa.add_argument("name")
    pa.add_argument("--cidr", required=True)
    pa.add_argument("--block-size", type=int, default=26)
    pa.add_argument("--encapsulation", choices=["none", "ipip", "vxlan"], default="none")
    pa.add_argument("--encap-mode", choices=["Never", "Always", "CrossSubnet"])
    pa.add_argument("--nat-outgoing", action="store_true")
    pa.add_argument("--disabled", action="store_true")
    pa.set_defaults(fn=cmd_pool_add)
    pl_ = pool.add_parser("list")
    pl_.add_argument("--json", action="store_true")
    pl_.set_defaults(fn=cmd_pool_list)
    pd = pool.add_parser("delete")
    pd.add_argument("name")
    pd.set_defaults(fn=cmd_pool_delete)
    for sp in (pa, pl_, pd):
        _datastore_args(sp)

    ipam = sub.add_parser("ipam", help="address management").add_subparsers(dest="sub", required=True)
    show = ipam.add_parser("show")
    show.add_argument("--json", action="store_true")
    show.set_defaults(fn=cmd_ipam_show)
    rel = ipam.add_parser("release")
    rel.add_argument("ip")
    rel.set_defaults(fn=cmd_ipam_release)
    chk = ipam.add_parser("check", help="report leaked addresses and conflicts (exit 3 if any)")
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(fn=cmd_ipam_check)
    gcp = ipam.add_parser("gc", help="release what `ipam check` reports as leaked")
    gcp.set_defaults(fn=cmd_ipam_gc)
    for sp in (chk, gcp):
        sp.add_argument("--grace", type=float, default=60.0,
                        help="ignore handles younger than this many seconds (ADDs in flight)")
    for sp in (show, rel, chk, gcp):
        _datastore_args(sp)

    pol = sub.add_parser("policy", help="Kubernetes NetworkPolicy").add_subparsers(dest="sub", required=True)
    pap = pol.add_parser("apply", help="apply the manifests `kubectl apply -f` takes")
    pap.add_argument("-f", "--filename", required=True, help="FILE or - for stdin")
    pap.set_defaults(fn=cmd_policy_apply)
    pget = pol.add_parser("get")
    pget.add_argument("-n", "--namespace")
    pget.add_argument("-o", "--output", choices=["yaml", "json"])
    pget.set_defaults(fn=cmd_policy_get)
    pdl = pol.add_parser("delete")
    pdl.add_argument("policy", help="NAMESPACE/NAME")
    pdl.set_defaults(fn=cmd_policy_delete)
    pex = pol.add_parser("explain", help="which policies select a pod and what they allow")
    pex.add_argument("pod", help="NAMESPACE/POD")
    pex.add_argument("--json", action="store_true")
    pex.set_defaults(fn=cmd_policy_explain)
    for sp in (pap, pget, pdl, pex):
        _datastore_args(sp)

    lab = sub.add_parser("lab", help="a whole cluster in network namespaces").add_subparsers(
        dest="sub", required=True)

    def lab_cmd(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = lab.add_parser(name, help=help_)
        sp.add_argument("--name", default="lab", help="which lab (default: lab)")
        sp.set_defaults(fn=fn)
        return sp

    up = lab_cmd("up", cmd_lab_up, "build and start a lab")
    up.add_argument("--racks", type=int, default=2)
    up.add_argument("--nodes-per-rack", type=int, default=2)
    up.add_argument("--bgp", choices=["tor", "mesh", "rr"], default="tor",
                    help="rr: mesh off, nodes peer with route-reflector nodes")
    up.add_argument("--encap", choices=["none", "vxlan", "ipip"], default="none",
                    help="the default pool's encapsulation across subnets (mode CrossSubnet)")
    lab_cmd("down", cmd_lab_down, "remove everything a lab made")
    lab_cmd("status", cmd_lab_status, "nodes, BGP sessions, etcd, pods").add_argument(
        "--json", action="store_true")
    ns = lab.add_parser("ns", help="Kubernetes namespaces").add_subparsers(dest="nsub", required=True)
    nsa = ns.add_parser("add")
    nsa.add_argument("namespace")
    nsa.add_argument("--label", action="append", default=[])
    nsl = ns.add_parser("label")
    nsl.add_argument("namespace")
    nsl.add_argument("labels", nargs="+", help="k=v to set, k- to remove")
    for sp, fn in ((nsa, cmd_lab_ns_add), (nsl, cmd_lab_ns_label)):
        sp.add_argument("--name", default="lab")
        sp.set_defaults(fn=fn)
    pod = lab.add_parser("pod", help="pods").add_subparsers(dest="psub", required=True)
    padd = pod.add_parser("add")
    padd.add_argument("pod", help="NAMESPACE/POD")
    padd.add_argument("--node", required=True)
    padd.add_argument("--label", action="append", default=[])
    padd.add_argument("--serve", action="append", default=[], help="tcp:80,udp:80,...")
    padd.add_argument("--port", action="append", default=[], help="declared port name:proto:number")
    pdel = pod.add_parser("del")
    pdel.add_argument("pod")
    plab = pod.add_parser("label")
    plab.add_argument("pod")
    plab.add_argument("labels", nargs="+")
    for sp, fn in ((padd, cmd_lab_pod_add), (pdel, cmd_lab_pod_del), (plab, cmd_lab_pod_label)):
        sp.add_argument("--name", default="lab")
        sp.set_defaults(fn=fn)
    ex = lab_cmd("exec", cmd_lab_exec, "run a command in a pod")
    ex.add_argument("pod")
    ex.add_argument("argv", nargs="*", help="-- COMMAND ...")
    kc = lab_cmd("kubectl", cmd_lab_kubectl, "kubectl against the lab's API server")
    kc.add_argument("argv", nargs="*", help="-- KUBECTL ARGS ...")
    lab_cmd("shell", cmd_lab_shell, "a shell where kubectl talks to the lab")
    wt = lab_cmd("wait", cmd_lab_wait, "wait until every node routes every pod block")
    wt.add_argument("--timeout", type=float, default=30.0)
    wt.add_argument("--policy", action="store_true",
                    help="also until every node enforces the policies in the datastore")
    pr = lab_cmd("probe", cmd_lab_probe, "every pod to every other pod")
    pr.add_argument("--port", type=int, default=80)
    pr.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    pr.add_argument("--json", action="store_true")
    from calico_lite.bgp_cli import add_lab_node_commands
    add_lab_node_commands(lab)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:  # everything after -- is the command of `lab exec`, options included
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if command:
        if not hasattr(args, "argv"):
            build_parser().error("'--' is only for `lab exec NS/POD -- COMMAND` and `lab kubectl -- ARGS`")
        args.argv = command
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line, not a traceback
        if os.environ.get("CALICO_LITE_DEBUG"):
            raise
        print(f"calico-lite: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
