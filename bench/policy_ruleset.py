"""Benchmark: compile and apply a 1,000-pod / 200-policy ruleset; sync vs raw `nft -f`; update();
and event -> nft transaction committed, incremental (policy.incremental) vs full recompile.

Runs in a throwaway network namespace (never the machine's own). Prints figures side by side
with ratios; nothing is asserted. Usage (root):
    .venv/bin/python bench/policy_ruleset.py [--pods 1000] [--policies 200] [--repeat 5]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy.applier import RulesetApplier  # noqa: E402
from policy.compiler import compile_ruleset  # noqa: E402
from policy.incremental import IncrementalRuleset  # noqa: E402
from policy.model import (  # noqa: E402
    ContainerPort, IPBlock, LabelSelector, LabelSelectorRequirement, Namespace, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicyRule, Pod,
)
from policy.ruleset import render_nft, render_update  # noqa: E402
from tests.nslib import remove_netns_with_prefix, unique_prefix  # noqa: E402


def cluster(n_pods: int, n_policies: int, seed: int = 7):
    rnd = random.Random(seed)
    namespaces = [Namespace(f"ns{i}", {"team": f"t{i % 5}", "env": rnd.choice(["dev", "prod"])}) for i in range(20)]
    pods = []
    for i in range(n_pods):
        ns = namespaces[i % len(namespaces)].name
        pods.append(Pod(ns, f"pod{i}", f"10.244.{i // 250}.{i % 250 + 1}",
                        {"app": f"app{(i // 20) % 10}", "tier": rnd.choice(["fe", "be", "db"])},
                        [ContainerPort("http", "TCP", 8080 + i % 3), ContainerPort("dns", "UDP", 53)],
                        f"cali{i:08x}", "node1"))
    sel = LabelSelector.of
    policies = []
    for j in range(n_policies):
        ns = namespaces[j % len(namespaces)].name
        kind = j % 5
        target = sel({"app": f"app{(j // 20) % 10}"}) if j % 40 else sel()
        if kind == 0:
            ing = (NetworkPolicyRule((NetworkPolicyPeer(pod_selector=sel({"tier": "fe"})),),
                                     (NetworkPolicyPort("TCP", 80), NetworkPolicyPort("TCP", "http"))),)
            pol = NetworkPolicy(ns, f"p{j}", target, ("Ingress",), ing)
        elif kind == 1:
            ing = (NetworkPolicyRule((NetworkPolicyPeer(namespace_selector=sel({"team": f"t{j % 5}"})),),
                                     (NetworkPolicyPort("TCP", 8000, 8100),)),)
            pol = NetworkPolicy(ns, f"p{j}", target, ("Ingress",), ing)
        elif kind == 2:
            peer = NetworkPolicyPeer(pod_selector=sel({}, [LabelSelectorRequirement("tier", "In", ("be", "db"))]),
                                     namespace_selector=sel({"env": "prod"}))
            pol = NetworkPolicy(ns, f"p{j}", target, ("Ingress",), (NetworkPolicyRule((peer,)),))
        elif kind == 3:
            block = NetworkPolicyPeer(ip_block=IPBlock(f"10.{100 + j % 50}.0.0/16", (f"10.{100 + j % 50}.{j % 200}.0/24",)))
            pol = NetworkPolicy(ns, f"p{j}", target, ("Ingress",), (NetworkPolicyRule((block,), (NetworkPolicyPort("UDP", 53),)),))
        else:
            eg = (NetworkPolicyRule((NetworkPolicyPeer(namespace_selector=sel(), pod_selector=sel({"tier": "db"})),),
                                    (NetworkPolicyPort("TCP", "http"), NetworkPolicyPort("TCP", 5432))),
                  NetworkPolicyRule((), (NetworkPolicyPort("UDP", "dns"),)))
            pol = NetworkPolicy(ns, f"p{j}", target, ("Egress",), (), eg)
        policies.append(pol)
    return policies, pods, namespaces


def setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def nft_file(path: str) -> None:
    """The baseline: a fresh `nft -f` process (inherits the worker thread's netns)."""
    subprocess.run(["nft", "-f", path], check=True)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def row(label: str, a: float, b: float | None = None, blabel: str = "") -> None:
    text = f"  {label:<44} {a * 1e3:9.2f} ms"
    if b is not None:
        text += f"   vs {blabel:<26} {b * 1e3:9.2f} ms   ratio {a / b:6.2f}x"
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--events", type=int, default=15, help="events of each kind in the latency part")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (it creates a network namespace)")

    policies, pods, namespaces = cluster(args.pods, args.policies)
    compile_s, rs = timed(lambda: compile_ruleset(policies, pods, namespaces, ["10.241.0.1"]), args.repeat)
    render_s, text = timed(lambda: render_nft(rs), args.repeat)
    stats = rs.stats()

    prefix = unique_prefix("pol")
    netns = f"{prefix}bench"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    worker = ThreadPoolExecutor(1, initializer=setns, initargs=(f"/var/run/netns/{netns}",))
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write(text)
        run = lambda fn, *a: worker.submit(fn, *a).result()  # noqa: E731
        applier = run(RulesetApplier)
        run(applier.sync, rs)  # warm: the first load creates the table
        sync_s = statistics.median(run(applier.sync, rs).seconds for _ in range(args.repeat))
        raw_s, _ = timed(lambda: run(nft_file, f.name), args.repeat)

        # one pod added, selected by policies and matched as a peer: compile + diff + nft
        new_pod = Pod("ns6", "newpod", "10.244.99.1", {"app": "app0", "tier": "db"},
                      [ContainerPort("http", "TCP", 8080)], "calinewpod", "node1")
        t = time.perf_counter()
        rs2 = compile_ruleset(policies, pods + [new_pod], namespaces, ["10.241.0.1"])
        compile2_s = time.perf_counter() - t
        t = time.perf_counter()
        upd_text, summary = render_update(rs, rs2)
        diff_s = time.perf_counter() - t
        upd_times = []
        for i in range(args.repeat):  # add / remove alternately, time only the adds
            res = run(applier.update, rs2)
            upd_times.append(res.seconds)
            run(applier.update, rs)
        update_s = statistics.median(upd_times)
        sync2_s = run(applier.sync, rs2).seconds
        listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "calico-lite"],
                                capture_output=True, text=True, check=True).stdout
        os.unlink(f.name)
    finally:
        worker.shutdown()
        remove_netns_with_prefix(prefix)

    print(f"policy ruleset bench: {args.pods} pods (all local), {args.policies} policies, "
          f"medians of {args.repeat}")
    print("  ruleset: " + ", ".join(f"{k}={v}" for k, v in stats.items()) + f", text={len(text) / 1024:.0f} KiB")
    row("compile_ruleset (pure Python)", compile_s)
    row("render_nft", render_s)
    row("RulesetApplier.sync (libnftables, in-process)", sync_s, raw_s, "raw `nft -f` same text")
    print(f"  update() for one added pod: {summary}, {len(upd_text)} bytes of nft text")
    row("update(): nft transaction", update_s, sync2_s, "sync() of the same ruleset")
    row("update(): compile + diff (Python)", compile2_s + diff_s)
    row("update(): end to end (compile+diff+nft)", compile2_s + diff_s + update_s, compile2_s + render_s + sync2_s,
        "compile+render+sync")
    print(f"  kernel listing: {listed.count(chr(10))} lines")
    event_latency(policies, pods, namespaces, args.events)


