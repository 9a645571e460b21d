"""Processes we supervise but did not necessarily spawn (an adopted ExaBGP, a lab's daemons).

By PID only: /proc says whether one is still there, and stopping is SIGTERM, a grace period,
then SIGKILL. A zombie counts as gone: it has exited, only its parent has not reaped it yet.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable

__all__ = ["pid_alive", "kill_pids", "Backoff"]


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (a reaped-late child of ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_pids(pids: Iterable[int], grace: float = 2.0) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL what is left (never this process)."""
    alive = []
    for pid in set(pids) - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Backoff:
    """The wait before the next retry: first, then factor times longer each time up to cap,
    back to first after reset() (a success). One helper for every retry loop, so none is a
    busy loop and all can be interrupted by a stop event."""

    def __init__(self, first: float, cap: float | None = None, factor: float = 2.0):
        self.first, self.factor = first, factor
        self.cap = first if cap is None else cap
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay (less if stop is set meanwhile); True if stop is set."""
        delay = self.next()
        if stop is None:
            time.sleep(delay)
            return False
        return stop.wait(delay)
