"""podman (CNI backend) drives calico-lite through a lab node's CNI dirs.

podman gets a private root, runroot and containers.conf; the image is the busybox-static rootfs
imported locally. Every `podman run` names `--network k8s-pod-network`, so podman never creates
its default bridge or touches the machine's own namespace.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runtime_support import (
    one_node_lab, scratch_dir,
    Podman, build_images, cali_links, ipam_used, lab_pods,
    private_podman,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman missing")]

NETWORK = "k8s-pod-network"


@pytest.fixture(scope="module")
def work():
    with scratch_dir("trt-pm-") as d:
        yield d


@pytest.fixture(scope="module")
def node():
    with one_node_lab() as n:
        yield n


@pytest.fixture(scope="module")
def conf_dir(node) -> Path:
    """The node's own conflist, as install-cni wrote it."""
    return node.cni_conf_dir


@pytest.fixture(scope="module")
def podman(work, node, conf_dir):
    images = build_images(work / "images")
    with private_podman(work / "podman", node, conf_dir) as pm:
        pm.run("import", "--change", "CMD=[\"sh\"]", str(images.busybox_rootfs_tar),
               images.busybox_ref)
        pm.image = images.busybox_ref
        yield pm


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def test_podman_run_gets_a_calico_lite_address_and_releases_it(podman: Podman, node, conf_dir):
    links_before, used_before = root_links(), ipam_used(node.lab)
    name = "rt-web"
    try:
        podman.run("run", "--detach", "--name", name, "--network", NETWORK,
                   "--cgroup-parent", podman.cgroup_parent, podman.image,
                   "sleep", "300")
        p = podman.run("exec", name, "sh", "-c", "ip -4 -o addr show dev eth0; ip route")
        inet = [line.split()[3] for line in p.stdout.splitlines() if " inet " in line]
        assert len(inet) == 1 and inet[0].startswith("10.244.") and inet[0].endswith("/32"), p.stdout
        assert "default via 169.254.1.1 dev eth0" in p.stdout, p.stdout
        ip = inet[0][:-3]
        assert ip in {w["ip"] for w in lab_pods(node.lab)}, "datastore lacks the workload"
        assert ipam_used(node.lab) == used_before + 1
        assert len(cali_links(node.netns)) == 1
    finally:
        podman.run("rm", "--force", "--time", "0", name, check=False)
    assert ipam_used(node.lab) == used_before, "address not released after podman rm"
    assert cali_links(node.netns) == []
    assert root_links() == links_before, "podman changed the machine's own namespace"
    configs = sorted(f.name for f in conf_dir.iterdir() if f.suffix in (".conf", ".conflist", ".json"))
    assert configs == ["10-calico-lite.conflist"], "podman wrote a network config of its own"


def test_podman_run_rm_twice_gives_distinct_lifecycles(podman: Podman, node):
    used_before = ipam_used(node.lab)
    for _ in range(2):
        p = podman.run("run", "--rm", "--network", NETWORK, "--cgroup-parent",
                       podman.cgroup_parent, podman.image,
                       "cat", "/proc/net/fib_trie")
        assert "10.244." in p.stdout and "/32 host LOCAL" in p.stdout, p.stdout
        assert ipam_used(node.lab) == used_before
    assert cali_links(node.netns) == []
