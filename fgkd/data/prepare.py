"""Turn a raw data set (folder or official archive) into a manifest plus resized JPEG copies.

Work happens in a staging folder beside the output; the output appears only when every image
decoded, so a failed or interrupted run never leaves a manifest. Staged images are kept between
runs with the same settings: an interrupted run resumes where it stopped, reusing an image only
while its source is the one it was made from (file size and modification time, recorded as each
image is done; for an archive, the archive's).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tarfile
import threading
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_path, replace_directory, require_utf8_name, write_parquet
from ..errors import DataError, FgkdError, brief
from .images import DECODE_ERRORS, open_rgb
from .manifest import MANIFEST, RECORD, data_digest
from .sources import LOADERS, SPLITS, SourceImage, SourceSet

JPEG_QUALITY = 90
SETTINGS = "settings.json"  # in the staging folder: what its images were made with
DONE = "done.jsonl"  # in the staging folder: one [target, source identity] line per finished image
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Conversion(NamedTuple):
    source: str
    target: str
    short_side: int
    crop_bottom: int


def unpack_archive(archive: Path, into: Path) -> Path:
    """Extract a .tar(.gz/.bz2/.xz)/.tgz or .zip, refusing members that leave ``into``."""
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise DataError(f"{archive}: member {member!r} escapes the extraction folder; refusing this archive")
                zf.extractall(into)
        else:
            raise DataError(f"{archive}: not a folder, a tar archive or a zip archive; pass the data set folder or its official archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot unpack ({brief(err)}); the archive is damaged, re-download it") from None
    return into


def _convert(task: Conversion) -> str | None:
    """Decode, crop, resize and save one image; returns an error message instead of raising."""
    source, target, short_side, crop_bottom = task
    try:
        image = open_rgb(source, draft=(short_side, short_side + crop_bottom), crop_bottom=crop_bottom)
        scale = short_side / min(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC, reducing_gap=3.0)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    except DataError as err:
        return str(err)
    except DECODE_ERRORS as err:
        return f"{source}: corrupt or truncated image ({brief(err)}); re-download it or remove it from the index"
    return None


def _check(sources: SourceSet, dataset: str) -> None:
    root = sources.root.resolve()
    for split in SPLITS:
        if not any(img.split == split for img in sources.images):
            raise DataError(f"{sources.root}: the {split} split of {dataset} is empty; the split index file is wrong or truncated")
    trained = {img.label for img in sources.images if img.split == "train"}
    for label, name in enumerate(sources.class_names):
        if label not in trained:
            raise DataError(f"{sources.root}: class {name!r} has no training images; the data set is incomplete")
    for image in sources.images:
        if not (root / image.path).resolve().is_relative_to(root):
            raise DataError(f"{sources.root / image.path}: resolves outside the data set root (a link?); refusing it")
        if not (root / image.path).is_file():
            raise DataError(f"{sources.root / image.path}: image listed in the index but missing; "
                            "the data set is incomplete (re-extract it)")
        if not 0 <= image.label < len(sources.class_names):
            raise DataError(f"{sources.root}: image {image.image_id} has label {image.label} outside 0..{len(sources.class_names) - 1}")
    # Case-blind: on a case-insensitive file system (macOS, Windows) A.jpg and a.jpg are one file.
    stored_as = {}
    for image in sources.images:
        target = _target_path(image)
        other = stored_as.setdefault(target.casefold(), image)
        if other is not image:
            raise DataError(f"{sources.root / image.path} and {sources.root / other.path} would both be stored as "
                            f"{target}; rename one of them (and its line in the index)")


def _target_path(image: SourceImage) -> str:
    """Where the resized copy goes: under images/, keeping the source's relative name. A source that is not a
    .jpg keeps its extension (x.png -> x.png.jpg), so that x.jpg and x.png beside it stay two images."""
    relative = Path(image.path)
    if relative.parts[0] == "images":
        relative = relative.relative_to("images")
    name = relative.name if relative.suffix == ".jpg" else f"{relative.name}.jpg"
    return (Path("images") / relative.with_name(name)).as_posix()


def prepare(dataset: str, raw: str | Path, out: str | Path, resize: int = 512, workers: int | None = None,
            progress: bool = True) -> Path:
    """Check the whole data set, then write ``out/manifest.parquet`` and ``out/images/``."""
    if dataset not in LOADERS:
        raise DataError(f"unknown data set {dataset!r}; choose one of {', '.join(LOADERS)}")
    if resize < 16:
        raise DataError(f"--resize must be at least 16 pixels (got {resize})")
    raw, out = Path(raw), Path(out)
    require_utf8_name(out)
    if not raw.exists():
        raise DataError(f"{raw}: no such file or folder; pass the data set folder or archive to --root")
    _refuse_to_delete_foreign_files(out)
    from_archive = raw.is_file()
    settings = {"dataset": dataset, "raw": str(raw.resolve()), "resize": resize, "jpeg_quality": JPEG_QUALITY,
                "archive": _identity(raw) if from_archive else None}
    staging = out.parent / f".{out.name}.partial"
    with _signals_stop(staging):
        done = _open_staging(staging, settings, out)
        _remove_unpacked_leftovers(out)
        with _source_tree(raw, out) as tree:
            sources = LOADERS[dataset](tree)
            _check(sources, dataset)
            todo, identities = [], {}
            for img in sources.images:
                source, target = sources.root / img.path, _target_path(img)
                # Within an archive the archive's own identity (in the settings) covers its files.
                identities[target] = [] if from_archive else _identity(source)
                if done.get(target) != identities[target] or not (staging / target).is_file():
                    todo.append(Conversion(str(source), str(staging / target), resize, img.crop_bottom))
            with open(staging / DONE, "a", buffering=1) as record:
                def finished(task: Conversion) -> None:
                    target = Path(task.target).relative_to(staging).as_posix()
                    record.write(json.dumps([target, identities[target]]) + "\n")

                _convert_all(todo, workers, progress, f"prepare {dataset}", finished)

        frame = pd.DataFrame({
            "image_id": pd.array([img.image_id for img in sources.images], dtype="int64"),
            "path": [_target_path(img) for img in sources.images],
            "label": pd.array([img.label for img in sources.images], dtype="int64"),
            "class_name": [img.class_name for img in sources.images],
            "split": [img.split for img in sources.images],
        }).sort_values("image_id", kind="stable").reset_index(drop=True)
        (staging / SETTINGS).unlink()
        (staging / DONE).unlink()
        write_parquet(frame, staging / MANIFEST)
        record = {"format": dataset, "resize": resize, "jpeg_quality": JPEG_QUALITY, "images": len(frame),
                  "digest": data_digest(staging)}  # what `fgkd verify` and training check the data set against
        with atomic_path(staging / RECORD) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        _refuse_to_delete_foreign_files(out)
        replace_directory(staging, out)
    return out / MANIFEST


def _identity(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _refuse_to_delete_foreign_files(out: Path) -> None:
    """The output folder is replaced as a whole: refuse if it holds anything that ``prepare`` did not write there."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / MANIFEST).is_file():
        raise DataError(f"{out}: exists and is not a prepared data set; refusing to overwrite it (choose another --out)")
    try:
        ours = set(pd.read_parquet(out / MANIFEST, columns=["path"])["path"]) | {MANIFEST, RECORD}
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{out / MANIFEST}: unreadable ({brief(err)}); move {out} away or delete it, then rerun") from None
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if (p.is_symlink() or not p.is_dir()) and p.relative_to(out).as_posix() not in ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"{out}: holds files that `fgkd prepare` did not write ({shown}); rebuilding the folder would "
                        "delete them: move them elsewhere or choose another --out")


