# A run killed hard (kill -9, power loss) leaves Snakemake's lock behind, and the same command would
# then refuse to start. The Snakefile is read before the lock is taken: if no other Snakemake process
# works in this folder, the lock is stale and removed, so rerunning the same command resumes.
import os
import sys


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _snakemake_running_here():
    here, mine = os.getcwd(), _ancestors()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            if b"snakemake" in (proc / "cmdline").read_bytes() and os.readlink(proc / "cwd") == here:
                return True
        except OSError:
            continue
    return False


def remove_stale_locks():
    locks = Path(".snakemake/locks")
    if not locks.is_dir() or not any(locks.iterdir()) or not Path("/proc/self").exists():
        return
    if _snakemake_running_here():
        return
    for lock in locks.iterdir():
        lock.unlink()
    print("fgkd: removed a stale Snakemake lock: no Snakemake runs in this folder (an earlier run was killed)",
          file=sys.stderr)


remove_stale_locks()
