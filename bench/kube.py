"""Benchmark: what the Kubernetes hop costs, in a whole lab with the real API server.

Prints figures beside their baseline, measured in the same run and interleaved; asserts nothing.

- policy -> enforced on every node: a NetworkPolicy created through the API server (kube-sync
  mirrors it into etcd) until every agent has published a policy status at or past the etcd
  revision kube-sync wrote, beside the same policy written straight into etcd (what
  `calico-lite policy apply --etcd-endpoints` writes, for clusters without kube-sync). Both
  in-process, so neither pays a CLI's start; p50 and max over --rounds each. Also `kubectl
  apply -f` of the same policy as a command, start to exit (kubectl's own start included).
- pod -> Ready: a Pod created through the API, bound to a node, until its node component has
  reported it Ready (CNI ADD, echo server, status write), beside a bare CNI ADD through the
  same node's shim with a fresh namespace (what a runtime's sandbox start costs in CNI alone).

Usage (root):  .venv/bin/python bench/kube.py [--rounds 20] [--name LAB]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calico_lite import keys  # noqa: E402
from calico_lite.lab import plumbing as pl  # noqa: E402
from calico_lite.lab import runtime  # noqa: E402
from calico_lite.lab.lab import Lab  # noqa: E402
from policy.manifests import policy_from_dict, policy_to_dict  # noqa: E402

NODES = ("r1n1", "r1n2", "r2n1", "r2n2")


def policy(name: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                  "ports": [{"protocol": "TCP", "port": 80}]}]}}


def wait_enforced(lab: Lab, revision: int, timeout: float = 30.0) -> None:
    ds = lab.datastore()
    deadline = time.monotonic() + timeout
    pending = set(NODES)
    while pending:
        for n in list(pending):
            e = ds.get(keys.policy_status(n))
            if e and e.value.get("revision", 0) >= revision:
                pending.discard(n)
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not enforced after {timeout}s on {sorted(pending)}")
            time.sleep(0.002)


def wait_key(lab: Lab, key: str, present: bool = True, timeout: float = 30.0) -> int:
    ds = lab.datastore()
    deadline = time.monotonic() + timeout
    while True:
        e = ds.get(key)
        if (e is not None) == present:
            return e.mod_revision if e else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} {'never appeared' if present else 'never went away'}")
        time.sleep(0.002)


def via_api(lab: Lab, name: str) -> float:
    key = keys.k8s_policy("bench", name)
    t0 = time.perf_counter()
    lab.api().policy_apply([policy(name)])
    wait_enforced(lab, wait_key(lab, key))
    took = time.perf_counter() - t0
    lab.api().policy_delete("bench", name)
    wait_key(lab, key, present=False)
    return took


def via_etcd(lab: Lab, name: str) -> float:
    ds = lab.datastore()
    key = keys.k8s_policy("bench", name)
    value = policy_to_dict(policy_from_dict(policy(name)))
    t0 = time.perf_counter()
    wait_enforced(lab, ds.put(key, value))
    took = time.perf_counter() - t0
    ds.delete(key)
    return took


def via_kubectl(lab: Lab, name: str, workdir: Path) -> float:
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(policy(name)))
    t0 = time.perf_counter()
    subprocess.run(lab.kubectl_argv(["apply", "-f", str(path)]), check=True, capture_output=True)
    took = time.perf_counter() - t0
    lab.api().policy_delete("bench", name)
    return took


def pod_ready(lab: Lab, i: int) -> float:
    node = NODES[i % len(NODES)]
    t0 = time.perf_counter()
    lab.api().pod_add("bench", f"p{i}", node, {"app": "server"},
                      [{"containerPort": 80, "protocol": "TCP"}])
    took = time.perf_counter() - t0
    lab.api().pod_del("bench", f"p{i}")
    return took


def bare_cni_add(lab: Lab, i: int) -> float:
    node = NODES[i % len(NODES)]
    paths = lab.node_paths(node)
    netns = f"{lab.name}-bench{i}"
    cid = uuid.uuid4().hex
    lab.store.add_netns(netns)
    pl.add_netns(netns)
    netconf = runtime.load_conflist(paths.conf_dir)
    args = runtime.k8s_args("bench", f"bare{i}", cid)
    try:
        t0 = time.perf_counter()
        runtime.add(paths.bin_dir, netconf, cid, f"/var/run/netns/{netns}", args)
        return time.perf_counter() - t0
    finally:
        runtime.delete(paths.bin_dir, netconf, cid, f"/var/run/netns/{netns}", args)
        pl.delete_netns(netns)
        lab.store.remove_netns(netns)


def row(what: str, xs: list[float], base: list[float], base_what: str) -> str:
    p50, b50 = statistics.median(xs) * 1000, statistics.median(base) * 1000
    return (f"{what:<44} p50 {p50:7.1f} ms  max {max(xs) * 1000:7.1f} ms   | {base_what}: "
            f"p50 {b50:6.1f} ms  max {max(base) * 1000:6.1f} ms   (+{p50 - b50:.1f} ms, {p50 / b50:.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--name", default=f"bk{uuid.uuid4().hex[:4]}")
    args = ap.parse_args()
    lab = Lab(args.name)
    workdir = Path(f"/tmp/{args.name}-bench")
    workdir.mkdir(exist_ok=True)
    try:
        lab.up(log=lambda m: print("  " + m, file=sys.stderr))
        lab.api().ns_add("bench", {})
        lab.api().pod_add("bench", "server", "r2n2", {"app": "server"},
                          [{"containerPort": 80, "protocol": "TCP"}])
        lab.api().pod_add("bench", "client", "r1n1", {"app": "client"}, [])
        lab.wait_policy()
        api, etcd, kubectl = [], [], []
        for i in range(args.rounds):   # interleaved: the machine's noise hits both alike
            api.append(via_api(lab, f"api-{i}"))
            etcd.append(via_etcd(lab, f"etcd-{i}"))
            kubectl.append(via_kubectl(lab, f"kubectl-{i}", workdir))
        pods, bare = [], []
        for i in range(max(4, args.rounds // 2)):
            pods.append(pod_ready(lab, i))
            bare.append(bare_cni_add(lab, i))
        print(f"\nKubernetes hop, lab of {len(NODES)} nodes, {args.rounds} rounds, interleaved")
        print(row("policy via API -> enforced on every node", api, etcd, "straight into etcd"))
        print(row("`kubectl apply -f` (command, start to exit)", kubectl, etcd, "straight into etcd"))
        print(row("pod via API -> Ready", pods, bare, "bare CNI ADD"))
        return 0
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
