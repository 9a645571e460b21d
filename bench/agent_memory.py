"""Does the agent's memory grow with pods that come and go? Waves of pods through real agents
(tests/faults/agent_node: each its own etcd, the real shim, nftables, a policy selecting the
pods), measured after each wave (every pod added, then deleted) through the agent's SIGUSR1
hook (calico_lite/memstats.py): RSS before and after malloc_trim, glibc's own totals (bytes in
use and free, arenas), resident memory by kind of mapping, descriptors, and with tracing the
Python heap (tracemalloc; the last wave's snapshot is compared with the first's by site).

    python -m bench.agent_memory [--waves 6] [--pods 200] [--parallel 8]
        [--variant NAME[:ENV=VALUE,...]]... [--idle NAME[:ENV=VALUE,...]]... [--out FILE]

Variants are agents side by side in the same run, each with its own environment (A/B: e.g.
`--variant base:CALICO_LITE_TRACEMALLOC_FRAMES=0 --variant arena2:MALLOC_ARENA_MAX=2,...`),
given the same waves at the same time; an idle one gets no pods and is measured alongside.
Growth in the Python heap that follows the waves is a leak (a dict keyed by something per
pod that nothing removes); growth in glibc's bytes in use with a flat Python heap is a native
leak (a C library); growth in its free bytes, or in RSS after malloc_trim with both flat, is
the allocator's fragmentation.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from calico_lite import keys
from policy.manifests import policy_to_dict
from policy.model import LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule
from tests.conftest import SHIM
from tests.faults.agent_node import agent_node, wait_until
from tests.nslib import sh


def cni(node, command: str, pod: str) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "k8s", "type": "calico-lite",
            "agent_socket": str(node.root / "cni.sock")}
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"ctr-{pod}",
           "CNI_NETNS": f"/var/run/netns/{node.prefix}{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME={pod}"}
    p = sh(str(SHIM), input=json.dumps(conf), env=env, check=False, timeout=120)
    if p.returncode:
        raise RuntimeError(f"{command} {pod}: {p.stdout}{p.stderr}")
    return json.loads(p.stdout) if p.stdout.strip() else {}


def ds(v: "Variant", op: str, **kw):
    with v.lock:   # one ds_helper pipe per node for all threads
        return v.node.ds(op, **kw)


def pod_lifecycle(v: "Variant", pod: str, label: str) -> None:
    """What kube-sync and the runtime do for one pod: its record, ADD; then DEL, record gone."""
    sh("ip", "netns", "add", f"{v.node.prefix}{pod}")
    ds(v, "put", key=keys.k8s_pod("a", pod),
       value={"namespace": "a", "name": pod, "labels": {"app": label}, "ports": []})
    cni(v.node, "ADD", pod)


def pod_gone(v: "Variant", pod: str) -> None:
    cni(v.node, "DEL", pod)
    ds(v, "delete", key=keys.k8s_pod("a", pod))
    sh("ip", "netns", "del", f"{v.node.prefix}{pod}")


@dataclass
class Variant:
    """One agent of the run: its name, its extra environment, whether it gets pods."""
    name: str
    env: dict[str, str]
    idle: bool = False
    node: object = None
    pid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)   # its ds_helper pipe
    rows: list[dict] = field(default_factory=list)
    snaps: list[tracemalloc.Snapshot] = field(default_factory=list)

    @property
    def traced(self) -> bool:
        return self.env.get("CALICO_LITE_TRACEMALLOC_FRAMES", "30") != "0"


def parse_variant(text: str) -> Variant:
    """NAME or NAME:ENV=VALUE,ENV=VALUE (e.g. arena2:MALLOC_ARENA_MAX=2)."""
    name, _, env = text.partition(":")
    return Variant(name, dict(e.split("=", 1) for e in env.split(",") if e))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def snapshot(v: Variant, n: int) -> dict:
    """SIGUSR1: the agent's figures (calico_lite/memstats.py), and its tracemalloc snapshot."""
    path = v.node.root / f"snap-{n}"
    os.kill(v.pid, signal.SIGUSR1)
    wait_until(Path(f"{path}.json").exists, "the memory figures")
    figures = json.loads(Path(f"{path}.json").read_text())
    if v.traced:
        v.snaps.append(tracemalloc.Snapshot.load(str(path)).filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen*")]))
        figures["heap_traced_kib"] = sum(s.size for s in v.snaps[-1].statistics("filename")) // 1024
    return figures


def start(v: Variant, stack: contextlib.ExitStack, tag: str) -> None:
    node = v.node = stack.enter_context(agent_node(tag))
    node.ds("put", key=keys.k8s_namespace("a"), value={"name": "a", "labels": {}})
    peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "x"}))
    node.ds("put", key=keys.k8s_policy("a", "only-x"), value=policy_to_dict(NetworkPolicy(
        "a", "only-x", LabelSelector(), ("Ingress",), (NetworkPolicyRule((peer,)),))))
    env = {"CALICO_LITE_TRACEMALLOC": str(node.root), **v.env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the agent's environment is this process's (agent_node._env)
    try:
        v.pid = node.start_agent().pid
    finally:
        for k, old in saved.items():
            os.environ.pop(k) if old is None else os.environ.__setitem__(k, old)
    wait_until(lambda: (node.root / "cni.sock").exists(), "the agent's CNI socket")


def wave(v: Variant, w: int, pods: int, parallel: int) -> int:
    """Every pod added, then deleted; the RSS with all of them in place."""
    names = [f"w{w}p{i}" for i in range(pods)]
    with ThreadPoolExecutor(parallel) as ex:
        list(ex.map(lambda p: pod_lifecycle(v, p, "x" if int(p.split("p")[-1]) % 2 else "y"), names))
        peak = rss_kib(v.pid)
        list(ex.map(lambda p: pod_gone(v, p), names))
    return peak


def line(v: Variant, r: dict) -> str:
    m = r["malloc"]
    traced = (f"; traced heap {r['heap_traced_kib']} KiB, tracemalloc's own {r['tracemalloc_kib']} KiB"
              if "heap_traced_kib" in r else "")
    return (f"  {v.name:>8}: RSS {r['peak_kib'] / 1024:5.1f} with pods, {r['rss_kib'] / 1024:5.1f} after DELs, "
            f"{r['rss_after_trim_kib'] / 1024:5.1f} MiB trimmed (brk heap {r['heap_kib'] / 1024:.1f}, other anon "
            f"{r['anon_kib'] / 1024:.1f}); malloc in use {m['in_use_kib'] / 1024:.1f}, free {m['free_kib'] / 1024:.1f}, "
            f"mmapped {m['mmapped_kib'] / 1024:.1f} MiB, {r['arenas']} arenas; {r['threads']} threads, "
            f"{r['fds']} fds{traced}")


def growth(variants: list[Variant], waves: int) -> None:
    print(f"\nwave 1 -> wave {waves} (per wave after the first), after malloc_trim:")
    for v in variants:
        a, b = v.rows[0], v.rows[-1]
        per = lambda k, sub=None: ((b[sub][k] if sub else b[k]) - (a[sub][k] if sub else a[k])) / 1024
        n = max(1, waves - 1)
        print(f"  {v.name:>8}: RSS {a['rss_after_trim_kib'] / 1024:.1f} -> {b['rss_after_trim_kib'] / 1024:.1f} MiB "
              f"({per('rss_after_trim_kib') / n:+.2f} a wave); malloc in use {per('in_use_kib', 'malloc'):+.1f} MiB, "
              f"free {per('free_kib', 'malloc'):+.1f} MiB; fds {a['fds']} -> {b['fds']}")


def heap_sites(v: Variant) -> None:
    print(f"\n{v.name}: Python heap growth, last wave against wave 1, by allocation site (top 12):")
    for stat in v.snaps[-1].compare_to(v.snaps[0], "lineno")[:12]:
        print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback}")


