"""Where pod-to-pod TCP throughput goes: the lab's cross-rack path rebuilt hop by hop, each
part added in turn, measured alternately in one run; printed, never asserted.

    veth        two namespaces joined by one veth pair (bench/throughput.py's baseline)
    node        pod - node - pod: one forwarding namespace, plain routing (no nftables)
    node+nft    the same with calico-lite's whole table (below) on the node: the same-node path
    chain       pod - node - ToR (bridge) - spine - ToR (bridge) - node - pod, the lab's
                cross-rack path (6 veth pairs, 2 bridges, 5 forwarding namespaces), plain
    chain+ct    the same, each node with a one-rule table (`ct state established accept` in
                forward): conntrack alone
    chain+nft   the same, each node with calico-lite's whole `inet calico-lite` table (policy
                for --pods local pods and --policies policies, host protection, NAT outgoing),
                as the agent compiles it (policy.compiler, policy.hostprotect, policy.nat)
    lab         (with --lab) iperf3 between pods on r1n1 and r2n1 of a real 2-rack lab

--gro adds `chain+nft, GRO`: the same with GRO on every veth (NAPI on the receiving end).
Each variant runs --repeat times, in turn, so drift on a shared machine hits all of them;
the median of each is printed with its ratio to the veth pair. Every run is sampled with
`perf record -a`: the samples of the two iperf3 processes and the softirq threads (where every
hop's forwarding runs) give the CPU the path itself used per GB moved, whatever else loads the
machine, and by category of kernel symbol (routing, nftables, conntrack, bridge, copies...);
--perf also prints the top symbols of the named variants. Usage (root):
    .venv/bin/python bench/throughput_profile.py [--seconds 3] [--repeat 3] [--lab] [--gro]
        [--perf chain chain+nft] [--only node,chain]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from policy.compiler import compile_ruleset  # noqa: E402
from policy.hostprotect import HostProtection, LocalEndpoint, host_sets, to_host_chain, with_host_protection  # noqa: E402
from policy.model import LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPort, NetworkPolicyRule, Pod  # noqa: E402
from policy.nat import NatPool, nat_chain, nat_sets, nat_state, with_nat  # noqa: E402
from policy.ruleset import render_nft  # noqa: E402
from tests.nslib import remove_netns_with_prefix  # noqa: E402

PORT = 5201


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def netns(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return name


def link(a: str, a_if: str, b: str, b_if: str) -> None:
    sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
    sh("ip", "-n", a, "link", "set", a_if, "up")
    sh("ip", "-n", b, "link", "set", b_if, "up")


def addr(ns: str, dev: str, cidr: str) -> None:
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)


def route(ns: str, *spec: str) -> None:
    sh("ip", "-n", ns, "route", "add", *spec)


def build_pair(p: str) -> dict[str, str]:
    a, b = netns(f"{p}va"), netns(f"{p}vb")
    link(a, "eth0", b, "eth0")
    addr(a, "eth0", "10.251.0.1/24")
    addr(b, "eth0", "10.251.0.2/24")
    return {"client": a, "server": b, "ip": "10.251.0.2"}


def build_node(p: str) -> dict[str, str]:
    """pod - node - pod, /24s on the pod links, the node routes."""
    a, n, b = netns(f"{p}na"), netns(f"{p}nn"), netns(f"{p}nb")
    for pod, i in ((a, 1), (b, 2)):
        link(n, f"pod{i}", pod, "eth0")
        addr(n, f"pod{i}", f"10.252.{i}.1/24")
        addr(pod, "eth0", f"10.252.{i}.2/24")
        route(pod, "default", "via", f"10.252.{i}.1")
    return {"client": a, "server": b, "ip": "10.252.2.2", "node": n}


def build_chain(p: str) -> dict[str, str]:
    """The lab's cross-rack path (calico_lite.lab.fabric): pod, node, ToR with the rack's
    bridge, spine, ToR, node, pod; static routes where the lab has BGP's."""
    spine = netns(f"{p}sp")
    out = {"nodes": "", "client": "", "server": "", "ip": "10.250.2.2", "all": spine}
    for r in (1, 2):
        pod, node, tor = netns(f"{p}p{r}"), netns(f"{p}n{r}"), netns(f"{p}t{r}")
        link(node, "pod", pod, "eth0")
        addr(node, "pod", f"10.250.{r}.1/24")
        addr(pod, "eth0", f"10.250.{r}.2/24")
        route(pod, "default", "via", f"10.250.{r}.1")
        sh("ip", "-n", tor, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", tor, "link", "set", "br0", "up")
        addr(tor, "br0", f"10.99.{r}.1/24")
        link(node, "eth0", tor, "node")
        sh("ip", "-n", tor, "link", "set", "node", "master", "br0")
        addr(node, "eth0", f"10.99.{r}.11/24")
        route(node, "default", "via", f"10.99.{r}.1")
        link(spine, f"tor{r}", tor, "uplink")
        addr(spine, f"tor{r}", f"10.98.{r}.1/24")
        addr(tor, "uplink", f"10.98.{r}.2/24")
        route(tor, "default", "via", f"10.98.{r}.1")
        route(tor, f"10.250.{r}.0/24", "via", f"10.99.{r}.11")
        route(spine, f"10.250.{r}.0/24", "via", f"10.98.{r}.2")
        out["nodes"] += f"{node} "
        out["all"] += f" {pod} {node} {tor}"
        out["client" if r == 1 else "server"] = pod
    return out


def policy_table(node_ns: str, local: list[tuple[str, str, str]], n_pods: int, n_policies: int) -> str:
    """calico-lite's whole inet table for this node: bench/policy_ruleset.py's synthetic
    cluster (every pod local, as on a crowded node), plus the iperf3 pods `local` (host veth,
    address, pod namespace), whose ingress a policy allows on TCP 5201 from every pod."""
    from policy_ruleset import cluster
    policies, pods, namespaces = cluster(n_pods, n_policies)
    mine = [Pod("bench", f"iperf-{ip}", ip, {"app": "iperf"}, [], iface, node_ns) for iface, ip, _ in local]
    peers = [Pod("bench", f"iperf-{ip}", ip, {"app": "iperf"}) for ip in ("10.250.1.2", "10.250.2.2")
             if ip not in {p.ip for p in mine}]
    allow = NetworkPolicy("bench", "iperf", LabelSelector.of({"app": "iperf"}), ("Ingress",), (
        NetworkPolicyRule((), (NetworkPolicyPort("TCP", PORT),)),))
    rs = compile_ruleset([*policies, allow], [*pods, *mine, *peers],
                         [*namespaces, Namespace("bench", {})], ["10.99.1.11"])
    endpoints = [LocalEndpoint(p.interface, p.ip, "") for p in pods]
    for iface, ip, pod_ns in local:
        mac = json.loads(sh("ip", "-n", pod_ns, "-j", "link", "show", "eth0"))[0]["address"]
        endpoints.append(LocalEndpoint(iface, ip, mac))
    state = nat_state([NatPool("default", "10.250.0.0/16", True), NatPool("many", "10.244.0.0/16", True),
                       NatPool("node", "10.252.0.0/16", True)], ["10.99.0.0/16"])
    table = with_nat(rs, nat_sets(state), nat_chain())
    protection = HostProtection()
    table = with_host_protection(table, host_sets(protection, endpoints), to_host_chain(protection))
    return render_nft(table)


CT_ONLY = """table inet pp-ct {
  chain forward { type filter hook forward priority 0; policy accept; ct state established,related accept; }
}
"""


def nft(ns: str, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(text)
        f.flush()
        sh("ip", "netns", "exec", ns, "nft", "-f", f.name)


SET_GRO = """
import ctypes, fcntl, socket, struct, sys
s = socket.socket()
for name in sys.argv[2:]:
    value = ctypes.create_string_buffer(struct.pack("II", 0x2c, int(sys.argv[1])), 8)   # ETHTOOL_SGRO
    fcntl.ioctl(s, 0x8946, struct.pack("16sP", name.encode(), ctypes.addressof(value)) + bytes(16))
"""


def set_gro(ns: str, on: bool) -> None:
    """GRO on or off on every veth of the namespace (no ethtool here: SIOCETHTOOL by hand)."""
    links = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "type", "veth"))
    sh("ip", "netns", "exec", ns, sys.executable, "-c", SET_GRO, str(int(on)), *(x["ifname"] for x in links))


