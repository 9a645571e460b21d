"""The CNI verbs, read like the spec: ADD, DEL, CHECK, STATUS, GC, VERSION.

The verbs get a `Backend` (IPAM and the workload registry, supplied by the agent) and a
netlink handle for the node's namespace; the mechanics live in plugin.link / plugin.netns.
Every ADD undoes by construction: each step that makes something pushes its undo onto an
ExitStack, and only a fully successful ADD pops them.
"""
from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugin import link
from plugin.errors import (CniError, CONTAINER_UNKNOWN, INCOMPATIBLE_VERSION, INVALID_CONFIG,
                           INVALID_ENV, IO_FAILURE, NOT_READY)
from plugin.netns import NetnsError, open_netns, run_in_netns
from plugin.spec import Attachment, Request, add_result, version_result


@dataclass(frozen=True)
class Workload:
    """One pod attachment on this node, as recorded in the datastore."""
    handle: str
    container_id: str
    ifname: str
    namespace: str
    pod: str
    ip: str
    host_ifname: str
    netns: str
    node: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Backend(Protocol):
    """What the verbs need from the agent; raise CniError for datastore trouble."""
    node: str

    def assign(self, handle: str, attrs: dict) -> str: ...
    def release(self, handle: str) -> str | None: ...  # also forgets the workload
    def holds(self, handle: str) -> str | None: ...
    def handles(self) -> list[str]: ...
    def record_workload(self, w: Workload) -> None: ...
    def not_ready_reason(self) -> str | None: ...
    def pod_mtu(self) -> int: ...  # the uplink's MTU less the pools' encapsulation overhead


@dataclass
class Context:
    backend: Backend
    ipr: IPRoute  # netlink in the node's namespace, kept open by the agent
    log: list[str] = field(default_factory=list)


def handle_of(req: Request) -> str:
    return f"{req.container_id}/{req.ifname}"


def _netlink(what: str, e: NetlinkError) -> CniError:
    return CniError(IO_FAILURE, f"{what}: {os.strerror(e.code)} (netlink error {e.code})")


def cmd_add(req: Request, ctx: Context) -> dict:
    try:
        pod_fd = open_netns(req.netns_path)
    except NetnsError as e:
        raise CniError(INVALID_ENV, f"CNI_NETNS: {e.strerror}") from None
    try:
        return _add(req, ctx, pod_fd)
    finally:
        os.close(pod_fd)


def _add(req: Request, ctx: Context, pod_fd: int) -> dict:
    namespace, pod = req.pod
    handle = handle_of(req)
    host = link.host_ifname(req.container_id, req.ifname)
    mtu = req.mtu or ctx.backend.pod_mtu()
    if link.link_index(ctx.ipr, host) is not None:
        if ctx.backend.holds(handle):
            raise _exists(req)
        link.delete_link(ctx.ipr, host)  # a stale end left by a crashed ADD of this container
    with contextlib.ExitStack() as undo:
        ip = ctx.backend.assign(handle, {"namespace": namespace, "pod": pod,
                                         "containerID": req.container_id})
        undo.callback(ctx.backend.release, handle)
        try:
            index = link.create_veth(ctx.ipr, host, req.ifname, pod_fd, mtu)
        except NetlinkError as e:
            raise (_exists(req) if e.code == errno.EEXIST else
                   _netlink(f"creating veth {host} <-> {req.ifname} in {req.netns}", e)) from None
        undo.callback(link.delete_link, ctx.ipr, host)
        try:
            pod_end = run_in_netns(req.netns_path, lambda: link.configure_pod_end(req.ifname, ip))
            link.configure_host_end(ctx.ipr, index, host, ip)
        except NetlinkError as e:
            raise _netlink(f"wiring {ip} on {host} <-> {req.ifname} in {req.netns}", e) from None
        ctx.backend.record_workload(Workload(handle, req.container_id, req.ifname, namespace,
                                             pod, ip, host, req.netns, ctx.backend.node))
        undo.pop_all()
    return add_result(req.cni_version, Attachment(
        host_ifname=host, host_mac=link.HOST_MAC, pod_ifname=req.ifname,
        pod_mac=pod_end.mac, sandbox=req.netns, ip=ip, mtu=mtu))


def _exists(req: Request) -> CniError:
    return CniError(INVALID_ENV, f"CNI_IFNAME: interface {req.ifname} already exists in "
                    f"{req.netns}", "a second ADD for one container and interface needs a DEL first")


