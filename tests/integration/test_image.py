"""The calico-lite image: built from deploy/Containerfile by deploy/build-image.sh, then run with
podman the way the manifest runs it (`node run`, `install-cni`, `kube-sync` as the args of the
`calico-lite` entrypoint).

The image lives in a private podman store under a scratch folder. The script builds it from the
Containerfile when build/image holds no archive made from the same inputs (so on every fresh
machine and after any change to the sources, pins or shim), and otherwise loads that archive.
Every container runs with `--network none` (no CNI, no traffic) and `--rm`; teardown removes
whatever is left, the store included.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHIM
from tests.runtime_support import (cgroup_pids, kill_pids, remove_cgroups, scratch_dir,
                                   scrub_work_dir)

pytestmark = pytest.mark.slow

BUILD_SCRIPT = REPO / "deploy" / "build-image.sh"
MANIFEST = REPO / "deploy" / "calico-lite.yaml"
SHIM_IN_IMAGE = "/opt/calico-lite/calico-lite"
PT_DYNAMIC, PT_INTERP = 2, 3
# podman here: no systemd, and root may not raise a hard rlimit (MACHINE-NOTES)
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def project_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise LookupError("no version in pyproject.toml")


TAG = f"calico-lite:{project_version()}"


@dataclass
class ImageStore:
    """A private podman store holding the image; `run` starts one throwaway container."""
    work: Path
    env: dict[str, str]
    cgroup_parent: str

    @property
    def argv(self) -> list[str]:
        return ["podman", "--root", str(self.work / "root"), "--runroot", str(self.work / "runroot"),
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--network-backend", "cni", "--cni-config-dir", str(self.work / "cni"),
                "--tmpdir", str(self.work / "tmp")]

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def run(self, *args: str, volumes: dict[Path, str] | None = None, entrypoint: str = "",
            caps: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        opts = ["--rm", "--network", "none", "--cgroup-parent", self.cgroup_parent]
        for host, inside in (volumes or {}).items():
            opts += ["--volume", f"{host}:{inside}"]
        opts += ["--entrypoint", entrypoint] if entrypoint else []
        for cap in caps:
            opts += ["--cap-add", cap]
        return self.podman("run", *opts, TAG, *args)


@pytest.fixture(scope="module")
def store():
    with scratch_dir("timg-") as work:
        for d in ("root", "runroot", "cni", "tmp"):
            (work / d).mkdir()
        (work / "containers.conf").write_text(CONTAINERS_CONF)
        env = {**os.environ, "PODMAN_ROOT": str(work / "root"),
               "PODMAN_RUNROOT": str(work / "runroot"), "TMPDIR": str(work / "tmp"),
               "CONTAINERS_CONF": str(work / "containers.conf")}
        cgroup_name = f"timg-{os.urandom(4).hex()}"
        s = ImageStore(work, env, f"/{cgroup_name}")
        try:
            build = subprocess.run(["bash", str(BUILD_SCRIPT), TAG], capture_output=True,
                                   text=True, env=env, timeout=1500)
            assert build.returncode == 0, f"image build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
            yield s
        finally:
            s.podman("rm", "--all", "--force", "--time", "0", timeout=60)
            kill_pids(cgroup_pids(cgroup_name))
            s.podman("rmi", "--all", "--force", timeout=120)
            scrub_work_dir(work)
            remove_cgroups(cgroup_name)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def program_header_types(path: Path) -> set[int]:
    """The p_type of every program header of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit LE ELF"
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}


def test_entrypoint_is_calico_lite(store: ImageStore):
    out = ok(store.run("--help"))
    assert out.startswith("usage: calico-lite")
    for command in ("node", "install-cni", "kube-sync"):
        assert command in out
    config = json.loads(ok(store.podman("image", "inspect", TAG)))[0]["Config"]
    assert config["Entrypoint"] == ["calico-lite"]
    assert f"CALICO_LITE_SHIM={SHIM_IN_IMAGE}" in config["Env"]


def test_install_cni_lands_the_static_shim_and_the_conflist(store: ImageStore, tmp_path):
    bin_dir, conf_dir = tmp_path / "b", tmp_path / "c"
    bin_dir.mkdir()
    conf_dir.mkdir()
    ok(store.run("install-cni", "--bin-dir", "/tmp/b", "--conf-dir", "/tmp/c",
                 "--agent-socket", "/var/run/calico-lite/cni.sock",
                 volumes={bin_dir: "/tmp/b", conf_dir: "/tmp/c"}))
    shim = bin_dir / "calico-lite"
    assert shim.read_bytes() == SHIM.read_bytes(), "the image carries another shim than build/"
    assert os.access(shim, os.X_OK)
    types = program_header_types(shim)
    assert PT_INTERP not in types and PT_DYNAMIC not in types, "the shim is dynamically linked"
    conf = json.loads((conf_dir / "10-calico-lite.conflist").read_text())
    assert conf["name"] == "k8s-pod-network"
    assert conf["plugins"][0]["type"] == "calico-lite"
    assert conf["plugins"][0]["agent_socket"] == "/var/run/calico-lite/cni.sock"
    assert sorted(p.name for p in [*bin_dir.iterdir(), *conf_dir.iterdir()]) == [
        "10-calico-lite.conflist", "calico-lite"], "install-cni left temp files"


@pytest.mark.parametrize("command", [["node", "run"], ["kube-sync"]])
def test_agent_entry_points_run(store: ImageStore, command: list[str]):
    out = ok(store.run(*command, "--help"))
    assert out.startswith(f"usage: calico-lite {' '.join(command)}")


def test_every_manifest_container_names_this_image_and_a_command_it_has(store: ImageStore):
    """What the DaemonSet and Deployment run: their image tag and the subcommand in args."""
    containers = []
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        containers += spec.get("initContainers", []) + spec.get("containers", [])
    assert len(containers) >= 3
    for c in containers:
        assert c["image"] == TAG, c["name"]
        words = []
        for arg in c["args"]:
            if arg.startswith("-"):
                break
            words.append(arg)
        assert words and ok(store.run(*words, "--help")).startswith("usage: calico-lite")


def test_agent_dependencies_work_inside_the_image(store: ImageStore):
    """libnftables through ctypes (the policy applier) in the container's own empty netns, and
    the agent's Python dependencies and the ExaBGP it spawns."""
    script = ("import calico_lite.agent, calico_lite.kube_sync, pyroute2, pyetcd, kubernetes\n"
              "from policy.nft import Nft\n"
              "n = Nft()\n"
              "n.cmd('add table inet calico_lite_image_test')\n"
              "print(n.cmd('list tables'))\n")
    out = ok(store.run("-c", script, entrypoint="python3", caps=("NET_ADMIN",)))
    assert "calico_lite_image_test" in out
    assert "ExaBGP : 5.0.15" in ok(store.run("version", entrypoint="exabgp"))
    assert ok(store.run("-V", entrypoint="ip")).startswith("ip utility")
