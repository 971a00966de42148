"""Real signals to a real `fgkd prepare` with two decoding processes, mid-way through an unpacked
archive: nothing may outlive it (no decoding process, no unpacked copy), and a later run finishes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fgkd.data.prepare import prepare
from fixtures import archive

IMAGES = 320


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A CUB archive of IMAGES copies of a 1600 px PNG (about 20 ms each to decode, 6 s of work in all)."""
    base = tmp_path_factory.mktemp("slow")
    root = base / "raw" / "CUB_200_2011"
    y, x = np.mgrid[0:1600, 0:1600]
    Image.fromarray(np.stack([x // 7, y // 7, (x + y) // 13], axis=-1).astype(np.uint8)).save(base / "big.png")
    encoded = (base / "big.png").read_bytes()
    images, labels, splits = [], [], []
    for image_id in range(1, IMAGES + 1):
        relative = f"{image_id % 2 + 1:03d}.Class/{image_id:04d}.png"
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / relative).write_bytes(encoded)
        images.append(f"{image_id} {relative}\n")
        labels.append(f"{image_id} {image_id % 2 + 1}\n")
        splits.append(f"{image_id} {image_id // 2 % 2}\n")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "train_test_split.txt").write_text("".join(splits))
    (root / "classes.txt").write_text("1 001.Class\n2 002.Class\n")
    return archive(base / "raw", base / "CUB_200_2011.tar")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting to be collected."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def run_prepare(packed, tmp_path):
    """Start `fgkd prepare --workers 2` and wait until ``staged`` images are done; returns (process, worker ids).
    Whatever it started is killed afterwards, so that a failing test leaves no orphans either."""
    started = []

    def start(staged=4):
        # Output to a file, not a pipe: orphaned workers would hold a pipe open and reading it would hang.
        with open(tmp_path / "stderr.txt", "w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "fgkd", "prepare", "cub", "--root", str(packed),
                                        "--out", str(tmp_path / "out"), "--resize", "64", "--workers", "2"],
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        started.append(process.pid)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            workers = children(process.pid)
            if len(workers) == 2 and len(list((tmp_path / ".out.partial").rglob("*.jpg"))) >= staged:
                started.extend(workers)
                assert list(tmp_path.glob(".out.unpacked-*"))  # the case under test
                return process, workers
            time.sleep(0.01)
        pytest.fail(f"prepare did not get mid-way: {(tmp_path / 'stderr.txt').read_text()}")

    yield start
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_until_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.time() + seconds
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def finish(process, tmp_path) -> tuple[str, list[str]]:
    """Wait for the process; its stderr, and the lines of it that report an error."""
    process.wait(timeout=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    return stderr, [line for line in stderr.replace("\r", "\n").splitlines() if "Error" in line]


def test_sigterm_stops_the_workers_and_removes_the_unpacked_copy(run_prepare, tmp_path):
    process, workers = run_prepare()
    process.send_signal(signal.SIGTERM)
    stderr, errors = finish(process, tmp_path)
    assert process.returncode == 1 and "Traceback" not in stderr
    assert len(errors) == 1 and errors[0].startswith("Error: stopped by SIGTERM")
    assert [pid for pid in workers if alive(pid)] == []
    assert list(tmp_path.glob(".out.unpacked-*")) == []
    assert not (tmp_path / "out").exists()


def test_kill_9_takes_the_workers_along_and_the_next_run_removes_the_unpacked_copy(run_prepare, packed, tmp_path):
    process, workers = run_prepare(staged=100)  # by then a first chunk of 32 images is finished and recorded
    process.kill()
    process.wait(timeout=60)
    assert wait_until_gone(workers) == []
    assert list(tmp_path.glob(".out.unpacked-*"))  # nothing can clean up after kill -9 ...
    staged = {p.name: p.stat().st_mtime_ns for p in (tmp_path / ".out.partial").rglob("*.jpg") if p.name[0] != "."}
    prepare("cub", packed, tmp_path / "out", resize=64, workers=2, progress=False)
    assert list(tmp_path.glob(".out.unpacked-*")) == []  # ... but the next run does
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == IMAGES and all((tmp_path / "out" / path).is_file() for path in manifest["path"])
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")] == []  # no half-written files
    reused = [p for p in (tmp_path / "out" / "images").rglob("*.jpg") if staged.get(p.name) == p.stat().st_mtime_ns]
    assert len(reused) >= 32


def test_a_decoding_process_killed_on_its_own_is_one_line(run_prepare, tmp_path):
    process, workers = run_prepare()
    os.kill(workers[0], signal.SIGKILL)
    stderr, errors = finish(process, tmp_path)
    assert process.returncode == 1 and "Traceback" not in stderr
    assert len(errors) == 1 and errors[0].startswith("Error: a decoding process died")
    assert [pid for pid in workers if alive(pid)] == []
    assert list(tmp_path.glob(".out.unpacked-*")) == []


def test_only_unpacked_copies_of_finished_processes_are_removed(tmp_path):
    from fixtures import make_cub

    make_cub(tmp_path / "raw")
    finished = subprocess.Popen(["true"])
    finished.wait()
    running = subprocess.Popen(["sleep", "60"])
    try:
        for name in (running.pid, finished.pid, "g7px4jx7"):  # the last: a name of earlier versions
            (tmp_path / f".out.unpacked-{name}" / "CUB_200_2011").mkdir(parents=True)
        prepare("cub", tmp_path / "raw", tmp_path / "out", progress=False)
        assert sorted(p.name for p in tmp_path.glob(".out.unpacked-*")) == [f".out.unpacked-{running.pid}"]
    finally:
        running.kill()
        running.wait()
