"""Shared helpers for the container-runtime tests and the CNI benchmark.

Everything is local: images are built from Debian's busybox-static and a `pause` binary compiled
here with `gcc -static` (no registry), containerd runs as a private process with its own root,
state, socket and config under a temporary directory, and podman gets its own root, runroot and
containers.conf. Each runtime is pointed at a lab node's CNI bin/conf dirs, so it drives
calico-lite's real shim and agent exactly as a kubelet-managed runtime would.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tempfile
import signal
import subprocess
import tarfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, running_lab

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


# the conflist version runtimes here accept (containerd 1.6 and podman 4.3 vendor libcni 1.1,
# which rejects 1.1.0 results); install-cni writes this one
RUNTIME_CNI_VERSION = "1.0.0"


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
    """PIDs whose command line names `work` (containerd shims, conmon) or whose root dir, as seen
    from here, lies under it. Containers in their own mount namespace are found by cgroup
    instead (`cgroup_pids`)."""
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


def cgroup_pids(parent_name: str) -> list[int]:
    """Every PID in the cgroup v1 `pids` subtree named parent_name (containers of one runtime)."""
    top = Path("/sys/fs/cgroup/pids") / parent_name.strip("/")
    pids: set[int] = set()
    for procs in top.rglob("cgroup.procs") if top.is_dir() else []:
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    return sorted(pids)


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


LIBCNI_CACHE = Path("/var/lib/cni/results")


def forget_cni_cache(node: LabNode) -> None:
    """Drop libcni result-cache entries (written by containerd and podman) whose network config
    names this lab node's agent socket: after a crash no DEL ever removes them."""
    needle = f"{node.cni_conf_dir.parent.parent}/"
    for entry in LIBCNI_CACHE.glob("*") if LIBCNI_CACHE.is_dir() else []:
        try:
            cached = json.loads(entry.read_text())
            config = base64.b64decode(cached.get("config", "")).decode(errors="replace")
        except (OSError, ValueError):
            continue
        if needle in config:
            entry.unlink(missing_ok=True)


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
  netns_mounts_under_state_dir = {netns_under_state_dir}
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
    """A private containerd process; `address` is its gRPC (and CRI) unix socket. Pod sandboxes
    should use `cgroup_parent`, so teardown can find (and kill) every container process."""
    work: Path
    address: str
    proc: subprocess.Popen
    log: Path
    cgroup_parent: str

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

    def remove_all_sandboxes(self, timeout: float = 20) -> None:
        """Best effort, as a kubelet would on drain: stop and remove every pod sandbox over CRI,
        so the CNI DELs run (addresses released, pod netns files unmounted)."""
        import grpc
        from cri_api.v1 import api_pb2 as pb, api_pb2_grpc as rpc
        with grpc.insecure_channel(f"unix://{self.address}") as channel:
            cri = rpc.RuntimeServiceStub(channel)
            try:
                items = cri.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=timeout).items
                for sb in items:
                    cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=timeout)
                    cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sb.id),
                                         timeout=timeout)
            except grpc.RpcError:
                pass


def write_containerd_config(work: Path, node: LabNode, sandbox_image: str,
                            netns_under_state_dir: bool = True,
                            conf_dir: Path | None = None) -> Path:
    cfg = work / "containerd.toml"
    cfg.write_text(CONTAINERD_CONFIG.format(
        netns_under_state_dir=str(netns_under_state_dir).lower(),
        root=work / "root", state=work / "state", address=work / "containerd.sock",
        opt=work / "opt", sandbox_image=sandbox_image, cni_bin_dir=node.cni_bin_dir,
        cni_conf_dir=conf_dir or node.cni_conf_dir))
    return cfg


