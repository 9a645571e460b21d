"""Runs INSIDE the qemu guest (a kernel with ipip): a whole lab with IPIP, as a user builds
it, `lab up --bgp mesh --encap ipip --racks 2 --nodes-per-rack 2 --no-kubernetes
--insecure-etcd` (FRR ToRs and spine that know no pod route, the agents with ExaBGP in a full
mesh; etcd without TLS, which the emulated CPU would make slow and is tested elsewhere), one
pod per node, then every pod pair probed. Writes {check: [ok, detail]} and the phases'
durations as JSON to argv[1]; the host test asserts.

Cross-rack traffic can only arrive through the tunnel (the routers have no pod routes), and
each pair is also checked on the tunl0 counters of both nodes; same-rack traffic must be
routed plainly (tunl0's counters stay put).

    python -m tests.integration.ipip_lab_guest RESULT.json LABNAME
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from calico_lite.lab.lab import Lab

PINGS = 3


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


def ipj(netns: str, *args: str):
    p = sh("ip", "-n", netns, "-j", *args)
    if p.returncode != 0:
        raise RuntimeError(f"ip -n {netns} {' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def tunl0_counts(netns: str) -> tuple[int, int]:
    """(tx, rx) packets of the node's tunl0."""
    s = ipj(netns, "-s", "link", "show", "dev", "tunl0")[0]["stats64"]
    return s["tx"]["packets"], s["rx"]["packets"]


def route_checks(lab: Lab, pods: dict[str, str], check) -> None:
    """On each node, the route to each other node's pod: via tunl0 onlink to the peer node
    across racks, via eth0 to the peer node within a rack."""
    plan = lab.plan
    for n in plan.nodes:
        for other in plan.nodes:
            if other is n:
                continue
            r = ipj(n.netns, "route", "get", pods[other.name])[0]   # what the kernel chooses
            # the table's entry for the pod's block (`route get` does not show onlink)
            block = max((e for e in ipj(n.netns, "route", "show", "to", "match", pods[other.name])
                         if "/" in e["dst"]), key=lambda e: int(e["dst"].split("/")[1]), default={})
            cross = n.rack != other.rack
            ok = (r.get("gateway") == other.address == block.get("gateway")
                  and r.get("dev") == block.get("dev") == ("tunl0" if cross else "eth0")
                  and ("onlink" in block.get("flags", [])) == cross)
            check(f"{n.name} -> pod on {other.name}: route "
                  + ("via tunl0 onlink (across racks)" if cross else "via eth0 (same rack)"), ok,
                  {"route get": r, "table": block})


def pair_checks(lab: Lab, pods: dict[str, str], check) -> None:
    """Every ordered pod pair pings; tunl0 counters move on both ends across racks only."""
    plan = lab.plan
    for a in plan.nodes:
        for b in plan.nodes:
            if a is b:
                continue
            cross = a.rack != b.rack
            a0, b0 = tunl0_counts(a.netns), tunl0_counts(b.netns)
            p = sh("ip", "netns", "exec", plan.pod_netns("default", f"p-{a.name}"), "ping", "-n",
                   "-c", str(PINGS), "-i", "0.2", "-W", "3", pods[b.name])
            a1, b1 = tunl0_counts(a.netns), tunl0_counts(b.netns)
            sent, got = a1[0] - a0[0], b1[1] - b0[1]
            check(f"pod {a.name} pings pod {b.name}", p.returncode == 0, p.stdout + p.stderr)
            if cross:
                ok = sent >= PINGS and got >= PINGS
                what = "through the tunnel (tunl0 tx on the sender, rx on the receiver)"
            else:
                ok = sent == 0 and got == 0
                what = "routed plainly (tunl0 counters unchanged)"
            check(f"pod {a.name} -> pod {b.name} {what}", ok, {"tunl0_tx": sent, "tunl0_rx": got})


