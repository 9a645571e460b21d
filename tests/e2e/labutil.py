"""Helpers for end-to-end tests that drive `calico-lite lab` like a user would."""
from __future__ import annotations

import json
import os
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import lab_cli
from tests.nslib import netns_pids, remove_netns_with_prefix


def lab_name(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:5]}"


def lab_namespaces(name: str) -> list[str]:
    out = os.popen("ip netns list").read().split("\n")
    return [line.split()[0] for line in out if line.startswith(f"{name}-")]


@contextmanager
def running_lab(name: str, *up_args: str) -> Iterator[str]:
    """A lab that is removed afterwards, also when the test fails or up itself fails."""
    try:
        lab_cli("lab", "up", "--name", name, *up_args)
        yield name
    finally:
        lab_cli("lab", "down", "--name", name, check=False)
        for ns in lab_namespaces(name):  # belt and braces: a test failure must not leak
            for pid in netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remove_netns_with_prefix(f"{name}-")


def status(name: str) -> dict:
    return json.loads(lab_cli("lab", "status", "--name", name, "--json").stdout)


def probe(name: str, *args: str) -> list[dict]:
    return json.loads(lab_cli("lab", "probe", "--name", name, "--json", *args).stdout)


def run_dir(name: str) -> Path:
    return Path(os.environ.get("CALICO_LITE_RUN", "/run/calico-lite/labs")) / name
