"""open_netns refuses whatever is not a network namespace, at once: found by the CNI fuzz
(tests/faults/test_cni_fuzz.py), a FIFO as CNI_NETNS used to block the agent's call thread."""
from __future__ import annotations

import errno
import os
import threading

import pytest

from plugin.netns import NetnsError, open_netns


def opened(path: str) -> dict:
    """open_netns(path) in a thread; an entry `hung` if it has not returned after 10 s."""
    out: dict = {}

    def run() -> None:
        try:
            os.close(open_netns(path))
            out["ok"] = True
        except NetnsError as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        out["hung"] = True
    return out


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    out = opened(str(tmp_path / "fifo"))
    assert "hung" not in out
    assert out["error"].errno == errno.EINVAL


@pytest.mark.parametrize("kind", ["file", "dir", "missing"])
def test_other_paths_are_refused_with_their_reason(tmp_path, kind):
    path = tmp_path / kind
    if kind == "file":
        path.write_text("x")
    elif kind == "dir":
        path.mkdir()
    out = opened(str(path))
    assert out["error"].errno == (errno.ENOENT if kind == "missing" else errno.EINVAL)


def test_a_real_namespace_opens():
    assert opened("/proc/self/ns/net") == {"ok": True}
