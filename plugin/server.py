"""The agent end of the shim's socket: one framed call in, one answer out.

Wire format (plugin/shim/calico-lite-shim.c is the other end): the shim sends one JSON object
{"env": {...CNI_* vars...}, "stdin": "..."} and shuts its write side; the answer is the exit
code in ASCII, a newline, then what the shim prints on stdout. Errors become CNI error JSON
here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable

from plugin.errors import CniError, DECODE_FAILURE
from plugin.spec import LATEST, Request, parse_request

MAX_REQUEST = 2 * 1024 * 1024
INTERNAL_ERROR = 199
log = logging.getLogger("calico-lite.cni")

Handler = Callable[[Request], "dict | None"]
BEAT_SECONDS = 5.0  # the accept loop wakes at least this often to show it is alive


def serve_one(raw: bytes, handler: Handler, caller_pid: int = 0) -> tuple[int, str, dict]:
    """Pure edge logic: raw request -> (exit code, stdout, log fields)."""
    fields: dict = {}
    version = LATEST
    try:
        try:
            frame = json.loads(raw)
            env, stdin = frame["env"], frame["stdin"]
        except (ValueError, KeyError, TypeError) as e:
            raise CniError(DECODE_FAILURE, f"malformed request from the shim: {e}") from None
        try:
            asked = json.loads(stdin).get("cniVersion")
            version = asked if isinstance(asked, str) and asked else LATEST   # spec JSON: a string
        except (ValueError, AttributeError, TypeError):
            pass
        fields.update(verb=env.get("CNI_COMMAND"), container=env.get("CNI_CONTAINERID"),
                      ifname=env.get("CNI_IFNAME"))
        req = dataclasses.replace(parse_request(env, stdin), caller_pid=caller_pid)
        fields["log_file"] = req.config.get("log_file")
        try:
            result = handler(req)
        finally:
            if req.spans:
                fields["spans"] = req.spans
        fields["result"] = "ok"
        return 0, json.dumps(result) if result is not None else "", fields
    except CniError as e:
        fields.update(result="error", code=e.code, msg=e.msg)
        return 1, json.dumps(e.to_dict(version)), fields
    except Exception as e:  # never a traceback to the runtime; the log keeps the detail
        log.exception("internal error in CNI %s", fields.get("verb"))
        fields.update(result="error", code=INTERNAL_ERROR, msg=str(e))
        err = CniError(INTERNAL_ERROR, f"calico-lite internal error: {type(e).__name__}: {e}",
                       "see the calico-lite agent log on this node")
        return 1, json.dumps(err.to_dict(version)), fields


class CniServer:
    """Serves the shim on a root-only unix socket, one thread per call."""

    def __init__(self, path: Path, handler: Handler, observe: Callable[[dict], None] | None = None,
                 beat: Callable[[], None] | None = None):
        self.path = Path(path)
        self.handler = handler
        self.observe = observe or (lambda fields: None)   # each call's log fields (metrics)
        self.beat = beat or (lambda: None)                # liveness of the accept loop
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        s = bind_unix(self.path, 0o077)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        s.listen(128)
        s.settimeout(BEAT_SECONDS)   # accepted connections are still blocking ones
        self._sock = s
        threading.Thread(target=self._accept_loop, name="cni-server", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._sock
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                self.beat()
                continue
            except OSError:
                return
            self.beat()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        with conn:
            chunks, size = [], 0
            while size <= MAX_REQUEST:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            code, out, fields = serve_one(b"".join(chunks), self.handler, peer_pid(conn))
            try:
                conn.sendall(f"{code}\n".encode() + out.encode())
            except OSError:
                pass
        fields["ms"] = round((time.monotonic() - start) * 1000, 1)
        self.observe(fields)
        write_call_log(fields)


def bind_unix(path: Path, umask: int) -> socket.socket:
    """A unix stream socket bound at path, created under umask: the socket file never
    exists, even for a moment, with wider permissions than the umask allows."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(umask)
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    return s


def peer_pid(conn: socket.socket) -> int:
    """The PID of the process at the other end of a unix socket (SO_PEERCRED)."""
    pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return pid


def write_call_log(fields: dict) -> None:
    """One structured line per call, to the agent log and to the config's log_file."""
    log_file = fields.pop("log_file", None)
    line = json.dumps({"ts": round(time.time(), 3), "event": "cni", **fields})
    log.info(line)
    if log_file:
        try:
            with open(log_file, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            log.warning("cannot write plugin log %s: %s", log_file, e)
