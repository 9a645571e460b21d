"""Where the agent's memory is, on demand: a debugging aid for bench/agent_memory.py.

With CALICO_LITE_TRACEMALLOC=FOLDER each SIGUSR1 writes FOLDER/snap-N.json: the RSS before
and after glibc's malloc_trim (memory the allocator holds free but has not given back), what
glibc's allocator says it holds (mallinfo2: bytes in use and free, summed over its arenas; the
arenas' number from malloc_info), the resident memory by kind of mapping (the main heap, other
anonymous mappings: thread arenas, Python's arenas, stacks; files) and the open descriptors.
With CALICO_LITE_TRACEMALLOC_FRAMES > 0 (30 unless set) Python's allocations are traced as
well and FOLDER/snap-N is a tracemalloc snapshot; 0 leaves tracemalloc off, whose own tables
(one entry per distinct traceback, kept until tracing stops) would otherwise count in the RSS.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import tempfile

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
           "fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in _FIELDS]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def mallinfo(libc: ctypes.CDLL) -> dict[str, int]:
    """glibc's totals in KiB: system (heap bytes got from the kernel, every arena), mmapped
    (large blocks mapped alone), in_use and free (in the arenas' heaps)."""
    m = libc.mallinfo2()
    return {"system_kib": m.arena // 1024, "mmapped_kib": m.hblkhd // 1024,
            "in_use_kib": m.uordblks // 1024, "free_kib": m.fordblks // 1024}


def arenas(libc: ctypes.CDLL) -> int:
    """How many arenas glibc's malloc has made (malloc_info's <heap> elements)."""
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return len(re.findall(r"<heap nr=", open(tmp.name).read()))


def smaps_by_kind() -> dict[str, int]:
    """Resident KiB by kind of mapping: heap (the main arena's brk heap), anon (every other
    anonymous mapping), file (libraries and other files), other ([stack], [vdso], ...)."""
    kinds = {"heap_kib": 0, "anon_kib": 0, "file_kib": 0, "other_kib": 0}
    kind = "other_kib"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                name = head[5] if len(head) > 5 else ""
                kind = ("heap_kib" if name == "[heap]" else "anon_kib" if not name
                        else "file_kib" if name.startswith("/") else "other_kib")
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1])
    return kinds


def measure(libc: ctypes.CDLL) -> dict:
    """Everything in the module docstring; trims the allocator's free memory on the way."""
    before, info_before = status("VmRSS"), mallinfo(libc)
    libc.malloc_trim(0)
    with open("/proc/self/maps") as f:
        mappings = sum(1 for _ in f)
    return {"rss_kib": before, "rss_after_trim_kib": status("VmRSS"), "threads": status("Threads"),
            "mappings": mappings, "fds": len(os.listdir("/proc/self/fd")),
            "malloc_before_trim": info_before, "malloc": mallinfo(libc), "arenas": arenas(libc),
            **smaps_by_kind()}


def install(folder: str) -> None:
    """SIGUSR1 writes the figures (and a tracemalloc snapshot, if tracing) into folder."""
    if not folder:
        return
    import tracemalloc
    frames = int(os.environ.get("CALICO_LITE_TRACEMALLOC_FRAMES", "30"))
    if frames > 0:
        tracemalloc.start(frames)
    libc = _libc()
    taken = [0]

    def dump(*_) -> None:
        taken[0] += 1
        path = os.path.join(folder, f"snap-{taken[0]}")
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(path + ".tmp")
        figures = measure(libc)
        if tracemalloc.is_tracing():
            figures["tracemalloc_kib"] = tracemalloc.get_tracemalloc_memory() // 1024
        with open(path + ".json.tmp", "w") as f:
            json.dump(figures, f)
        if tracemalloc.is_tracing():
            os.replace(path + ".tmp", path)
        os.replace(path + ".json.tmp", path + ".json")   # last: the reader waits for this one
    signal.signal(signal.SIGUSR1, dump)