def cmd_del(req: Request, ctx: Context) -> dict | None:
    """Idempotent: whatever is left of the attachment goes; nothing left is fine."""
    host = link.host_ifname(req.container_id, req.ifname)
    try:
        link.delete_link(ctx.ipr, host)  # takes the pod end with it, whatever the netns state
    except NetlinkError as e:
        raise _netlink(f"deleting {host}", e) from None
    ctx.backend.release(handle_of(req))  # the workload record goes in the same transaction
    return None


def cmd_check(req: Request, ctx: Context) -> dict | None:
    if req.cni_version == "0.3.1":
        raise CniError(INCOMPATIBLE_VERSION, "CHECK is not defined for cniVersion 0.3.1",
                       "CHECK needs cniVersion 0.4.0 or later")
    ips = prev_result_ips(req.config.get("prevResult"))
    held = ctx.backend.holds(handle_of(req))
    if held is None or held not in ips:
        raise CniError(CONTAINER_UNKNOWN, f"no address held for {handle_of(req)} "
                       f"(prevResult says {', '.join(ips) or 'none'})")
    host = link.host_ifname(req.container_id, req.ifname)
    index = link.link_index(ctx.ipr, host)
    if index is None:
        raise CniError(CONTAINER_UNKNOWN, f"host interface {host} is missing")
    if not link.host_route_ok(ctx.ipr, held, index):
        raise CniError(CONTAINER_UNKNOWN, f"host route {held}/32 dev {host} is missing")
    try:
        view = run_in_netns(req.netns_path, lambda: link.inspect_pod_end(req.ifname))
    except NetnsError as e:
        raise CniError(INVALID_ENV, f"CNI_NETNS: {e.strerror}") from None
    if not view.exists:
        raise CniError(CONTAINER_UNKNOWN, f"{req.ifname} is missing in {req.netns}")
    if f"{held}/32" not in view.addresses:
        raise CniError(CONTAINER_UNKNOWN, f"{req.ifname} in {req.netns} lacks {held}/32 "
                       f"(has {', '.join(view.addresses) or 'nothing'})")
    if not view.gw_route or view.default_gw != "169.254.1.1":
        raise CniError(CONTAINER_UNKNOWN, f"routes via 169.254.1.1 are missing in {req.netns}")
    return None


def prev_result_ips(prev: object) -> list[str]:
    """The addresses of CHECK's prevResult; a code 7 naming what is wrong with its shape."""
    if not prev:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network config")
    ips = prev.get("ips", []) if isinstance(prev, dict) else None
    if not isinstance(ips, list) or not all(isinstance(i, dict) and isinstance(i.get("address"), str)
                                            for i in ips):
        raise CniError(INVALID_CONFIG, "prevResult is not an ADD result: it needs ips, a list of "
                       "objects with an address string")
    return [i["address"].split("/")[0] for i in ips]


def cmd_status(req: Request, ctx: Context) -> dict | None:
    reason = ctx.backend.not_ready_reason()
    if reason:
        raise CniError(NOT_READY, reason)
    return None


def cmd_gc(req: Request, ctx: Context) -> dict | None:
    """Release every attachment of this node not in cni.dev/valid-attachments; keep going."""
    valid = {f"{a.get('containerID')}/{a.get('ifname')}"
             for a in req.config.get("cni.dev/valid-attachments", [])}
    failures = []
    for handle in ctx.backend.handles():
        if handle in valid:
            continue
        cid, _, ifname = handle.partition("/")
        try:
            link.delete_link(ctx.ipr, link.host_ifname(cid, ifname))
            ctx.backend.release(handle)
        except (CniError, NetlinkError, OSError) as e:
            failures.append(f"{handle}: {e}")
    if failures:
        raise CniError(IO_FAILURE, f"GC could not release {len(failures)} attachment(s)",
                       "; ".join(failures))
    return None


def cmd_version(req: Request, ctx: Context) -> dict:
    return version_result(req.cni_version)


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
         "GC": cmd_gc, "VERSION": cmd_version}


def disabled(req: Request) -> bool:
    """disableCheck / disableGC in the config turn those verbs into no-ops, per the spec."""
    return ((req.command == "CHECK" and req.config.get("disableCheck") is True)
            or (req.command == "GC" and req.config.get("disableGC") is True))


def run(req: Request, ctx: Context) -> dict | None:
    if disabled(req):
        return None
    return VERBS[req.command](req, ctx)

