"""Run a Python script of this repo inside a qemu guest with Debian's kernel (for IPIP).

The machine's own kernel has no ipip, so the IPIP test boots Debian's bookworm kernel under
qemu (TCG, no KVM needed) with a tiny initramfs: busybox, the kernel modules the test needs,
and an /init that mounts the host's /usr, /etc, the Python installation and the repo
read-only over 9p (same paths as on the host, so the host's Python and iproute2 run as they
are) plus one work folder read-write, runs the script and powers off. The kernel package is
fetched once with `apt-get download` and cached under build/qemu-kernel/.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "qemu-kernel"
BUSYBOX = Path("/bin/busybox")
# virtio + 9p to mount the host's files, veth for namespaces, the ipip stack in load order
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "veth", "tunnel4", "ip_tunnel", "ipip")


class VmError(RuntimeError):
    pass


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    modules: Path  # .../lib/modules/VERSION


def kernel_package() -> str:
    """The kernel package the metapackage linux-image-amd64 points at (apt's candidate)."""
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", "linux-image-amd64"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"^Depends:.*?(linux-image-[0-9][^\s,(]*-amd64)", out, re.M)
    if not m:
        raise VmError(f"cannot tell the kernel package from linux-image-amd64:\n{out}")
    return m.group(1)


def fetch_kernel() -> Kernel:
    """Download and unpack Debian's kernel once; later runs use build/qemu-kernel/."""
    root = CACHE / "root"
    found = sorted(root.glob("boot/vmlinuz-*"))
    if not found:
        pkg = kernel_package()
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob("*.deb"):
            old.unlink()
        p = subprocess.run(["apt-get", "download", pkg], cwd=CACHE, capture_output=True, text=True)
        debs = list(CACHE.glob("*.deb"))
        if p.returncode != 0 or not debs:
            raise VmError(f"apt-get download {pkg} failed: {p.stderr.strip()}")
        tmp = CACHE / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        debs[0].unlink()
        found = sorted(root.glob("boot/vmlinuz-*"))
    vmlinuz = found[-1]
    version = vmlinuz.name[len("vmlinuz-"):]
    return Kernel(vmlinuz, root / "lib" / "modules" / version)


def module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for wanted modules and their dependencies, dependencies first.

    The package ships no modules.dep (depmod makes it at install), so dependencies come
    from each module's own `depends=` in its .modinfo.
    """
    by_name = {ko.name.split(".ko")[0].replace("-", "_"): ko
               for ko in (modules_dir / "kernel").rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        ko = by_name.get(name.replace("-", "_"))
        if ko is None:
            raise VmError(f"module {name} not found under {modules_dir}")
        if ko in order:
            return
        m = re.search(rb"\0depends=([^\0]*)\0", ko.read_bytes())
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); directories have empty data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


@dataclass(frozen=True)
class Share:
    host: Path
    writable: bool = False


def shares_for_python(work: Path) -> list[Share]:
    """/usr, /etc, this Python's installation, its venv and the repo read-only; work
    read-write.

    Shared by their resolved paths: a worktree's `.venv` is a symlink to the main checkout's
    venv, and the venv's `bin/python` a symlink into the Python installation, so the guest
    needs the targets at the same paths for the symlinks and the scripts' shebangs to work.
    """
    paths = [Path("/usr"), Path("/etc"), Path(sys.base_prefix).resolve(),
             Path(sys.prefix).resolve(), REPO]
    for top in ("bin", "sbin", "lib", "lib64"):  # a machine without merged /usr
        p = Path("/") / top
        if p.is_dir() and not p.is_symlink():
            paths.append(p)
    out: list[Share] = []
    for p in sorted(paths, key=lambda p: len(p.parts)):  # a folder inside another is no share
        if not any(p == s.host or s.host in p.parents for s in out):
            out.append(Share(p))
    return [*out, Share(work, writable=True)]


def build_initramfs(kernel: Kernel, shares: list[Share], argv: list[str], dest: Path,
                    modules: tuple[str, ...] = MODULES) -> None:
    mods = module_order(kernel.modules, modules)
    mounts = "\n".join(
        f"$B mkdir -p {s.host}; $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,"
        f"cache=loose,{'rw' if s.writable else 'ro'} m{i} {s.host}" for i, s in enumerate(shares))
    links = "\n".join(f"[ -e /{t} ] || $B ln -s usr/{t} /{t}" for t in ("bin", "sbin", "lib", "lib64"))
    result_dir = next(s.host for s in shares if s.writable)
    cmd = " ".join(f"'{a}'" for a in argv)
    init = f"""#!/bb/busybox sh
B=/bb/busybox
$B mkdir -p /proc /sys /dev /run /tmp /var
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
$B mount -t tmpfs run /run; $B mount -t tmpfs tmp /tmp; $B ln -s /run /var/run
$B mkdir -p /dev/shm; $B mount -t tmpfs shm /dev/shm
for m in {' '.join(f'/mod/{m.name}' for m in mods)}; do $B insmod $m || echo "insmod $m failed"; done
{mounts}
{links}
$B mkdir -p /run/netns
$B ip link set lo up 2>/dev/null
cd {REPO}
echo GUEST-START
PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH={REPO} {cmd} > {result_dir}/guest.log 2>&1
echo "GUEST-EXIT $?"
$B sync
$B poweroff -f
"""
    entries: list[tuple[str, int, bytes]] = [
        ("bb", 0o40755, b""), ("mod", 0o40755, b""),
        ("bb/busybox", 0o100755, BUSYBOX.read_bytes()),
        ("init", 0o100755, init.encode())]
    entries += [(f"mod/{m.name}", 0o100644, m.read_bytes()) for m in mods]
    dest.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))


def run_in_guest(argv: list[str], work: Path, timeout: float = 180, memory_mb: int = 768,
                 cpus: int = 1, modules: tuple[str, ...] = MODULES) -> str:
    """Boot, run argv (as root, in the guest's init namespace), power off; returns the console.
    modules: what the guest loads at boot, with their dependencies (MODULES at least)."""
    if not shutil.which("qemu-system-x86_64"):
        raise VmError("qemu-system-x86_64 is missing (make deps installs qemu-system-x86)")
    kernel = fetch_kernel()
    shares = shares_for_python(work)
    initrd = work / "initrd.gz"
    build_initramfs(kernel, shares, argv, initrd, modules)
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max",
           "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init"]
    for i, s in enumerate(shares):
        cmd += ["-virtfs", f"local,path={s.host},mount_tag=m{i},security_model=none"
                + ("" if s.writable else ",readonly=on")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        raise VmError(f"guest did not finish in {timeout:.0f}s; console:\n{out[-4000:]}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
    return out