PERF_HZ = 999


def iperf(path: dict[str, str], seconds: int) -> dict:
    """One TCP stream from client to server under `perf record -a`: Gbit/s, retransmits, and
    the CPU the path itself used per GB (the samples of the two iperf3 processes and of the
    softirq threads: every hop's forwarding runs in their context), by category."""
    srv = subprocess.Popen(["ip", "netns", "exec", path["server"], "iperf3", "-s", "-1", "-p", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "perf.data")
        try:
            time.sleep(0.3)
            rec = subprocess.Popen(["perf", "record", "-a", "-F", str(PERF_HZ), "-e", "cpu-clock", "-o", data],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)
            out = json.loads(sh("ip", "netns", "exec", path["client"], "iperf3", "-c", path["ip"], "-p",
                                str(PORT), "-t", str(seconds), "-J"))
            rec.send_signal(2)
            rec.wait()
        finally:
            srv.kill()
            srv.wait()
        report = sh("perf", "report", "-i", data, "--stdio", "-n", "--no-children", "--sort", "sym",
                    "--comms", "iperf3,ksoftirqd/0,ksoftirqd/1", "--percent-limit", "0", check=False)
    end = out["end"]
    gb = end["sum_received"]["bytes"] / 1e9
    cats, top = by_category(report)
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9, "retr": end["sum_sent"].get("retransmits", 0),
            "cpu": sum(cats.values()) / PERF_HZ / gb, "cats": {k: v / PERF_HZ / gb for k, v in cats.items()},
            "top": top}


