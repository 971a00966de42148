"""Small data sets in each official layout, built from real encoded images.

Each builder returns the expected manifest rows, computed independently of fgkd's adapters, so
the tests compare fgkd's output against what the layout says, row by row; each row also names the
``source`` file its image must be a copy of.
"""

from __future__ import annotations

import dataclasses
import re
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int, mode: str = "RGB", banner: int = 0) -> None:
    """A JPEG with random blocks; ``banner`` bottom rows are pure magenta (the Aircraft copyright strip)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    pixels = np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1]), (0, 0)), mode="edge")
    if banner:
        pixels[-banner:] = (255, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=95)


# EXIF orientation -> how the camera stored an upright picture (the inverse of what a viewer applies).
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
          2: Image.Transpose.FLIP_LEFT_RIGHT, 5: Image.Transpose.TRANSPOSE}


def write_oriented(path, rgb: np.ndarray, orientation: int, format: str = "PNG") -> None:
    """An upright RGB picture stored turned, with the EXIF orientation that shows it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).transpose(STORED[orientation]).save(path, format=format, exif=exif)


def make_cub(raw: Path, classes: int = 3, per_class: int = 4) -> list[dict]:
    root = raw / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{chr(65 + c)}" for c in range(classes)]
    rows, images, labels, splits = [], [], [], []
    image_id = 0
    for c, name in enumerate(names):
        for j in range(per_class):
            image_id += 1
            relative = f"{name}/Bird_{chr(65 + c)}_{j:04d}_{image_id}.jpg"
            # Varied sizes, one grey-scale image per class (CUB has a few).
            write_image(root / "images" / relative, 40 + 8 * j, 32 + 4 * c, image_id, "L" if j == 1 else "RGB")
            is_train = j % 2 == 0
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c + 1}")
            splits.append(f"{image_id} {int(is_train)}")
            rows.append({"image_id": image_id, "path": f"images/{relative}", "label": c,
                         "class_name": name.split(".", 1)[1], "split": "train" if is_train else "test",
                         "source": root / "images" / relative})
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {n}" for i, n in enumerate(names)) + "\n")
    return rows


def add_cub_image(raw: Path, relative: str, pixels: np.ndarray, class_id: int = 1, train: bool = True,
                  format: str | None = None) -> int:
    """Add one image to a make_cub tree, in any format PIL writes (default: by the extension); its id."""
    root = raw / "CUB_200_2011"
    image_id = len((root / "images.txt").read_text().splitlines()) + 1
    Image.fromarray(pixels).save(root / "images" / relative, format=format)
    for index, value in (("images.txt", relative), ("image_class_labels.txt", class_id),
                         ("train_test_split.txt", int(train))):
        with open(root / index, "a") as file:
            file.write(f"{image_id} {value}\n")
    return image_id


def _annotations(records: list[tuple[int, str]]) -> np.ndarray:
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    table = np.zeros((1, len(records)), dtype=dtype)
    for i, (class_id, fname) in enumerate(records):
        table[0, i] = (np.uint8(1), np.uint8(2), np.uint8(30), np.uint8(20), np.uint8(class_id), fname)
    return table


CARS_LAYOUTS = {  # where the devkit .mat files go (the image folders are always at the top)
    "devkit": ("devkit", "devkit"),  # as the official archives unpack
    "top": (".", "."),  # the .mat files beside the image folders
    "car_devkit": ("car_devkit/devkit", "car_devkit/devkit"),  # car_devkit.tgz unpacked into a folder of its name
    "annotations_beside": ("devkit", "."),  # cars_test_annos_withlabels.mat downloaded apart, beside the images
}


