"""Benchmark: NetworkPolicy in a whole lab, 1,000 pods and 200 policies across its nodes.

Prints figures next to their baseline and the project's targets; asserts nothing.

- apply -> enforced: from the datastore write of a policy (what `policy apply` does, minus the
  CLI's own start) until a prober sees the flip on EVERY node (TCP connects with a 25 ms
  timeout from a real pod to a real pod on each node; the time recorded is the start of the
  first attempt that saw the new state). p50 over several applies, opening and closing.
- full sync: the agents' own published status (/calico-lite/policystatus/<node>: compile_ms,
  nft_ms) next to a raw load of the same ruleset (compiled here from the same datastore
  contents) with `nft -f` and with in-process libnftables, in a scratch namespace, same run.
- one pod: nft_ms of the incremental update that adding one pod causes on its node.
- throughput: iperf3 pod to pod across racks with no policy, ~1,000 and ~10,000 rules.

Most pods are written into the datastore as workload + Kubernetes pod records only (no
namespace, no veth): the agents compile and load them like any pod. A handful of real pods
(made by the real CNI plugin) carry the probes and iperf3.

Usage (root):  .venv/bin/python bench/policy_lab.py [--quick] [--name LAB]
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calico_lite import keys, kube_sync  # noqa: E402
from calico_lite.datastore import Datastore, DatastoreUnavailable, Op  # noqa: E402
from calico_lite.lab.lab import Lab  # noqa: E402
from calico_lite.lab.probe import reachable  # noqa: E402
from calico_lite.policy_inputs import inputs_from  # noqa: E402
from plugin.netns import enter, run_in_netns, setns  # noqa: E402
from policy.compiler import compile_ruleset  # noqa: E402
from policy.manifests import parse_manifests, policy_to_dict  # noqa: E402
from policy.model import (INGRESS, IPBlock, LabelSelector, NetworkPolicy, NetworkPolicyPeer,  # noqa: E402
                          NetworkPolicyPort, NetworkPolicyRule)
from policy.nft import Nft  # noqa: E402
from policy.ruleset import render_nft  # noqa: E402
from tests.nslib import remove_netns_with_prefix, unique_prefix  # noqa: E402

NODES = ("r1n1", "r1n2", "r2n1", "r2n2")
FAKE_NET = ipaddress.IPv4Network("10.244.192.0/18")  # far from the blocks the real pods get
REAL_NS = "real"
PROBER = "prober"  # on r1n1; also the iperf3 client
IPERF_SERVER = "t-r2n2"  # cross-rack from the prober
IPERF_PORT = 5201
FLIP_TIMEOUT = 0.025


HOME_NETNS = os.open("/proc/self/ns/net", os.O_RDONLY)  # where we started, before entering the lab


def cli(*args: str) -> str:
    """The CLI, run in the namespace this process started in (not the lab's control plane, where
    `lab down` would kill it, and us, while deleting that namespace)."""
    p = subprocess.run([sys.executable, "-m", "calico_lite.cli", *args], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, pass_fds=(HOME_NETNS,),
                       preexec_fn=lambda: setns(HOME_NETNS, "home"))
    if p.returncode != 0:
        raise RuntimeError(f"calico-lite {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _load_generator():
    """The policy generator of bench/policy_ruleset.py, so both benches use the same mix."""
    spec = importlib.util.spec_from_file_location("policy_ruleset_bench", REPO / "bench" / "policy_ruleset.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.cluster


@dataclass
class Sample:
    """One node's published policy status after a change."""
    node: str
    mode: str
    compile_ms: float
    nft_ms: float
    rules: int
    local_pods: int


@dataclass
class Figures:
    flips_open: list[float] = field(default_factory=list)
    flips_close: list[float] = field(default_factory=list)
    per_node_open: dict[str, list[float]] = field(default_factory=dict)
    syncs: list[Sample] = field(default_factory=list)
    pod_updates: list[Sample] = field(default_factory=list)
    pod_updates_peers: list[Sample] = field(default_factory=list)
    real_pod_update: list[Sample] = field(default_factory=list)
    raw_nft_f: float = 0.0
    raw_inproc: float = 0.0
    raw_stats: dict = field(default_factory=dict)
    raw_node: str = ""
    throughput: dict[str, list[float]] = field(default_factory=dict)
    rules_at: dict[str, dict[str, int]] = field(default_factory=dict)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------ datastore helpers

