"""`lab up --no-kubernetes`: a lab without the Kubernetes control plane, where the lab itself
does what the node component (lab.kubelet) would do for calico-lite and for pods.

For where the control plane cannot run or is too heavy: the IPIP lab runs inside a qemu guest
that emulates its CPU (tests/integration/test_ipip_lab_qemu.py). The fabric, etcd with TLS,
the routers and the agents are those of the default lab, and each agent runs with the argv
and environment that deploy/'s DaemonSet gives it (rendered for the lab, resolved by podspec
as the node component resolves them), after its install-cni init container. What is absent:
the API server, kube-sync (so no namespace, pod label or NetworkPolicy reaches the datastore)
and the node components. So nothing restarts an exited agent: `lab node start/restart` spawn
it again (`spawn_agent`); and `lab pod add/del` make pods by the plain CNI path (a namespace,
CNI ADD through the node's shim, the echo servers), recorded in the node's `sandboxes/`.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from calico_lite.datastore import DatastoreUnavailable
from calico_lite.lab import manifests, runtime
from calico_lite.lab import plumbing as pl
from calico_lite.lab.agents import AGENT, agent_pid
from calico_lite.lab.containers import IMAGE_ENV, INIT_TIMEOUT
from calico_lite.lab.podspec import PodContext, container_process, volume_folders
from calico_lite.lab.probe import probe_from
from calico_lite.lab.serve import parse as parse_serve
from calico_lite.lab.state import LabError

if TYPE_CHECKING:
    from calico_lite.lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
SERVE_TIMEOUT = 120.0   # the echo servers' start: seconds under emulation (the qemu guest)
READY_TIMEOUT = 600.0   # the agents': a lab in the qemu guest takes minutes


def _objects(docs: list[dict], kind: str) -> dict[tuple[str, str], dict]:
    """(namespace, name) -> data of each ConfigMap or Secret (a Secret's decoded)."""
    out = {}
    for d in docs:
        if d.get("kind") == kind:
            data = d.get("data") or {}
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            out[(d["metadata"].get("namespace", "default"), d["metadata"]["name"])] = data
    return out


def agent_pod(docs: list[dict], node: str) -> dict:
    """The DaemonSet's pod as the controller would make it for node."""
    tpl = manifests.find(docs, "DaemonSet", manifests.NODE_DS)["spec"]["template"]
    return {"metadata": {**tpl.get("metadata", {}), "name": f"{manifests.NODE_DS}-{node}",
                         "namespace": manifests.NAMESPACE, "uid": ""},
            "spec": {**tpl["spec"], "nodeName": node}}


def make_volumes(pod: dict, ctx: PodContext, docs: list[dict]) -> None:
    """hostPath folders, and the Secret and ConfigMap volumes written from the rendered docs
    (the only kinds the DaemonSet uses)."""
    folders = volume_folders(pod, ctx)
    ns = pod["metadata"]["namespace"]
    for vol in pod["spec"].get("volumes") or []:
        folder = folders[vol["name"]]
        folder.mkdir(parents=True, exist_ok=True)
        kind = "Secret" if "secret" in vol else "ConfigMap" if "configMap" in vol else ""
        if not kind:
            continue
        src = vol["secret"] if kind == "Secret" else vol["configMap"]
        data = _objects(docs, kind).get((ns, src.get("secretName") or src.get("name")), {})
        for key, value in data.items():
            (folder / key).write_text(value)
            (folder / key).chmod(src.get("defaultMode", 0o600 if kind == "Secret" else 0o644))


def install_agent(lab: Lab, node: str, docs: list[dict]) -> None:
    """Volumes, install-cni run to completion, then the agent's argv and environment saved
    in the node's folder (`agent.json`) for spawn_agent. docs: the rendered deploy/."""
    pod = agent_pod(docs, node)
    address = lab.plan.node(node).address
    root = lab.node_paths(node).root
    cms, secrets = _objects(docs, "ConfigMap"), _objects(docs, "Secret")
    ctx = PodContext(root, root / "pods" / "agent", address, address, {},
                     lambda ns, name: cms.get((ns, name)), lambda ns, name: secrets.get((ns, name)))
    make_volumes(pod, ctx, docs)
    for spec in pod["spec"].get("initContainers") or []:
        proc = container_process(pod, spec, ctx)
        p = subprocess.run(proc.argv, env={**IMAGE_ENV, **proc.env}, capture_output=True,
                           text=True, timeout=INIT_TIMEOUT)
        if p.returncode != 0:
            raise LabError(f"{node}: init container {spec['name']} exited with "
                           f"{p.returncode}: {p.stderr.strip()[-500:]}")
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == AGENT)
    proc = container_process(pod, spec, ctx)
    (root / "agent.json").write_text(json.dumps({"argv": proc.argv, "env": proc.env}))


def spawn_agent(lab: Lab, node: str) -> int:
    """Start the node's agent in its namespace with the saved argv; returns its PID."""
    root = lab.node_paths(node).root
    saved = json.loads((root / "agent.json").read_text())
    pid = pl.spawn(lab.plan.node(node).netns, saved["argv"], lab.node_paths(node).agent_log,
                   env={**IMAGE_ENV, **saved["env"]})
    lab.store.add_pid(f"{AGENT}:{node}", pid)
    return pid


