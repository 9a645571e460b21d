"""BGP convergence in a 2-rack lab (default 12 nodes, ToR mode), printed, never asserted.

    join      a node's agent starts (its block was withdrawn before) -> every other node
              reaches a pod on it (UDP echo from each node's namespace)
    stop      clean stop (`lab node stop --how withdraw`: SIGUSR2, the agent withdraws its
              routes, then stops ExaBGP) -> the block is gone from every other node's kernel
    silent    the node's link is cut (hold time 3 s) -> gone from every other node's kernel
    FRR       the same block injected on its ToR (`network X` in FRR) -> in every other node's
              kernel, and in tor1's RIB; then withdrawn (`no network X`) -> gone

Targets: join < 3 s, clean withdrawal < 0.5 s, silent failure within hold + 1 s.

    .venv/bin/python bench/bgp_convergence.py [--racks 2] [--nodes-per-rack 6] [--rounds 1]
        [--load N] [--trace] [--keep]

--rounds repeats clean stop, join and FRR's withdrawal; --load runs N busy loops (`sh -c
'while :; do :; done'`) while measuring; --trace breaks each withdrawal down hop by hop
(bench/convergence_trace.py: FRR's debug log, the agent's log, the kernels).

Each node's namespace gets a watcher (this file with --watch) that sleeps on netlink route
notifications (RTMGRP_IPV4_ROUTE) and answers with CLOCK_MONOTONIC, which all namespaces share.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import convergence_trace as trace  # noqa: E402


# ------------------------------------------------------------------ watcher (in a node netns)
def watch_main() -> int:
    from pyroute2 import IPRoute
    ipr = IPRoute()

    def has(prefix: str) -> bool:
        dst, plen = prefix.split("/")
        return any(r.get("dst") == dst and r["dst_len"] == int(plen)
                   for r in ipr.route("dump", family=socket.AF_INET, table=254))

    def reach(ip: str, timeout: float) -> float | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.sendto(b"1", (ip, 80))
            except OSError:
                pass
            end = time.monotonic() + 0.005
            while time.monotonic() < end:
                try:
                    if s.recv(16):
                        return time.monotonic()
                except (BlockingIOError, ConnectionRefusedError, OSError):
                    time.sleep(0.0005)
        return None

    events = route_events()
    print("ready", flush=True)
    for line in sys.stdin:
        op, arg, timeout = line.split()
        deadline = time.monotonic() + float(timeout)
        at = None
        if op == "reach":
            at = reach(arg, float(timeout))
        else:
            at = wait_route(events, has, arg, op == "present", deadline)
        print(json.dumps(at), flush=True)
    return 0


def route_events() -> socket.socket:
    """A netlink socket subscribed to IPv4 route changes: the watcher sleeps until the kernel
    says a route moved (polling every 2 ms in 11 processes took a core of the 2 it measured)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, 0x40))   # RTMGRP_IPV4_ROUTE
    s.setblocking(False)
    return s


def wait_route(events: socket.socket, has, prefix: str, want: bool, deadline: float) -> float | None:
    """CLOCK_MONOTONIC when the route's presence became `want`: the time the kernel's
    notification woke us, confirmed by a dump (and a dump every 50 ms, should one be lost)."""
    import select
    _drain(events)
    if has(prefix) == want:
        return time.monotonic()
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([events], [], [], min(left, 0.05))
        woke = time.monotonic()
        _drain(events)
        if has(prefix) == want:
            return woke if readable else time.monotonic()
    return None


def _drain(events: socket.socket) -> None:
    while True:
        try:
            events.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:   # ENOBUFS: events were lost; the dump that follows tells the truth
            continue


# ------------------------------------------------------------------ driver
class Watcher:
    def __init__(self, netns: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()), "--watch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, op: str, arg: str, timeout: float) -> None:
        self.proc.stdin.write(f"{op} {arg} {timeout}\n")
        self.proc.stdin.flush()

    def answer(self) -> float | None:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def all_of(watchers: list[Watcher], op: str, arg: str, timeout: float = 30.0) -> list[float | None]:
    for w in watchers:
        w.ask(op, arg, timeout)
    return [w.answer() for w in watchers]