CATEGORIES = (   # (what, symbol prefixes): first match wins
    ("idle", ("default_idle", "native_safe_halt", "cpuidle", "do_idle", "pv_native_safe_halt", "acpi_idle")),
    ("nftables rules", ("nft_", "nf_tables", "__nft")),
    ("conntrack", ("nf_conntrack", "nf_ct_", "__nf_conntrack", "hash_conntrack", "nf_confirm", "ipv4_confirm",
                   "__nf_ct", "tcp_in_window", "nf_defrag", "ipv4_conntrack")),
    ("NAT hooks", ("nf_nat", "__nf_nat")),
    ("bridge netfilter (br_netfilter)", ("br_nf", "nf_bridge", "brnf")),
    ("netfilter hooks, other", ("nf_hook", "nf_", "__nf_")),
    ("bridge", ("br_",)),
    ("veth", ("veth_",)),
    ("IPv4 routing and forwarding", ("ip_forward", "ip_route", "fib_", "ip_rcv", "ip_sublist", "ip_finish",
                                     "ip_output", "neigh_", "ip_local", "__ip_", "ip_list_rcv", "dst_",
                                     "__fib", "ip_skb_dst_mtu", "ipv4_mtu", "rt_", "ip_mc")),
    ("TCP and sockets (the two ends)", ("tcp_", "__tcp", "inet_", "sock_", "sk_", "__sk", "release_sock",
                                        "lock_sock", "tcp4_", "__inet", "__release_sock", "skb_entail")),
    ("data copy and checksum", ("copy_", "_copy", "memcpy", "__memcpy", "skb_copy", "csum", "rep_movs",
                                "copyout", "copyin", "clear_page", "__check_object_size", "check_heap_object")),
    ("device and skb core", ("netif_", "__netif", "dev_", "__dev", "process_backlog", "net_rx", "napi_",
                             "skb_", "__skb", "kfree_skb", "__alloc_skb", "eth_", "validate_xmit",
                             "sch_", "__qdisc", "gro_", "__napi", "kmem_cache", "__kmalloc", "kfree",
                             "consume_skb", "__build_skb", "__kfree_skb", "enqueue_to_backlog")),
    ("softirq/irq entry and exit",
     ("_raw_spin_unlock_irq", "handle_softirqs", "__do_softirq", "do_softirq", "__local_bh_enable",
      "irq_exit", "__irq_exit")),
)


def by_category(report: str) -> tuple[dict[str, int], list[str]]:
    """Samples by category (idle left out) and the top symbols, from `perf report -n`."""
    cats: dict[str, int] = {}
    top: list[str] = []
    for line in report.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].endswith("%") or not parts[1].isdigit():
            continue
        pct, n, kind, sym = float(parts[0][:-1]), int(parts[1]), parts[2], parts[3]
        what = "user space" if kind == "[.]" else next(
            (c for c, keys in CATEGORIES if sym.startswith(keys)), "other kernel")
        if what == "idle":
            continue
        cats[what] = cats.get(what, 0) + n
        if len(top) < 25:
            top.append(f"{pct:5.1f} % {sym} ({what})")
    return cats, top