class Cluster:
    def __init__(self, lab: Lab, ds: Datastore):
        self.lab, self.ds = lab, ds
        self.plan = lab.plan

    def policy_status(self, node: str) -> dict:
        for attempt in range(5):
            try:
                e = self.ds.get(keys.policy_status(node))
                return e.value if e else {}
            except DatastoreUnavailable:
                if attempt == 4:
                    raise
                time.sleep(2)
        return {}

    def statuses_after(self, revision: int, nodes=NODES, timeout: float = 120.0) -> list[Sample]:
        """Each node's first published status that reflects `revision` (read before any barrier)."""
        deadline = time.monotonic() + timeout
        out: dict[str, Sample] = {}
        while len(out) < len(nodes):
            for n in nodes:
                if n in out:
                    continue
                s = self.policy_status(n)
                if s.get("revision", 0) >= revision:
                    if s.get("error"):
                        raise RuntimeError(f"policy on {n}: {s['error']}")
                    out[n] = Sample(n, s.get("mode", "?"), s.get("compile_ms", 0.0), s.get("nft_ms", 0.0),
                                    s.get("rules", 0), s.get("local_pods", 0))
            if len(out) < len(nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no status reflecting revision {revision} on "
                                       f"{sorted(set(nodes) - set(out))} after {timeout:.0f}s")
                time.sleep(0.01)
        return [out[n] for n in nodes]

    def put_policies(self, policies: list[NetworkPolicy], batch: int = 500) -> None:
        for i in range(0, len(policies), batch):
            self.ds.txn([], [Op.put(keys.k8s_policy(p.namespace, p.name), policy_to_dict(p))
                             for p in policies[i:i + batch]])

    def delete_policies(self) -> None:
        self.ds.delete_prefix(keys.K8S_POLICIES)

    def write(self, ops: list[tuple]) -> int:
        """One transaction; returns a revision that only a status reflecting it can reach (the
        agents' caches advance on relevant changes only, and nothing else writes those)."""
        _, before = self.ds.snapshot(keys.BARRIER)
        self.ds.txn([], ops)
        return before + 1

    def apply_yaml(self, text: str) -> int:
        """What `calico-lite policy apply -f` writes (one transaction)."""
        return self.write([Op.put(keys.k8s_policy(p.namespace, p.name), policy_to_dict(p))
                           for p in parse_manifests(text, "bench")])

    def fake_pod_ops(self, i: int, pod, node: str) -> list[tuple]:
        ip = str(FAKE_NET.network_address + 1 + i)
        handle = f"fake-{i}-eth0"
        w = {"handle": handle, "container_id": f"fake{i}", "ifname": "eth0", "namespace": pod.namespace,
             "pod": pod.name, "ip": ip, "host_ifname": f"calif{i:07x}", "netns": "", "node": node}
        k = {"namespace": pod.namespace, "name": pod.name, "node": node, "labels": pod.labels, "ip": ip,
             "ports": [{"name": c.name, "protocol": c.protocol, "port": c.port} for c in pod.ports]}
        return [Op.put(keys.k8s_pod(pod.namespace, pod.name), k), Op.put(keys.workload(node, handle), w)]

    def wait(self, timeout: float = 300.0) -> float:
        for attempt in range(5):  # etcd answers slowly while four agents load big rulesets
            try:
                return self.lab.wait_enforced(timeout)   # kube-sync is stopped: we write etcd
            except DatastoreUnavailable:
                if attempt == 4:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")


# ------------------------------------------------------------------ probes

def _connects(ip: str, port: int) -> bool:
    return reachable(ip, port, "tcp", FLIP_TIMEOUT)


def wait_flip(prober_netns: str, targets: dict[str, str], want: bool, t0: float,
              timeout: float = 30.0) -> dict[str, float]:
    """Seconds from t0 until each target (node -> ip) answers `want`: the start of the first
    attempt that saw it. Each target is probed by its own thread inside the prober's netns."""
    def one(ip: str) -> float:
        def loop() -> float:
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                start = time.monotonic()
                if _connects(ip, 80) == want:
                    return start - t0
                time.sleep(0.002)
            return float("inf")
        return run_in_netns(prober_netns, loop)
    with ThreadPoolExecutor(len(targets)) as ex:
        return dict(zip(targets, ex.map(one, targets.values())))


