"""Proof that a prepared data set or a trained network is what the job reading it expects, and a private copy of it.

Snakemake's between-workflow cache (`--cache`) restores outputs as symbolic links to its entries, which are
world-writable: `cp` onto such a results file writes into the entry, and every later workflow would restore, say, a
student as its teacher. The workflow therefore checks each data set and network before anything reads it:

- a prepared data set: its images and manifest are the ones `fgkd prepare` recorded (``prepared.json``);
- a network: its model.pt is a whole model of the stage and configuration the job expects (the config hash the
  workflow computes from the config), its metadata and weights unchanged since `fgkd train` wrote them (their
  sha256, recorded in the file), trained on this very data, from these very earlier networks, and its
  history.parquet is the one written with it.

Then links are replaced by copies of what they point to, so that nothing written into results/ or data/ reaches the
cache. A check that fails names the file and, for a link, the cache entry to delete."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

from .atomic import atomic_path
from .data.manifest import RECORD, data_digest
from .errors import FgkdError
from .modelfile import content_digest, file_digest, read_model_file


def _cache_entry(path: Path) -> list[Path]:
    """The files of the cache entry behind a file restored as a link (an entry is one file per output of its job:
    HASH_model.pt, HASH_history.parquet), or the entry folder behind a folder whose entries are links."""
    if path.is_symlink():
        target = path.resolve()
        return sorted(target.parent.glob(f"{glob.escape(target.name.split('_')[0])}*")) or [target]
    if path.is_dir():
        return next(([entry.resolve().parent] for entry in path.iterdir() if entry.is_symlink()), [])
    return []


def _refused(path: Path, problem: str, delete: list[Path] | None = None) -> FgkdError:
    """One line: what is wrong with ``path``, and what to delete (``delete``, default the path) so that Snakemake
    remakes it; where it came from the cache, the entry's files too."""
    delete = delete or [path]
    entry = list(dict.fromkeys(f for d in delete for f in _cache_entry(d)))
    named = " and ".join(map(str, delete))
    if not entry:
        return FgkdError(f"{path}: {problem}; delete {named} and rerun (Snakemake remakes it; by hand: the `fgkd` "
                         "command that wrote it)")
    return FgkdError(f"{path}: {problem}; it was restored from Snakemake's cache ({', '.join(map(str, entry))}), "
                     "whose entry does not belong to this job (damaged through a link, or made from earlier networks "
                     f"that were remade since): delete the entry's files and {named}, then rerun")


def read_record(root: Path) -> dict:
    """What `fgkd prepare` recorded about a data set."""
    try:
        record = json.loads((root / RECORD).read_text())
    except FileNotFoundError:
        raise _refused(root, f"no {RECORD}, the digest `fgkd prepare` records of what it wrote (made by an earlier "
                             "fgkd, or copied by hand), so nothing shows that its images are the prepared ones") from None
    except (OSError, ValueError) as err:
        raise _refused(root, f"its {RECORD} is unreadable ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
        raise _refused(root, f"its {RECORD} holds no digest")
    return record


def check_data(root: str | Path) -> str:
    """The data set's digest, refused unless it is the one `fgkd prepare` recorded (its images and manifest unchanged
    since)."""
    root = Path(root)
    record = read_record(root)
    digest = data_digest(root)
    if record["digest"] != digest:
        raise _refused(root, f"its images or manifest changed after `fgkd prepare` wrote them (digest "
                             f"{record['digest']} recorded in {RECORD}, {digest} now)")
    return digest


def _digest(path: Path, what: str) -> str:
    try:
        return file_digest(path)
    except OSError as err:
        raise FgkdError(f"{what} {path}: cannot be read ({err.strerror}); give the file the job reads") from None


def check_model(path: str | Path, stage: str, config_hash: str, data: str | Path, earlier: list[str | Path] = (),
                start: str | Path | None = None) -> dict:
    """The metadata of a model.pt, refused unless it is the whole model of ``stage`` with ``config_hash``, trained on
    ``data`` from the ``earlier`` model.pt files and the ``start`` weights file (if any), beside the history.parquet
    written with it."""
    path = Path(path)
    history = path.parent / "history.parquet"
    pair = [path, history]
    saved = read_model_file(path)
    meta = saved["metadata"]
    found = (meta["stage"], meta["config_hash"])
    if found != (stage, config_hash):
        raise _refused(path, f"the model of {found[0]} with config hash {found[1]}, where this job expects "
                             f"{stage} with config hash {config_hash}", pair)
    missing = [key for key in ("data_digest", "earlier", "history_sha256", "start", "content_sha256")
               if key not in meta]
    if missing:
        raise _refused(path, f"written by an earlier fgkd (no {', '.join(missing)} in its metadata), so it cannot "
                             "show what it was trained on and that it is unchanged", pair)
    content = content_digest(saved)
    if content != meta["content_sha256"]:
        raise _refused(path, f"its metadata or weights changed since `fgkd train` wrote it (content sha256 "
                             f"{content}, written {meta['content_sha256']})", pair)
    digest = check_data(data)
    if meta["data_digest"] != digest:
        raise _refused(path, f"trained on data of digest {meta['data_digest']}, {data} has {digest}", pair)
    used = [entry["sha256"] for entry in meta["earlier"]]
    given = [_digest(Path(p), "--earlier") for p in earlier]
    if used != given:
        raise _refused(path, f"trained from earlier networks of sha256 {', '.join(used) or 'none'}, this job's "
                             f"are {', '.join(given) or 'none'}", pair)
    expected = _digest(Path(start), "--start") if start is not None else None
    if meta["start"]["sha256"] != expected:
        raise _refused(path, f"started from weights of sha256 {meta['start']['sha256']}, this job's start weights "
                             f"are {expected or 'none'}", pair)
    if not history.is_file() or _digest(history, "history") != meta["history_sha256"]:
        raise _refused(history, f"not the history written with {path.name} (sha256 {meta['history_sha256']})", pair)
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
                _private_modes(staged)
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


def _private_modes(folder: Path) -> None:
    """The modes of files this user makes (the cache's entries are world-writable)."""
    mask = os.umask(0)
    os.umask(mask)
    for root, folders, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_stamp(out: str | Path, facts: dict) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
