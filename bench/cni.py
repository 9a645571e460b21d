"""Benchmark: CNI ADD/DEL latency and throughput, calico-lite vs the reference ptp + host-local.

calico-lite runs through its real shim against a one-node lab's agent; the baseline is Debian's
`/usr/lib/cni/ptp` with `host-local` IPAM (10.246.0.0/16, data dir in a temp dir). Both are
exec'd the same way, through `ip netns exec NS PLUGIN`: ptp inside a bench namespace of its own
(so its host veths, routes and sysctls land there, never in the machine's namespace), the
calico-lite shim inside the lab node's namespace. The wrapper's own cost is measured and printed.
Figures are printed, never asserted. Everything (lab, namespaces, temp dirs) is removed at the
end, also on failure or Ctrl-C. Usage (root):
    .venv/bin/python bench/cni.py [--pods 50] [--parallel 8,32] [--quick] [--name LAB]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import lab_cli  # noqa: E402
from tests.e2e.labutil import lab_name  # noqa: E402
from tests.nslib import remove_netns_with_prefix, unique_prefix  # noqa: E402
from tests.runtime_support import (  # noqa: E402
    REFERENCE_CNI_DIR, RUNTIME_CNI_VERSION, CniOutcome, CniRuntime, cali_links, ipam_used,
    lab_node, plugin_bin_dir,
)

BASELINE_SUBNET = "10.246.0.0/16"


@dataclass
class Contender:
    """One plugin set-up under test: its chain executor and a label."""
    label: str
    runtime: CniRuntime


@dataclass
class Round:
    add: list[float]
    delete: list[float]
    wall_add: float
    wall_delete: float
    failures: int


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def call(c: Contender, verb: str, cid: str, netns: str) -> CniOutcome:
    plugin = c.runtime.netconf["plugins"][0]
    conf = c.runtime.plugin_config(plugin, None, {})
    return c.runtime.exec_plugin(plugin, verb, cid, netns,
                                 f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}", conf)


def run_round(c: Contender, pods: list[str], parallel: int, tag: str) -> Round:
    """ADD every pod, then DEL every pod, `parallel` at a time (1 = sequential)."""
    ids = [f"{tag}{i:04d}" for i in range(len(pods))]

    def one(verb: str, i: int) -> CniOutcome:
        return call(c, verb, ids[i], f"/var/run/netns/{pods[i]}")

    results: dict[str, list[CniOutcome]] = {}
    walls: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for verb in ("ADD", "DEL"):
            start = time.perf_counter()
            results[verb] = list(pool.map(lambda i, v=verb: one(v, i), range(len(pods))))
            walls[verb] = time.perf_counter() - start
    failures = [o for outs in results.values() for o in outs if o.code != 0]
    for o in failures[:3]:
        print(f"  ! {c.label} {o.verb} failed ({o.code}): {o.stdout.strip()[:200]} "
              f"{o.stderr.strip()[:200]}", file=sys.stderr)
    return Round([o.seconds * 1000 for o in results["ADD"] if o.code == 0],
                 [o.seconds * 1000 for o in results["DEL"] if o.code == 0],
                 walls["ADD"], walls["DEL"], len(failures))


def cni_events(log_file: Path, tag: str):
    """The ADD and DEL lines the agent logged for containers named tag*."""
    for line in log_file.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "cni" and str(e.get("container", "")).startswith(tag) \
                and e.get("verb") in ("ADD", "DEL"):
            yield e


def agent_ms(log_file: Path, tag: str) -> dict[str, list[float]]:
    """Per-verb times the agent itself logged (its `ms` field) for containers named tag*."""
    out: dict[str, list[float]] = {"ADD": [], "DEL": []}
    for e in cni_events(log_file, tag):
        if "ms" in e:
            out[e["verb"]].append(float(e["ms"]))
    return out


def wrapper_cost_ms(netns: str, n: int = 25) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", netns, "true"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def make_netns(names: list[str]) -> None:
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True, capture_output=True)
        subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True)


def print_table(rounds: dict[tuple[str, str], Round], labels: list[str], n: int,
                levels: list[int]) -> None:
    cl, ref = labels
    print(f"\n{'':28}{cl:>15}{ref:>17}{'ratio':>9}")

    def row(name: str, a: float, b: float, unit: str) -> None:
        ratio = a / b if b else float("nan")
        print(f"{name:28}{a:>12.1f} {unit:<2}{b:>14.1f} {unit:<2}{ratio:>8.2f}x")

    for k in [1, *levels]:
        mode = mode_name(k)
        a, b = rounds[(cl, mode)], rounds[(ref, mode)]
        print(f"-- {'sequential' if k == 1 else f'{k} in parallel'}, {n} pods")
        for verb, xa, xb in (("ADD", a.add, b.add), ("DEL", a.delete, b.delete)):
            row(f"  {verb} p50", pct(xa, 0.5), pct(xb, 0.5), "ms")
            row(f"  {verb} p90", pct(xa, 0.9), pct(xb, 0.9), "ms")
        row("  ADD pods/s", n / a.wall_add, n / b.wall_add, "/s")
        row("  DEL pods/s", n / a.wall_delete, n / b.wall_delete, "/s")
        if a.failures or b.failures:
            print(f"  failures: {cl} {a.failures}, {ref} {b.failures}")
    print("ratio = calico-lite / reference (latency: lower is better; pods/s: higher is better)")


def mode_name(parallel: int) -> str:
    return "seq" if parallel == 1 else f"par{parallel}"


def agent_spans(log_file: Path, tag: str) -> dict[str, dict[str, list[float]]]:
    """verb -> step -> ms, the per-step spans the agent logged for containers named tag*."""
    out: dict[str, dict[str, list[float]]] = {"ADD": {}, "DEL": {}}
    for e in cni_events(log_file, tag):
        for step, ms in (e.get("spans") or {}).items():
            out[e["verb"]].setdefault(step, []).append(float(ms))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--parallel", default="8,32", help="parallel levels, comma-separated")
    ap.add_argument("--quick", action="store_true", help="10 pods, 4 in parallel (for CI)")
    ap.add_argument("--name", help="the lab's name (default: a unique one)")
    args = ap.parse_args(argv)
    n, levels = (10, [4]) if args.quick else (args.pods, [int(x) for x in args.parallel.split(",")])

    prefix = unique_prefix("rt")
    lab = args.name or lab_name("rt")
    tmp = Path(tempfile.mkdtemp(prefix="trt-bench-"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(f"lab {lab}: 1 node; namespaces {prefix}-*; {n} pods, sequential and "
              f"{', '.join(map(str, levels))} in parallel")
        lab_cli("lab", "up", "--name", lab, "--racks", "1", "--nodes-per-rack", "1")
        node = lab_node(lab)
        bench_ns = f"{prefix}-ref"
        pods = [f"{prefix}-p{i}" for i in range(n)]
        make_netns([bench_ns, *pods])
        bin_dir = plugin_bin_dir(tmp / "bin", {
            "calico-lite": node.cni_bin_dir / "calico-lite",
            "ptp": REFERENCE_CNI_DIR / "ptp", "host-local": REFERENCE_CNI_DIR / "host-local"})
        calico = Contender("calico-lite", CniRuntime(bin_dir, {
            "cniVersion": RUNTIME_CNI_VERSION, "name": "k8s-pod-network",
            "plugins": [node.conflist["plugins"][0]]}, exec_netns=node.netns))
        ref = Contender("ptp+host-local", CniRuntime(bin_dir, {
            "cniVersion": RUNTIME_CNI_VERSION, "name": "bench-ptp",
            "plugins": [{"type": "ptp", "ipMasq": False, "mtu": 1500, "ipam": {
                "type": "host-local", "subnet": BASELINE_SUBNET, "dataDir": str(tmp / "ipam"),
                "routes": [{"dst": "0.0.0.0/0"}]}}]}, exec_netns=bench_ns))

        for c in (calico, ref):  # warm-up: calico-lite claims its block, caches fill
            run_round(c, pods[:2], 1, "warm")
        rounds: dict[tuple[str, str], Round] = {}
        for par in (1, *levels):
            for c in (calico, ref):
                mode = mode_name(par)
                rounds[(c.label, mode)] = run_round(c, pods, par, f"{mode}{c.label[:2]}")
        leftover = len(cali_links(node.netns)), ipam_used(lab)
        wrap = wrapper_cost_ms(bench_ns)

        print("both plugins exec'd through `ip netns exec NS PLUGIN` (calico-lite's shim in the "
              "node namespace, ptp in a bench namespace);")
        print(f"that wrapper alone (`ip netns exec NS true`) costs {wrap:.1f} ms p50, "
              "included in every figure below")
        print_table(rounds, [calico.label, ref.label], n, levels)
        log_file = Path(node.conflist["plugins"][0].get("log_file", ""))
        if log_file.is_file():
            for mode in map(mode_name, (1, *levels)):
                tag = f"{mode}{calico.label[:2]}"
                inside = agent_ms(log_file, tag)
                print(f"calico-lite agent-side time ({mode}), from its CNI log: "
                      + ", ".join(f"{v} p50 {pct(x, 0.5):.1f} ms p90 {pct(x, 0.9):.1f} ms"
                                  for v, x in inside.items()))
                for verb, steps in agent_spans(log_file, tag).items():
                    print(f"    {verb} steps p50: " + ", ".join(
                        f"{k} {pct(x, 0.5):.1f}" for k, x in steps.items()))
        print(f"after all DELs: calico-lite links left {leftover[0]}, addresses held {leftover[1]}")
        return 0
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        lab_cli("lab", "down", "--name", lab, check=False)
        remove_netns_with_prefix(f"{lab}-")
        remove_netns_with_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
