"""Adapters from each data set's official layout to one list of source images.

Every adapter only reads index files and checks them (ids, labels, paths, splits); decoding and
resizing happen in ``prepare``. Class ids are dense 0..C-1 in the data set's own class order:
CUB by the ids of ``classes.txt``, Stanford Cars by ``cars_meta.mat``, FGVC-Aircraft by
``variants.txt``. Image ids: CUB's own ids; Cars: 1..N over the train annotations, then on over
the test annotations; Aircraft: the numeric image name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError, brief

SPLITS = ("train", "test")
AIRCRAFT_BANNER_PX = 20


@dataclass(frozen=True)
class SourceImage:
    image_id: int
    path: str  # relative to the data set root
    label: int
    class_name: str
    split: str
    crop_bottom: int = 0


@dataclass(frozen=True)
class SourceSet:
    root: Path
    images: list[SourceImage]
    class_names: list[str]


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 index file."""
    if not path.is_file():
        raise DataError(f"{path}: missing index file; the data set is incomplete (re-download or re-extract it)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; the index file is corrupt (re-download the data set)") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def parse_fields(path: Path, fields: int, kinds: tuple[Callable, ...]) -> list[tuple[int, tuple]]:
    """Split each line into ``fields`` parts (the last one keeps its spaces) and convert them."""
    rows = []
    for number, line in read_lines(path):
        parts = line.split(maxsplit=fields - 1)
        if len(parts) != fields:
            raise DataError(f"{path}:{number}: expected {fields} fields, got {line!r}; the index file is malformed")
        try:
            rows.append((number, tuple(kind(part) for kind, part in zip(kinds, parts))))
        except ValueError:
            raise DataError(f"{path}:{number}: malformed line {line!r}; the index file is corrupt") from None
    return rows


def unique_map(path: Path, rows: list[tuple[int, tuple]]) -> dict:
    """First field to the rest, refusing duplicate keys."""
    mapping = {}
    for number, (key, *rest) in rows:
        if key in mapping:
            raise DataError(f"{path}:{number}: duplicate id {key}; the index file is corrupt")
        mapping[key] = rest[0] if len(rest) == 1 else tuple(rest)
    return mapping


def checked_id(image_id: int, where: str) -> int:
    """Image ids are stored as int64."""
    if not -2**63 <= image_id < 2**63:
        raise DataError(f"{where}: image id {image_id} does not fit in 64 bits; the index file is corrupt")
    return image_id


