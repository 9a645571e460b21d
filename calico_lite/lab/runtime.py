"""A minimal container runtime's CNI side (what libcni does), for the lab and the tests.

It reads a conflist, and for each plugin in order execs the plugin binary from the bin dir
with the CNI environment and the plugin's config (name and cniVersion injected, prevResult
chained), exactly as containerd or CRI-O would.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CniResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout) if self.stdout.strip() else {}

    @property
    def ok(self) -> bool:
        return self.code == 0


class CniCallError(Exception):
    def __init__(self, verb: str, result: CniResult):
        try:
            msg = result.json.get("msg", result.stdout)
        except ValueError:
            msg = result.stdout or result.stderr
        super().__init__(f"CNI {verb} failed (exit {result.code}): {msg}")
        self.result = result


def load_conflist(conf_dir: Path) -> dict:
    files = sorted(Path(conf_dir).glob("*.conflist"))
    if not files:
        raise FileNotFoundError(f"no .conflist in {conf_dir}")
    return json.loads(files[0].read_text())


def exec_plugin(bin_dir: Path, plugin_type: str, verb: str, container_id: str, netns: str,
                ifname: str, args: str, config: dict, timeout: float = 60) -> CniResult:
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": str(bin_dir),
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    p = subprocess.run([str(Path(bin_dir) / plugin_type)], input=json.dumps(config), env=env,
                       capture_output=True, text=True, timeout=timeout)
    return CniResult(p.returncode, p.stdout, p.stderr)


def k8s_args(namespace: str, pod: str, container_id: str, uid: str = "") -> str:
    """CNI_ARGS as the kubelet's runtime passes them (K8S_POD_UID when the pod has one)."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}" + (f";K8S_POD_UID={uid}" if uid else ""))


def _plugin_conf(netconf: dict, plugin: dict, prev: dict | None) -> dict:
    conf = {**plugin, "name": netconf["name"], "cniVersion": netconf["cniVersion"]}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def add(bin_dir: Path, netconf: dict, container_id: str, netns: str, args: str,
        ifname: str = "eth0") -> dict:
    """ADD through the chain; on a failure, DEL what was added, like a runtime would."""
    prev: dict | None = None
    for plugin in netconf["plugins"]:
        r = exec_plugin(bin_dir, plugin["type"], "ADD", container_id, netns, ifname, args,
                        _plugin_conf(netconf, plugin, prev))
        if not r.ok:
            delete(bin_dir, netconf, container_id, netns, args, ifname)
            raise CniCallError("ADD", r)
        prev = r.json
    return prev or {}


def delete(bin_dir: Path, netconf: dict, container_id: str, netns: str, args: str,
           ifname: str = "eth0", prev: dict | None = None) -> None:
    """DEL through the chain in reverse order."""
    for plugin in reversed(netconf["plugins"]):
        r = exec_plugin(bin_dir, plugin["type"], "DEL", container_id, netns, ifname, args,
                        _plugin_conf(netconf, plugin, prev))
        if not r.ok:
            raise CniCallError("DEL", r)