def _open_staging(staging: Path, settings: dict, out: Path) -> dict:
    """Create or reuse the staging folder; returns its finished images (target -> source identity)."""
    try:
        if staging.exists() and _read_json(staging / SETTINGS) != settings:
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        for leftover in staging.rglob(".*.partial"):  # temporary files of a killed worker
            leftover.unlink()
        (staging / SETTINGS).write_text(json.dumps(settings))
        lines = (staging / DONE).read_text().splitlines() if (staging / DONE).is_file() else []
    except OSError as err:
        raise DataError(f"{out}: cannot write the output there ({err.strerror}: {err.filename}); "
                        "choose a writable --out") from None
    done = {}
    for line in lines:
        with contextlib.suppress(ValueError, TypeError):  # the last line of a killed run may be cut short
            target, identity = json.loads(line)
            done[target] = identity
    return done


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _signals_stop(staging: Path):
    """SIGTERM (scancel, kill) and SIGHUP raise an error instead of ending the process on the spot, so that the
    decoding processes are stopped and the unpacked archive is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
        raise FgkdError(f"stopped by {signal.Signals(signum).name}; the images converted so far are kept in "
                        f"{staging}: rerun the same command to resume")

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _source_tree(raw: Path, out: Path):
    """The data set folder, or the archive unpacked beside the output and removed afterwards. The unpacked copy
    is named after this process, so that a later run can tell a killed run's copy from a running one's."""
    if raw.is_dir():
        yield raw
        return
    unpacked = out.parent / f".{out.name}.unpacked-{os.getpid()}"
    shutil.rmtree(unpacked, ignore_errors=True)  # a killed run's, whose process id was this one
    try:
        unpacked.mkdir()
        yield unpack_archive(raw, unpacked)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _remove_unpacked_leftovers(out: Path) -> None:
    """Unpacked archives (as large as the data set) left by runs that were killed, e.g. by kill -9."""
    for folder in out.parent.glob(f".{glob.escape(out.name)}.unpacked-*"):
        owner = folder.name.rsplit("-", 1)[1]
        if not (owner.isdigit() and _running(int(owner))):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _worker_init(parent: int) -> None:
    """In each decoding process: die with the parent, even when it is killed with SIGKILL and can do nothing
    (only the kernel can tell: Linux prctl PR_SET_PDEATHSIG); ignore Ctrl-C (the parent stops its workers) and
    let SIGTERM end it at once (the parent's handler, inherited through fork, would raise mid-conversion)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _convert_all(tasks: list[Conversion], workers: int | None, progress: bool, label: str,
                 finished: Callable[[Conversion], None]) -> None:
    workers = workers or min(os.cpu_count() or 1, 8)
    pool = None
    try:
        if workers > 1 and len(tasks) > 64:
            # fork: the workers are children of this process (their death signal is tied to it).
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _worker_init, (os.getpid(),))
        results = pool.map(_convert, tasks, chunksize=32) if pool else map(_convert, tasks)
        with tqdm(total=len(tasks), desc=label, unit="img", disable=not progress or not tasks) as bar:
            for task, error in zip(tasks, results):
                if error:
                    raise DataError(error)
                finished(task)
                bar.update()
    except BrokenProcessPool:
        raise FgkdError(f"a decoding process died (out of memory?); rerun with fewer --workers than {workers} "
                        "to resume") from None
    except BaseException:
        if pool:
            # Stop the workers now, not after their current chunk: they would go on writing into the staging
            # folder and reading the unpacked copy being removed (ProcessPoolExecutor.terminate_workers is 3.14+).
            for process in pool._processes.values():
                process.terminate()
        raise
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