@contextmanager
def running_containerd(work: Path, node: LabNode, sandbox_image: str,
                       netns_under_state_dir: bool = True, conf_dir: Path | None = None,
                       start_timeout: float = 20) -> Iterator[Containerd]:
    """Start containerd with a private config; on exit kill it by PID, its shims and containers
    too, unmount what it mounted and delete `work` (also when the body raised).

    netns_under_state_dir=False makes containerd mount pod namespaces as /var/run/netns/cni-*
    (its default); the caller then owns removing those it created (see `remove_netns_path`).
    conf_dir defaults to the node's own CNI conf dir."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_containerd_config(work, node, sandbox_image, netns_under_state_dir, conf_dir)
    log = work / "containerd.log"
    address = str(work / "containerd.sock")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    cgroup_name = f"trt-{os.urandom(4).hex()}"
    cd = Containerd(work, address, proc, log, f"/{cgroup_name}")
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
            cd.remove_all_sandboxes()
            proc.kill()
        proc.wait()
        for _ in range(3):  # containers outlive containerd and their shims: kill by cgroup
            pids = cgroup_pids(cgroup_name)
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.1)
        scrub_work_dir(work)
        remove_cgroups(cgroup_name)
        forget_cni_cache(node)


def remove_netns_path(path: str) -> None:
    """Unmount and delete one pod netns file a runtime left behind (no-op if already gone)."""
    if os.path.lexists(path):
        subprocess.run(["umount", "-l", path], capture_output=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


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
    conf_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    image: str = ""
    cgroup_parent: str = ""  # pass as --cgroup-parent, so teardown finds stray processes

    @property
    def base_argv(self) -> list[str]:
        return ["podman", "--root", str(self.work / "root"), "--runroot", str(self.work / "runroot"),
                "--network-backend", "cni", "--cni-config-dir", str(self.conf_dir),
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
def private_podman(work: Path, node: LabNode, conf_dir: Path | None = None) -> Iterator[Podman]:
    """A podman whose every path is under `work`; removed with its containers afterwards.
    conf_dir defaults to the node's own CNI conf dir."""
    conf_dir = conf_dir or node.cni_conf_dir
    for d in ("root", "runroot", "tmp", "static", "volumes", "home", "xdg"):
        (work / d).mkdir(parents=True, exist_ok=True)
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF.format(
        events=work / "events.log", tmp=work / "tmp", static=work / "static",
        volumes=work / "volumes", cni_bin_dir=node.cni_bin_dir, cni_conf_dir=conf_dir))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf),
           "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"),
           "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
           "HOME": str(work / "home"), "XDG_RUNTIME_DIR": str(work / "xdg"),
           "XDG_CONFIG_HOME": str(work / "home" / ".config"),
           "XDG_DATA_HOME": str(work / "home" / ".local" / "share")}
    (work / "registries.conf").write_text('unqualified-search-registries = []\n')
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{work / "runroot"}"\ngraphroot = "{work / "root"}"\n')
    cgroup_name = f"trt-{os.urandom(4).hex()}"
    pm = Podman(work, node, conf_dir, env, cgroup_parent=f"/{cgroup_name}")
    try:
        yield pm
    finally:
        try:
            pm.run("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        finally:
            kill_pids(cgroup_pids(cgroup_name))
            scrub_work_dir(work)
            remove_cgroups(cgroup_name)
            forget_cni_cache(node)


# --- a libcni-like chain executor that can run plugins inside a namespace ------------------
@dataclass
class CniOutcome:
    """One plugin call: exit code, stdout, stderr, and wall time (seconds)."""
    plugin: str
    verb: str
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> dict:
        return json.loads(self.stdout) if self.stdout.strip() else {}


class CniChainError(RuntimeError):
    def __init__(self, outcome: CniOutcome):
        try:
            msg = outcome.json.get("msg", outcome.stdout)
        except ValueError:
            msg = outcome.stdout or outcome.stderr
        super().__init__(f"CNI {outcome.verb} of {outcome.plugin} failed "
                         f"(exit {outcome.code}): {msg} {outcome.stderr.strip()}")
        self.outcome = outcome


@dataclass(frozen=True)
class CniRuntime:
    """What libcni does for one conflist: exec each plugin from bin_dir with the CNI environment,
    name/cniVersion/prevResult/runtimeConfig injected. With `exec_netns` every plugin process is
    started through `ip netns exec NS`, so reference plugins act on that namespace (a node's or
    a bench namespace) and never on the machine's own."""
    bin_dir: Path
    netconf: dict
    exec_netns: str | None = None

    def plugin_config(self, plugin: dict, prev: dict | None, runtime_config: dict) -> dict:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf.update(name=self.netconf["name"], cniVersion=self.netconf["cniVersion"])
        caps = {k: v for k, v in runtime_config.items() if plugin.get("capabilities", {}).get(k)}
        if caps:
            conf["runtimeConfig"] = caps
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def exec_plugin(self, plugin: dict, verb: str, container_id: str, netns: str, args: str,
                    conf: dict, ifname: str = "eth0", timeout: float = 60) -> CniOutcome:
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": str(self.bin_dir),
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        argv = [str(self.bin_dir / plugin["type"])]
        if self.exec_netns:
            argv = ["ip", "netns", "exec", self.exec_netns, *argv]
        start = time.perf_counter()
        p = subprocess.run(argv, input=json.dumps(conf), env=env, capture_output=True,
                           text=True, timeout=timeout)
        return CniOutcome(plugin["type"], verb, p.returncode, p.stdout, p.stderr,
                          time.perf_counter() - start)

    def add(self, container_id: str, netns: str, args: str = "", ifname: str = "eth0",
            runtime_config: dict | None = None) -> dict:
        """ADD through the chain; on a failure DEL what was added (as a runtime does) and raise."""
        prev: dict | None = None
        for plugin in self.netconf["plugins"]:
            out = self.exec_plugin(plugin, "ADD", container_id, netns, args,
                                   self.plugin_config(plugin, prev, runtime_config or {}), ifname)
            if out.code != 0:
                with suppress(CniChainError):
                    self.delete(container_id, netns, args, ifname, prev, runtime_config)
                raise CniChainError(out)
            prev = out.json
        return prev or {}

    def delete(self, container_id: str, netns: str, args: str = "", ifname: str = "eth0",
               prev: dict | None = None, runtime_config: dict | None = None) -> None:
        """DEL in reverse order with the cached result as prevResult (spec 0.4.0+); raises on
        the first failure."""
        for plugin in reversed(self.netconf["plugins"]):
            out = self.exec_plugin(plugin, "DEL", container_id, netns, args,
                                   self.plugin_config(plugin, prev, runtime_config or {}), ifname)
            if out.code != 0:
                raise CniChainError(out)


def plugin_bin_dir(dest: Path, plugins: dict[str, Path]) -> Path:
    """A CNI bin dir of symlinks (name -> executable), e.g. the node's shim plus reference plugins."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in plugins.items():
        link = dest / name
        if not link.exists():
            link.symlink_to(target)
    return dest


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def one_node_lab() -> Iterator[LabNode]:
    """A one-node lab (removed afterwards, also on failure) and its node's CNI dirs."""
    with running_lab(lab_name("rt"), "--racks", "1", "--nodes-per-rack", "1") as name:
        yield lab_node(name)
