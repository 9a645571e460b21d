"""bgp/relay.py as a real process: copies lines both ways and survives the Speaker's socket
going away (it buffers ExaBGP's lines and reconnects). No namespaces needed."""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "bgp" / "relay.py"


def listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    s.settimeout(30)
    return s


def read_line(conn: socket.socket) -> bytes:
    conn.settimeout(30)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


@pytest.fixture
def relay(tmp_path):
    path = tmp_path / "r.sock"
    server = listen(path)
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(RELAY), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc, server, path
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_lines_both_ways_and_exit_on_stdin_eof(relay):
    proc, server, _ = relay
    conn, _ = server.accept()
    proc.stdin.write(b'{"type": "state"}\n')
    proc.stdin.flush()
    assert read_line(conn) == b'{"type": "state"}\n'
    conn.sendall(b"announce route 10.244.0.0/26 next-hop self\n")
    assert proc.stdout.readline() == b"announce route 10.244.0.0/26 next-hop self\n"
    proc.stdin.close()   # what ExaBGP's death looks like to the relay
    assert proc.wait(timeout=30) == 0


def test_reconnects_and_delivers_what_came_meanwhile(relay):
    proc, server, path = relay
    conn, _ = server.accept()
    conn.close()
    server.close()       # the Speaker goes away
    proc.stdin.write(b"done\n")
    proc.stdin.write(b'{"partial": ')   # half a line must never be sent
    proc.stdin.flush()
    time.sleep(0.3)
    assert proc.poll() is None
    server2 = listen(path)  # a new Speaker on the same path
    try:
        conn2, _ = server2.accept()
        assert read_line(conn2) == b"done\n"
        proc.stdin.write(b"1}\n")
        proc.stdin.flush()
        assert read_line(conn2) == b'{"partial": 1}\n'
        conn2.sendall(b"withdraw route 10.244.0.0/26 ")   # partial command: held back
        conn2.sendall(b"next-hop self\n")
        assert proc.stdout.readline() == b"withdraw route 10.244.0.0/26 next-hop self\n"
    finally:
        server2.close()