def lab_path(name: str) -> dict[str, str]:
    from tests.conftest import lab_cli
    lab_cli("lab", "up", "--name", name, "--racks", "2", "--nodes-per-rack", "1", timeout=300)
    for pod, node in (("pp-r1n1", "r1n1"), ("pp-r2n1", "r2n1")):
        lab_cli("lab", "pod", "add", f"default/{pod}", "--node", node, "--name", name)
    status = json.loads(lab_cli("lab", "status", "--name", name, "--json").stdout)
    ip = {p["name"]: p["ip"] for p in status["pods"]}
    return {"client": f"{name}-pod-default-pp-r1n1", "server": f"{name}-pod-default-pp-r2n1",
            "ip": ip["pp-r2n1"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--lab", action="store_true", help="also the real path of a 2-rack lab")
    ap.add_argument("--perf", nargs="*", default=[], metavar="VARIANT",
                    help="print the top kernel symbols of the last run of each VARIANT")
    ap.add_argument("--only", default="", help="comma list of variants to run (veth always runs)")
    ap.add_argument("--gro", action="store_true", help="also chain+nft with GRO on every veth")
    args = ap.parse_args()
    prefix = f"pp{os.urandom(2).hex()}"
    lab = f"pp{os.urandom(3).hex()[:5]}"
    from tests.conftest import lab_cli
    try:
        paths = {"veth": build_pair(prefix), "node": build_node(prefix)}
        chain = build_chain(prefix)
        nodes = chain["nodes"].split()
        tables = {n: policy_table(n, [("pod", f"10.250.{i + 1}.2", chain["client" if i == 0 else "server"])],
                                  args.pods, args.policies) for i, n in enumerate(nodes)}
        node = paths["node"]
        tables[node["node"]] = policy_table(node["node"], [("pod1", "10.252.1.2", node["client"]),
                                                           ("pod2", "10.252.2.2", node["server"])],
                                            args.pods, args.policies)
        variants = {"veth": (paths["veth"], None), "node": (node, "node:none"), "node+nft": (node, "node:nft"),
                    "chain": (chain, "none"), "chain+ct": (chain, "ct"), "chain+nft": (chain, "nft")}
        if args.gro:
            variants["chain+nft, GRO"] = (chain, "nft+gro")
        if args.lab:
            variants["lab"] = (lab_path(lab), None)
        if args.only:
            keep = {"veth", *args.only.split(",")}
            variants = {k: v for k, v in variants.items() if k in keep}
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for _ in range(args.repeat):
            for key, (path, tables_mode) in variants.items():
                if tables_mode is not None and tables_mode.startswith("node:"):
                    configure({"all": node["node"]}, [node["node"]], tables, tables_mode[5:])
                elif tables_mode is not None:
                    configure(chain, nodes, tables, tables_mode)
                runs[key].append(iperf(path, args.seconds))
        print_table(runs, args)
        for variant in args.perf:
            print(f"\ntop symbols of the last {variant} run (% of the path's samples):\n    "
                  + "\n    ".join(runs[variant][-1]["top"]))
    finally:
        if args.lab:
            lab_cli("lab", "down", "--name", lab, check=False)
        remove_netns_with_prefix(prefix)
    return 0


def configure(chain: dict[str, str], nodes: list[str], tables: dict[str, str], mode: str) -> None:
    """The nodes' nftables for a variant: none, conntrack alone, or calico-lite's table;
    GRO on every veth of the chain for nft+gro, off otherwise."""
    for n in nodes:
        sh("ip", "netns", "exec", n, "nft", "flush", "ruleset")
        if mode == "ct":
            nft(n, CT_ONLY)
        elif mode.startswith("nft"):
            nft(n, tables[n])
    for ns in chain["all"].split():
        set_gro(ns, mode == "nft+gro")


def print_table(runs: dict[str, list[dict]], args) -> None:
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("gbps", "retr", "cpu")} for k, v in runs.items()}
    base = med["veth"]
    print(f"{args.seconds} s per run, {args.repeat} runs each, in turn; load average "
          f"{os.getloadavg()[0]:.1f}; calico-lite table: {args.pods} local pods, {args.policies} policies")
    print("path CPU: perf samples of the iperf3 processes and softirq threads, CPU ms per GB moved")
    print(f"{'variant':<16} {'Gbit/s':>7} {'of veth':>8} {'path CPU ms/GB':>15} {'retr':>6}  runs (Gbit/s)")
    for k, m in med.items():
        print(f"{k:<16} {m['gbps']:7.2f} {m['gbps'] / base['gbps'] * 100:7.0f}% {m['cpu'] * 1000:15.0f} "
              f"{m['retr']:6.0f}  {', '.join(format(r['gbps'], '.2f') for r in runs[k])}")
    cats = sorted({c for v in runs.values() for r in v for c in r["cats"]},
                  key=lambda c: -statistics.median(r["cats"].get(c, 0) for r in runs[list(runs)[-1]]))
    print("\npath CPU by category, ms per GB (median of the runs):")
    print(f"{'':<34}" + "".join(f"{k[:14]:>15}" for k in runs))
    for c in cats:
        print(f"{c[:34]:<34}" + "".join(f"{statistics.median(r['cats'].get(c, 0) for r in v) * 1000:15.0f}"
                                         for v in runs.values()))


if __name__ == "__main__":
    raise SystemExit(main())