def safe_relative(root: Path, relative: str, where: str) -> str:
    """Refuse a path that is absolute or leaves the data set root."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise DataError(f"{where}: path {relative!r} escapes the data set root {root}; fix or re-download the index file")
    return candidate.as_posix()


def _describe(root: Path) -> str:
    entries = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    return ", ".join(entries) or "nothing"


def _find_root(raw: Path, marker: str, candidates: tuple[str, ...], dataset: str, layout: str) -> Path:
    for sub in candidates:
        if (raw / sub / marker).is_file():
            return raw / sub
    raise DataError(
        f"{raw} does not look like {dataset}: expected {layout} (found: {_describe(raw)}); "
        f"pass the folder or archive of {dataset} to --root"
    )


def load_cub(raw: Path) -> SourceSet:
    root = _find_root(raw, "images.txt", (".", "CUB_200_2011"), "CUB-200-2011",
                      "CUB_200_2011/images.txt, classes.txt, image_class_labels.txt, train_test_split.txt")
    classes = unique_map(root / "classes.txt", parse_fields(root / "classes.txt", 2, (int, str)))
    if not classes:
        raise DataError(f"{root / 'classes.txt'}: no classes (expected one line '<class id> <name>' per class)")
    class_ids = sorted(classes)
    label_of_class = {cid: label for label, cid in enumerate(class_ids)}
    names = [classes[cid].split(".", 1)[-1] for cid in class_ids]
    paths = unique_map(root / "images.txt", parse_fields(root / "images.txt", 2, (int, str)))
    labels = unique_map(root / "image_class_labels.txt", parse_fields(root / "image_class_labels.txt", 2, (int, int)))
    splits = unique_map(root / "train_test_split.txt", parse_fields(root / "train_test_split.txt", 2, (int, int)))
    images = []
    for image_id, relative in paths.items():
        where = f"{root / 'images.txt'} (image {image_id})"
        if image_id not in labels:
            raise DataError(f"{where}: no label in image_class_labels.txt; the index files disagree")
        if labels[image_id] not in label_of_class:
            raise DataError(f"{root / 'image_class_labels.txt'} (image {image_id}): class {labels[image_id]} "
                            f"is out of range (classes.txt has ids {class_ids[0]}..{class_ids[-1]})")
        if splits.get(image_id) not in (0, 1):
            raise DataError(f"{root / 'train_test_split.txt'} (image {image_id}): expected 1 (train) or 0 (test), "
                            f"got {splits.get(image_id)!r}")
        label = label_of_class[labels[image_id]]
        images.append(SourceImage(checked_id(image_id, where), "images/" + safe_relative(root, relative, where), label,
                                  names[label], "train" if splits[image_id] == 1 else "test"))
    return SourceSet(root, images, names)


def load_aircraft(raw: Path) -> SourceSet:
    root = _find_root(raw, "variants.txt", ("data", "fgvc-aircraft-2013b/data", "."), "FGVC-Aircraft",
                      "fgvc-aircraft-2013b/data/variants.txt, images_variant_trainval.txt, images_variant_test.txt")
    names = [line for _, line in read_lines(root / "variants.txt")]
    if len(set(names)) != len(names):
        raise DataError(f"{root / 'variants.txt'}: a variant is listed twice; the file is corrupt")
    label_of = {name: label for label, name in enumerate(names)}
    images, seen = [], set()
    for split, index in (("train", "images_variant_trainval.txt"), ("test", "images_variant_test.txt")):
        for number, (name, variant) in parse_fields(root / index, 2, (str, str)):
            where = f"{root / index}:{number}"
            if variant not in label_of:
                raise DataError(f"{where}: unknown variant {variant!r} (not in variants.txt)")
            if not (name.isascii() and name.isdigit()):
                raise DataError(f"{where}: image name {name!r} is not the numeric FGVC-Aircraft id")
            if int(name) in seen:
                raise DataError(f"{where}: image {name} is listed twice")
            seen.add(int(name))
            path = safe_relative(root, f"images/{name}.jpg", where)
            images.append(SourceImage(checked_id(int(name), where), path, label_of[variant], variant, split,
                                      AIRCRAFT_BANNER_PX))
    return SourceSet(root, images, names)


def _mat_annotations(path: Path) -> list:
    import numpy as np
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: missing; the Stanford Cars devkit is incomplete (it needs cars_meta.mat, "
                        "cars_train_annos.mat and cars_test_annos_withlabels.mat)")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several unrelated types for a damaged file
        raise DataError(f"{path}: cannot read this .mat file ({brief(err)}); re-download it") from None
    key = "class_names" if path.name == "cars_meta.mat" else "annotations"
    if key not in mat:
        raise DataError(f"{path}: no '{key}' variable; is this the Stanford Cars devkit file?")
    return list(np.atleast_1d(mat[key]))


def load_cars(raw: Path) -> SourceSet:
    candidates = (".", "devkit", "car_devkit/devkit", "stanford_cars", "stanford_cars/devkit")
    devkit = _find_root(raw, "cars_meta.mat", candidates, "Stanford Cars",
                        "devkit/cars_meta.mat, cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/")
    root = next((d for d in (devkit, devkit.parent, raw) if (d / "cars_train").is_dir()), None)
    if root is None:
        raise DataError(f"{raw}: Stanford Cars image folders cars_train/ and cars_test/ not found beside {devkit}")
    names = [str(n).strip() for n in _mat_annotations(devkit / "cars_meta.mat")]
    test_annos = next((p for p in (devkit / "cars_test_annos_withlabels.mat", root / "cars_test_annos_withlabels.mat")
                       if p.is_file()), devkit / "cars_test_annos_withlabels.mat")
    images = []
    for split, annos, folder in (("train", devkit / "cars_train_annos.mat", "cars_train"),
                                 ("test", test_annos, "cars_test")):
        for number, record in enumerate(_mat_annotations(annos), 1):
            where = f"{annos} (annotation {number})"
            try:
                class_id, fname = int(record.__dict__["class"]), str(record.fname)
            except (KeyError, AttributeError, ValueError, TypeError):
                raise DataError(f"{where}: missing 'class' or 'fname'; use cars_test_annos_withlabels.mat for the "
                                "test split (the plain devkit test file has no labels)") from None
            if not 1 <= class_id <= len(names):
                raise DataError(f"{where}: class {class_id} is out of range 1..{len(names)} of cars_meta.mat")
            path = safe_relative(root, f"{folder}/{fname}", where)
            images.append(SourceImage(len(images) + 1, path, class_id - 1, names[class_id - 1], split))
    return SourceSet(root, images, names)


# The raw layouts by name, each with its adapter: `fgkd prepare`'s choices; the schema's datasets.<name>.format enum is
# tested against it.
LOADERS = {"cub": load_cub, "cars": load_cars, "aircraft": load_aircraft}
