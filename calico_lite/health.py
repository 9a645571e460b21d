"""Liveness, readiness and metrics over HTTP on a node-local address (Felix's health port).

`/healthz`: every registered loop has beaten within the liveness timeout (503 names the
stuck ones). `/readyz`: every readiness check passes (503 otherwise); the body has one line per
check, `name: ok` or `name: the reason`. `/metrics`: the process's own Prometheus registry in
the text format. The node agent and kube-sync both serve these through `serve_health`, each
with its own checks; `readyz()` asks a node's agent from inside the node's namespace (lab).
"""
from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from plugin.netns import run_in_netns

log = logging.getLogger("calico-lite.health")
DEFAULT_LISTEN = "127.0.0.1:9099"
DEFAULT_LIVENESS_TIMEOUT = 90.0   # the slowest loops (policy, datastore watch) beat every 30 s
OK = "ok"


@dataclass(frozen=True)
class Check:
    """A readiness condition: fn() returns '' when it holds, otherwise why not."""
    name: str
    fn: Callable[[], str]


def parse_listen(value: str) -> tuple[str, int] | None:
    """'HOST:PORT' (IPv6 as '[::1]:9099') -> (host, port); 'off' -> None."""
    if value.strip().lower() in ("off", "none", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"health listen address {value!r}: want HOST:PORT or off")
    return host.strip("[]"), int(port)


class Heartbeats:
    """When each loop last went round; a loop that stops beating is stuck (or dead)."""

    def __init__(self, timeout: float = DEFAULT_LIVENESS_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self, name: str) -> None:
        with self._lock:
            self._last[name] = self.clock()

    def beater(self, name: str) -> Callable[[], None]:
        """A no-argument callable for the loop called name (registers it: beats now)."""
        self.beat(name)
        return lambda: self.beat(name)

    def stuck(self) -> dict[str, float]:
        """Loops silent for longer than the timeout, with how long (seconds)."""
        now = self.clock()
        with self._lock:
            return {n: now - t for n, t in sorted(self._last.items()) if now - t > self.timeout}


def run_checks(checks: list[Check]) -> dict[str, str]:
    """name -> 'ok' or the reason; a check that raises is failing, with the exception."""
    out = {}
    for c in checks:
        try:
            reason = c.fn()
        except Exception as e:  # a broken check must not break the endpoint
            reason = f"check failed: {type(e).__name__}: {e}"
        out[c.name] = reason or OK
    return out


def render(results: dict[str, str]) -> tuple[int, str]:
    """HTTP status and the plain-text body, one line per check (pure)."""
    ok = all(r == OK for r in results.values())
    body = "".join(f"{name}: {reason}\n" for name, reason in results.items())
    return (200 if ok else 503), body


def liveness(beats: Heartbeats | None) -> tuple[int, str]:
    stuck = beats.stuck() if beats else {}
    if not stuck:
        return 200, "ok\n"
    return 503, "".join(f"{n}: no heartbeat for {s:.0f}s\n" for n, s in stuck.items())


def parse_body(body: str) -> dict[str, str]:
    """The inverse of render(): lines 'name: reason' -> {name: reason}."""
    out = {}
    for line in body.splitlines():
        name, sep, reason = line.partition(": ")
        if sep:
            out[name] = reason
    return out


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry, checks: list[Check],
                 beats: Heartbeats | None):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.registry, self.checks, self.beats = registry, checks, beats
        super().__init__(addr, _Handler)

    def start(self) -> "HealthServer":
        threading.Thread(target=self.serve_forever, name="health-server", daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/livez", "/liveness"):
            code, body, ctype = *liveness(self.server.beats), "text/plain; charset=utf-8"
        elif path in ("/readyz", "/readiness"):
            code, body = render(run_checks(self.server.checks))
            ctype = "text/plain; charset=utf-8"
        elif path == "/metrics":
            code, body, ctype = 200, generate_latest(self.server.registry).decode(), CONTENT_TYPE_LATEST
        else:
            code, body, ctype = 404, "not found: try /healthz, /readyz or /metrics\n", "text/plain"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # probes every few seconds: no access log
        pass


def serve_health(addr: tuple[str, int] | str, registry: CollectorRegistry, checks: list[Check],
                 beats: Heartbeats | None = None) -> HealthServer:
    """Serve /healthz, /readyz and /metrics on addr from a daemon thread; close() stops it.
    This is what kube-sync calls too, with its own checks and heartbeats."""
    if isinstance(addr, str):
        parsed = parse_listen(addr)
        if parsed is None:
            raise ValueError("serve_health: address is 'off'")
        addr = parsed
    server = HealthServer(addr, registry, checks, beats).start()
    log.info("health and metrics on http://%s:%d/ (healthz, readyz, metrics)", *addr[:2])
    return server


def get(path: str, addr: str = DEFAULT_LISTEN, timeout: float = 10.0) -> tuple[int, str]:
    """GET path from the health server at addr (in the caller's namespace)."""
    host, port = parse_listen(addr) or ("127.0.0.1", 9099)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def get_in_netns(netns: str, path: str, addr: str = DEFAULT_LISTEN,
                 timeout: float = 10.0) -> tuple[int, str]:
    """get() from inside the network namespace at netns (a path, or a name under
    /var/run/netns): node-local addresses are only reachable there."""
    if "/" not in netns:
        netns = f"/var/run/netns/{netns}"
    return run_in_netns(netns, lambda: get(path, addr, timeout))


def readyz(node_netns: str, addr: str = DEFAULT_LISTEN, timeout: float = 10.0) -> dict:
    """A node's readiness as its agent reports it: {"ready", "status", "checks": {name:
    reason}}; an agent that does not answer is not ready, with the connection error."""
    try:
        code, body = get_in_netns(node_netns, "/readyz", addr, timeout)
    except OSError as e:
        return {"ready": False, "status": 0, "checks": {"agent": f"no answer on {addr}: {e}"}}
    return {"ready": code == 200, "status": code, "checks": parse_body(body)}