def spread(t0: float, times: list[float | None]) -> str:
    if any(t is None for t in times):
        return f"NOT REACHED on {sum(t is None for t in times)} of {len(times)} nodes"
    d = sorted(t - t0 for t in times)  # type: ignore[operator]
    return f"all {d[-1]:.3f}s (first {d[0]:.3f}s, median {d[len(d) // 2]:.3f}s)"


def frr_network(lab, tor: str, asn: int, prefix: str, add: bool) -> None:
    cmd = ["ip", "netns", "exec", f"{lab.name}-{tor}", "vtysh", "--vty_socket",
           str(lab.store.dir / "frr" / tor), "-c", "conf t", "-c", f"router bgp {asn}",
           "-c", "address-family ipv4 unicast", "-c", f"{'' if add else 'no '}network {prefix}"]
    subprocess.run(cmd, check=True, capture_output=True)


def tor_has(lab, tor: str, prefix: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", f"{lab.name}-{tor}", "vtysh", "--vty_socket",
                          str(lab.store.dir / "frr" / tor), "-c", f"show ip bgp {prefix} json"],
                         capture_output=True, text=True).stdout
    try:
        return bool(json.loads(out or "{}").get("paths"))
    except json.JSONDecodeError:
        return False


def poll_until(check, timeout: float = 30.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.005)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="tgrbench")
    ap.add_argument("--racks", type=int, default=2)
    ap.add_argument("--nodes-per-rack", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1, help="clean stop, join and FRR's rounds")
    ap.add_argument("--load", type=int, default=0, help="busy loops running while measuring")
    ap.add_argument("--trace", action="store_true", help="break the clean stop down hop by hop")
    ap.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = ap.parse_args()
    from calico_lite.lab.lab import Lab
    from calico_lite.lab.plan import make_plan

    # lab up/down and datastore reads go through the CLI in child processes: reaching the
    # lab's etcd moves a process into the lab's namespace, and `lab down` kills every
    # process in there
    lab = Lab(args.name)
    cli("lab", "down", "--name", args.name)
    plan = make_plan(args.name, args.racks, args.nodes_per_rack, "tor")
    target = plan.nodes[-1]                      # the last node of the last rack
    others = [n for n in plan.nodes if n is not target]
    tor = plan.tors[target.rack - 1]
    watchers: list[Watcher] = []
    busy: list[subprocess.Popen] = []
    t_up = time.monotonic()
    cli("lab", "up", "--name", args.name, "--racks", str(args.racks),
        "--nodes-per-rack", str(args.nodes_per_rack), "--bgp", "tor")
    try:
        print(f"lab {args.name}: {len(plan.nodes)} nodes in {args.racks} racks up in "
              f"{time.monotonic() - t_up:.1f}s; target node {target.name} (rack {target.rack})")
        pod_ip = cli("lab", "pod", "add", "default/bench", "--node", target.name, "--name",
                     args.name, "--serve", "udp:80").strip()
        cli("lab", "wait", "--name", args.name, "--timeout", "60")
        block = json.loads(cli("node", "status", target.name, "--lab", args.name, "--json"))[0][
            "blocks"][0]
        watchers = [Watcher(n.netns) for n in others]
        assert all(t is not None for t in all_of(watchers, "reach", pod_ip, 30)), "pod unreachable"
        print(f"pod {pod_ip} on {target.name}, block {block}\n")

        # hold time 3 s from the start: changing it later re-establishes every session, and
        # FRR (graceful-restart helper) then keeps a peer in its restart window for a while
        cli("bgp", "config", "set", "--hold-time", "3", "--lab", args.name)
        # every node's session, not only the target's: a receiver still re-establishing its
        # session (graceful restart keeps its paths stale until End-of-RIB) would hold the
        # withdrawn route ~1 s longer, which the first clean stop measured once under load
        for n in plan.nodes:
            _wait_hold(lab, plan.tors[n.rack - 1].name, n.address, 3)
        time.sleep(2)   # End-of-RIB on the re-established sessions
        assert all(t is not None for t in all_of(watchers, "present", block, 30)), "route missing"
        busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.load)]
        load_before = os.getloadavg()[0]
        bench = Bench(lab, target, tor, others, watchers, block, pod_ip,
                      plan if args.trace else None)
        results: dict[str, list[str]] = {}
        for r in range(args.rounds):
            for key, value in bench.round(r).items():
                results.setdefault(key, []).append(value)
        for key, value in bench.silent().items():
            results.setdefault(key, []).append(value)
        print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
              f" ({args.load} busy loops; 2 cores)")
        width = max(len(k) for k in results)
        print(f"{'measure':<{width}}  result")
        for k, v in results.items():
            print(f"{k:<{width}}  {v[0]}")
            for more in v[1:]:
                print(f"{'':<{width}}  {more}")
        for text in bench.traces:
            print(text)
    finally:
        for p in busy:
            p.kill()
            p.wait()
        for w in watchers:
            w.close()
        if not args.keep:
            cli("lab", "down", "--name", args.name)
    return 0


