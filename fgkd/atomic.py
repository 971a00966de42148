"""Write files so that a reader sees either the old content or the complete new one.

A killed job must never leave a file that a later step would accept as finished: everything is
written to a temporary sibling and renamed into place (rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FgkdError


def require_utf8_name(path: str | os.PathLike, option: str = "--out") -> None:
    """Parquet (pyarrow) cannot name a file whose path is not UTF-8: refuse such a name, before any work where the
    caller checks it early, and at the latest here rather than with a traceback after the work."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise FgkdError(f"{os.fsencode(path)!r}: the name is not UTF-8, and Parquet files cannot be written under it; "
                        f"choose a UTF-8 name for {option}") from None


def refuse_to_overwrite_inputs(target: str | os.PathLike, inputs, option: str = "--out") -> None:
    """An output that is one of the command's own inputs would destroy it: refuse it (paths compared resolved, so
    that `a/../b` and symbolic links count)."""
    resolved = Path(target).resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise FgkdError(f"{option} {target} is the input {source} and would overwrite it; choose another {option}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Any failure to write (full disk, read-only or missing folder) becomes one FgkdError naming the
    file; the previous ``target``, if any, is left as it was.
    """
    target = Path(target)
    require_utf8_name(target, "the output")
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any other file
        yield tmp_path
        os.replace(tmp_path, target)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        blocking = _file_in_the_way(target)
        if blocking is not None:
            raise FgkdError(f"{target}: cannot be written there, {blocking} is a file, not a folder; choose another "
                            "path") from None
        raise FgkdError(f"{target}: could not be written ({_describe(err)}; {_free_space(target)}); any earlier "
                        "version is untouched. Free disk space or choose a writable results folder, then rerun") from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _file_in_the_way(target: Path) -> Path | None:
    """The first folder on the way to ``target`` that exists and is not a folder."""
    return next((folder for folder in reversed(target.parents) if folder.exists() and not folder.is_dir()), None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe(err: BaseException) -> str:
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0][:200]


def _free_space(target: Path) -> str:
    for folder in (target.parent, *target.parents):
        if folder.exists():
            return f"{shutil.disk_usage(folder).free // 1024} KiB free there"
    return "folder missing"


def write_parquet(frame, target: str | os.PathLike) -> None:
    """Write a pandas DataFrame to Parquet atomically."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def replace_directory(staged: Path, target: Path) -> None:
    """Move a fully built ``staged`` directory onto ``target``, dropping the old one."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old)
