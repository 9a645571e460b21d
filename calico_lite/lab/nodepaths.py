"""Where a lab node's files are: its folder stands for the node's root filesystem."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calico_lite.lab.podspec import host_path


@dataclass(frozen=True)
class NodePaths:
    """A lab node's folder: `host/` stands for its root filesystem (podspec.host_path), where
    the DaemonSet's hostPath volumes are; `logs/` holds its containers' output."""
    root: Path

    def host(self, path: str) -> Path:
        return host_path(self.root, path)

    @property
    def bin_dir(self) -> Path:
        return self.host("/opt/cni/bin")

    @property
    def conf_dir(self) -> Path:
        return self.host("/etc/cni/net.d")

    @property
    def run_dir(self) -> Path:
        return self.host("/var/run/calico-lite")

    @property
    def socket(self) -> Path:
        return self.run_dir / "cni.sock"

    @property
    def agent_log(self) -> Path:
        return self.root / "logs" / "agent.log"

    @property
    def cni_log(self) -> Path:
        return self.host("/var/log/calico-lite") / "cni.log"
