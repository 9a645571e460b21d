"""Shared helpers for the container-runtime tests and the CNI benchmark.

Everything is local: images are built from Debian's busybox-static and a `pause` binary compiled
here with `gcc -static` (no registry), containerd runs as a private process with its own root,
state, socket and config under a temporary directory, and podman gets its own root, runroot and
containers.conf. Each runtime is pointed at a lab node's CNI bin/conf dirs, so it drives
calico-lite's real shim and agent exactly as a kubelet-managed runtime would.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.conftest import lab_cli

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no shared libraries needed in the image
REFERENCE_CNI_DIR = Path("/usr/lib/cni")

PAUSE_C = r"""
/* The sandbox's PID 1: sleeps until told to stop, reaps orphans (what k8s' pause does). */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction s = {0}, r = {0};
    s.sa_handler = stop; r.sa_handler = reap; r.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGINT, &s, NULL); sigaction(SIGTERM, &s, NULL); sigaction(SIGCHLD, &r, NULL);
    for (;;) pause();
}
"""


# --- the lab node a runtime is pointed at -------------------------------------------------
@dataclass(frozen=True)
class LabNode:
    """One node of a running lab, as `lab status --json` describes it."""
    lab: str
    name: str
    netns: str
    cni_bin_dir: Path
    cni_conf_dir: Path

    @property
    def conflist(self) -> dict:
        files = sorted(self.cni_conf_dir.glob("*.conflist"))
        if not files:
            raise FileNotFoundError(f"no .conflist in {self.cni_conf_dir} (node {self.name})")
        return json.loads(files[0].read_text())


def lab_status(lab: str) -> dict:
    return json.loads(lab_cli("lab", "status", "--name", lab, "--json").stdout)


def lab_node(lab: str, node: str = "r1n1") -> LabNode:
    for n in lab_status(lab)["nodes"]:
        if n["name"] == node:
            return LabNode(lab, node, n["netns"], Path(n["cni_bin_dir"]), Path(n["cni_conf_dir"]))
    raise LookupError(f"lab {lab} has no node {node}")


def lab_pods(lab: str) -> list[dict]:
    """Workloads the datastore knows (namespace, name, node, ip)."""
    return lab_status(lab)["pods"]


def ipam_used(lab: str) -> int:
    """Addresses in use across all blocks, as the datastore records them."""
    s = json.loads(lab_cli("ipam", "show", "--lab", lab, "--json").stdout)
    return sum(b["used"] for b in s["blocks"])


def cali_links(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return [link["ifname"] for link in json.loads(out or "[]") if link["ifname"].startswith("cali")]


# --- local images -------------------------------------------------------------------------
def build_pause(out_dir: Path) -> Path:
    """Compile the static pause binary (glibc, `gcc -static`) into out_dir."""
    src, binary = out_dir / "pause.c", out_dir / "pause"
    src.write_text(PAUSE_C)
    p = subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(src)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"building pause failed: {p.stderr}")
    return binary


def _tar_add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def _tar_add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _tar_add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
    tar.addfile(info)


def busybox_applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and a != "busybox"]


def rootfs_layer(with_busybox: bool = True, pause: Path | None = None) -> bytes:
    """An uncompressed rootfs tar: busybox-static with every applet linked in /bin, and/or /pause."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run"):
            _tar_add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _tar_add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _tar_add_file(tar, "etc/group", b"root:x:0:\n")
        if with_busybox:
            _tar_add_file(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
            for applet in busybox_applets():
                _tar_add_symlink(tar, f"bin/{applet}", "busybox")
        if pause is not None:
            _tar_add_file(tar, "pause", pause.read_bytes(), 0o755)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    _tar_add_file(tar, f"blobs/sha256/{digest}", data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def oci_archive(out: Path, name: str, layer: bytes, entrypoint: list[str],
                cmd: list[str] | None = None) -> Path:
    """Write a one-layer OCI image archive that `ctr images import` and `podman load` accept.

    The index carries `io.containerd.image.name` (containerd's full name) and
    `org.opencontainers.image.ref.name` so both tools name the image without a registry.
    """
    layer_digest = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "Cmd": cmd or [],
                         "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add_file(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _tar_add_dir(tar, "blobs")
        _tar_add_dir(tar, "blobs/sha256")
        layer_desc = _blob(tar, layer, "application/vnd.oci.image.layer.v1.tar")
        config_desc = _blob(tar, json.dumps(config).encode(),
                            "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = _blob(tar, json.dumps(manifest).encode(),
                              "application/vnd.oci.image.manifest.v1+json")
        manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                        "org.opencontainers.image.ref.name": name}
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [manifest_desc]}
        _tar_add_file(tar, "index.json", json.dumps(index).encode())
    return out


@dataclass(frozen=True)
class LocalImages:
    """The two images every runtime test needs, built once per module into a work dir."""
    pause_ref: str
    pause_tar: Path
    busybox_ref: str
    busybox_tar: Path
    busybox_rootfs_tar: Path  # a plain rootfs tarball, for `podman import`