def make_cars(raw: Path, classes: int = 3, per_class: int = 2, layout: str = "devkit") -> list[dict]:
    """Stanford Cars: devkit .mat files where ``layout`` puts them, image folders cars_train/ and cars_test/."""
    names = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012",
             "Tesla Model S Sedan 2012"][:classes]
    devkit, test_annotations = (raw / folder for folder in CARS_LAYOUTS[layout])
    devkit.mkdir(parents=True, exist_ok=True)
    meta = np.empty((1, classes), dtype=object)
    meta[0, :] = names
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": meta})
    rows, image_id = [], 0
    for split, folder, mat in (("train", "cars_train", devkit / "cars_train_annos.mat"),
                               ("test", "cars_test", test_annotations / "cars_test_annos_withlabels.mat")):
        records = []
        for k in range(classes * per_class):
            class_id = classes - k % classes  # annotation order is not class order
            fname = f"{k + 1:05d}.jpg"
            image_id += 1
            write_image(raw / folder / fname, 48, 36, 1000 + image_id)
            records.append((class_id, fname))
            rows.append({"image_id": image_id, "path": f"images/{folder}/{fname}", "label": class_id - 1,
                         "class_name": names[class_id - 1], "split": split, "source": raw / folder / fname})
        scipy.io.savemat(mat, {"annotations": _annotations(records)})
    if layout == "annotations_beside":  # the devkit's own test file, without labels, must not be read
        unlabelled = np.zeros((1, 1), dtype=[("fname", "O")])
        unlabelled[0, 0] = ("00001.jpg",)
        scipy.io.savemat(devkit / "cars_test_annos.mat", {"annotations": unlabelled})
    return rows


def make_aircraft(raw: Path, classes: int = 3, per_class: int = 2) -> list[dict]:
    data = raw / "fgvc-aircraft-2013b" / "data"
    names = ["707-320", "A300B4", "Cessna 172", "DHC-8-100"][:classes]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(names) + "\n")
    rows, number = [], 1000000
    for split, index in (("train", "images_variant_trainval.txt"), ("test", "images_variant_test.txt")):
        lines = []
        for c in range(classes):
            for _ in range(per_class):
                number += 7
                write_image(data / "images" / f"{number:07d}.jpg", 64, 60, number, banner=20)
                lines.append(f"{number:07d} {names[c]}")
                rows.append({"image_id": number, "path": f"images/{number:07d}.jpg", "label": c,
                             "class_name": names[c], "split": split, "source": data / "images" / f"{number:07d}.jpg"})
        (data / index).write_text("\n".join(lines) + "\n")
    return rows


def archive(folder: Path, target: Path) -> Path:
    """Pack the contents of ``folder`` (not the folder itself) into a .tgz/.tar.gz, .tar or .zip."""
    if target.suffix == ".zip":
        with zipfile.ZipFile(target, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, path.relative_to(folder).as_posix())
    else:
        with tarfile.open(target, "w" if target.suffix == ".tar" else "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
    return target


def correlation(copy: Path, reference: np.ndarray) -> float:
    """Pearson correlation of a prepared copy with the pixels it should show (H x W grey or H x W x 3), the
    reference resized to the copy's size first."""
    with Image.open(copy) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    channels = np.atleast_3d(np.asarray(reference, dtype=np.float32)).transpose(2, 0, 1)
    size = pixels.shape[1::-1]
    resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c), "F").resize(size, Image.BILINEAR))
                        for c in channels], axis=-1)
    return float(np.corrcoef(pixels.ravel(), np.broadcast_to(resized, pixels.shape).ravel())[0, 1])


def decoded(path: Path, crop_bottom: int = 0) -> np.ndarray:
    """A source image's RGB pixels, less ``crop_bottom`` rows."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels[: pixels.shape[0] - crop_bottom]


def wait_for_file(path: Path, process, timeout: float = 300) -> None:
    """Poll until ``path`` exists, the process ends, or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def cli_train_args(config, out: Path, data: Path, *extra: str, stage: str = "teacher") -> list[str]:
    """`fgkd train --stage <stage>` with every field of a TrainConfig as its option."""
    import sys

    from fgkd.config import cli_flags

    return [sys.executable, "-m", "fgkd", "train", "--stage", stage, "--data", str(data), "--out", str(out),
            "--no-progress", *extra, *cli_flags(dataclasses.asdict(config))]


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(finished epochs, optimizer steps taken in the next epoch) of a checkpoint.pt."""
    import torch

    state = torch.load(path, weights_only=True)["state"]
    return state["epoch"], state["partial"]["step"] if state["partial"] else 0


def resumed_at(log: str) -> tuple[int, int]:
    """(epoch, step) of a run log's one "resuming after epoch E, step S" line."""
    found = re.findall(r"resuming after epoch (\d+), step (\d+)", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0][0]), int(found[0][1])


def optimizer_steps(log: str) -> int:
    """The optimizer steps a finished run took (its main process), from its log."""
    found = re.findall(r"done, (\d+) optimizer steps run by this process", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0])


def torchrun_args(args: list[str], processes: int = 1) -> list[str]:
    """``python -m fgkd ...`` (as cli_train_args gives it) started by torchrun with ``processes`` processes."""
    return [args[0], "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args[1:]]