def event_stream(pods: list[Pod], namespaces: list[Namespace], n: int):
    """(kind, apply(state)) pairs: a new local pod, its relabel, its delete, a namespace relabel."""
    for i in range(n):
        ns = namespaces[(6 + i) % len(namespaces)]
        pod = Pod(ns.name, f"new{i}", f"10.245.0.{i + 1}", {"app": f"app{i % 10}", "tier": "fe"},
                  [ContainerPort("http", "TCP", 8080), ContainerPort("dns", "UDP", 53)], f"calinew{i}", "node1")
        yield "pod add", ("pod", pod)
        yield "pod label change", ("pod", Pod(**{**vars(pod), "labels": {**pod.labels, "tier": "db"}}))
        yield "pod delete", ("pod-", pod)
        flipped = {**ns.labels, "env": "dev" if ns.labels.get("env") == "prod" else "prod"}
        ns.labels = flipped
        yield "namespace label change", ("ns", Namespace(ns.name, dict(flipped)))


def event_latency(policies, pods, namespaces, n: int) -> None:
    """Time from one event to its nft transaction committed: incremental vs full recompile.

    Two scratch namespaces, one applier each, both starting from the same full sync; every event
    goes through both paths, and both tables must end equal (checked, not timed)."""
    namespaces = [Namespace(x.name, dict(x.labels)) for x in namespaces]
    state = {(p.namespace, p.name): p for p in pods}
    ns_state = {x.name: x for x in namespaces}
    inc = IncrementalRuleset(["10.241.0.1"])
    for x in namespaces:
        inc.set_namespace(x)
    for pol in policies:
        inc.set_policy(pol)
    for key, p in state.items():
        inc.set_pod(key, p)
    prefix = unique_prefix("pol")
    workers = {}
    try:
        for path in ("inc", "full"):
            subprocess.run(["ip", "netns", "add", f"{prefix}{path}"], check=True)
            w = ThreadPoolExecutor(1, initializer=setns, initargs=(f"/var/run/netns/{prefix}{path}",))
            workers[path] = (w, w.submit(RulesetApplier).result())
            w.submit(workers[path][1].sync, inc.ruleset()).result()
        times: dict[str, dict[str, list[float]]] = {}
        modes: dict[str, set[str]] = {}
        for kind, (what, value) in event_stream(pods, namespaces, n):
            key = (value.namespace, value.name) if what != "ns" else value.name
            t = time.perf_counter()  # incremental path: the event, the delta, one transaction
            if what == "pod":
                inc.set_pod(key, value)
            elif what == "pod-":
                inc.remove_pod(key)
            else:
                inc.set_namespace(value)
            w, applier = workers["inc"]
            res = w.submit(applier.update, inc.ruleset()).result()
            times.setdefault(kind, {}).setdefault("inc", []).append(time.perf_counter() - t)
            times[kind].setdefault("nft", []).append(res.seconds)
            modes.setdefault(kind, set()).add(res.mode)
            t = time.perf_counter()  # old path: recompile everything, diff, one transaction
            if what == "pod":
                state[key] = value
            elif what == "pod-":
                state.pop(key)
            else:
                ns_state[key] = value
            rs = compile_ruleset(policies, state.values(), ns_state.values(), ["10.241.0.1"])
            w, applier = workers["full"]
            w.submit(applier.update, rs).result()
            times[kind].setdefault("full", []).append(time.perf_counter() - t)
        assert inc.ruleset() == rs, "incremental and full paths diverged"
        listings = [subprocess.run(["ip", "netns", "exec", f"{prefix}{p}", "nft", "list", "table", "inet",
                                    "calico-lite"], capture_output=True, text=True, check=True).stdout
                    for p in ("inc", "full")]
    finally:
        for w, _ in workers.values():
            w.shutdown()
        remove_netns_with_prefix(prefix)
    print(f"event -> nft transaction committed ({len(pods)} local pods, {len(policies)} policies, "
          f"{n} events of each kind; baseline = old path: full compile_ruleset + diff + nft, same run; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for kind, t in times.items():
        inc_t, full_t = sorted(t["inc"]), sorted(t["full"])
        for stat, pick in (("p50", statistics.median), ("max", max)):
            row(f"{kind} {stat} (incremental, {'/'.join(sorted(modes[kind]))})", pick(inc_t), pick(full_t),
                "full recompile")
        print(f"    of which the nft transaction: p50 {statistics.median(t['nft']) * 1e3:.1f} ms, "
              f"max {max(t['nft']) * 1e3:.1f} ms")
    print(f"  kernel tables after the run: {'equal' if _sans_handles(listings[0]) == _sans_handles(listings[1]) else 'DIFFER'}"
          f" (incremental vs full path)")


def _sans_handles(listing: str) -> list[str]:
    """`nft list` text with rule lines sorted inside nothing: element order can differ, so compare
    the sorted lines (enough for a bench sanity line; the tests compare structurally)."""
    return sorted(line.strip().rstrip(",") for line in listing.splitlines())


if __name__ == "__main__":
    main()
