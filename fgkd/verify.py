"""Proof that a prepared data set or a trained network is what the job reading it expects, and a private copy of it.

Snakemake's between-workflow cache (`--cache`) restores outputs as symbolic links to its entries, which are
world-writable: `cp` onto such a results file writes into the entry, and every later workflow would restore, say, a
student as its teacher. The workflow therefore checks each data set and network before anything reads it:

- a prepared data set: its images and manifest are the ones `fgkd prepare` recorded (``prepared.json``);
- a network: its model.pt is a whole model of the stage and configuration the job expects (the config hash the
  workflow computes from the config), trained on this very data, from these very earlier networks, and its
  history.parquet is the one written with it.

Then links are replaced by copies of what they point to, so that nothing written into results/ or data/ reaches the
cache. A check that fails names the file and, for a link, the cache entry to delete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .atomic import atomic_path
from .errors import FgkdError
from .data.manifest import RECORD, data_digest
from .modelfile import file_digest, load_model



def _cache_entry(path: Path) -> Path | None:
    """The cache entry behind a file restored as a link, or behind a folder whose entries are links."""
    if path.is_symlink():
        return path.resolve()
    if path.is_dir():
        return next((entry.resolve().parent for entry in path.iterdir() if entry.is_symlink()), None)
    return None


def _refused(path: Path, problem: str) -> FgkdError:
    entry = _cache_entry(path)
    if entry is None:
        return FgkdError(f"{path}: {problem}; delete it and rerun (Snakemake remakes it; by hand: the `fgkd` command "
                         "that wrote it)")
    return FgkdError(f"{path}: {problem}; it was restored from the cache entry {entry}, which is damaged (something "
                     f"wrote through a link to it): delete that entry and {path}, then rerun")


def read_record(root: str | Path) -> dict | None:
    """What `fgkd prepare` recorded about a data set; None for a data set of an earlier fgkd."""
    try:
        return json.loads((Path(root) / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise _refused(Path(root) / RECORD, f"unreadable ({err})") from None


def check_data(root: str | Path) -> str:
    """The data set's digest, refused if its images or manifest changed since `fgkd prepare` wrote them."""
    root = Path(root)
    digest = data_digest(root)
    record = read_record(root)
    if record is not None and record.get("digest") != digest:
        raise _refused(root, f"its images or manifest changed after `fgkd prepare` wrote them (digest "
                             f"{record.get('digest')} recorded in {RECORD}, {digest} now)")
    return digest


def check_model(path: str | Path, stage: str, config_hash: str, data: str | Path,
                earlier: list[str | Path] = ()) -> dict:
    """The metadata of a model.pt, refused unless it is the whole model of ``stage`` with ``config_hash``, trained on
    ``data`` from the ``earlier`` model.pt files, beside the history.parquet written with it."""
    path = Path(path)
    _, meta = load_model(path)
    found = (meta["stage"], meta["config_hash"])
    if found != (stage, config_hash):
        raise _refused(path, f"the model of {found[0]} with config hash {found[1]}, where this job expects "
                             f"{stage} with config hash {config_hash}")
    missing = [key for key in ("data_digest", "earlier", "history_sha256") if key not in meta]
    if missing:
        raise _refused(path, f"written by an earlier fgkd (no {', '.join(missing)} in its metadata), so it cannot "
                             "show what it was trained on")
    digest = check_data(data)
    if meta["data_digest"] != digest:
        raise _refused(path, f"trained on data of digest {meta['data_digest']}, {data} has {digest}")
    used = [entry["sha256"] for entry in meta["earlier"]]
    given = [file_digest(p) for p in earlier]
    if used != given:
        raise _refused(path, f"trained from earlier networks of sha256 {', '.join(used) or 'none'}, this job's "
                             f"are {', '.join(given) or 'none'}")
    history = path.parent / "history.parquet"
    if not history.is_file() or file_digest(history) != meta["history_sha256"]:
        raise _refused(history, f"not the history written with {path.name} (sha256 {meta['history_sha256']})")
    return meta


def own_copy(path: str | Path) -> None:
    """Replace a link by a copy of what it points to, and a folder's links each by a copy (Snakemake's cache restores
    a folder's entries as links), keeping each link's own modification time, which is what Snakemake compares."""
    path = Path(path)
    if path.is_symlink():
        if not path.exists():
            raise FgkdError(f"{path}: a link to {os.readlink(path)}, which is not there; delete the link and rerun")
        mtime = os.lstat(path).st_mtime_ns
        try:
            if path.is_dir():
                staged = path.with_name(f".{path.name}.copy-{os.getpid()}")
                shutil.rmtree(staged, ignore_errors=True)
                shutil.copytree(path, staged)  # the files inside keep their times (Snakemake's timestamp file)
                os.utime(staged, ns=(mtime, mtime))
                path.unlink()
                staged.rename(path)
            else:
                with atomic_path(path) as tmp:
                    shutil.copyfile(path, tmp)
                    os.utime(tmp, ns=(mtime, mtime))
        except OSError as err:
            raise FgkdError(f"{path}: could not copy it out of the link into the cache ({err.strerror}: "
                            f"{err.filename}); free disk space, then rerun") from None
    elif path.is_dir():
        for entry in sorted(path.iterdir()):
            if entry.is_symlink():
                own_copy(entry)


def write_stamp(out: str | Path, facts: dict) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