def iperf(prober_netns: str, server_ip: str, seconds: float) -> float:
    out = subprocess.run(["nsenter", f"--net={prober_netns}", "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                          "-t", str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


# ------------------------------------------------------------------ phases

def bulk_policies(namespaces, count: int) -> list[NetworkPolicy]:
    """Many rules, few set elements: each selects a whole namespace and allows one ipBlock on
    one port (the generator's egress named ports would add ~1,000 elements per policy)."""
    out = []
    for i in range(count):
        cidr = f"100.{64 + (i // 256) % 64}.{i % 256}.0/24"
        rule = NetworkPolicyRule((NetworkPolicyPeer(ip_block=IPBlock(cidr)),), (NetworkPolicyPort("TCP", 1000 + i % 1000),))
        out.append(NetworkPolicy(namespaces[i % len(namespaces)].name, f"bulk{i}", LabelSelector(), (INGRESS,), (rule,)))
    return out


def raw_load(cl: Cluster, node: str, repeat: int, fig: Figures) -> None:
    """The same ruleset the agent on `node` loads, compiled here, loaded raw in a scratch netns."""
    items = lambda prefix: {e.key: e.value for e in cl.ds.list(prefix)}  # noqa: E731
    policies, pods, namespaces = inputs_from(items, node)
    rs = compile_ruleset(policies, pods, namespaces, [cl.plan.node(node).address])
    text = render_nft(rs)
    fig.raw_stats, fig.raw_node = rs.stats(), node
    prefix = unique_prefix("tt")
    scratch = f"{prefix}scratch"
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
        f.write(text)
    try:
        subprocess.run(["ip", "netns", "add", scratch], check=True)
        nft_f = ["ip", "netns", "exec", scratch, "nft", "-f", f.name]
        subprocess.run(nft_f, check=True)  # the first load creates the table; time replacements
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run(nft_f, check=True)
            times.append(time.perf_counter() - t)
        fig.raw_nft_f = med(times)
        with ThreadPoolExecutor(1, initializer=enter, initargs=(f"/var/run/netns/{scratch}",)) as ex:
            def inproc() -> list[float]:
                nft, out = Nft(), []
                try:
                    for _ in range(repeat):
                        t = time.perf_counter()
                        nft.cmd(text)
                        out.append(time.perf_counter() - t)
                finally:
                    nft.close()
                return out
            fig.raw_inproc = med(ex.submit(inproc).result())
    finally:
        os.unlink(f.name)
        remove_netns_with_prefix(prefix)


def flips(cl: Cluster, prober_netns: str, targets: dict[str, str], applies: int, fig: Figures) -> None:
    allow = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-prober, namespace: {REAL_NS}}}
spec:
  podSelector: {{matchLabels: {{role: target}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: prober}}}}}}], ports: [{{port: 80}}]}}]
