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
import time
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugin import link
from plugin.errors import (CniError, CONTAINER_UNKNOWN, INCOMPATIBLE_VERSION, INVALID_CONFIG,
                           INVALID_ENV, IO_FAILURE, NOT_READY)
from plugin.netns import NetnsError, open_netns, run_in_netns, run_in_netns_fd
from plugin.rtnl import Rtnl
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
    mac: str = ""   # the pod end's MAC: the one source MAC the pod may use (anti-spoofing)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Backend(Protocol):
    """What the verbs need from the agent; raise CniError for datastore trouble."""
    node: str

    def assign(self, handle: str, attrs: dict,
               workload: Callable[[str], Workload] | None = None) -> str: ...  # held when it returns
    def release(self, handle: str) -> str | None: ...  # also forgets the workload
    def holds(self, handle: str) -> str | None: ...
    def handles(self) -> list[str]: ...
    def not_ready_reason(self) -> str | None: ...
    def pod_mtu(self) -> int: ...  # the uplink's MTU less the pools' encapsulation overhead


@dataclass
class Context:
    backend: Backend
    ipr: IPRoute | None  # pyroute2 in the node's namespace, opened on the call's thread (CHECK)
    log: list[str] = field(default_factory=list)
    spans: dict[str, float] = field(default_factory=dict)  # step -> ms, logged with the call

    @contextlib.contextmanager
    def span(self, step: str) -> Iterator[None]:
        """Time one step of a verb (the per-step breakdown in the call log and the profile)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans[step] = round(self.spans.get(step, 0.0)
                                     + (time.perf_counter() - start) * 1000, 2)


# the verbs that use Context.ipr (pyroute2); ADD, DEL and GC open plugin.rtnl sockets of their
# own, so the agent opens an IPRoute only for the verbs named here
USES_IPROUTE = ("CHECK",)
_BACKGROUND = ThreadPoolExecutor(max_workers=32, thread_name_prefix="cni-bg")  # node netns


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
        # nl in the node's namespace (like every agent thread), pod_nl opened inside the pod's
        with Rtnl() as nl, run_in_netns_fd(pod_fd, req.netns_path, Rtnl) as pod_nl:
            return _add(req, ctx, nl, pod_fd, pod_nl)
    finally:
        os.close(pod_fd)


def _add(req: Request, ctx: Context, nl: Rtnl, pod_fd: int, pod_nl: Rtnl) -> dict:
    """The address is assigned (one etcd transaction, the workload record with it) while the
    veth is made and brought up; the pod end is addressed only once the address is held."""
    namespace, pod = req.pod
    handle = handle_of(req)
    host = link.host_ifname(req.container_id, req.ifname)
    mtu = req.mtu or ctx.backend.pod_mtu()
    with ctx.span("stale-check"):
        stale = nl.link_index(host) is not None
    if stale:
        if ctx.backend.holds(handle):
            raise _exists(req)
        link.delete_link(nl, host)  # a stale end left by a crashed ADD of this container
    mac = link.pod_mac()
    with contextlib.ExitStack() as undo:
        assigning = _BACKGROUND.submit(
            ctx.backend.assign, handle,
            {"namespace": namespace, "pod": pod, "containerID": req.container_id},
            lambda ip: Workload(handle, req.container_id, req.ifname, namespace, pod, ip, host,
                                req.netns, ctx.backend.node, mac))
        undo.callback(_release_if_assigned, ctx, handle, assigning)
        try:
            with ctx.span("veth"):
                index = link.create_veth(nl, host, req.ifname, pod_fd, mtu, mac)
                undo.callback(link.delete_link, nl, host)
                pod_index = link.pod_end_up(pod_nl, req.ifname)
        except NetlinkError as e:
            raise (_exists(req) if e.code == errno.EEXIST else
                   _netlink(f"creating veth {host} <-> {req.ifname} in {req.netns}", e)) from None
        with ctx.span("assign-wait"):
            ip = assigning.result()  # raises the CniError of a failed assignment
        try:
            with ctx.span("addresses"):
                link.address_pod_end(pod_nl, pod_index, ip)
                link.configure_host_end(nl, index, host, ip)
        except NetlinkError as e:
            raise _netlink(f"wiring {ip} on {host} <-> {req.ifname} in {req.netns}", e) from None
        undo.pop_all()
    return add_result(req.cni_version, Attachment(
        host_ifname=host, host_mac=link.HOST_MAC, pod_ifname=req.ifname,
        pod_mac=mac, sandbox=req.netns, ip=ip, mtu=mtu))


def _release_if_assigned(ctx: Context, handle: str, assigning: Future) -> None:
    """Undo of the assignment: once it has finished, release it if it succeeded."""
    if assigning.exception() is None:
        ctx.backend.release(handle)


def _exists(req: Request) -> CniError:
    return CniError(INVALID_ENV, f"CNI_IFNAME: interface {req.ifname} already exists in "
                    f"{req.netns}", "a second ADD for one container and interface needs a DEL first")


def cmd_del(req: Request, ctx: Context) -> dict | None:
    """Idempotent: whatever is left of the attachment goes; nothing left is fine. The kernel
    takes ~15 ms to delete a veth (it waits for RCU grace periods) and the release is an etcd
    round trip: both run at once, and DEL answers when both are done."""
    host = link.host_ifname(req.container_id, req.ifname)
    with Rtnl() as nl:
        deleting = _BACKGROUND.submit(link.delete_link, nl, host)  # takes the pod end with it
        try:
            with ctx.span("release"):
                ctx.backend.release(handle_of(req))  # the workload record goes in the same txn
        finally:
            with ctx.span("link"):
                try:
                    deleting.result()
                except NetlinkError as e:
                    raise _netlink(f"deleting {host}", e) from None
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
    assert ctx.ipr is not None, "CHECK is in USES_IPROUTE"
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
            with Rtnl() as nl:
                link.delete_link(nl, link.host_ifname(cid, ifname))
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
    try:
        return VERBS[req.command](req, ctx)
    finally:
        req.spans.update(ctx.spans)

