"""Processes seen through Linux ``/proc``: a process's descendants, their resident and proportional memory, whether one runs."""

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