def run(lab: Lab, check, timings: dict) -> None:
    t0 = time.monotonic()
    plan = lab.up(racks=2, nodes_per_rack=2, bgp="mesh", encap="ipip", kubernetes=False,
                  etcd_tls=False,
                  log=lambda m: print(f"{time.monotonic() - t0:.0f}s {m}", flush=True))
    timings["lab up"] = round(time.monotonic() - t0, 1)
    for n in plan.nodes:
        check(f"{n.name}: kernel has ipip (tunl0 present)", sh("ip", "-n", n.netns, "link", "show",
                                                              "tunl0").returncode == 0, n.netns)
    t = time.monotonic()
    with ThreadPoolExecutor(len(plan.nodes)) as pool:   # each starts a Python echo server
        added = {n.name: pool.submit(lab.pod_add, "default", f"p-{n.name}", n.name, {},
                                     ["tcp:80"], []) for n in plan.nodes}
    pods = {name: f.result() for name, f in added.items()}
    lab.wait_converged(120)
    timings["pods and routes"] = round(time.monotonic() - t, 1)
    for n in plan.nodes:
        link = ipj(n.netns, "link", "show", "dev", "tunl0")[0]
        check(f"{n.name}: tunl0 up", "UP" in link["flags"], link)
    route_checks(lab, pods, check)
    for r in (plan.spine_netns, *(t.netns for t in plan.tors)):
        routes = sh("ip", "-n", r, "route").stdout
        check(f"{r}: knows no pod route (only the tunnel can carry pods across racks)",
              "10.244." not in routes, routes)
    t = time.monotonic()
    probes = lab.probe(80)
    timings["probe"] = round(time.monotonic() - t, 1)
    check(f"every pod pair connects on tcp:80 ({len(probes)} pairs)",
          len(probes) == len(pods) * (len(pods) - 1) and all(p["connected"] for p in probes),
          [p for p in probes if not p["connected"]])
    t = time.monotonic()
    pair_checks(lab, pods, check)
    timings["pings"] = round(time.monotonic() - t, 1)


def logs(lab: Lab) -> dict[str, str]:
    """The tails of the agents' and ExaBGP's logs, before `lab down` removes them."""
    out = {}
    for f in sorted(lab.store.dir.glob("nodes/*/logs/*.log")) + sorted(
            lab.store.dir.glob("nodes/*/host/var/run/calico-lite/bgp/*.out")):
        try:
            out[str(f.relative_to(lab.store.dir))] = f.read_text(errors="replace")[-3000:]
        except OSError:   # removed meanwhile (lab down)
            pass
    return out


def mirror_logs(lab: Lab, dest: Path, every: float = 15.0) -> None:
    """Copy the lab's logs to the work folder (shared with the host) as the lab runs, so a
    slow or stuck guest can be looked at from outside while it runs (a daemon thread)."""
    def loop() -> None:
        while True:
            time.sleep(every)
            for f in logs(lab).items():
                target = dest / f[0].replace("/", "_")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "w") as out:   # flushed: 9p (cache=loose) holds writes back
                    out.write(f[1])
                    out.flush()
                    os.fsync(out.fileno())
    threading.Thread(target=loop, daemon=True).start()


def main(result_path: str, name: str) -> None:
    checks: dict[str, list] = {}
    timings: dict[str, float] = {}

    def check(label: str, ok: bool, detail=None) -> None:
        checks[label] = [bool(ok), detail]

    lab = Lab(name)
    mirror_logs(lab, Path(result_path).parent / "lab-logs")
    try:
        run(lab, check, timings)
    except Exception:
        check("guest script ran to the end", False, traceback.format_exc())
        check("logs of the lab (for the failure above)", True, logs(lab))
    finally:
        t = time.monotonic()
        removed = lab.down()
        timings["lab down"] = round(time.monotonic() - t, 1)
        left = [ns for ns in sh("ip", "netns", "list").stdout.split() if ns.startswith(name)]
        check("lab down removed every namespace", not left, {"removed": removed, "left": left})
    with open(result_path, "w") as f:
        json.dump({"checks": checks, "timings": timings}, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