class Bench:
    """The measurements on one lab: a round is clean stop, join and FRR's own withdrawal."""

    def __init__(self, lab, target, tor, others, watchers, block, pod_ip, trace_plan=None):
        self.lab, self.target, self.tor, self.others = lab, target, tor, others
        self.watchers, self.block, self.pod_ip = watchers, block, pod_ip
        self.trace_plan = trace_plan
        self.traces: list[str] = []
        self.ref_tor = "tor1" if tor.name != "tor1" else tor.name

    def round(self, r: int) -> dict[str, str]:
        lab, target, tor, watchers, block = self.lab, self.target, self.tor, self.watchers, self.block
        results: dict[str, str] = {}
        if r:   # the target is stopped after the previous round: start it and wait for it
            lab.node_start(target.name)
            _wait_hold(lab, tor.name, target.address, 3)
            assert all(t is not None for t in all_of(watchers, "present", block, 30)), "route missing"
        # clean stop: SIGUSR2, the agent withdraws its routes, then stops ExaBGP
        routers = self._trace_start()
        for w in watchers:
            w.ask("absent", block, 30)
        cpu0 = self._cpu()
        t0, wall0 = time.monotonic(), time.time()
        lab.node_stop(target.name, "withdraw")
        gone = [w.answer() for w in watchers]
        cpu1 = self._cpu()
        results["clean stop: agent SIGUSR2 -> block gone everywhere (target < 0.5 s)"] = spread(t0, gone)
        self._trace_stop(routers, "clean stop", wall0, gone, (cpu0, cpu1))

        # join: agent start (ExaBGP starts with it) -> the pod answers from every other node
        for w in watchers:
            w.ask("reach", self.pod_ip, 30)
        t0 = time.monotonic()
        lab.node_start(target.name)
        results["join: agent start -> pod reachable from every node (target < 3 s)"] = spread(
            t0, [w.answer() for w in watchers])
        # reachable may come first through the default route (ToR, spine): the routes
        results["join: agent start -> route in every node's kernel"] = spread(
            t0, all_of(watchers, "present", block, 30))

        # FRR's own convergence for the same prefix, injected on the target's ToR
        lab.node_stop(target.name, "withdraw")
        all_of(watchers, "absent", block, 30)
        results.update(self.frr_round())
        return results

    def frr_round(self) -> dict[str, str]:
        lab, tor, watchers, block = self.lab, self.tor, self.watchers, self.block
        results: dict[str, str] = {}
        for w in watchers:
            w.ask("present", block, 30)
        t0 = time.monotonic()
        frr_network(lab, tor.name, tor.asn, block, add=True)
        t_frr = poll_until(lambda: tor_has(lab, self.ref_tor, block))
        results[f"FRR: `network {block}` on {tor.name} -> in {self.ref_tor}'s BGP table"] = spread(t0, [t_frr])
        results[f"FRR: `network` on {tor.name} -> route in every node's kernel"] = spread(
            t0, [w.answer() for w in watchers])
        routers = self._trace_start()
        for w in watchers:
            w.ask("absent", block, 30)
        cpu0 = self._cpu()
        t0, wall0 = time.monotonic(), time.time()
        frr_network(lab, tor.name, tor.asn, block, add=False)
        gone = [w.answer() for w in watchers]
        cpu1 = self._cpu()
        t_frr = poll_until(lambda: not tor_has(lab, self.ref_tor, block))
        results[f"FRR: `no network` -> gone from {self.ref_tor}'s BGP table"] = spread(t0, [t_frr])
        results["FRR: `no network` -> gone from every node's kernel"] = spread(t0, gone)
        self._trace_stop(routers, "FRR `no network`", wall0, gone, (cpu0, cpu1))
        return results

    def silent(self) -> dict[str, str]:
        """Silent failure (hold time 3 s): the target's link is cut."""
        lab, target, watchers, block = self.lab, self.target, self.watchers, self.block
        lab.node_start(target.name)
        _wait_hold(lab, self.tor.name, target.address, 3)
        assert all(t is not None for t in all_of(watchers, "present", block, 30)), "route missing"
        assert all(t is not None for t in all_of(watchers, "reach", self.pod_ip, 30)), "pod unreachable"
        for w in watchers:
            w.ask("absent", block, 30)
        t0 = time.monotonic()
        subprocess.run(["ip", "-n", target.netns, "link", "set", "eth0", "down"], check=True)
        return {"silent failure (link cut, hold 3 s) -> gone everywhere (target < 4 s)": spread(
            t0, [w.answer() for w in watchers])}

    def _trace_start(self) -> list[str]:
        if self.trace_plan is None:
            return []
        routers = [self.tor.name, "spine", *(t.name for t in self.trace_plan.tors if t is not self.tor)]
        trace.debug_on(self.lab, routers)
        return routers

    def _cpu(self) -> dict[str, float]:
        return trace.cpu_by_kind([n.netns for n in self.others]) if self.trace_plan else {}

    def _trace_stop(self, routers: list[str], what: str, wall0: float, gone: list,
                    cpu: tuple[dict, dict]) -> None:
        if not routers:
            return
        trace.debug_off(self.lab, routers)
        rows: list[tuple[str, float | None]] = []
        if what == "clean stop":
            marks = trace.agent_marks(self.lab.node_paths(self.target.name).agent_log, wall0)
            rows += [(f"{self.target.name} agent: {k}", marks.get(k)) for k in
                     ("SIGUSR2 handled", "withdraw sent to exabgp", "exabgp acknowledged")]
        for r in routers:
            marks = trace.router_marks(self.lab, r, self.block, wall0)
            rows += [(f"{r}: {k}", marks.get(k)) for k in ("rcvd", "sent first", "sent last")
                     if k != "rcvd" or r != self.tor.name or what == "clean stop"]
        wall = trace.mono_to_wall(gone)
        same = [t for n, t in zip(self.others, wall) if n.rack == self.target.rack]
        other = [t for n, t in zip(self.others, wall) if n.rack != self.target.rack]
        rows += trace.kernel_rows(f"rack {self.target.rack} nodes", same)
        rows += trace.kernel_rows("other racks' nodes", other)
        self.traces.append(f"{what}, traced (from the signal / the vtysh command):\n"
                           + trace.report(wall0, rows) + "\n" + trace.cpu_report(*cpu, len(self.others)))


def cli(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "calico_lite.cli", *args], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO), "CALICO_LITE_LAB": ""})
    if p.returncode != 0:
        raise RuntimeError(f"calico-lite {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def _wait_hold(lab, tor: str, address: str, hold: int, timeout: float = 30.0) -> None:
    def ok() -> bool:
        out = subprocess.run(["ip", "netns", "exec", f"{lab.name}-{tor}", "vtysh", "--vty_socket",
                              str(lab.store.dir / "frr" / tor), "-c", f"show bgp neighbors {address}"],
                             capture_output=True, text=True).stdout
        return f"Hold time is {hold}" in out and "BGP state = Established" in out
    if poll_until(ok, timeout) is None:
        raise RuntimeError(f"hold time {hold} not negotiated between {tor} and {address}")


if __name__ == "__main__":
    if "--watch" in sys.argv:
        sys.exit(watch_main())
    sys.exit(main())
