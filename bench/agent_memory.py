"""Does the agent's memory grow with pods that come and go? Waves of pods through a real agent
(tests/faults/agent_node: its own etcd, the real shim, nftables, a policy selecting the
pods), with tracemalloc on in the agent (CALICO_LITE_TRACEMALLOC): after each wave (every
pod added, then deleted) the agent's RSS and Python heap are read, and the snapshot of the
last wave is compared with the first one's, by allocation site.

    python -m bench.agent_memory [--waves 6] [--pods 200] [--parallel 8] [--agent-env NAME=VALUE]

Growth in the Python heap that follows the waves is a leak (a dict keyed by something per
pod that nothing removes); RSS growth with a flat heap is native: the allocator holding freed
memory (it goes when the agent calls malloc_trim, as the snapshot signal does: the RSS after
it is printed too) or a leak in a C library.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
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


_DS = threading.Lock()   # one ds_helper pipe for all threads


def ds(node, op: str, **kw):
    with _DS:
        return node.ds(op, **kw)


def pod_lifecycle(node, pod: str, label: str) -> None:
    """What kube-sync and the runtime do for one pod: its record, ADD; then DEL, record gone."""
    sh("ip", "netns", "add", f"{node.prefix}{pod}")
    ds(node, "put", key=keys.k8s_pod("a", pod),
       value={"namespace": "a", "name": pod, "labels": {"app": label}, "ports": []})
    cni(node, "ADD", pod)


def pod_gone(node, pod: str) -> None:
    cni(node, "DEL", pod)
    ds(node, "delete", key=keys.k8s_pod("a", pod))
    sh("ip", "netns", "del", f"{node.prefix}{pod}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def snapshot(node, pid: int, n: int) -> tracemalloc.Snapshot:
    path = node.root / f"snap-{n}"
    os.kill(pid, signal.SIGUSR1)
    wait_until(path.exists, "the snapshot")
    return tracemalloc.Snapshot.load(str(path)).filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen*")])


def run(waves: int, pods: int, parallel: int, agent_env: dict[str, str]) -> None:
    with agent_node("pbm") as node:
        node.ds("put", key=keys.k8s_namespace("a"), value={"name": "a", "labels": {}})
        peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "x"}))
        node.ds("put", key=keys.k8s_policy("a", "only-x"), value=policy_to_dict(NetworkPolicy(
            "a", "only-x", LabelSelector(), ("Ingress",), (NetworkPolicyRule((peer,)),))))
        env = {"CALICO_LITE_TRACEMALLOC": str(node.root), **agent_env}
        os.environ.update(env)   # the agent's environment is this process's (agent_node._env)
        pid = node.start_agent().pid
        for k in env:
            del os.environ[k]
        wait_until(lambda: (node.root / "cni.sock").exists(), "the agent's CNI socket")
        rows, snaps = [], []
        for w in range(waves):
            names = [f"w{w}p{i}" for i in range(pods)]
            with ThreadPoolExecutor(parallel) as ex:
                list(ex.map(lambda p: pod_lifecycle(node, p, "x" if int(p.split("p")[-1]) % 2 else "y"), names))
                peak = rss_kib(pid)
                list(ex.map(lambda p: pod_gone(node, p), names))
            time.sleep(3)   # the policy and route loops catch up with the deletions
            snaps.append(snapshot(node, pid, w + 1))
            heap = sum(s.size for s in snaps[-1].statistics("filename"))
            rss = json.loads((node.root / f"snap-{w + 1}.json").read_text())
            rows.append((w + 1, peak, rss["rss_kib"], heap, rss["rss_after_trim_kib"]))
            print(f"wave {w + 1}: RSS {peak / 1024:.1f} MiB with {pods} pods, {rss['rss_kib'] / 1024:.1f} MiB "
                  f"after their DELs, {rss['rss_after_trim_kib'] / 1024:.1f} MiB after malloc_trim; "
                  f"traced Python heap {heap / 1024:.0f} KiB; {rss['threads']} threads, {rss['mappings']} mappings",
                  flush=True)
        print(f"\nPython heap growth, wave {waves} against wave 1, by allocation site (top 12):")
        for stat in snaps[-1].compare_to(snaps[0], "lineno")[:12]:
            print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback}")
        print("\nthe 3 largest by whole traceback (outermost frames):")
        for stat in snaps[-1].compare_to(snaps[0], "traceback")[:3]:
            print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks")
            for line in stat.traceback.format()[:16]:
                print(f"      {line}")
        first, last = rows[0], rows[-1]
        print(f"\nover {waves - 1} waves after the first: RSS after DELs {first[2] / 1024:.1f} -> "
              f"{last[2] / 1024:.1f} MiB ({(last[2] - first[2]) / 1024 / max(1, waves - 1):+.2f} MiB a wave); "
              f"traced heap {first[3] / 1024:.0f} -> {last[3] / 1024:.0f} KiB "
              f"({(last[3] - first[3]) / 1024 / max(1, waves - 1):+.1f} KiB a wave); RSS after malloc_trim "
              f"{first[4] / 1024:.1f} -> {last[4] / 1024:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--waves", type=int, default=6)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                    help="for the agent, e.g. PYTHONMALLOC=malloc (no pymalloc arenas) or MALLOC_ARENA_MAX=2")
    a = ap.parse_args()
    run(a.waves, a.pods, a.parallel, dict(e.split("=", 1) for e in a.agent_env))


if __name__ == "__main__":
    main()