def run(waves: int, pods: int, parallel: int, variants: list[Variant], out: str) -> None:
    with contextlib.ExitStack() as stack:
        for v in variants:
            start(v, stack, "rsm")
            print(f"{v.name}: agent PID {v.pid}, {'idle' if v.idle else 'waves'}, {v.env}", flush=True)
        for w in range(waves):
            t0 = time.monotonic()
            busy = [v for v in variants if not v.idle]
            with ThreadPoolExecutor(len(busy) or 1) as ex:
                peaks = dict(zip([v.name for v in busy], ex.map(lambda v: wave(v, w, pods, parallel), busy)))
            time.sleep(3)   # the policy and route loops catch up with the deletions
            print(f"wave {w + 1} ({time.monotonic() - t0:.0f} s):", flush=True)
            for v in variants:
                r = snapshot(v, w + 1)
                r["peak_kib"] = peaks.get(v.name, r["rss_kib"])
                v.rows.append(r)
                print(line(v, r), flush=True)
        growth(variants, waves)
        for v in variants:
            if v.traced and len(v.snaps) > 1:
                heap_sites(v)
        if out:
            Path(out).write_text(json.dumps({v.name: {"env": v.env, "idle": v.idle, "rows": v.rows}
                                             for v in variants}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--waves", type=int, default=6)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME[:ENV=VALUE,...]",
                    help="an agent with this environment, e.g. arena2:MALLOC_ARENA_MAX=2 or "
                         "untraced:CALICO_LITE_TRACEMALLOC_FRAMES=0 (default: one, traced)")
    ap.add_argument("--idle", action="append", default=[], metavar="NAME[:ENV=VALUE,...]",
                    help="an agent that gets no pods, measured at the same times")
    ap.add_argument("--out", default="", help="write every figure as JSON here")
    a = ap.parse_args()
    variants = [parse_variant(t) for t in a.variant or ["agent"]]
    for t in a.idle:
        variants.append(parse_variant(t))
        variants[-1].idle = True
    run(a.waves, a.pods, a.parallel, variants, a.out)


if __name__ == "__main__":
    main()
