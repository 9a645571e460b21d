"""Profile: where one CNI ADD and DEL spend their time inside the agent's code path.

Runs the agent's own CNI handler (plugin.cni with the etcd backend and a warm netlink socket,
as NodeAgent.handle_cni does) in this process, inside a one-node lab's node namespace and
against the lab's etcd (TLS, as the agent), for a few pods; prints the per-step spans the
verbs record (`Context.spans`, the same figures the agent logs per call) and cProfile's top
functions. The node name is a profile-only one, so the lab's own agent and its block are not
touched. Figures are printed, never asserted; the lab and namespaces are removed at the end.
Usage (root):
    .venv/bin/python bench/cni_profile.py [--pods 30] [--lab NAME (reuse a running lab)]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import lab_cli  # noqa: E402
from tests.nslib import remove_netns_with_prefix, unique_prefix  # noqa: E402
from tests.runtime_support import lab_node  # noqa: E402

NODE = "spprof"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def run(lab: str, node_netns: str, pods: list[str], top: int) -> None:
    """Everything after entering the node namespace (this process's only thread so far)."""
    from calico_lite.cni_backend import DatastoreBackend
    from calico_lite.datastore import Datastore
    from calico_lite.ipam import ensure_pool, list_pools
    from calico_lite.lab.lab import Lab
    from plugin import cni
    from plugin.netns import enter
    from plugin.spec import parse_request
    from pyroute2 import IPRoute

    plan, tls = Lab(lab).plan, Lab(lab).etcd_tls
    enter(f"/var/run/netns/{node_netns}")
    ds = Datastore([plan.etcd_endpoint], tls=tls)
    ensure_pool(ds)
    pools = list_pools(ds)  # the agent reads them from its watched cache
    backend = DatastoreBackend(ds, NODE, pools=lambda: pools)
    ipr = IPRoute()
    conf = '{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-lite", "mtu": 1500}'

    def call(verb: str, cid: str, ns: str) -> dict[str, float]:
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{ns}",
               "CNI_IFNAME": "eth0", "CNI_ARGS": f"K8S_POD_NAMESPACE=prof;K8S_POD_NAME={cid}"}
        ctx = cni.Context(backend, ipr)
        cni.run(parse_request(env, conf), ctx)
        return ctx.spans

    ids = [uuid.uuid4().hex for _ in pods]
    call("ADD", ids[0], pods[0])  # warm-up: the block claim and first reads
    call("DEL", ids[0], pods[0])
    spans: dict[str, dict[str, list[float]]] = {"ADD": {}, "DEL": {}}
    prof = {v: cProfile.Profile() for v in spans}
    for verb in ("ADD", "DEL"):
        for cid, ns in zip(ids, pods):
            prof[verb].enable()
            got = call(verb, cid, ns)
            prof[verb].disable()
            for k, ms in got.items():
                spans[verb].setdefault(k, []).append(ms)
    for verb in ("ADD", "DEL"):
        print(f"\n== {verb}: per-step spans over {len(pods)} calls (ms, p50 / p90)")
        for k, xs in spans[verb].items():
            print(f"  {k:24}{pct(xs, 0.5):8.2f}{pct(xs, 0.9):8.2f}")
        out = io.StringIO()
        pstats.Stats(prof[verb], stream=out).sort_stats("cumulative").print_stats(top)
        print(out.getvalue())
    ipr.close()
    ds.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--lab", help="a running lab to use (default: bring one up, then down)")
    args = ap.parse_args(argv)
    lab = args.lab or f"sp{uuid.uuid4().hex[:5]}"
    prefix = unique_prefix("sp")
    pods = [f"{prefix}-p{i}" for i in range(args.pods)]
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if not args.lab:
            lab_cli("lab", "up", "--name", lab, "--racks", "1", "--nodes-per-rack", "1")
        node = lab_node(lab)
        for ns in pods:
            subprocess.run(["ip", "netns", "add", ns], check=True)
        child = os.fork()  # the profile enters the node namespace: do it in a child
        if child == 0:
            code = 0
            try:
                run(lab, node.netns, pods, args.top)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not args.lab:
            lab_cli("lab", "down", "--name", lab, check=False)
            remove_netns_with_prefix(f"{lab}-")
        remove_netns_with_prefix(prefix)


if __name__ == "__main__":
    sys.exit(main())