"""
    for i in range(applies):
        t0 = time.monotonic()
        rev = cl.apply_yaml(allow)
        got = wait_flip(prober_netns, targets, True, t0)
        fig.flips_open.append(max(got.values()))
        for n, s in got.items():
            fig.per_node_open.setdefault(n, []).append(s)
        fig.syncs += cl.statuses_after(rev)
        time.sleep(0.2)
        t0 = time.monotonic()
        rev = cl.write([Op.delete(keys.k8s_policy(REAL_NS, "allow-prober"))])
        got = wait_flip(prober_netns, targets, False, t0)
        fig.flips_close.append(max(got.values()))
        fig.syncs += cl.statuses_after(rev)
        print(f"  apply {i + 1}/{applies}: open on every node after {fig.flips_open[-1] * 1e3:.0f} ms, "
              f"closed after {fig.flips_close[-1] * 1e3:.0f} ms", flush=True)
        time.sleep(0.2)


def full_sync(cl: Cluster, lab_name: str, node: str, fig: Figures) -> None:
    """Policy changes are incremental, so a full sync happens when an agent starts: restart the
    agent on `node` (graceful: routes and table stay) and take its first pass."""
    before = cl.policy_status(node).get("updated", 0.0)
    cli("lab", "node", "restart", node, "--name", lab_name)
    deadline = time.monotonic() + 120
    while True:
        s = cl.policy_status(node)
        if s.get("updated", 0.0) > before and s.get("mode") == "sync":
            fig.syncs.append(Sample(node, "sync", s.get("compile_ms", 0.0), s.get("nft_ms", 0.0),
                                    s.get("rules", 0), s.get("local_pods", 0)))
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no full sync seen on {node} after its agent restarted")
        time.sleep(0.05)


def one_pod(cl: Cluster, gen_pods, repeat: int, fig: Figures) -> None:
    """Add one fake pod (selected by policies and a peer of many) and remove it, `repeat` times."""
    template = next(p for p in gen_pods if p.labels.get("tier") == "db")
    for i in range(repeat):
        pod = type(template)(template.namespace, f"newpod{i}", "", dict(template.labels), list(template.ports))
        ops = cl.fake_pod_ops(50_000 + i, pod, "r1n1")
        samples = cl.statuses_after(cl.write(ops))
        fig.pod_updates += [s for s in samples if s.node == "r1n1"]
        fig.pod_updates_peers += [s for s in samples if s.node != "r1n1"]
        cl.statuses_after(cl.write([Op.delete(op[1]) for op in ops]))


def throughput(cl: Cluster, prober_netns: str, server_ip: str, label: str, runs: int, seconds: float,
               fig: Figures) -> None:
    cl.wait()
    fig.rules_at[label] = {n: cl.policy_status(n).get("rules", 0) for n in NODES}
    for _ in range(runs):
        fig.throughput.setdefault(label, []).append(iperf(prober_netns, server_ip, seconds))
    print(f"  {label:<22} rules on server node {fig.rules_at[label]['r2n2']:>6}: "
          + ", ".join(f"{x:.2f}" for x in fig.throughput[label]) + " Gbit/s", flush=True)


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default=f"bpol{uuid.uuid4().hex[:4]}", help="lab name (default: random)")
    ap.add_argument("--quick", action="store_true", help="CI-sized: fewer pods, policies, repeats")
    ap.add_argument("--pods", type=int)
    ap.add_argument("--policies", type=int)
    ap.add_argument("--applies", type=int)
    ap.add_argument("--rules-high", type=int, help="rules per node for the heavy throughput run")
    ap.add_argument("--iperf-seconds", type=float)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (it builds a lab of network namespaces)")
    q = args.quick
    n_pods = args.pods or (200 if q else 1000)
    n_policies = args.policies or (40 if q else 200)
    applies = args.applies or (3 if q else 7)
    rules_high = args.rules_high or (2000 if q else 10000)
    secs = args.iperf_seconds or (1.0 if q else 3.0)
    runs = 2 if q else 5

    cluster = _load_generator()
    policies, gen_pods, namespaces = cluster(n_pods, n_policies)
    lab = Lab(args.name)
    fig = Figures()
    iperf_proc: subprocess.Popen | None = None
    t_start = time.monotonic()
    # up and down run in child processes: Lab.datastore() moves THIS process into the lab's
    # control-plane netns, and down() kills whatever runs in the namespaces it deletes
    print(f"lab {args.name}: up ...", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so that `finally` runs
    cli("lab", "up", "--name", args.name)
    try:
        ds = lab.datastore()  # this process now lives in the lab's control-plane netns
        cl = Cluster(lab, ds)
        lab.ns_add(REAL_NS, {"ns": REAL_NS})
        targets = {n: lab.pod_add(REAL_NS, f"t-{n}", n, {"role": "target"}, ["tcp:80"], [{"name": "http", "protocol": "TCP", "port": 80}])
                   for n in NODES}
        lab.pod_add(REAL_NS, PROBER, "r1n1", {"role": "prober"}, [], [])
        prober_netns = f"/var/run/netns/{lab.plan.pod_netns(REAL_NS, PROBER)}"
        server_netns = lab.plan.pod_netns(REAL_NS, IPERF_SERVER)
        lab.wait_converged(60)
        # From here on the bench writes datastore records itself, as `policy apply
        # --etcd-endpoints` does in a cluster without kube-sync; kube-sync's resync would
        # delete records that are not in the API, so it stops once the real pods are mirrored.
        lab.wait_mirrored()
        lab.stop_kube_sync()

        # 1,000 pods as datastore records, 200 policies
        t = time.monotonic()
        ds.txn([], [Op.put(keys.k8s_namespace(n.name), {"name": n.name, "labels": n.labels}) for n in namespaces])
        ops = [op for i, p in enumerate(gen_pods) for op in cl.fake_pod_ops(i, p, NODES[i % len(NODES)])]
        for i in range(0, len(ops), 1000):
            ds.txn([], ops[i:i + 1000])
        cl.put_policies(policies)
        cl.apply_yaml(f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-targets, namespace: {REAL_NS}}}
spec: {{podSelector: {{matchLabels: {{role: target}}}}, policyTypes: [Ingress]}}
""")
        took = cl.wait()
        print(f"{n_pods} pods written as datastore records (workload + k8s pod; no netns, no veth) "
              f"+ {len(targets) + 1} real pods, {n_policies + 1} policies: enforced everywhere "
              f"{time.monotonic() - t:.1f}s after the first write (barrier {took * 1e3:.0f} ms)", flush=True)
        for n in NODES:
            s = cl.policy_status(n)
            print(f"  {n}: local_pods={s.get('local_pods')} chains={s.get('chains')} rules={s.get('rules')} "
                  f"set_elements={s.get('set_elements')}")

        print("apply -> enforced on every node (probe flips):", flush=True)
        flips(cl, prober_netns, targets, applies, fig)

        print("raw load of the same ruleset, scratch netns:", flush=True)
        big = max(NODES, key=lambda n: cl.policy_status(n).get("rules", 0))
        raw_load(cl, big, 5, fig)
        print(f"full sync by the agent on {big} (its first pass after a restart):", flush=True)
        full_sync(cl, args.name, big, fig)

        print("one pod added (datastore record on r1n1), incremental update:", flush=True)
        one_pod(cl, gen_pods, 3 if q else 7, fig)
        lab.pod_add(REAL_NS, "real-new", "r2n1", {"role": "target"}, [], [])
        pod = lab.api().as_dict(lab.api().core.read_namespaced_pod("real-new", REAL_NS))
        ds.put(*kube_sync.pod_record(pod))   # what kube-sync would write, after the workload
        e = ds.get(keys.k8s_pod(REAL_NS, "real-new"))
        fig.real_pod_update = [s for s in cl.statuses_after(e.mod_revision) if s.node == "r2n1"]

        print("throughput, iperf3 prober (r1n1) -> t-r2n2 (r2n2), across racks:", flush=True)
        iperf_proc = subprocess.Popen(["ip", "netns", "exec", server_netns, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        server_ip = targets["r2n2"]
        allow_iperf = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-iperf, namespace: {REAL_NS}}}
