"""What a lab made, on disk under its run folder, so `lab down` can remove it after a crash.

Every namespace is recorded before it is created and every process right after it starts;
writers take a file lock, since `lab pod add` calls may run in parallel.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

RUN_ROOT = Path(os.environ.get("CALICO_LITE_RUN", "/run/calico-lite/labs"))


class LabError(RuntimeError):
    """Something about a lab that the user can act on, in one line."""


def run_dir(name: str) -> Path:
    return RUN_ROOT / name


@dataclass
class LabState:
    name: str
    params: dict = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "netns": self.netns, "pids": self.pids}


class StateStore:
    def __init__(self, name: str):
        self.dir = run_dir(name)
        self.path = self.dir / "state.json"
        self.name = name

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> LabState:
        if not self.path.exists():
            return LabState(self.name)
        d = json.loads(self.path.read_text())
        return LabState(d["name"], d.get("params", {}), d.get("netns", []), d.get("pids", {}))

    @contextmanager
    def edit(self) -> Iterator[LabState]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = self.load()
            yield st
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(st.to_dict(), indent=1))
            os.replace(tmp, self.path)

    def add_netns(self, name: str) -> None:
        with self.edit() as st:
            if name not in st.netns:
                st.netns.append(name)

    def remove_netns(self, name: str) -> None:
        with self.edit() as st:
            if name in st.netns:
                st.netns.remove(name)

    def add_pid(self, label: str, pid: int) -> None:
        with self.edit() as st:
            st.pids[label] = pid

    def pop_pids(self, prefix: str) -> dict[str, int]:
        with self.edit() as st:
            gone = {k: v for k, v in st.pids.items() if k.startswith(prefix)}
            for k in gone:
                del st.pids[k]
            return gone
