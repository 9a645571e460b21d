"""Network-namespace mechanics (the `pkg/ns` of this project).

Linux `setns` moves only the calling thread, and a netlink socket belongs to the namespace it
was opened in, so work inside a pod's namespace runs in a short-lived thread that enters it,
opens its own netlink socket and leaves. The agent's other threads never change namespace, and
no helper process is spawned (pyroute2's `IPRoute(netns=...)` would start one, and would
create a missing namespace).
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Callable, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    pass


def open_netns(path: str) -> int:
    """Open an existing namespace file; never creates one. O_NONBLOCK: a FIFO (or a device)
    given as CNI_NETNS would otherwise block the call's thread until a writer came along."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"network namespace {path} does not exist") from None
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from None
    if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:  # not on nsfs
        os.close(fd)
        raise NetnsError(errno.EINVAL, f"{path} is not a network namespace (a plain file: "
                         "is the namespace mounted where this agent can see it?)")
    return fd


def setns(fd: int, path: str = "") -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns({path or fd}): {os.strerror(err)} (is it a network namespace?)")


def enter(path: str) -> None:
    """Move the calling thread (the whole process, if called before other threads exist)."""
    fd = open_netns(path)
    try:
        setns(fd, path)
    finally:
        os.close(fd)


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run fn() in a fresh thread inside the namespace at path; re-raise what it raises."""
    fd = open_netns(path)
    try:
        return run_in_netns_fd(fd, path, fn)
    finally:
        os.close(fd)


def run_in_netns_fd(fd: int, path: str, fn: Callable[[], T]) -> T:
    """run_in_netns for a namespace already open as fd (path only names it in errors)."""
    result: dict[str, object] = {}

    def worker() -> None:
        try:
            setns(fd, path)
            result["value"] = fn()
        except BaseException as e:  # handed back to the caller's thread
            result["error"] = e

    t = threading.Thread(target=worker, name=f"netns:{os.path.basename(path)}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")  # type: ignore[return-value]