spec:
  podSelector: {{matchLabels: {{role: target}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: prober}}}}}}]}}]
"""
        for _ in range(50):  # iperf3 listening?
            if run_in_netns(f"/var/run/netns/{server_netns}", lambda: _connects("127.0.0.1", IPERF_PORT)):
                break
            time.sleep(0.1)
        cl.delete_policies()
        throughput(cl, prober_netns, server_ip, "no policy", runs, secs, fig)
        cl.apply_yaml(allow_iperf)
        cl.put_policies(policies)
        throughput(cl, prober_netns, server_ip, "base policies", runs, secs, fig)
        base_rules = max(fig.rules_at["base policies"].values())
        per_policy = n_pods / len(NODES) / len(namespaces)  # a `podSelector: {}` policy, one rule
        n_bulk = max(1, math.ceil((rules_high - base_rules) / per_policy))
        cl.put_policies(bulk_policies(namespaces, n_bulk))
        throughput(cl, prober_netns, server_ip, f"+{n_bulk} bulk policies", runs, secs, fig)
        cl.delete_policies()
        throughput(cl, prober_netns, server_ip, "no policy (again)", runs, secs, fig)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if iperf_proc is not None:
            os.killpg(iperf_proc.pid, signal.SIGKILL)
            iperf_proc.wait()
        setns(HOME_NETNS, "home")  # leave the control-plane netns: down kills what runs there
        print(cli("lab", "down", "--name", args.name).strip() + f"; bench took "
              f"{time.monotonic() - t_start:.0f}s", flush=True)
        report(fig, n_pods, n_policies)  # whatever was measured, also after a failure


def report(fig: Figures, n_pods: int, n_policies: int) -> None:
    print()
    print(f"=== policy lab bench: {n_pods} pods (datastore records) + 6 real pods, {n_policies} policies, 4 nodes ===")
    flips_all = fig.flips_open + fig.flips_close or [float("nan")]
    print(f"apply -> enforced on every node: p50 {med(flips_all) * 1e3:.0f} ms "
          f"(opening p50 {med(fig.flips_open) * 1e3:.0f} ms, closing p50 {med(fig.flips_close) * 1e3:.0f} ms, "
          f"max {max(flips_all) * 1e3:.0f} ms, n={len(flips_all)})   target < 1000 ms")
    print("  per node, opening p50: " + ", ".join(f"{n} {med(v) * 1e3:.0f} ms" for n, v in sorted(fig.per_node_open.items())))
    node_syncs = [s for s in fig.syncs if s.node == fig.raw_node and s.mode == "sync"]
    all_syncs = [s for s in fig.syncs if s.mode == "sync"]
    if node_syncs and fig.raw_nft_f and fig.raw_inproc:
        c, n = med([s.compile_ms for s in node_syncs]), med([s.nft_ms for s in node_syncs])
        print(f"full sync on {fig.raw_node} ({fig.raw_stats}): agent compile {c:.0f} ms + nft {n:.0f} ms "
              f"= {c + n:.0f} ms (p50 of {len(node_syncs)}; all nodes nft p50 {med([s.nft_ms for s in all_syncs]):.0f} ms)")
        print(f"  raw load of the same ruleset: `nft -f` {fig.raw_nft_f * 1e3:.0f} ms, in-process libnftables "
              f"{fig.raw_inproc * 1e3:.0f} ms")
        print(f"  ratio agent full sync (compile+nft) / raw `nft -f`: {(c + n) / (fig.raw_nft_f * 1e3):.2f}x; "
              f"agent nft only / raw in-process: {n / (fig.raw_inproc * 1e3):.2f}x   target < 2x")
    else:
        print(f"full sync: no sync samples on {fig.raw_node} (modes seen: {sorted({s.mode for s in fig.syncs})})")
    if fig.pod_updates:
        print(f"one pod added on its node: nft {med([s.nft_ms for s in fig.pod_updates]):.1f} ms p50 "
              f"(max {max(s.nft_ms for s in fig.pod_updates):.1f}; compile {med([s.compile_ms for s in fig.pod_updates]):.0f} ms; "
              f"modes {sorted({s.mode for s in fig.pod_updates})}); on the other nodes (peer sets only) nft "
              f"{med([s.nft_ms for s in fig.pod_updates_peers]):.1f} ms p50   target < 20 ms")
    for s in fig.real_pod_update:
        print(f"  a real pod (CNI ADD, then its labels; last update shown) on {s.node}: mode {s.mode}, nft {s.nft_ms:.1f} ms, compile {s.compile_ms:.0f} ms")
    base = fig.throughput.get("no policy", []) + fig.throughput.get("no policy (again)", [])
    print(f"throughput (iperf3, one TCP stream, across racks), medians; baseline = both no-policy runs "
          f"{med(base):.2f} Gbit/s:")
    for label, xs in fig.throughput.items():
        rules = fig.rules_at.get(label) or {"?": 0}
        print(f"  {label:<22} rules/node {min(rules.values()):>6}-{max(rules.values()):<6} "
              f"{med(xs):6.2f} Gbit/s  {med(xs) / med(base) * 100:5.1f} % of no policy   runs "
              + ", ".join(f"{x:.2f}" for x in xs))
    print("  target: with ~10,000 rules >= 95 % of no policy")


if __name__ == "__main__":
    main()