def up(lab: Lab, log, t0: float):
    """The rest of `lab up` once the fabric, etcd and routers run: every node's agent, then
    wait until each serves CNI and has its BGP sessions up. Returns the plan."""
    log(f"fabric and etcd up in {time.monotonic() - t0:.1f}s; starting the agents")
    names = [n.name for n in lab.plan.nodes]
    docs = list(yaml.safe_load_all(lab.rendered_manifests().read_text()))
    with ThreadPoolExecutor(len(names)) as pool:   # install-cni, as a DaemonSet's do: at once
        list(pool.map(lambda name: install_agent(lab, name, docs), names))
    for name in names:   # then the agents together, so they find each other's nodes at start
        spawn_agent(lab, name)
    wait_agents(lab, log=log)
    log(f"lab {lab.name} up in {time.monotonic() - t0:.1f}s (no Kubernetes)")
    return lab.plan


def wait_agents(lab: Lab, timeout: float = READY_TIMEOUT, log=print) -> None:
    """Until every agent serves CNI with its BGP sessions up (waits.not_ready). Failing at
    once when an agent has exited, the wait itself can be long: under emulation (the qemu
    guest) Python starts and etcd answers tens of times slower, so an unanswered call to etcd
    is tried again rather than taken for a broken lab."""
    start = told = time.monotonic()
    deadline = start + timeout
    pending = [n.name for n in lab.plan.nodes]
    while pending:
        if time.monotonic() - told > 30:
            told = time.monotonic()
            log(f"waiting {told - start:.0f}s for the agents of {', '.join(pending)}")
        dead = [name for name in pending if agent_pid(lab.store, name) is None]
        if dead:
            raise LabError(f"agent exited on {', '.join(dead)} (see {lab.store.dir}/nodes/"
                           f"NODE/logs/agent.log)")
        try:
            pending = lab.not_ready(pending)
        except DatastoreUnavailable as e:
            last = str(e)
        else:
            last = "BGP sessions or CNI socket"
        if pending and time.monotonic() > deadline:
            raise LabError(f"nodes not ready after {timeout:.0f}s: {', '.join(pending)} ({last}; "
                           f"see {lab.store.dir}/nodes/NODE/logs/agent.log)")
        time.sleep(0.2)


# --- pods by the plain CNI path ------------------------------------------------------------
def _sandbox(lab: Lab, node: str, namespace: str, pod: str) -> Path:
    return lab.node_paths(node).root / "sandboxes" / f"{namespace}.{pod}.json"


def pod_add(lab: Lab, namespace: str, pod: str, node: str, serve: list[str]) -> str:
    """A namespace, CNI ADD through the node's conflist and shim, the echo servers; undone on
    any failure. Returns the pod's address."""
    netns = lab.plan.pod_netns(namespace, pod)
    if pl.netns_exists(netns):
        raise LabError(f"pod {namespace}/{pod} already exists")
    paths, cid = lab.node_paths(node), uuid.uuid4().hex
    record = _sandbox(lab, node, namespace, pod)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"container_id": cid, "netns": netns}))
    lab._netns(netns)
    try:
        result = runtime.add(paths.bin_dir, runtime.load_conflist(paths.conf_dir), cid,
                             f"/var/run/netns/{netns}", runtime.k8s_args(namespace, pod, cid))
        _serve(lab, namespace, pod, node, netns, serve)
    except BaseException:
        pod_del(lab, namespace, pod, node)
        raise
    return result["ips"][0]["address"].split("/")[0]


def _serve(lab: Lab, namespace: str, pod: str, node: str, netns: str, serve: list[str]) -> None:
    servers = parse_serve(serve)
    if not servers:
        return
    argv = [sys.executable, "-m", "calico_lite.lab.serve", ",".join(f"{p}:{n}" for p, n in servers)]
    log = lab.node_paths(node).root / "pods" / f"{namespace}.{pod}.log"
    pid = pl.spawn(netns, argv, log, env={"PYTHONPATH": str(REPO)})
    lab.store.add_pid(f"pod:{namespace}/{pod}:serve", pid)
    deadline = time.monotonic() + SERVE_TIMEOUT
    for proto, port in servers:
        while not probe_from(f"/var/run/netns/{netns}", "127.0.0.1", port, proto):
            if time.monotonic() > deadline or not pl.pid_alive(pid):
                raise LabError(f"echo servers of {namespace}/{pod} did not start; see {log}")
            time.sleep(0.05)


def pod_del(lab: Lab, namespace: str, pod: str, node: str | None = None) -> None:
    """Servers, CNI DEL, namespace and record: each step safe to repeat."""
    nodes = [node] if node else [n.name for n in lab.plan.nodes]
    found = [(n, _sandbox(lab, n, namespace, pod)) for n in nodes
             if _sandbox(lab, n, namespace, pod).exists()]
    if not found:
        raise LabError(f"pod {namespace}/{pod} does not exist in lab {lab.name}")
    node, record = found[0]
    sb, paths = json.loads(record.read_text()), lab.node_paths(node)
    pl.kill_pids(list(lab.store.pop_pids(f"pod:{namespace}/{pod}:").values()))
    cid = sb["container_id"]
    runtime.delete(paths.bin_dir, runtime.load_conflist(paths.conf_dir), cid,
                   f"/var/run/netns/{sb['netns']}", runtime.k8s_args(namespace, pod, cid))
    if pl.netns_exists(sb["netns"]):
        pl.delete_netns(sb["netns"])
    lab.store.remove_netns(sb["netns"])
    record.unlink()
