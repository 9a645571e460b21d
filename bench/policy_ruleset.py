"""Benchmark: compile and apply a 1,000-pod / 200-policy ruleset; sync vs raw `nft -f`; update();
and event -> nft transaction committed, incremental (policy.incremental) vs full recompile.

The event part times the incremental calculation with the applier's netlink batch path against
the same with every update through libnftables and against the full recompile, in one run.
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
        upd_path = run(applier.update, rs2).path
        run(applier.update, rs)
        one_lib, one_nl, learn_s = one_element(run, applier, rs, args.repeat)
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
    row(f"update(): nft transaction ({upd_path} path)", update_s, sync2_s, "sync() of the same ruleset")
    row("one set element, netlink batch", one_nl, one_lib, "libnftables (`add element`)")
    row("learning rule templates after a sync", learn_s)
    row("update(): compile + diff (Python)", compile2_s + diff_s)
    row("update(): end to end (compile+diff+nft)", compile2_s + diff_s + update_s, compile2_s + render_s + sync2_s,
        "compile+render+sync")
    print(f"  kernel listing: {listed.count(chr(10))} lines")
    event_latency(policies, pods, namespaces, args.events)


def one_element(run, applier: RulesetApplier, rs, repeat: int) -> tuple[float, float, float]:
    """The fixed cost of a libnftables transaction on this table (it reads all chains and sets
    into its cache first) against the same one-element change as our own netlink batch; and
    the one-off dump that learns rule templates after a full sync."""
    from policy.nfnl import Batch  # noqa: E402
    text = "{} element inet calico-lite node_ips {{ 10.250.0.1 }}\n"
    lib, nl = [], []
    for _ in range(max(repeat, 5)):
        t = time.perf_counter()
        run(applier._nft.cmd, text.format("add"))
        lib.append(time.perf_counter() - t)
        run(applier._nft.cmd, text.format("delete"))
        for add in (True, False):
            batch = Batch("inet", "calico-lite")
            batch.elements(add, "node_ips", "ipv4_addr", ["10.250.0.1"])
            t = time.perf_counter()
            run(applier._nfnl.send, batch)
            if add:
                nl.append(time.perf_counter() - t)
    applier._templates = type(applier._templates)()
    t = time.perf_counter()
    run(applier._learn, rs, list(rs.chains.values()))
    return statistics.median(lib), statistics.median(nl), time.perf_counter() - t


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
    """Time from one event to its nft transaction committed, three ways in the same run: the
    incremental calculation with the netlink batch path (today's applier), the incremental
    calculation with every update through libnftables (the applier before the netlink path),
    and the old path (full recompile + diff + libnftables).

    Three scratch namespaces, one applier each, all starting from the same full sync; every
    event goes through all three, and their tables must end equal (checked, not timed)."""
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
    load_before = os.getloadavg()[0]
    try:
        for path in ("netlink", "libnft", "full"):
            subprocess.run(["ip", "netns", "add", f"{prefix}{path}"], check=True)
            w = ThreadPoolExecutor(1, initializer=setns, initargs=(f"/var/run/netns/{prefix}{path}",))
            make = (lambda: RulesetApplier(netlink=False)) if path != "netlink" else RulesetApplier
            workers[path] = (w, w.submit(make).result())
            w.submit(workers[path][1].sync, inc.ruleset()).result()
        times, modes, rs = _time_events(inc, workers, policies, state, ns_state, event_stream(pods, namespaces, n))
        assert inc.ruleset() == rs, "incremental and full paths diverged"
        listings = [subprocess.run(["ip", "netns", "exec", f"{prefix}{p}", "nft", "list", "table", "inet",
                                    "calico-lite"], capture_output=True, text=True, check=True).stdout
                    for p in ("netlink", "libnft", "full")]
    finally:
        for w, _ in workers.values():
            w.shutdown()
        remove_netns_with_prefix(prefix)
    _print_latency(times, modes, listings, len(pods), len(policies), n, load_before)


def _print_latency(times, modes, listings, n_pods: int, n_policies: int, n: int, load_before: float) -> None:
    print(f"event -> nft transaction committed ({n_pods} local pods, {n_policies} policies, "
          f"{n} events of each kind, same run; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)")
    for kind, t in times.items():
        for stat, pick in (("p50", statistics.median), ("max", max)):
            row(f"{kind} {stat} incremental, netlink path", pick(t["netlink"]), pick(t["libnft"]),
                "incremental, libnftables")
            row(f"{kind} {stat} incremental, netlink path", pick(t["netlink"]), pick(t["full"]), "full recompile")
        print(f"    of which the nft transaction: netlink path p50 {statistics.median(t['netlink nft']) * 1e3:.1f} ms, "
              f"max {max(t['netlink nft']) * 1e3:.1f} ms ({', '.join(sorted(modes[kind, 'netlink']))}); "
              f"libnftables p50 {statistics.median(t['libnft nft']) * 1e3:.1f} ms, max {max(t['libnft nft']) * 1e3:.1f} ms")
    same = len({tuple(_sans_handles(x)) for x in listings}) == 1
    print(f"  kernel tables after the run: {'equal' if same else 'DIFFER'} (netlink path, libnftables path, full path)")


def _time_events(inc, workers, policies, state, ns_state, stream):
    """Each event through the three appliers (see event_latency); per kind, the times."""
    rs = None
    times: dict[str, dict[str, list[float]]] = {}
    modes: dict[tuple[str, str], set[str]] = {}
    for kind, (what, value) in stream:
        key = (value.namespace, value.name) if what != "ns" else value.name
        t = time.perf_counter()  # incremental: the event, the delta, one transaction
        if what == "pod":
            inc.set_pod(key, value)
        elif what == "pod-":
            inc.remove_pod(key)
        else:
            inc.set_namespace(value)
        ruleset = inc.ruleset()
        calc = time.perf_counter() - t
        got = times.setdefault(kind, {})
        for path in ("netlink", "libnft"):
            w, applier = workers[path]
            t = time.perf_counter()
            res = w.submit(applier.update, ruleset).result()
            got.setdefault(path, []).append(calc + time.perf_counter() - t)
            got.setdefault(path + " nft", []).append(res.seconds)
            modes.setdefault((kind, path), set()).add(f"{res.mode}/{res.path}")
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
        got.setdefault("full", []).append(time.perf_counter() - t)
    return times, modes, rs


def _sans_handles(listing: str) -> list[str]:
    """`nft list` text with rule lines sorted inside nothing: element order can differ, so compare
    the sorted lines (enough for a bench sanity line; the tests compare structurally)."""
    return sorted(line.strip().rstrip(",") for line in listing.splitlines())


if __name__ == "__main__":
    main()
