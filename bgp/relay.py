"""ExaBGP API process: a dumb pipe between ExaBGP and the Speaker's unix socket.

ExaBGP runs this (its `process` stanza) and talks JSON on our stdin and reads commands
from our stdout. All logic lives in the Speaker, which listens on the unix socket given
as argv[1]; this relay only copies lines both ways, so the Speaker stays the one writer of
kernel state and survives ExaBGP restarts. Standard library only (run with `python -I`).
It never prints anything but commands. It exits when ExaBGP closes our stdin, and
reconnects (buffering ExaBGP's lines meanwhile) when the Speaker's socket goes away.
"""
import os
import select
import socket
import sys
import time

MAX_BUFFER = 8 * 1024 * 1024  # ExaBGP lines kept while the Speaker is away


def _connect(path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def main() -> int:
    path = sys.argv[1]
    to_speaker = bytearray()   # from ExaBGP, complete lines only are sent
    to_exabgp = bytearray()    # from the Speaker, forwarded line by line
    sock = None
    next_try = 0.0
    while True:
        if sock is None and time.monotonic() >= next_try:
            sock = _connect(path)
            next_try = time.monotonic() + 0.2
        fds = [0] + ([sock] if sock is not None else [])
        readable, _, _ = select.select(fds, [], [], 0.2)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return 0  # ExaBGP went away
            to_speaker += data
            if len(to_speaker) > MAX_BUFFER:  # keep the newest whole lines
                cut = to_speaker.find(b"\n", len(to_speaker) - MAX_BUFFER)
                del to_speaker[: cut + 1]
        if sock is not None and sock in readable:
            data = b""
            try:
                data = sock.recv(65536)
            except OSError:
                pass
            if not data:
                sock.close()
                sock = None
            else:
                to_exabgp += data
                end = to_exabgp.rfind(b"\n")
                if end >= 0:
                    _write_all(1, bytes(to_exabgp[: end + 1]))
                    del to_exabgp[: end + 1]
        if sock is not None and to_speaker:
            end = to_speaker.rfind(b"\n")
            if end >= 0:
                try:
                    sock.sendall(bytes(to_speaker[: end + 1]))
                    del to_speaker[: end + 1]
                except OSError:
                    sock.close()
                    sock = None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
