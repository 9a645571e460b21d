"""The CNI request and result formats, per spec version (pure)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from plugin.errors import (CniError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG,
                           INVALID_ENV)

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
GATEWAY = "169.254.1.1"


@dataclass(frozen=True)
class Request:
    """One CNI call: the CNI_* environment and the network config from stdin."""
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str
    config: dict
    cni_version: str
    caller_pid: int = 0  # the shim's PID (SO_PEERCRED), to see CNI_NETNS as the runtime sees it
    spans: dict[str, float] = field(default_factory=dict, compare=False)  # filled by the verbs

    @property
    def netns_path(self) -> str:
        """CNI_NETNS as seen from the runtime's mount namespace: the runtime may have mounted it
        where this agent cannot see it (the agent runs in its own container), so go through
        the calling shim's root when its /proc entry is visible (hostPID)."""
        if self.caller_pid and self.netns.startswith("/"):
            root = f"/proc/{self.caller_pid}/root"
            if os.path.exists(root + self.netns):
                return root + self.netns
        return self.netns

    @property
    def pod(self) -> tuple[str, str]:
        return self.args.get("K8S_POD_NAMESPACE", ""), self.args.get("K8S_POD_NAME", "")

    @property
    def mtu(self) -> int:
        return int(self.config.get("mtu") or 0)


def parse_args(cni_args: str) -> dict[str, str]:
    """CNI_ARGS 'K1=V1;K2=V2' -> dict."""
    out = {}
    for part in filter(None, cni_args.split(";")):
        if "=" not in part:
            raise CniError(INVALID_ENV, f"CNI_ARGS item {part!r} is not KEY=VALUE")
        k, v = part.split("=", 1)
        out[k] = v
    return out


# What libcni accepts (pkg/utils: ValidateContainerID, ValidateInterfaceName): checked before
# anything is assigned, so a bad value is a code 4 naming the variable, not a netlink error
# after an address was taken, and a handle (`ID/IFNAME`) always splits back in two
CONTAINER_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
IFNAME_MAX = 15   # IFNAMSIZ less the NUL
MTU_RANGE = (68, 65535)   # IPv4's minimum, the largest an interface takes


def check_ids(env: dict[str, str]) -> None:
    cid, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    if not CONTAINER_ID.fullmatch(cid):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {cid[:80]!r} is not a container ID",
                       "letters, digits, '_', '.' and '-', starting with a letter or digit")
    if (len(ifname.encode()) > IFNAME_MAX or ifname in (".", "..")
            or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname)):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname[:80]!r} is not an interface name",
                       f"at most {IFNAME_MAX} bytes, not '.' or '..', no '/', ':' or white space")


def check_mtu(config: dict) -> None:
    mtu = config.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool):
        raise CniError(INVALID_CONFIG, f"network config field mtu must be an integer, got {mtu!r}")
    if mtu and not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise CniError(INVALID_CONFIG, f"network config field mtu {mtu} is out of range",
                       f"0 (detect) or {MTU_RANGE[0]}..{MTU_RANGE[1]}")


def parse_request(env: dict[str, str], stdin: str) -> Request:
    """Validate the environment and config the way the spec says, naming what is wrong."""
    command = env.get("CNI_COMMAND", "")
    if command not in VERBS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(VERBS)}")
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except json.JSONDecodeError as e:
        raise CniError(DECODE_FAILURE, f"network config on stdin is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin must be a JSON object")
    version = config.get("cniVersion", LATEST if command in ("VERSION",) else "")
    if command != "VERSION":
        if not version:
            raise CniError(INVALID_CONFIG, "network config has no cniVersion")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION,
                           f"cniVersion {version!r} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command in ("ADD", "DEL", "CHECK"):
        for var in ("CNI_CONTAINERID", "CNI_IFNAME"):
            if not env.get(var):
                raise CniError(INVALID_ENV, f"{var} is not set")
        check_ids(env)
        if command in ("ADD", "CHECK") and not env.get("CNI_NETNS"):
            raise CniError(INVALID_ENV, "CNI_NETNS is not set")
    check_mtu(config)
    return Request(command=command, container_id=env.get("CNI_CONTAINERID", ""),
                   netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
                   args=parse_args(env.get("CNI_ARGS", "")), path=env.get("CNI_PATH", ""),
                   config=config, cni_version=version or LATEST)


@dataclass(frozen=True)
class Attachment:
    """What ADD made, in spec-neutral terms."""
    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    sandbox: str
    ip: str
    mtu: int = 0
    extra_routes: list[str] = field(default_factory=list)


def add_result(version: str, a: Attachment) -> dict:
    """The ADD result in the layout of `version` (0.3.x/0.4.0 carry ips[].version)."""
    ip = {"address": f"{a.ip}/32", "gateway": GATEWAY, "interface": 1}
    if version in ("0.3.1", "0.4.0"):
        ip["version"] = "4"
    iface = {"name": a.pod_ifname, "mac": a.pod_mac, "sandbox": a.sandbox}
    if version == "1.1.0" and a.mtu:
        iface["mtu"] = a.mtu
    return {"cniVersion": version,
            "interfaces": [{"name": a.host_ifname, "mac": a.host_mac}, iface],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
            "dns": {}}


def version_result(version: str) -> dict:
    return {"cniVersion": version or LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}
