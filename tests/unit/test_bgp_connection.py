"""The Speaker's end of the relay (bgp.connection) with a real unix socket: this test
process plays the relay (it is accepted as the child of our parent, as a relay must be the
child of the supervised ExaBGP)."""
import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from bgp.connection import RelayConnection
from bgp.messages import PeerStateChange
from tests.bgp_lines import UP

WAIT = 10.0   # s for a thread of the connection to get there (never a timing assertion)


class Recorder:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.got_events = threading.Event()
        self.notified = threading.Event()
        self.events: list = []

    def on_connect(self) -> None:
        self.connected.set()

    def on_events(self, events: list) -> bool:
        self.events += events
        self.got_events.set()
        return True


@pytest.fixture
def relay():
    workdir = Path(tempfile.mkdtemp(prefix="bgpconn-"))
    rec = Recorder()
    conn = RelayConnection(workdir / "relay.sock", threading.RLock(),
                           parent_pid=os.getppid, on_connect=rec.on_connect,
                           on_events=rec.on_events, notify=rec.notified.set)
    conn.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    yield conn, client, rec
    client.close()
    conn.close(timeout=5)
    assert not (workdir / "relay.sock").exists()
    workdir.rmdir()


def connect(conn, client, rec) -> None:
    client.connect(str(conn.socket_path))
    assert rec.connected.wait(WAIT)
    assert conn.connected and conn.relay_pid == os.getpid()


def test_commands_before_a_relay_connects_are_dropped(relay):
    conn, client, rec = relay
    conn.send(["announce route 10.244.1.0/26 next-hop self"])   # no error, nothing queued
    connect(conn, client, rec)
    conn.send(["show neighbor json"])
    client.settimeout(WAIT)
    assert client.recv(4096) == b"show neighbor json\n"


def test_acks_pair_with_commands_and_errors_are_kept(relay):
    conn, client, rec = relay
    connect(conn, client, rec)
    with conn.lock:
        conn.send(["announce route 10.244.1.0/26 next-hop self",
                   "announce route 10.244.2.0/26 next-hop self"])
    # acks, garbage, and an event split over two writes: only the event is handed on
    client.sendall(b"done\nerror\n{broken\n" + UP[:40].encode())
    client.sendall(UP[40:].encode() + b"\n")
    assert rec.got_events.wait(WAIT) and rec.notified.wait(WAIT)
    assert [type(e) for e in rec.events] == [PeerStateChange]
    assert list(conn.command_errors) == ["announce route 10.244.2.0/26 next-hop self"]
    conn.wait_acks(0)   # nothing pending: returns at once


def test_a_relay_that_is_not_exabgps_child_is_rejected():
    workdir = Path(tempfile.mkdtemp(prefix="bgpconn-"))
    rec = Recorder()
    conn = RelayConnection(workdir / "relay.sock", threading.RLock(),
                           parent_pid=os.getpid, on_connect=rec.on_connect,
                           on_events=rec.on_events, notify=rec.notified.set)
    conn.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(conn.socket_path))
        client.settimeout(WAIT)
        assert client.recv(4096) == b"", "closed by the Speaker"
        assert not conn.connected and not rec.connected.is_set()
    finally:
        client.close()
        conn.close(timeout=5)
        workdir.rmdir()
