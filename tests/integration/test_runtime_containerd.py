"""containerd's CRI plugin drives calico-lite like a kubelet would.

A private containerd (own root, state, socket, config; no registry: locally built pause and
busybox images) is pointed at a lab node's CNI bin/conf dirs. Through the CRI API we run a pod
sandbox, read its IP, check it against the datastore, run a busybox container that sees it,
then stop and remove the sandbox and check everything is released.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.runtime_support import (
    one_node_lab, scratch_dir,
    Containerd, LabNode, LocalImages, build_images, cali_links, ipam_used,
    lab_pods, remove_netns_path, running_containerd,
)

grpc = pytest.importorskip("grpc")
pb = pytest.importorskip("cri_api.v1.api_pb2")
rpc = pytest.importorskip("cri_api.v1.api_pb2_grpc")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd missing")]


@pytest.fixture(scope="module")
def work():
    with scratch_dir("trt-cd-") as d:
        yield d


@pytest.fixture(scope="module")
def node():
    with one_node_lab() as n:
        yield n


@pytest.fixture(scope="module")
def images(work) -> LocalImages:
    return build_images(work / "images")


@pytest.fixture(scope="module")
def containerd(work, node, images):
    """A private containerd reading the node's own CNI bin and conf dirs, mounting pod
    namespaces under its state dir (the agent reaches them through the shim's /proc root)."""
    with running_containerd(work / "containerd", node, images.pause_ref,
                            netns_under_state_dir=True, conf_dir=None) as cd:
        cd.import_image(images.pause_tar)
        cd.import_image(images.busybox_tar)
        yield cd


@pytest.fixture
def netns_paths():
    """Pod netns files containerd mounted; removed afterwards in case a test left them."""
    paths: list[str] = []
    try:
        yield paths
    finally:
        for path in paths:
            remove_netns_path(path)


def run_sandbox(cri, cfg, netns_paths: list[str]) -> str:
    """RunPodSandbox, and remember the sandbox's netns path for cleanup."""
    sandbox_id = cri.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    resp = cri.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id,
                                                           verbose=True))
    info = json.loads(resp.info.get("info", "{}"))
    for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network" and ns.get("path"):
            netns_paths.append(ns["path"])
    return sandbox_id


def remove_sandbox(cri, sandbox_id: str) -> None:
    cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


@pytest.fixture(scope="module")
def cri(containerd: Containerd):
    channel = grpc.insecure_channel(f"unix://{containerd.address}")
    try:
        yield rpc.RuntimeServiceStub(channel)
    finally:
        channel.close()


def sandbox_config(namespace: str, pod: str, uid: str, logs: Path, cgroup_parent: str):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=pod, namespace=namespace, uid=uid, attempt=0),
        hostname=pod, log_directory=str(logs),
        labels={"app": "rt-test"},
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent))


def inet_addresses(ip_o_addr: str) -> set[tuple[str, str]]:
    """(address, interface) pairs from `ip -4 -o addr` output; only /32 addresses count."""
    pairs = set()
    for line in ip_o_addr.splitlines():
        tokens = line.split()
        if "inet" in tokens:
            cidr = tokens[tokens.index("inet") + 1]
            if cidr.endswith("/32"):
                pairs.add((cidr[:-3], tokens[1].split("@")[0]))
    return pairs


def cni_log_events(node: LabNode, container_id: str) -> list[dict]:
    """The shim/agent's structured CNI log lines for one container (verb, result)."""
    conf = node.conflist["plugins"][0]
    path = Path(conf["log_file"])
    events = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "cni" and e.get("container") == container_id:
            events.append(e)
    return events


def test_pod_sandbox_lifecycle_through_cri(cri, containerd, node, images, work, netns_paths):
    used_before = ipam_used(node.lab)
    namespace, pod, uid = "rt-ns", f"web-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    logs = work / "pod-logs" / pod
    logs.mkdir(parents=True)
    cfg = sandbox_config(namespace, pod, uid, logs, containerd.cgroup_parent)

    sandbox_id = run_sandbox(cri, cfg, netns_paths)
    removed = False
    try:
        status = cri.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
        assert status.state == pb.SANDBOX_READY
        ip = status.network.ip
        assert ip.startswith("10.244."), f"sandbox got {ip!r}, expected an address from 10.244/16"

        # The datastore agrees: the workload is recorded under the pod's k8s name (CNI_ARGS).
        pods = {(p["namespace"], p["name"]): p for p in lab_pods(node.lab)}
        assert (namespace, pod) in pods, f"workload not in datastore: {sorted(pods)}"
        assert pods[(namespace, pod)]["ip"] == ip and pods[(namespace, pod)]["node"] == node.name
        assert ipam_used(node.lab) == used_before + 1
        assert len(cali_links(node.netns)) == 1

        ctr_cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="shell", attempt=0),
            image=pb.ImageSpec(image=images.busybox_ref),
            command=["sleep", "300"], log_path="shell.log",
            linux=pb.LinuxContainerConfig())
        cid = cri.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=ctr_cfg, sandbox_config=cfg)).container_id
        cri.StartContainer(pb.StartContainerRequest(container_id=cid))
        out = cri.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ip", "-4", "-o", "addr"],
                                              timeout=20))
        assert out.exit_code == 0, out.stderr.decode()
        assert (ip, "eth0") in inet_addresses(out.stdout.decode()), out.stdout.decode()
        routes = cri.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ip", "route"],
                                                 timeout=20)).stdout.decode()
        assert "default via 169.254.1.1 dev eth0" in routes, routes

        cri.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        cri.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))

        remove_sandbox(cri, sandbox_id)
        removed = True
    finally:
        if not removed:  # leave no address or link behind for the module's other checks
            try:
                remove_sandbox(cri, sandbox_id)
            except grpc.RpcError:
                pass

    events = cni_log_events(node, sandbox_id)
    verbs = [(e["verb"], e["result"]) for e in events]
    assert verbs[0] == ("ADD", "ok"), verbs
    dels = [v for v in verbs if v[0] == "DEL"]
    assert len(dels) >= 2 and all(r == "ok" for _, r in dels), \
        f"StopPodSandbox and RemovePodSandbox should both DEL successfully: {verbs}"
    assert ipam_used(node.lab) == used_before, "address not released after RemovePodSandbox"
    assert (namespace, pod) not in {(p["namespace"], p["name"]) for p in lab_pods(node.lab)}
    assert cali_links(node.netns) == []
    listed = cri.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert sandbox_id not in [s.id for s in listed]


def test_several_sandboxes_get_distinct_addresses_and_all_release(cri, containerd, node, work,
                                                                  netns_paths):
    used_before = ipam_used(node.lab)
    ids: list[str] = []
    try:
        for i in range(3):
            logs = work / "pod-logs" / f"multi-{i}"
            logs.mkdir(parents=True, exist_ok=True)
            cfg = sandbox_config("rt-multi", f"p{i}", str(uuid.uuid4()), logs,
                                 containerd.cgroup_parent)
            ids.append(run_sandbox(cri, cfg, netns_paths))
        ips = [cri.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=s)).status.network.ip
               for s in ids]
        assert len(set(ips)) == 3 and all(ip.startswith("10.244.") for ip in ips), ips
        recorded = {p["ip"] for p in lab_pods(node.lab) if p["namespace"] == "rt-multi"}
        assert recorded == set(ips)
        assert len(cali_links(node.netns)) == 3
    finally:
        for s in ids:
            remove_sandbox(cri, s)
    assert ipam_used(node.lab) == used_before
    assert cali_links(node.netns) == []
