"""`calico-lite install-cni`: put the shim and the conflist where the runtime looks.

Both are written atomically (temp file + rename in the same directory), so a runtime that
scans the directory mid-install never reads half a file or execs half a binary.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

DEFAULT_SOCKET = "/var/run/calico-lite/cni.sock"
CONFLIST_NAME = "10-calico-lite.conflist"
NETWORK_NAME = "k8s-pod-network"
REPO_SHIM = Path(__file__).resolve().parent.parent / "build" / "calico-lite"


class InstallError(Exception):
    pass


def find_shim() -> Path:
    """The built shim: $CALICO_LITE_SHIM, or build/calico-lite in the source tree."""
    p = Path(os.environ.get("CALICO_LITE_SHIM", REPO_SHIM))
    if not p.is_file():
        raise InstallError(f"CNI shim not found at {p}: run `make build` first "
                           "(or set CALICO_LITE_SHIM to the built binary)")
    return p


def _atomic_write(dest: Path, data: bytes, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The conflist's version: 1.0.0, since containerd 1.6/1.7, podman 4 and the reference plugins
# 1.1.x reject 1.1.0 results; the plugin itself speaks 0.3.1 to 1.1.0 (VERSION says so).
CONFLIST_VERSION = "1.0.0"


def conflist(agent_socket: str, mtu: int = 0, log_file: str = "",
             chained: list[dict] | None = None, cni_version: str = CONFLIST_VERSION) -> dict:
    plugin = {"type": "calico-lite", "mtu": mtu, "agent_socket": agent_socket,
              "log_level": "info"}
    if log_file:
        plugin["log_file"] = log_file
    return {"cniVersion": cni_version, "name": NETWORK_NAME, "plugins": [plugin, *(chained or [])]}


def install_cni(bin_dir: Path, conf_dir: Path, agent_socket: str = DEFAULT_SOCKET,
                mtu: int = 0, log_file: str = "", shim: Path | None = None,
                cni_version: str = CONFLIST_VERSION) -> tuple[Path, Path]:
    src = shim or find_shim()
    binary = Path(bin_dir) / "calico-lite"
    _atomic_write(binary, src.read_bytes(), 0o755)
    conf = Path(conf_dir) / CONFLIST_NAME
    text = json.dumps(conflist(agent_socket, mtu, log_file, cni_version=cni_version), indent=2) + "\n"
    _atomic_write(conf, text.encode(), 0o644)
    return binary, conf