def build_images(work: Path, tag: str = "1") -> LocalImages:
    work.mkdir(parents=True, exist_ok=True)
    pause = build_pause(work)
    pause_ref = f"localhost/calico-lite-test/pause:{tag}"
    busybox_ref = f"localhost/calico-lite-test/busybox:{tag}"
    bb_layer = rootfs_layer(with_busybox=True)
    rootfs_tar = work / "busybox-rootfs.tar"
    rootfs_tar.write_bytes(bb_layer)
    return LocalImages(
        pause_ref, oci_archive(work / "pause.oci.tar", pause_ref,
                               rootfs_layer(with_busybox=False, pause=pause), ["/pause"]),
        busybox_ref, oci_archive(work / "busybox.oci.tar", busybox_ref, bb_layer, [], ["sh"]),
        rootfs_tar)


# --- cleanup of everything a runtime may leave under its work dir --------------------------
def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def processes_under(work: Path) -> list[int]:
    """PIDs whose root dir lies under `work` (containers) or whose command line names it (shims)."""
    found, needle, me = [], str(work), os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if root.startswith(needle) or needle in cmdline:
            found.append(pid)
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def unmount_under(work: Path) -> None:
    """Lazily unmount every mount point below `work`, deepest first (overlays, netns, shm)."""
    prefix = str(work.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].encode().decode("unicode_escape")
        if mnt == prefix or mnt.startswith(prefix + "/"):
            points.append(mnt)
    for mnt in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def remove_cgroups(parent_name: str) -> None:
    """rmdir the cgroup v1 (and unified) subtrees named parent_name, leaves first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent_name.strip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def scrub_work_dir(work: Path) -> None:
    """Kill what runs from `work`, unmount what is mounted below it, delete it."""
    for _ in range(3):
        pids = processes_under(work)
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.1)
    unmount_under(work)
    shutil.rmtree(work, ignore_errors=True)


# --- containerd ---------------------------------------------------------------------------
CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
"""


@dataclass
class Containerd:
    """A private containerd process; `address` is its gRPC (and CRI) unix socket."""
    work: Path
    address: str
    proc: subprocess.Popen
    log: Path

    def ctr(self, *args: str, namespace: str = "k8s.io", check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(["ctr", "--address", self.address, "-n", namespace, *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({p.returncode}): {p.stderr}\n"
                               f"containerd log tail:\n{self.log_tail()}")
        return p

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))


def write_containerd_config(work: Path, node: LabNode, sandbox_image: str) -> Path:
    cfg = work / "containerd.toml"
    cfg.write_text(CONTAINERD_CONFIG.format(
        root=work / "root", state=work / "state", address=work / "containerd.sock",
        opt=work / "opt", sandbox_image=sandbox_image, cni_bin_dir=node.cni_bin_dir,
        cni_conf_dir=node.cni_conf_dir))
    return cfg


@contextmanager
def running_containerd(work: Path, node: LabNode, sandbox_image: str,
                       start_timeout: float = 20) -> Iterator[Containerd]:
    """Start containerd with a private config; on exit kill it by PID, its shims and containers
    too, unmount what it mounted and delete `work` (also when the body raised)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_containerd_config(work, node, sandbox_image)
    log = work / "containerd.log"
    address = str(work / "containerd.sock")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    cd = Containerd(work, address, proc, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"containerd exited at start ({proc.returncode}):\n"
                                   f"{cd.log_tail()}")
            if Path(address).exists() and cd.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not ready in {start_timeout}s:\n{cd.log_tail()}")
            time.sleep(0.05)
        yield cd
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        scrub_work_dir(work)


# --- podman -------------------------------------------------------------------------------
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "private"
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
runtime = "runc"
tmp_dir = "{tmp}"
static_dir = "{static}"
volume_path = "{volumes}"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_bin_dir}"]
network_config_dir = "{cni_conf_dir}"
default_network = "k8s-pod-network"
"""


@dataclass
class Podman:
    """podman with a private root, runroot and containers.conf, using a lab node's CNI."""
    work: Path
    node: LabNode
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_argv(self) -> list[str]:
        return ["podman", "--root", str(self.work / "root"), "--runroot", str(self.work / "runroot"),
                "--network-backend", "cni", "--cni-config-dir", str(self.node.cni_conf_dir),
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--storage-driver", "overlay", "--tmpdir", str(self.work / "tmp")]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.base_argv, *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({p.returncode}):\n"
                               f"{p.stdout}\n{p.stderr}")
        return p


@contextmanager
def private_podman(work: Path, node: LabNode) -> Iterator[Podman]:
    """A podman whose every path is under `work`; removed with its containers afterwards."""
    for d in ("root", "runroot", "tmp", "static", "volumes", "home", "xdg"):
        (work / d).mkdir(parents=True, exist_ok=True)
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF.format(
        events=work / "events.log", tmp=work / "tmp", static=work / "static",
        volumes=work / "volumes", cni_bin_dir=node.cni_bin_dir, cni_conf_dir=node.cni_conf_dir))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf),
           "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"),
           "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
           "HOME": str(work / "home"), "XDG_RUNTIME_DIR": str(work / "xdg"),
           "XDG_CONFIG_HOME": str(work / "home" / ".config"),
           "XDG_DATA_HOME": str(work / "home" / ".local" / "share")}
    (work / "registries.conf").write_text('unqualified-search-registries = []\n')
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{work / "runroot"}"\ngraphroot = "{work / "root"}"\n')
    pm = Podman(work, node, env)
    try:
        yield pm
    finally:
        try:
            pm.run("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        finally:
            scrub_work_dir(work)
