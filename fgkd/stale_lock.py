"""Snakemake's lock left behind by a run killed hard (kill -9, power loss), which makes the same command refuse to
start. The Snakefile calls remove_stale_locks() before Snakemake takes its lock: if no other Snakemake process works
in this folder, the lock is stale and removed, so rerunning the same command resumes. Linux only (it reads /proc);
elsewhere it does nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROC = Path("/proc")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _snakemake_running_here() -> bool:
    here, mine = os.getcwd(), _ancestors()
    for proc in PROC.iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            if b"snakemake" in (proc / "cmdline").read_bytes() and os.readlink(proc / "cwd") == here:
                return True
        except OSError:
            continue
    return False


def remove_stale_locks(locks: Path = Path(".snakemake/locks")) -> None:
    if not locks.is_dir() or not any(locks.iterdir()) or not (PROC / "self").exists():
        return
    if _snakemake_running_here():
        return
    for lock in locks.iterdir():
        lock.unlink()
    print("fgkd: removed a stale Snakemake lock: no Snakemake runs in this folder (an earlier run was killed)",
          file=sys.stderr)
