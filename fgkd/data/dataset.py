"""A torch Dataset over a manifest, the FGVC transforms, and the DataLoader factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from PIL import Image
from torchvision.transforms import v2

from ..errors import DataError
from .manifest import read_manifest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSizes:
    """Resize the short side to ``resize``, then crop ``crop`` x ``crop`` (paper: 600 / 448)."""

    resize: int
    crop: int


def fgvc_transform(sizes: ImageSizes, train: bool) -> v2.Compose:
    """Train: resize, random crop, flip. Test: resize, centre crop. Then normalise."""
    spatial = [v2.Resize(sizes.resize, antialias=True)]
    spatial += [v2.RandomCrop(sizes.crop), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(sizes.crop)]
    return v2.Compose([*spatial, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ManifestDataset(Dataset):
    """Images of one split of a prepared data set; items are (image, label, image_id)."""

    def __init__(self, root: str | Path, frame: pd.DataFrame, num_classes: int, transform=None):
        self.root = Path(root)
        self.num_classes = num_classes
        self.paths = frame["path"].tolist()
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.long)
        self.image_ids = torch.tensor(frame["image_id"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as decoded:
                image = torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{path}: cannot decode image ({err}); rerun `fgkd prepare` for this data set") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index], self.image_ids[index]


def split_train_val(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a stratified validation split out of ``train`` (at least one image per class when > 0)."""
    train = frame[frame["split"] == "train"]
    if val_fraction <= 0:
        return train, train.iloc[:0]
    rng = np.random.default_rng(seed)
    val_rows = []
    for _, group in train.groupby("label", sort=True):
        if len(group) < 2:
            continue
        count = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
        val_rows.extend(rng.choice(group.index.to_numpy(), size=count, replace=False).tolist())
    val_mask = train.index.isin(val_rows)
    return train[~val_mask], train[val_mask]


def load_split(root: str | Path, split: str, sizes: ImageSizes, val_fraction: float = 0.0, seed: int = 0,
               train_augment: bool | None = None) -> ManifestDataset:
    """``split`` is train, val (carved from train) or test."""
    frame = read_manifest(root)
    if split == "test":
        rows = frame[frame["split"] == "test"]
    else:
        train, val = split_train_val(frame, val_fraction, seed)
        rows = train if split == "train" else val
    augment = (split == "train") if train_augment is None else train_augment
    return ManifestDataset(root, rows, frame.attrs["num_classes"], fgvc_transform(sizes, train=augment))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int = 0, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """Seeded shuffling and worker RNGs (same seed, same batches); pinned memory on CUDA."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
        persistent_workers=workers > 0,
    )
