"""Processes seen through Linux ``/proc``: a process's descendants, their resident and proportional memory and CPU time, whether one runs."""

from __future__ import annotations

from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid``'s descendants (Linux ``/proc``): ``serve``'s tritonserver and its Python-backend stubs."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB: what a server replica really holds."""
    kb = 0
    for p in [pid, *process_tree(pid)]:
        try:
            kb += next(int(x.split()[1]) for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return kb / 1024


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` and all its descendants, in MB: shared pages (the stub's shared-memory region,
    mapped by tritonserver too) counted once, split between the processes that map them."""
    kb = 0
    for p in [pid, *process_tree(pid)]:
        try:
            kb += sum(int(x.split()[1]) for x in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines() if x.startswith("Pss:"))
        except OSError:
            pass
    return kb / 1024


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far (``/proc/PID/stat``); a gone process counts 0."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: the 14th and 15th fields of stat
    return total / tick
